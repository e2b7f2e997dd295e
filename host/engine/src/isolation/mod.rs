//! The isolation seam: where a container's agent runs and how it reaches its rootfs.
//!
//! The container manager talks to one [`IsolationBackend`] per container (picked by the
//! container's recorded [`Isolation`]) and never branches on the mode itself:
//! - [`process::ProcessIsolation`]: a detached `berth-agent` on the host, overlay (or a copied
//!   directory) as the rootfs, host cgroups;
//! - [`microvm::MicrovmIsolation`]: the agent is PID 1 of a microVM (berth-vmm or qemu), the
//!   image is a read-only block device and the writable layer a per-container disk.
//!
//! Differences the manager must know about are reported as [`Capabilities`].

pub mod files;
pub mod microvm;
pub mod process;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use berth_agent_protocol::client::AgentClient;
use berth_agent_protocol::Rootfs;

use crate::containers::record::{ContainerRecord, Isolation, MountRecord};
use crate::{Error, Result};

/// What a backend can do, so the manager asks instead of matching on the mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// The container's files are reachable from the host (`/proc/<pid>/root`, the overlay
    /// dirs): `docker cp`, `diff`, `commit` and `export` work on the host side.
    pub host_file_access: bool,
    /// Volumes whose driver answers with a disk image can be attached (as block devices).
    pub block_volumes: bool,
    /// The container's processes run on the host: berth can prepare a network namespace
    /// for them to join (bridge endpoints) and bind-mount host files (/etc/hosts...).
    /// A microVM gets [`GuestNetwork`] NICs instead.
    pub host_namespaces: bool,
    /// The container runs behind NICs of its own (a VM's virtio-net), which berth joins
    /// to the sandbox's endpoints through TAPs: see [`GuestNetwork`].
    pub guest_nics: bool,
    /// Containers run under cgroup v2 (a microVM's guest always; the host when it is
    /// unified), where dockerd's default `--cgroupns` is `private` rather than `host`.
    pub cgroup_v2: bool,
}

/// One NIC of a VM: the TAP in the sandbox that carries one endpoint, and what the guest
/// must configure on its side (the endpoint's own MAC, so ARP answers match).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestNic {
    pub tap: String,
    pub ifname: String,
    pub mac: String,
    pub address: std::net::Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<std::net::Ipv4Addr>,
    pub mtu: u32,
    /// The IPv6 address and default route on an IPv6 network.
    pub address6: Option<std::net::Ipv6Addr>,
    pub prefix6: u8,
    pub gateway6: Option<std::net::Ipv6Addr>,
}

/// A VM's spare NIC: a TAP joined to nothing yet, and the guest NIC on it, which the
/// guest leaves down as `spare_name` until `docker network connect` configures it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestSpareNic {
    pub tap: String,
    pub mac: String,
    pub spare_name: String,
}

/// The network a run's sandbox prepared for a backend with [`Capabilities::guest_nics`]:
/// the netns its VMM runs in (the TAPs are there), the NICs and the spare NICs. Empty for
/// other runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestNetwork {
    pub netns: Option<PathBuf>,
    pub nics: Vec<GuestNic>,
    pub spares: Vec<GuestSpareNic>,
}

/// A started (or re-adopted) agent.
pub struct Sandbox {
    pub agent: AgentClient,
    /// Host pid of the agent (process) or of the VMM (microVM).
    pub agent_pid: u32,
    /// What `State.Pid` shows for the container's main process: its host pid when it is a
    /// host process, `None` to use the pid the agent reports.
    pub host_pid_override: Option<u32>,
}

/// One way to isolate containers.
#[async_trait]
pub trait IsolationBackend: Send + Sync {
    fn mode(&self) -> Isolation;

    fn capabilities(&self) -> Capabilities;

    /// `None` when containers can use this mode on this host, else why not.
    fn unavailable_reason(&self) -> Option<String>;

    /// Human-readable description for `docker info` and the daemon log (backend, reasons).
    fn describe(&self) -> String;

    /// The storage name recorded for a new container (`GraphDriver.Name`).
    fn storage_name(&self) -> &'static str;

    /// Prepare the per-container storage at create time (blocking work off the runtime).
    async fn prepare_storage(&self, rec: &ContainerRecord) -> Result<()>;

    /// The rootfs as the agent sees it.
    fn rootfs(&self, rec: &ContainerRecord) -> Result<Rootfs>;

    /// Start a fresh agent for a new run of the container and connect to it; `net` is the
    /// run's prepared network (used only by backends with `guest_nics`).
    async fn start(&self, rec: &ContainerRecord, net: &GuestNetwork) -> Result<Sandbox>;

    /// After a daemon restart: reconnect to the agent of a run that may still be live.
    async fn reconnect(&self, rec: &ContainerRecord) -> Option<Sandbox>;

    /// Why the agent connection of the current run broke, when the backend knows better
    /// than "connection closed" (e.g. the VMM was killed).
    async fn failure_reason(&self, rec: &ContainerRecord) -> Option<String>;

    /// At create: refuse settings or mounts this backend cannot provide, with the reason.
    fn check_config(
        &self,
        hc: &bollard_stubs::models::HostConfig,
        mounts: &[MountRecord],
    ) -> Result<()> {
        let _ = (hc, mounts);
        Ok(())
    }

    /// Where the agent finds the source of `rec.mounts[index]` (resolved at start): the
    /// host path itself, or where the guest mounted it.
    fn mount_source(&self, index: usize, m: &MountRecord) -> PathBuf {
        let _ = index;
        PathBuf::from(&m.source)
    }

    /// Map the container's resource limits to what its agent enforces (e.g. a microVM's
    /// `--cpuset-cpus` pins host CPUs for the VMM; inside the guest every vCPU is usable).
    fn map_resources(&self, res: &mut berth_agent_protocol::Resources) {
        let _ = res;
    }

    /// How many NICs besides its `nics` networks' the container's VM still has room for
    /// (spares for `network connect` while it runs); 0 for backends without `guest_nics`.
    fn spare_nic_room(&self, _rec: &ContainerRecord, _nics: usize) -> usize {
        0
    }

    /// Backend details for `docker inspect` (e.g. a microVM's hypervisor, guest kernel,
    /// vCPUs and memory), or `None`.
    fn inspect(&self, rec: &ContainerRecord) -> Option<serde_json::Value> {
        let _ = rec;
        None
    }

    /// The container's files as a tar, for backends without
    /// [`Capabilities::host_file_access`]; `hold` is dropped once everything started for
    /// the export is gone again.
    async fn export_files(
        &self,
        rec: &ContainerRecord,
        what: files::FilesExport,
        hold: files::Hold,
    ) -> Result<files::FilesStream> {
        let _ = (rec, what, hold);
        Err(Error::NotImplemented(
            "this isolation backend's files are read on the host".into(),
        ))
    }

    /// After a run ended (the agent was told to shut down, or died): release what the run
    /// held on the host (cgroups, VMM and helper processes, sockets). Idempotent.
    async fn release(&self, rec: &ContainerRecord);
}

/// The isolation backends of this daemon, indexed by mode.
pub struct IsolationBackends {
    process: Arc<dyn IsolationBackend>,
    microvm: Arc<dyn IsolationBackend>,
    /// `--default-isolation`.
    pub default: Isolation,
}

impl IsolationBackends {
    pub fn new(
        process: Arc<dyn IsolationBackend>,
        microvm: Arc<dyn IsolationBackend>,
        default: Isolation,
    ) -> Result<Self> {
        let b = IsolationBackends {
            process,
            microvm,
            default,
        };
        if let Some(why) = b.get(default).unavailable_reason() {
            return Err(Error::invalid(format!(
                "default isolation {} is unavailable on this host: {why}",
                default.as_str()
            )));
        }
        Ok(b)
    }

    pub fn get(&self, mode: Isolation) -> &Arc<dyn IsolationBackend> {
        match mode {
            Isolation::Process => &self.process,
            Isolation::Microvm => &self.microvm,
        }
    }

    pub fn all(&self) -> [&Arc<dyn IsolationBackend>; 2] {
        [&self.process, &self.microvm]
    }

    /// Docker's `HostConfig.Isolation` (or a `--runtime` alias) → a usable mode.
    pub fn parse(&self, v: &str) -> Result<Isolation> {
        let iso = match v {
            "" | "default" => self.default,
            "process" | "runc" | "berth" => Isolation::Process,
            "microvm" | "vm" | "hyperv" => Isolation::Microvm,
            other => {
                return Err(Error::invalid(format!(
                    "invalid isolation '{other}': berth supports 'default', 'process' and 'microvm'"
                )))
            }
        };
        if let Some(why) = self.get(iso).unavailable_reason() {
            return Err(Error::invalid(format!(
                "{} isolation is unavailable on this host: {why}",
                iso.as_str()
            )));
        }
        Ok(iso)
    }
}

/// Find the agent binary: `$BERTH_AGENT`, next to the running executable, or on PATH.
pub fn default_agent_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("BERTH_AGENT") {
        return p.into();
    }
    find_next_to_exe("berth-agent").unwrap_or_else(|| PathBuf::from("berth-agent"))
}

/// `name` next to the running executable (or one level up: integration tests run from
/// `target/debug/deps`).
pub fn find_next_to_exe(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    let cand = dir.join(name);
    if cand.exists() {
        return Some(cand);
    }
    let cand = dir.parent()?.join(name);
    cand.exists().then_some(cand)
}

/// `name` on `$PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
