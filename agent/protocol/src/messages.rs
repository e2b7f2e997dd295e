//! Control messages (JSON payloads of `Hello`, `Request`, `Response`, `Event` frames).
use serde::{Deserialize, Serialize};

use crate::spec::{ContainerSpec, ExecSpec, Resources};

/// Handle of a process inside one agent. [`ProcessId::INIT`] is the container's main process;
/// execs get ids from 1 up, never reused within an agent's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ProcessId(pub u32);

impl ProcessId {
    pub const INIT: ProcessId = ProcessId(0);
}

impl std::fmt::Display for ProcessId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Identifies this protocol on the wire.
pub const MAGIC: &str = "berth-agent";

/// First frame from the client.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Hello {
    pub magic: String,
    pub version: u32,
    /// Free text for the agent's log (e.g. `berthd 0.1.0`).
    #[serde(default)]
    pub client: String,
}

/// The agent's answer to [`Hello`]. On `Err` the agent closes the connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum HelloReply {
    Ok {
        version: u32,
        agent_version: String,
        /// The agent's pid (in its own pid namespace; in process mode the host pid).
        agent_pid: u32,
    },
    Err {
        version: u32,
        message: String,
    },
}

/// Client -> agent requests. Each gets exactly one `Response` frame with the same id; `Wait`'s
/// comes when the process exits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Register the container. Nothing runs until `Start { INIT }`. Once per agent.
    Create {
        spec: Box<ContainerSpec>,
    },
    /// Start a created/exited container (`INIT`: a new run, fresh namespaces) or a created exec.
    /// Replies once the process has exec'd; an exec failure replies `ExecFailed` (127/126).
    Start {
        process: ProcessId,
    },
    /// Register an exec in the running container; start it with `Start`.
    Exec {
        spec: Box<ExecSpec>,
    },
    /// Deliver output of `process` (its current run, or its next one when the current run's output
    /// was already delivered) as `Stdout`/`Stderr` frames, then `OutputEof`.
    /// Output produced before this is buffered (bounded) in the agent.
    Subscribe {
        process: ProcessId,
    },
    /// Close the process's stdin pipe (StdinOnce). A no-op for a tty.
    CloseStdin {
        process: ProcessId,
    },
    /// `kill(2)` the process (for `INIT` while paused with SIGKILL, the cgroup is thawed after).
    Signal {
        process: ProcessId,
        signal: i32,
    },
    Resize {
        process: ProcessId,
        rows: u16,
        cols: u16,
    },
    /// Replies `Exited` when the process's current run has exited (at once if it already has).
    Wait {
        process: ProcessId,
    },
    State,
    Stats,
    Top,
    Pause,
    Resume,
    /// `docker update`: apply these limits to the running container's cgroups. Only the `Some`
    /// fields change; `pids_limit <= 0` and `memory_swap == -1` lift the limit, unlike at create.
    /// The registered spec keeps its limits (the host starts every run with a fresh `Create`).
    /// Added in protocol 1 without a version bump: an older agent answers it with a decode error.
    Update {
        resources: Resources,
    },
    /// Kill everything, remove cgroups, reply, and exit the agent.
    Shutdown,
    /// Pods in one microVM: start another agent in this VM, serving one more container of
    /// the pod on vsock `port`; replies once it listens. Only the VM's first agent (PID 1)
    /// accepts it, and only for ports from [`crate::POD_MEMBER_PORTS`]. Added in protocol 1
    /// without a version bump: an older agent answers it with a decode error.
    StartPodMember {
        port: u32,
    },
    /// MicroVM guests (PID 1 only): configure the NIC with `nic.mac` (one of the spare NICs
    /// the VM booted with) and bring it up, for `docker network connect` on the running VM;
    /// `resolv_conf`, when set, replaces the container's /etc/resolv.conf in place.
    /// `version` is [`NIC_REQUESTS_VERSION`]: an agent that knows another version refuses
    /// the request, and an agent from before it answers with a decode error.
    ConfigureNic {
        version: u32,
        nic: NicConfig,
        #[serde(default)]
        resolv_conf: Option<String>,
    },
    /// MicroVM guests (PID 1 only): take the NIC with `mac` down, remove its address (and
    /// so its routes) and rename it `spare_name`, a spare again (`docker network
    /// disconnect`). Versioned as [`Request::ConfigureNic`].
    DeconfigureNic {
        version: u32,
        mac: String,
        spare_name: String,
    },
    /// MicroVM guests (PID 1 only): new contents for the container's `/etc/hosts`, which
    /// the host owns and the guest only holds (`network connect`/`disconnect` add or drop
    /// the container's own line; a linked container that restarted has a new address).
    /// Rewritten in place. Versioned as [`Request::ConfigureNic`].
    RewriteEtcHosts {
        version: u32,
        hosts: String,
    },
}

/// The version of [`Request::ConfigureNic`], [`Request::DeconfigureNic`] and
/// [`Request::RewriteEtcHosts`] (added in
/// protocol 1 without a version bump, so a running VM whose agent predates them keeps
/// being served).
pub const NIC_REQUESTS_VERSION: u32 = 1;

/// The version of a [`Request::ConfigureNic`] whose NIC has an IPv6 address
/// ([`NicConfig::address6`]). An agent from before IPv6 refuses it as an unknown
/// version instead of configuring the IPv4 half only; a NIC without IPv6 keeps
/// [`NIC_REQUESTS_VERSION`], so such an agent still serves IPv4 networks. Agents that
/// know this version accept both.
pub const NIC_REQUESTS_V6_VERSION: u32 = 2;

/// What a guest NIC must look like to carry one endpoint: the endpoint's MAC (the NIC is
/// found by it), name, address, default route and MTU.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NicConfig {
    pub mac: String,
    pub name: String,
    pub address: std::net::Ipv4Addr,
    pub prefix: u8,
    #[serde(default)]
    pub gateway: Option<std::net::Ipv4Addr>,
    pub mtu: u32,
    /// The IPv6 address and default route of an IPv6 network's endpoint (requests of
    /// [`NIC_REQUESTS_V6_VERSION`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address6: Option<std::net::Ipv6Addr>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub prefix6: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<std::net::Ipv6Addr>,
}

impl NicConfig {
    /// The request version this NIC needs (see [`NIC_REQUESTS_V6_VERSION`]).
    pub fn version(&self) -> u32 {
        if self.address6.is_some() {
            NIC_REQUESTS_V6_VERSION
        } else {
            NIC_REQUESTS_VERSION
        }
    }
}

fn is_zero(v: &u8) -> bool {
    *v == 0
}

/// Successful replies.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    Ok,
    /// `pid` is the process's pid as seen by the agent (host pid in process mode).
    Started {
        pid: u32,
    },
    ExecCreated {
        process: ProcessId,
    },
    Exited {
        status: ExitStatus,
    },
    State {
        state: AgentState,
    },
    Stats {
        stats: Stats,
    },
    Top {
        top: Top,
    },
}

/// Payload of a `Response` frame.
pub type Reply = Result<Response, RemoteError>;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    NotFound,
    /// Wrong state (not running, already created, paused, ...).
    Conflict,
    InvalidArgument,
    /// The process could not be executed; `exit_code` is 127 (not found) or 126 (not executable).
    ExecFailed,
    Internal,
}

/// An error reported by the agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct RemoteError {
    pub kind: ErrorKind,
    pub message: String,
    #[serde(default)]
    pub exit_code: Option<i32>,
}

impl RemoteError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        RemoteError {
            kind,
            message: message.into(),
            exit_code: None,
        }
    }
}

/// Unsolicited agent -> client messages.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A process run ended. Sent before that run's `OutputEof`.
    Exited {
        process: ProcessId,
        status: ExitStatus,
    },
    /// A memory cgroup OOM kill happened in the container.
    Oom,
}

/// How a process run ended.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExitStatus {
    /// Exit code; `128 + signal` when killed by a signal (so SIGKILL/OOM = 137).
    pub code: i32,
    /// The terminating signal, if any.
    #[serde(default)]
    pub signal: Option<i32>,
    /// The container's memory cgroup OOM-killed a process during this run.
    #[serde(default)]
    pub oom_killed: bool,
    /// Unix time in nanoseconds.
    #[serde(default)]
    pub started_at_ns: Option<u64>,
    pub finished_at_ns: u64,
    /// Why the process could not run (Docker's message), if it never exec'd.
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProcessStatus {
    Created,
    Running,
    Paused,
    Exited,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProcessState {
    pub process: ProcessId,
    pub status: ProcessStatus,
    /// Agent-visible pid while running (or the last pid).
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub started_at_ns: Option<u64>,
    /// Set once exited.
    #[serde(default)]
    pub exit: Option<ExitStatus>,
    pub tty: bool,
}

/// Everything a reconnecting host needs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AgentState {
    /// `None` before `Create`.
    pub container_id: Option<String>,
    pub paused: bool,
    /// INIT first, then execs by id.
    pub processes: Vec<ProcessState>,
}

impl AgentState {
    pub fn process(&self, id: ProcessId) -> Option<&ProcessState> {
        self.processes.iter().find(|p| p.process == id)
    }
}

/// Resource usage of the container's cgroup.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stats {
    pub read_at_ns: u64,
    pub memory_usage: u64,
    pub memory_max_usage: u64,
    /// `u64::MAX`-ish huge number when unlimited, as the kernel reports it.
    pub memory_limit: u64,
    /// Page cache (`memory.stat` cache / file).
    pub memory_cache: u64,
    pub cpu_usage_ns: u64,
    pub cpu_user_ns: u64,
    pub cpu_system_ns: u64,
    /// Total host (or guest) CPU time from /proc/stat, for Docker's `system_cpu_usage`.
    pub system_cpu_usage_ns: u64,
    pub online_cpus: u32,
    pub pids_current: u64,
    /// 0 = unlimited.
    pub pids_limit: u64,
}

/// `ps`-like process list (Docker's `ContainerTopOKBody`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Top {
    pub titles: Vec<String>,
    pub processes: Vec<Vec<String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The NIC requests' wire form: what an agent of the same `NIC_REQUESTS_VERSION`
    /// decodes, with the optional fields optional.
    #[test]
    fn nic_requests_round_trip() {
        let req = Request::ConfigureNic {
            version: NIC_REQUESTS_VERSION,
            nic: NicConfig {
                mac: "06:aa:bb:cc:dd:ee".into(),
                name: "eth1".into(),
                address: "10.1.2.3".parse().unwrap(),
                prefix: 24,
                gateway: Some("10.1.2.1".parse().unwrap()),
                mtu: 1500,
                address6: None,
                prefix6: 0,
                gateway6: None,
            },
            resolv_conf: None,
        };
        let json = serde_json::to_value(&req).unwrap();
        assert_eq!(json["op"], "configure_nic");
        assert_eq!(json["nic"]["address"], "10.1.2.3");
        // An IPv4-only NIC is what an agent from before IPv6 decodes, field for field.
        assert!(json["nic"].get("address6").is_none());
        let Request::ConfigureNic { nic, .. } = &req else {
            unreachable!()
        };
        assert_eq!(nic.version(), NIC_REQUESTS_VERSION);
        let mut six = nic.clone();
        six.address6 = Some("fd00:30::2".parse().unwrap());
        six.prefix6 = 64;
        assert_eq!(six.version(), NIC_REQUESTS_V6_VERSION);
        let back: NicConfig = serde_json::from_value(serde_json::to_value(&six).unwrap()).unwrap();
        assert_eq!(back, six);
        assert_eq!(serde_json::from_value::<Request>(json).unwrap(), req);
        let down: Request = serde_json::from_str(
            r#"{"op":"deconfigure_nic","version":1,"mac":"06:aa:bb:cc:dd:ee","spare_name":"spare2"}"#,
        )
        .unwrap();
        assert!(matches!(down, Request::DeconfigureNic { version: 1, .. }));
        let no_gw: NicConfig = serde_json::from_str(
            r#"{"mac":"06:aa:bb:cc:dd:ee","name":"eth1","address":"10.1.2.3","prefix":24,"mtu":1500}"#,
        )
        .unwrap();
        assert_eq!(no_gw.gateway, None);
    }
}
