//! `containerd-shim-berth-v2`: containerd's runtime v2 shim for berth
//! (`ctr run --runtime io.containerd.berth.v2`, a Kubernetes `RuntimeClass` with handler
//! `berth`). Each container runs under a berth agent started through the engine's
//! isolation seam, as with berthd, but without berthd.

mod container;
mod error;
mod events;
mod metrics;
mod oci;
mod process;
mod rootfs;
mod sandbox;
mod shim;
mod stdio;
mod task;

#[tokio::main]
async fn main() {
    let config = containerd_shim::Config {
        // The shim waits for its tokio children (the agent launcher) itself, and the
        // daemonized agents are reaped by init: a reaper here would steal their statuses.
        no_reaper: true,
        no_sub_reaper: true,
        ..Default::default()
    };
    containerd_shim::asynchronous::run::<shim::BerthShim>("io.containerd.berth.v2", Some(config))
        .await;
}
