//! What the host asks the agent to run: the container spec and exec spec.
//!
//! The host resolves everything that needs the image or daemon state (merged env/cmd, hosts file
//! contents, layer paths, mount sources); the agent only applies it.
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A container, sent once with [`Request::Create`](crate::Request::Create).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ContainerSpec {
    /// Container id (used for the cgroup name).
    pub id: String,
    pub rootfs: Rootfs,
    /// `--read-only`: the root filesystem is remounted read-only after setup.
    #[serde(default)]
    pub readonly_rootfs: bool,
    /// The main process.
    pub process: ProcessSpec,
    /// Set in the container's UTS namespace.
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub domainname: String,
    /// Contents for /etc/hosts, /etc/resolv.conf, /etc/hostname. `None` leaves the image's file.
    #[serde(default)]
    pub etc_hosts: Option<String>,
    #[serde(default)]
    pub etc_resolv_conf: Option<String>,
    #[serde(default)]
    pub etc_hostname: Option<String>,
    /// Extra mounts, applied in order after the standard ones.
    #[serde(default)]
    pub mounts: Vec<Mount>,
    #[serde(default)]
    pub network: NetworkSpec,
    #[serde(default)]
    pub security: SecuritySpec,
    #[serde(default)]
    pub resources: Resources,
    /// Parent cgroup (relative to each hierarchy's root). Default `berth`.
    #[serde(default)]
    pub cgroup_parent: Option<String>,
    /// Docker `--init`: run a tiny init as PID 1 that reaps zombies and forwards signals.
    #[serde(default)]
    pub init: bool,
    /// `--ulimit`: resource limits of the main process and every exec.
    #[serde(default)]
    pub ulimits: Vec<Ulimit>,
    /// `--sysctl`: namespaced kernel parameters (`net.*`, `kernel.shm*`, ...), written in the
    /// container's namespaces before `/proc/sys` turns read-only. The host validated them.
    #[serde(default)]
    pub sysctls: std::collections::BTreeMap<String, String>,
    /// `--oom-score-adj` (-1000..=1000) of the main process and every exec.
    #[serde(default)]
    pub oom_score_adj: Option<i32>,
    /// `--shm-size` in bytes; `None` = Docker's 64 MiB.
    #[serde(default)]
    pub shm_size: Option<u64>,
    /// `--device`: host device nodes recreated in the container's /dev and allowed in its
    /// device cgroup.
    #[serde(default)]
    pub devices: Vec<DeviceSpec>,
    /// `--pid host`, `--ipc host`, `--uts host`: stay in the agent's namespace of that kind
    /// (the host's in process isolation, the VM's in a microVM).
    #[serde(default)]
    pub host_namespaces: HostNamespaces,
    /// `--pid container:<id>`, `--ipc container:<id>`: namespace files (the donor's
    /// `/proc/<pid>/ns/...`) the container joins instead of getting its own.
    #[serde(default)]
    pub join_namespaces: JoinNamespaces,
    /// `--cgroupns`; also decides what is mounted at `/sys/fs/cgroup`.
    #[serde(default)]
    pub cgroupns: CgroupNamespace,
    /// `berthd --userns-remap`: the container runs in a new user namespace with these maps
    /// (its root is an unprivileged host uid). `None` = the agent's user namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userns: Option<UserNamespace>,
}

/// A user namespace's id maps, as written to `/proc/<pid>/uid_map` and `gid_map`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserNamespace {
    pub uid_map: Vec<IdMap>,
    pub gid_map: Vec<IdMap>,
}

/// One map line: ids `container_id..container_id+size` are host ids `host_id..`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct IdMap {
    pub container_id: u32,
    pub host_id: u32,
    pub size: u32,
}

impl IdMap {
    /// The host id of container id `id`, when the map covers it.
    pub fn to_host(maps: &[IdMap], id: u32) -> Option<u32> {
        maps.iter()
            .find(|m| id >= m.container_id && id - m.container_id < m.size)
            .map(|m| m.host_id + (id - m.container_id))
    }

    /// The container id of host id `id`, when the map covers it.
    pub fn to_container(maps: &[IdMap], id: u32) -> Option<u32> {
        maps.iter()
            .find(|m| id >= m.host_id && id - m.host_id < m.size)
            .map(|m| m.container_id + (id - m.host_id))
    }

    /// The text of a `uid_map`/`gid_map` file.
    pub fn file_text(maps: &[IdMap]) -> String {
        maps.iter()
            .map(|m| format!("{} {} {}\n", m.container_id, m.host_id, m.size))
            .collect()
    }
}

impl UserNamespace {
    /// The host uid and gid of the container's root.
    pub fn root(&self) -> (u32, u32) {
        (
            IdMap::to_host(&self.uid_map, 0).unwrap_or(0),
            IdMap::to_host(&self.gid_map, 0).unwrap_or(0),
        )
    }
}

/// Namespaces a container joins from another container.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct JoinNamespaces {
    #[serde(default)]
    pub pid: Option<PathBuf>,
    #[serde(default)]
    pub ipc: Option<PathBuf>,
}

/// Namespaces a container shares with the agent instead of getting its own.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct HostNamespaces {
    #[serde(default)]
    pub pid: bool,
    #[serde(default)]
    pub ipc: bool,
    #[serde(default)]
    pub uts: bool,
}

/// One `--ulimit name=soft[:hard]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Ulimit {
    /// Docker's name (`nofile`, `nproc`, `core`, ...).
    pub name: String,
    pub soft: i64,
    pub hard: i64,
}

/// One `--device host[:container[:perms]]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DeviceSpec {
    pub path_on_host: PathBuf,
    pub path_in_container: PathBuf,
    /// Any of `r`, `w`, `m`.
    pub permissions: String,
}

/// The container's root filesystem.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Rootfs {
    /// The agent mounts an overlay in the container's private mount namespace.
    /// `lower` is bottom-to-top (image layer order); `upper` and `work` must be on the same fs.
    Overlay {
        lower: Vec<PathBuf>,
        upper: PathBuf,
        work: PathBuf,
    },
    /// A prepared directory (the host copied/unpacked it); bind-mounted as the root.
    Dir { path: PathBuf },
    /// A block device (VM guests): mounted with `fstype` and comma-separated `options`.
    Block {
        device: PathBuf,
        fstype: String,
        #[serde(default)]
        options: String,
    },
}

impl Default for Rootfs {
    fn default() -> Self {
        Rootfs::Dir {
            path: PathBuf::from("/"),
        }
    }
}

/// A process to run: the container's main process or an exec.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ProcessSpec {
    /// argv; `args[0]` is looked up in the container's `PATH` when it has no `/`.
    pub args: Vec<String>,
    /// `KEY=VALUE`. `PATH` and `HOME` are added when missing (Docker's defaults).
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory inside the container; created if missing. Empty = `/`.
    #[serde(default)]
    pub cwd: String,
    /// Docker's `user[:group]`, names or numbers, resolved against the container's /etc/passwd and
    /// /etc/group. Empty = root.
    #[serde(default)]
    pub user: String,
    /// `--group-add`: extra groups (names or numbers).
    #[serde(default)]
    pub additional_groups: Vec<String>,
    #[serde(default)]
    pub tty: bool,
    /// Keep a stdin pipe open (Docker `OpenStdin` / exec `AttachStdin`); otherwise stdin is /dev/null.
    #[serde(default)]
    pub open_stdin: bool,
    /// Initial tty size `(rows, cols)`.
    #[serde(default)]
    pub console_size: Option<(u16, u16)>,
}

/// An extra process in a running container ([`Request::Exec`](crate::Request::Exec)).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ExecSpec {
    pub process: ProcessSpec,
    /// Docker `exec --privileged`: all capabilities, no seccomp.
    #[serde(default)]
    pub privileged: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MountKind {
    /// Bind mount of a host (or guest) path; recursive.
    Bind { source: PathBuf },
    /// A fresh tmpfs; `options` like `size=64m,mode=1777`.
    Tmpfs {
        #[serde(default)]
        options: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Mount {
    pub kind: MountKind,
    /// Absolute path inside the container (symlinks are resolved inside the rootfs).
    pub destination: String,
    #[serde(default)]
    pub readonly: bool,
    /// A bind's propagation (`rprivate`, `private`, `rslave`, `slave`, `rshared`,
    /// `shared`); empty = `rprivate`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub propagation: String,
    /// A named volume of the `local` driver: in a user namespace, its directory, while
    /// still owned by 0:0 as it was made, is given to the container's root (dockerd makes
    /// volumes owned by the remapped root).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub volume: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum NetworkSpec {
    /// A new network namespace with only `lo` (up). Docker's `none`, and the base for others.
    #[default]
    Isolated,
    /// Join an existing network namespace (e.g. `/run/berth/netns/<id>` prepared by the host).
    Join { path: PathBuf },
    /// Share the agent's network namespace (Docker `--network host`).
    Host,
}

/// Docker's security options.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SecuritySpec {
    /// `--privileged`: all capabilities, no seccomp, no masked paths, rw /sys.
    #[serde(default)]
    pub privileged: bool,
    /// `--cap-add` (names with or without `CAP_`, or `ALL`).
    #[serde(default)]
    pub cap_add: Vec<String>,
    /// `--cap-drop` (names or `ALL`).
    #[serde(default)]
    pub cap_drop: Vec<String>,
    #[serde(default)]
    pub seccomp: SeccompMode,
    /// `--security-opt no-new-privileges`.
    #[serde(default)]
    pub no_new_privileges: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SeccompMode {
    /// The agent's equivalent of Docker's default profile (see the agent's `seccomp.rs`).
    #[default]
    Default,
    /// `--security-opt seccomp=unconfined`.
    Unconfined,
    /// `--security-opt seccomp=<profile.json>`: a Docker profile the host decoded and checked.
    /// Serialized as `{"profile": {...}}`, so the unit variants above keep their old form.
    Profile(SeccompProfile),
}

/// A Docker seccomp profile, resolved by the host as far as it can: rules for other
/// architectures are dropped and `name`/`names` merged. What depends on where the process
/// runs (its capabilities, the kernel version) is left for the agent.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SeccompProfile {
    pub default_action: SeccompAction,
    /// In profile order; the first rule that matches a call decides.
    #[serde(default)]
    pub rules: Vec<SeccompRule>,
}

/// What the filter does with a call. `errno`/`trace` carry the value returned to the caller
/// (the tracer's message for `trace`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SeccompAction {
    #[default]
    Allow,
    Errno(u16),
    /// Docker's `SCMP_ACT_KILL`, like `SCMP_ACT_KILL_THREAD`.
    KillThread,
    KillProcess,
    Trap,
    Trace(u16),
    Log,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SeccompRule {
    /// Syscall names; names the agent's table does not know are skipped, as libseccomp does.
    pub names: Vec<String>,
    pub action: SeccompAction,
    /// All must hold.
    #[serde(default)]
    pub args: Vec<SeccompArg>,
    /// Applies only if the process has all these capabilities (`CAP_` names).
    #[serde(default)]
    pub include_caps: Vec<String>,
    /// Skipped if the process has any of these capabilities.
    #[serde(default)]
    pub exclude_caps: Vec<String>,
    /// Applies only on kernels at least this `(major, minor)`.
    #[serde(default)]
    pub include_min_kernel: Option<(u32, u32)>,
    /// Skipped on kernels at least this `(major, minor)`.
    #[serde(default)]
    pub exclude_min_kernel: Option<(u32, u32)>,
}

/// One argument comparison (`SCMP_CMP_*`), on the full 64-bit value.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SeccompArg {
    /// 0..=5.
    pub index: u8,
    pub value: u64,
    /// Only for `masked_eq`: `(arg & value) == value_two`.
    #[serde(default)]
    pub value_two: u64,
    pub op: SeccompOp,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SeccompOp {
    Ne,
    Lt,
    Le,
    #[default]
    Eq,
    Ge,
    Gt,
    MaskedEq,
}

/// `--cgroupns`: Docker's default is `private` on cgroup v2 hosts and `host` on v1; the
/// host decides and sends it explicitly. Older hosts send nothing: `host`, as before.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CgroupNamespace {
    /// Stay in the agent's cgroup namespace.
    #[default]
    Host,
    /// A cgroup namespace rooted at the container's own cgroup.
    Private,
}

/// cgroup limits, in Docker's units. `None` = unlimited / not set.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Resources {
    /// `--memory`, bytes.
    #[serde(default)]
    pub memory: Option<i64>,
    /// `--memory-swap`, bytes of memory+swap; -1 = unlimited. The host applies Docker's default
    /// (2x memory) when the user gave only `--memory`.
    #[serde(default)]
    pub memory_swap: Option<i64>,
    /// `--memory-reservation`, bytes.
    #[serde(default)]
    pub memory_reservation: Option<i64>,
    /// `--cpus` as NanoCPUs (1e9 = one CPU); converted to quota/period 100ms.
    #[serde(default)]
    pub nano_cpus: Option<i64>,
    /// `--cpu-quota` / `--cpu-period`, microseconds.
    #[serde(default)]
    pub cpu_quota: Option<i64>,
    #[serde(default)]
    pub cpu_period: Option<u64>,
    /// `--cpu-shares` (v1 shares; mapped to cpu.weight on v2).
    #[serde(default)]
    pub cpu_shares: Option<u64>,
    /// `--cpuset-cpus`, `--cpuset-mems`.
    #[serde(default)]
    pub cpuset_cpus: Option<String>,
    #[serde(default)]
    pub cpuset_mems: Option<String>,
    /// `--pids-limit`; <= 0 = unlimited.
    #[serde(default)]
    pub pids_limit: Option<i64>,
    /// `--oom-kill-disable`.
    #[serde(default)]
    pub oom_kill_disable: bool,
    /// `--blkio-weight` (10-1000): `blkio.bfq.weight`/`blkio.weight` (v1), `io.bfq.weight`/
    /// `io.weight` (v2). Skipped where the kernel has neither; the host warns about that.
    #[serde(default)]
    pub blkio_weight: Option<u16>,
}
