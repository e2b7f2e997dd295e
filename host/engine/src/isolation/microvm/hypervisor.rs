//! The hypervisor seam (Kata runtime-rs style): VM lifecycle over typed devices. The
//! microVM isolation above it (disks, initramfs, vsock, agent) is written once for every
//! backend; a backend only turns a [`VmConfig`] into running host processes.

use std::path::PathBuf;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::procs::{VmIdentity, VmProcess};
use crate::Result;

/// A device of the VM, in the order the guest will enumerate it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Device {
    /// virtio-blk over a raw file (`/dev/vda`, `/dev/vdb`, ... in order).
    Block { path: PathBuf, read_only: bool },
    /// Hybrid vsock: the host connects to `uds_path` and sends `CONNECT <port>\n`.
    Vsock { guest_cid: u32, uds_path: PathBuf },
    /// A host directory shared over virtio-fs, served by a `virtiofsd` of its own; the guest
    /// mounts it by `tag`. `read_only` is enforced by virtiofsd, on the host side.
    Fs {
        tag: String,
        shared_dir: PathBuf,
        read_only: bool,
    },
    /// virtio-net on the TAP `tap` (in the VMM's netns), with the guest MAC `mac`.
    Net { tap: String, mac: String },
}

/// Everything a backend needs to boot one VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// For process names and messages (the container's short id).
    pub name: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The guest's part of the kernel command line; the backend adds its own (console,
    /// reboot method, virtio-mmio device list).
    pub cmdline: String,
    pub vcpus: u32,
    pub mem_mib: u64,
    pub devices: Vec<Device>,
    /// Private directory of this VM (sockets, config, helper logs), writable by `identity`.
    pub run_dir: PathBuf,
    /// The guest's serial console goes here.
    pub serial_log: PathBuf,
    /// Unprivileged identity for the VMM and its helpers, when the host allows it.
    pub identity: Option<VmIdentity>,
    /// `cgroup.procs` files the VMM and its helpers join (host accounting).
    pub cgroups: Vec<PathBuf>,
    /// The network namespace the VMM runs in (the container's sandbox, where its TAPs
    /// are), or none: the VMM then stays in berthd's.
    pub netns: Option<PathBuf>,
}

/// A running VM as the daemon remembers it (persisted for re-adoption after a restart).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmState {
    pub hypervisor: String,
    /// The VMM process; the VM is gone when it exits.
    pub vmm: VmProcess,
    /// Helper processes that live exactly as long as the VM.
    pub helpers: Vec<VmProcess>,
    /// Where the host reaches the guest agent (hybrid vsock).
    pub agent_uds: PathBuf,
}

impl VmState {
    pub fn processes(&self) -> Vec<VmProcess> {
        let mut all = vec![self.vmm.clone()];
        all.extend(self.helpers.iter().cloned());
        all
    }
}

/// What a backend can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HypervisorCaps {
    /// Hardware-accelerated (KVM) rather than emulated (TCG).
    pub hardware_accel: bool,
    /// Can share host directories with the guest ([`Device::Fs`]); `Err` says why not.
    pub shared_fs: std::result::Result<(), String>,
    /// How many virtio-mmio devices a VM can have (disks, shares, vsock, NICs).
    pub max_devices: usize,
}

#[async_trait]
pub trait Hypervisor: Send + Sync {
    /// `qemu` or `berth-vmm`.
    fn name(&self) -> &'static str;

    /// `None` when this backend can boot VMs here, else why not.
    fn unavailable_reason(&self) -> Option<String>;

    /// One line for `docker info` and the log (binary, accelerator).
    fn describe(&self) -> String;

    fn capabilities(&self) -> HypervisorCaps;

    /// The command-line words this backend's guest needs (console, reboot method).
    fn base_cmdline(&self) -> &'static str;

    /// How the VMM said it ended, from its log in `run_dir`, when it says so.
    fn exit_detail(&self, run_dir: &std::path::Path) -> Option<String> {
        let _ = run_dir;
        None
    }

    /// Check the config and create what the VM needs before start.
    async fn prepare_vm(&self, cfg: &VmConfig) -> Result<()>;

    /// Boot the VM; returns once its processes run (not once the guest is up).
    async fn start_vm(&self, cfg: &VmConfig) -> Result<VmState>;

    /// Ask the VM to stop; `force` kills it. Idempotent.
    async fn stop_vm(&self, vm: &VmState, force: bool) {
        let _ = force;
        super::procs::kill_all(&vm.processes()).await;
    }

    /// Resolves when the VMM process exits, with how it ended when known.
    async fn wait_vm(&self, vm: &VmState) -> Option<String> {
        vm.vmm.wait_exit().await
    }
}

/// Spawn the VMM process of `cfg` once its helpers run (it drops privileges itself), logging
/// to `<run_dir>/<log_name>`; if it cannot start, the helpers are killed.
pub(super) async fn spawn_vmm(
    hypervisor: &str,
    cmd: std::process::Command,
    log_name: &str,
    cfg: &VmConfig,
    helpers: Vec<VmProcess>,
    agent_uds: PathBuf,
) -> Result<VmState> {
    let mut cmd = cmd;
    if let Some(ns) = &cfg.netns {
        if let Err(e) = join_netns_at_exec(&mut cmd, ns) {
            super::procs::kill_all(&helpers).await;
            return Err(e);
        }
    }
    let vmm = match super::procs::spawn_detached(
        hypervisor,
        cmd,
        &cfg.run_dir.join(log_name),
        &cfg.run_dir,
        None,
        &cfg.cgroups,
    ) {
        Ok(p) => p,
        Err(e) => {
            super::procs::kill_all(&helpers).await;
            return Err(e);
        }
    };
    Ok(VmState {
        hypervisor: hypervisor.into(),
        vmm,
        helpers,
        agent_uds,
    })
}

/// Make `cmd` enter the network namespace at `ns` before exec: the VMM then opens its
/// TAPs by name and has no other network. Runs before `spawn_detached`'s own pre-exec
/// steps (closures run in order), so before any privilege is dropped.
fn join_netns_at_exec(cmd: &mut std::process::Command, ns: &std::path::Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let f = std::fs::File::open(ns)
        .map_err(|e| crate::Error::internal(format!("network namespace {}: {e}", ns.display())))?;
    // SAFETY: setns(2) is async-signal-safe; the fd is opened before the fork and owned
    // by the closure (close-on-exec, so the VMM does not inherit it).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}
