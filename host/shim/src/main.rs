//! `containerd-shim-berth-v2`: containerd's runtime v2 shim for berth
//! (`ctr run --runtime io.containerd.berth.v2`, a Kubernetes `RuntimeClass` with handler
//! `berth`). Each container runs under a berth agent started through the engine's
//! isolation seam, as with berthd, but without berthd.

mod container;
mod error;
mod events;
mod metrics;
mod oci;
mod pod;
mod process;
mod rootfs;
mod sandbox;
mod serve;
mod shim;
mod stdio;
mod task;

const RUNTIME_ID: &str = "io.containerd.berth.v2";

#[tokio::main]
async fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Ok(flags) = containerd_shim::parse(&args[1..]) {
        // The shim crate answers `start` with JSON (containerd 1.7+) or its bootstrap
        // protobuf (2.3+); containerd 1.6 reads only a bare address (which 1.7's parser
        // also falls back to), so the shim answers `start` itself. Only 1.6 is tested.
        if flags.action == "start" {
            if let Err(e) = shim::legacy_start(&flags).await {
                eprintln!("{RUNTIME_ID}: {e}");
                std::process::exit(1);
            }
            return;
        }
        // Serving (no action): the Task service under containerd 1.x's name too.
        if flags.action.is_empty() && !flags.socket.is_empty() && !flags.info && !flags.version {
            let code = match serve::serve(&flags).await {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("{RUNTIME_ID}: {e:#}");
                    1
                }
            };
            // Exit now: a stdin pump can still be blocked opening a FIFO no one will
            // write, and the runtime's drop would wait for it.
            std::process::exit(code);
        }
    }
    // `delete`, `-info`, `-v`: the shim crate's bootstrap.
    let config = containerd_shim::Config {
        // The shim waits for its tokio children (the agent launcher) itself, and the
        // daemonized agents are reaped by init: a reaper here would steal their statuses.
        no_reaper: true,
        no_sub_reaper: true,
        ..Default::default()
    };
    containerd_shim::asynchronous::run::<shim::BerthShim>(RUNTIME_ID, Some(config)).await;
}
