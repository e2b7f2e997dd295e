//! The persisted form of a container: what `docker inspect` shows, and what survives
//! a daemon restart. Written atomically to `<data-root>/containers/<id>/container.json`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bollard_stubs::models::{ContainerConfig, HostConfig};
use serde::{Deserialize, Serialize};

/// Lifecycle states, with Docker's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[default]
    Created,
    Running,
    Paused,
    Restarting,
    Removing,
    Exited,
    Dead,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Restarting => "restarting",
            Status::Removing => "removing",
            Status::Exited => "exited",
            Status::Dead => "dead",
        }
    }

    /// Running in Docker's sense: the process exists (paused and restarting included
    /// where Docker's `Running` flag is true).
    pub fn is_running(self) -> bool {
        matches!(self, Status::Running | Status::Paused | Status::Restarting)
    }
}

/// How the container is isolated. Docker's `HostConfig.Isolation` picks it per
/// container; the daemon's default is probed at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// The agent runs on the host in fresh namespaces.
    #[default]
    Process,
    /// The agent runs as PID 1 of a KVM microVM.
    Microvm,
}

impl Isolation {
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Process => "process",
            Isolation::Microvm => "microvm",
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    pub status: Status,
    /// Host pid of the container's main process while it runs (0 otherwise).
    pub pid: u32,
    /// Host pid of the agent serving this container (process isolation).
    #[serde(default)]
    pub agent_pid: u32,
    pub exit_code: i64,
    pub error: String,
    pub oom_killed: bool,
    /// RFC 3339 with nanoseconds, Docker's zero time when never set.
    pub started_at: String,
    pub finished_at: String,
    /// The user stopped it (docker stop/kill): restart policies other than `always`
    /// don't bring it back, and `unless-stopped` stays down across daemon restarts.
    #[serde(default)]
    pub has_been_manually_stopped: bool,
    #[serde(default)]
    pub restart_count: i64,
    /// With a healthcheck: its state (see `health.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
}

/// `State.Health` as inspect shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Health {
    /// `starting`, `healthy` or `unhealthy`.
    pub status: String,
    pub failing_streak: u32,
    pub log: Vec<HealthResult>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HealthResult {
    /// RFC 3339 with nanoseconds.
    pub start: String,
    pub end: String,
    pub exit_code: i64,
    pub output: String,
}

pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

impl State {
    pub fn new() -> Self {
        State {
            started_at: ZERO_TIME.into(),
            finished_at: ZERO_TIME.into(),
            ..Default::default()
        }
    }
}

/// A mount as recorded for inspect (`Mounts`) and for re-creating it at start.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MountRecord {
    /// `bind`, `volume` or `tmpfs`.
    pub kind: String,
    /// Volume name for volumes.
    #[serde(default)]
    pub name: String,
    /// Host path (bind source, volume mountpoint), empty for tmpfs.
    pub source: String,
    pub destination: String,
    #[serde(default)]
    pub driver: String,
    pub rw: bool,
    #[serde(default)]
    pub options: String,
    /// An anonymous volume created for this container (removed with `rm -v`/`--rm`).
    #[serde(default)]
    pub anonymous: bool,
    /// Set at start for a volume whose driver answered with a disk image: `source` is then
    /// that image, attached to a microVM as a block device.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub block: bool,
    /// `--mount type=volume,volume-subpath=...`: only this directory of the volume.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subpath: String,
    /// A bind's propagation as asked (`rprivate` when not); empty for volumes and tmpfs.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub propagation: String,
}

/// An exec instance as inspect shows it. Execs live in memory only, as in dockerd.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    /// Without the leading slash.
    pub name: String,
    /// RFC 3339.
    pub created: String,
    /// The image reference as given (`Config.Image`).
    pub image_ref: String,
    /// `sha256:...` id of the image.
    pub image_id: String,
    /// The merged config (image defaults applied), as inspect shows it.
    pub config: ContainerConfig,
    pub host_config: HostConfig,
    pub isolation: Isolation,
    pub state: State,
    pub mounts: Vec<MountRecord>,
    /// Entrypoint + Cmd split as Docker reports `Path`/`Args`.
    pub path: String,
    pub args: Vec<String>,
    pub log_driver: String,
    #[serde(default)]
    pub log_opts: HashMap<String, String>,
    /// json-file log path (Docker's `LogPath`).
    #[serde(default)]
    pub log_path: String,
    /// The storage driver used for this container's rootfs (`overlay` or `copy`).
    pub storage: String,
    /// Bumped on every state change; waiters compare against it.
    #[serde(default)]
    pub generation: u64,
    /// The networks the container joins when it runs, the first one as `eth0` with the
    /// default route (`NetworkSettings.Networks`).
    #[serde(default)]
    pub networks: Vec<crate::networks::model::Attachment>,
}

impl ContainerRecord {
    pub fn dir(data_root: &Path, id: &str) -> PathBuf {
        data_root.join("containers").join(id)
    }

    pub fn short_id(&self) -> &str {
        &self.id[..12]
    }
}

/// Where a container's files live: persistent state under the data root, runtime state
/// (sockets) under the exec root.
#[derive(Debug, Clone)]
pub struct ContainerDirs {
    pub data_root: PathBuf,
    pub exec_root: PathBuf,
}

impl ContainerDirs {
    pub fn container_dir(&self, id: &str) -> PathBuf {
        ContainerRecord::dir(&self.data_root, id)
    }

    /// Runtime dir of a container (agent socket and log). Keyed by the first 16 hex
    /// digits so the agent's socket path stays under the 108-byte `sun_path` limit.
    pub fn run_dir(&self, id: &str) -> PathBuf {
        self.exec_root.join("c").join(&id[..16.min(id.len())])
    }
}
