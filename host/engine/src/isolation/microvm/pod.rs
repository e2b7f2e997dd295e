//! One microVM per pod, as Kata runs Kubernetes pods: the pod's sandbox container boots
//! the VM, and every further container of the pod runs in that VM under an agent of its
//! own (the guest's first agent starts it, see agent/src/pod_member.rs).
//!
//! The VM cannot gain devices once booted (virtio-mmio has no hotplug), so the sandbox's
//! VM gets one virtio-fs share at boot, the *pod dir*, and each member's root filesystem
//! is mounted under it on the host later. The pod dir is a shared mount point: mounts made
//! in it after virtiofsd started propagate into virtiofsd's own mount namespace (which
//! holds its view of the host as a slave), so the guest sees each new rootfs appear.
//! Writes go to the member's writable snapshot on the host, as they do under runc.

use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_agent_protocol::client::AgentClient;
use berth_agent_protocol::Rootfs;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::MicrovmIsolation;
use crate::containers::record::{ContainerDirs, ContainerRecord};
use crate::isolation::{GuestNetwork, Sandbox};
use crate::{Error, Result};

/// The virtio-fs tag of the pod dir and where the guest mounts it.
pub(super) const POD_TAG: &str = "pod";
pub(super) const GUEST_POD_DIR: &str = "/run/berth/pod";

/// How long a member's agent may take to answer once started.
const MEMBER_CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// The host directory shared into the pod VM that container `sandbox_id` boots.
pub fn pod_dir(dirs: &ContainerDirs, sandbox_id: &str) -> PathBuf {
    dirs.container_dir(sandbox_id).join("vm").join("pod")
}

/// A member's dir under the pod dir on the host: its root filesystem is mounted at
/// `rootfs` in it, and the sources of its bind mounts under `mounts/`.
pub fn member_dir(dirs: &ContainerDirs, sandbox_id: &str, member_id: &str) -> PathBuf {
    pod_dir(dirs, sandbox_id).join(member_id)
}

/// The same dir as the guest sees it.
pub fn guest_member_dir(member_id: &str) -> PathBuf {
    Path::new(GUEST_POD_DIR).join(member_id)
}

/// A member's root filesystem as its agent in the guest sees it.
pub fn member_rootfs(member_id: &str) -> Rootfs {
    Rootfs::Dir {
        path: guest_member_dir(member_id).join("rootfs"),
    }
}

/// Makes `dir` a mount point of its own in a shared peer group, so mounts made under it
/// later reach virtiofsd's namespace.
pub(super) fn make_share_point(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let sys = |what: &str, e: nix::Error| {
        Error::internal(format!("{what} the pod dir {}: {e}", dir.display()))
    };
    mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(|e| sys("bind-mounting", e))?;
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_SHARED,
        None::<&str>,
    )
    .map_err(|e| sys("sharing", e))?;
    Ok(())
}

/// Detaches the pod dir and every member rootfs still mounted under it, so nothing
/// removing the container's dirs afterwards can reach a member's snapshot. Idempotent.
pub fn detach_pod_dir(dirs: &ContainerDirs, sandbox_id: &str) {
    let dir = pod_dir(dirs, sandbox_id);
    // Stacked binds (a restarted sandbox) come off one per call.
    while umount2(&dir, MntFlags::MNT_DETACH).is_ok() {}
}

impl MicrovmIsolation {
    /// Boots the pod's VM for its sandbox container, with the pod dir shared into it.
    pub async fn start_pod_sandbox(
        &self,
        rec: &ContainerRecord,
        net: &GuestNetwork,
    ) -> Result<Sandbox> {
        self.boot(rec, net, true).await
    }

    /// Runs a member of the pod whose sandbox is `sandbox_id` in that sandbox's VM: asks
    /// the VM's first agent (`sandbox_agent`) for an agent on vsock `port` and connects to
    /// it. The member's rootfs must be mounted in [`member_dir`] first.
    pub async fn join_pod(
        &self,
        sandbox_id: &str,
        sandbox_agent: &AgentClient,
        port: u32,
    ) -> Result<Sandbox> {
        let state = self
            .vms
            .lock()
            .unwrap()
            .get(sandbox_id)
            .map(|vm| vm.state.clone())
            .ok_or_else(|| Error::Conflict("the pod's microVM is not running".into()))?;
        sandbox_agent.start_pod_member(port).await.map_err(|e| {
            Error::internal(format!("starting the member's agent in the pod VM: {e}"))
        })?;
        let agent = tokio::time::timeout(
            MEMBER_CONNECT_TIMEOUT,
            AgentClient::connect_hybrid_vsock(&state.agent_uds, port),
        )
        .await
        .map_err(|_| Error::internal("the member's agent in the pod VM did not answer"))?
        .map_err(|e| Error::internal(format!("connecting to the member's agent: {e}")))?;
        Ok(Sandbox {
            agent,
            agent_pid: state.vmm.pid,
            host_pid_override: Some(state.vmm.pid),
        })
    }
}
