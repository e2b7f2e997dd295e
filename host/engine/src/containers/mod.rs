//! Containers: records on disk, lifecycle verbs, stdio fan-out and execs.
//!
//! Every container is served by its own `berth-agent` (in process isolation a detached
//! process on the host; in microVM isolation PID 1 of the guest). The engine talks to
//! it over the versioned agent protocol; one agent lives for one run of the container.

pub mod archive;
mod archive_guest;
mod changes;
mod commit;
mod control;
mod create;
mod exec;
pub mod health;
mod lifecycle;
mod links;
mod network;
mod persist;
mod propagation;
pub mod record;
mod removal;
mod shared_ns;
mod spec;
pub mod stdio;
mod update;
mod userns;
// Create-time checks are their own crate (fuzzed without the engine).
pub use berth_container_create::validate;
mod vm_network;
mod volumes;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use berth_agent_protocol::client::AgentClient;
use tokio::sync::watch;

pub use commit::CommitOptions;
pub use control::{signal_number, WaitCondition};
pub use create::CreateRequest;
pub use exec::{ExecConfig, ExecInstance, ExecStartOpts, ExecStarted, ExecState};
pub use record::{ContainerDirs, ContainerRecord, Isolation, MountRecord, Status};
pub use stdio::{AttachOpts, Attachment};

use crate::events::EventBus;
use crate::images::ImageStore;
use crate::isolation::{IsolationBackend, IsolationBackends};
use crate::logs::{LogDrivers, LogInfo};
use crate::{Error, Result};

/// What waiters see when a run ends.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExitNotice {
    /// Increments on every exit (and on removal), so `next-exit` can wait for a change.
    pub seq: u64,
    pub code: i64,
    pub error: Option<String>,
}

/// One container in memory: its record plus the live handles of its current run.
pub struct Container {
    pub id: String,
    rec: Mutex<ContainerRecord>,
    /// Exits (and removal) for `wait`.
    exits: watch::Sender<ExitNotice>,
    removed: watch::Sender<bool>,
    /// True while the main process runs (logs -f ends when it turns false).
    running: watch::Sender<bool>,
    /// The agent of the current run.
    agent: Mutex<Option<AgentClient>>,
    /// Serializes lifecycle transitions (start/stop/remove/restart).
    op: Arc<tokio::sync::Mutex<()>>,
    pub(crate) attachers: stdio::Attachers,
    /// `docker stop`/`rm` cancelled any restart policy for the current run.
    stop_requested: Mutex<bool>,
    /// Restart backoff in ms (in memory, like dockerd's restart manager).
    backoff: Mutex<u64>,
    /// Where to save the run's changes as a layer tar before its sandbox goes (the
    /// builder's RUN steps in a microVM: saves booting the VM again to commit).
    changes_at_exit: Mutex<Option<PathBuf>>,
    /// Serialises writes of the record file (see [`Container::persist`]); `false`
    /// once removal deletes the container's directory, so that a late save (an exit
    /// handled after `rm` gave up waiting for it) does not bring the directory back.
    on_disk: Mutex<bool>,
}

impl Container {
    fn new(rec: ContainerRecord) -> Arc<Container> {
        let running = rec.state.status.is_running();
        Arc::new(Container {
            id: rec.id.clone(),
            rec: Mutex::new(rec),
            exits: watch::channel(ExitNotice::default()).0,
            removed: watch::channel(false).0,
            running: watch::channel(running).0,
            agent: Mutex::new(None),
            op: Arc::new(tokio::sync::Mutex::new(())),
            attachers: Default::default(),
            stop_requested: Mutex::new(false),
            backoff: Mutex::new(0),
            changes_at_exit: Mutex::new(None),
            on_disk: Mutex::new(true),
        })
    }

    /// A snapshot of the record.
    pub fn record(&self) -> ContainerRecord {
        self.rec.lock().unwrap().clone()
    }

    pub fn status(&self) -> Status {
        self.rec.lock().unwrap().state.status
    }

    pub fn name(&self) -> String {
        self.rec.lock().unwrap().name.clone()
    }

    fn update<R>(&self, f: impl FnOnce(&mut ContainerRecord) -> R) -> R {
        let mut r = self.rec.lock().unwrap();
        r.generation += 1;
        f(&mut r)
    }

    pub(crate) fn agent(&self) -> Option<AgentClient> {
        self.agent.lock().unwrap().clone()
    }

    /// Docker's 409 for verbs that need a running container.
    pub(crate) fn not_running(&self) -> Error {
        Error::conflict(format!("Container {} is not running", self.id))
    }

    /// The agent of the current run, or the "not running" conflict.
    pub(crate) fn live_agent(&self) -> Result<AgentClient> {
        self.agent().ok_or_else(|| self.not_running())
    }

    pub fn running_watch(&self) -> watch::Receiver<bool> {
        self.running.subscribe()
    }

    /// `true` until the container has started and stopped again (for followers that
    /// arrive before the first start).
    fn first_run_watch(&self) -> watch::Receiver<bool> {
        let mut running = self.running.subscribe();
        let (tx, rx) = watch::channel(true);
        tokio::spawn(async move {
            let run_ends = async {
                if running.wait_for(|r| *r).await.is_ok() {
                    let _ = running.wait_for(|r| !*r).await;
                }
            };
            tokio::select! {
                _ = tx.closed() => {}
                _ = run_ends => {
                    let _ = tx.send(false);
                }
            }
        });
        rx
    }
}

/// Where things live and which binaries to use.
#[derive(Debug, Clone)]
pub struct ContainerPaths {
    pub data_root: PathBuf,
    pub exec_root: PathBuf,
    /// The static `berth-agent` binary.
    pub agent_bin: PathBuf,
    /// `--storage-driver`: `overlay` or `copy`; probed when unset.
    pub storage_driver: Option<String>,
    /// `--default-isolation`: `process` (when unset) or `microvm`.
    pub default_isolation: Option<String>,
    /// `--vmm`, `--guest-kernel`.
    pub microvm: crate::isolation::microvm::MicrovmConfig,
    /// `--userns-remap`: process-isolated containers run in a user namespace with these
    /// maps unless they ask for `--userns host`.
    pub userns: Option<crate::userns::Remap>,
}

pub struct Containers {
    pub(crate) paths: ContainerPaths,
    map: RwLock<HashMap<String, Arc<Container>>>,
    pub(crate) execs: Mutex<HashMap<String, Arc<ExecInstance>>>,
    pub(crate) events: Arc<EventBus>,
    pub(crate) images: Arc<ImageStore>,
    pub(crate) log_drivers: RwLock<LogDrivers>,
    pub default_log_driver: RwLock<String>,
    /// `overlay` when the kernel can mount overlayfs on the data root, else `copy`.
    pub storage_driver: &'static str,
    /// Process and microVM isolation, and the daemon's default.
    pub isolation: IsolationBackends,
    pub(crate) volumes: std::sync::OnceLock<Arc<crate::volumes::Volumes>>,
    /// Set when the daemon shuts down: every output pump drains into its log and ends.
    pub(crate) shutting_down: watch::Sender<bool>,
    /// Output pumps still running (see [`Containers::shutdown`]).
    pub(crate) active_pumps: watch::Sender<usize>,
    pub(crate) networks: std::sync::OnceLock<Arc<crate::networks::Networks>>,
}

impl Containers {
    pub(crate) fn open(
        paths: ContainerPaths,
        events: Arc<EventBus>,
        images: Arc<ImageStore>,
    ) -> Result<Arc<Containers>> {
        let dir = paths.data_root.join("containers");
        std::fs::create_dir_all(&dir)?;
        std::fs::create_dir_all(paths.exec_root.join("c"))?;
        let storage_driver =
            match paths.storage_driver.as_deref() {
                Some("copy") => "copy",
                Some("overlay") | None
                    if crate::isolation::process::overlay_supported(&paths.data_root) =>
                {
                    "overlay"
                }
                Some("overlay") => return Err(Error::invalid(
                    "storage driver overlay is not supported on this host (overlayfs mount failed)",
                )),
                None => "copy",
                Some(other) => {
                    return Err(Error::invalid(format!(
                        "unknown storage driver {other:?}: use overlay or copy"
                    )))
                }
            };
        if paths.userns.is_some() && storage_driver != "overlay" {
            // The copy driver's flattened rootfs would need a chown of every file per
            // container; the overlay driver maps shared layers for free (idmapped mounts).
            return Err(Error::invalid(format!(
                "--userns-remap needs the overlay storage driver (this daemon uses {storage_driver})"
            )));
        }
        let isolation = Self::open_isolation(&paths, &images, &events, storage_driver)?;
        let mut map = HashMap::new();
        for entry in std::fs::read_dir(&dir)?.flatten() {
            let p = entry.path().join("container.json");
            crate::fsutil::clean_temp_files(&entry.path());
            if entry.path().is_dir() && !p.exists() {
                // A create that was killed before its record was written (the record
                // is written atomically, so no record means it never existed for any
                // client): finish it by removing what it left.
                tracing::info!(dir = %entry.path().display(), "removing an unfinished container create");
                if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                    tracing::warn!(dir = %entry.path().display(), "cannot remove unfinished create: {e}");
                }
                continue;
            }
            match std::fs::read(&p)
                .map_err(anyhow::Error::from)
                .and_then(|b| {
                    serde_json::from_slice::<ContainerRecord>(&b).map_err(anyhow::Error::from)
                }) {
                Ok(rec) => {
                    map.insert(rec.id.clone(), Container::new(rec));
                }
                Err(e) => {
                    tracing::warn!(path = %p.display(), "skipping unreadable container record: {e:#}");
                }
            }
        }
        tracing::info!(count = map.len(), storage_driver, "containers loaded");
        Ok(Arc::new(Containers {
            paths,
            map: RwLock::new(map),
            execs: Mutex::new(HashMap::new()),
            events,
            images,
            log_drivers: RwLock::new(LogDrivers::builtin()),
            default_log_driver: RwLock::new("json-file".into()),
            shutting_down: watch::channel(false).0,
            active_pumps: watch::channel(0).0,
            storage_driver,
            isolation,
            volumes: std::sync::OnceLock::new(),
            networks: std::sync::OnceLock::new(),
        }))
    }

    /// Docker's lookup: full id, exact name (with or without `/`), then unique id prefix.
    pub fn get(&self, name_or_id: &str) -> Result<Arc<Container>> {
        let key = name_or_id.strip_prefix('/').unwrap_or(name_or_id);
        let map = self.map.read().unwrap();
        if let Some(c) = map.get(key) {
            return Ok(c.clone());
        }
        if let Some(c) = map.values().find(|c| c.name() == key) {
            return Ok(c.clone());
        }
        if !key.is_empty() && key.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut hits = map.values().filter(|c| c.id.starts_with(key));
            if let Some(c) = hits.next() {
                if hits.next().is_some() {
                    return Err(Error::invalid(format!(
                        "multiple IDs found with provided prefix: {key}"
                    )));
                }
                return Ok(c.clone());
            }
        }
        Err(Error::not_found(format!("No such container: {name_or_id}")))
    }

    pub fn all(&self) -> Vec<Arc<Container>> {
        self.map.read().unwrap().values().cloned().collect()
    }

    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let all = self.all();
        let running = all.iter().filter(|c| c.status() == Status::Running).count();
        let paused = all.iter().filter(|c| c.status() == Status::Paused).count();
        (all.len(), running, paused, all.len() - running - paused)
    }

    /// Whether any container uses the image (for `rmi`).
    pub fn image_in_use(&self, image_id: &str) -> bool {
        self.map
            .read()
            .unwrap()
            .values()
            .any(|c| c.rec.lock().unwrap().image_id == image_id)
    }

    /// Running containers logging through one of `drivers` (a plugin in use).
    pub fn log_driver_users(&self, drivers: &[String]) -> Vec<String> {
        self.map
            .read()
            .unwrap()
            .values()
            .filter(|c| c.status().is_running())
            .filter(|c| drivers.contains(&c.rec.lock().unwrap().log_driver))
            .map(|c| c.id.chars().take(12).collect())
            .collect()
    }

    fn dirs(&self) -> ContainerDirs {
        ContainerDirs {
            data_root: self.paths.data_root.clone(),
            exec_root: self.paths.exec_root.clone(),
        }
    }

    pub(crate) fn container_dir(&self, id: &str) -> PathBuf {
        self.dirs().container_dir(id)
    }

    pub(crate) fn run_dir(&self, id: &str) -> PathBuf {
        self.dirs().run_dir(id)
    }

    /// The rootfs the agent should assemble for this container.
    pub(crate) fn rootfs_for(&self, rec: &ContainerRecord) -> Result<berth_agent_protocol::Rootfs> {
        self.backend(rec).rootfs(rec)
    }

    /// For a container whose files the host cannot reach: have the next run's changes
    /// saved as a layer tar while its sandbox is still up, and return where. The file is
    /// there (complete) once the exit is reported, unless saving failed.
    pub fn save_changes_at_exit(&self, c: &Arc<Container>) -> Option<PathBuf> {
        if self.backend(&c.record()).capabilities().host_file_access {
            return None;
        }
        let path = self.container_dir(&c.id).join("changes-at-exit.tar");
        *c.changes_at_exit.lock().unwrap() = Some(path.clone());
        Some(path)
    }

    /// The container's files as a tar from its isolation backend (microVMs: from the
    /// guest agent). A stopped container's op lock is held until the export is over, so
    /// it cannot start on disks that a VM booted for the export still has open.
    pub(crate) async fn backend_files(
        &self,
        c: &Arc<Container>,
        what: crate::isolation::files::FilesExport,
    ) -> Result<crate::isolation::files::FilesStream> {
        let hold: crate::isolation::files::Hold = match self.stopped_guard(c).await? {
            Some(guard) => Box::new(guard),
            None => Box::new(()),
        };
        self.backend(&c.record())
            .export_files(&c.record(), what, hold)
            .await
    }

    /// For a container that is not running: its op lock, held while its files are read
    /// (it cannot start on the disks a short-lived VM still has open). `None` for a
    /// running one.
    pub(crate) async fn stopped_guard(
        &self,
        c: &Arc<Container>,
    ) -> Result<Option<tokio::sync::OwnedMutexGuard<()>>> {
        if c.status().is_running() {
            return Ok(None);
        }
        let guard = c.op.clone().lock_owned().await;
        match c.status() {
            s if s.is_running() => Ok(None),
            Status::Removing | Status::Dead => Err(Error::conflict(format!(
                "container {} is marked for removal",
                c.id
            ))),
            _ => Ok(Some(guard)),
        }
    }

    /// Daemon shutdown: every pump writes what it holds (a line not yet ended included)
    /// to its log driver and closes the log session; then every record is saved. Running
    /// containers keep running; the next daemon re-adopts them and their output.
    pub async fn shutdown(&self) {
        let _ = self.shutting_down.send_replace(true);
        let mut pumps = self.active_pumps.subscribe();
        let drained = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            pumps.wait_for(|n| *n == 0),
        )
        .await
        .is_ok();
        if !drained {
            let left = *pumps.borrow();
            tracing::warn!(left, "log pumps still busy after 5 s at shutdown");
        }
        for c in self.all() {
            // A round trip after the pumps' last credits: once the agent answers, it has
            // read them, so it will not send that output again to the next daemon.
            if let Some(agent) = c.agent() {
                let _ =
                    tokio::time::timeout(std::time::Duration::from_secs(1), agent.state()).await;
            }
            if let Err(e) = self.save(&c) {
                tracing::warn!(id = %c.id, "saving the record at shutdown: {e}");
            }
        }
    }

    /// Each isolation mode for `docker info`: name, why unavailable (if so), description.
    pub fn isolation_info(&self) -> Vec<(&'static str, Option<String>, String)> {
        self.isolation
            .all()
            .iter()
            .map(|b| (b.mode().as_str(), b.unavailable_reason(), b.describe()))
            .collect()
    }

    /// Isolation backend details for `docker inspect`.
    pub fn isolation_details(&self, rec: &ContainerRecord) -> Option<serde_json::Value> {
        self.backend(rec).inspect(rec)
    }

    /// The isolation backend serving `rec`.
    pub(crate) fn backend(&self, rec: &ContainerRecord) -> &Arc<dyn IsolationBackend> {
        self.isolation.get(rec.isolation)
    }

    /// Build the process and microVM backends and check the default is usable.
    fn open_isolation(
        paths: &ContainerPaths,
        images: &Arc<ImageStore>,
        events: &EventBus,
        storage_driver: &'static str,
    ) -> Result<IsolationBackends> {
        let dirs = ContainerDirs {
            data_root: paths.data_root.clone(),
            exec_root: paths.exec_root.clone(),
        };
        let process = crate::isolation::process::ProcessIsolation::new(
            dirs.clone(),
            paths.agent_bin.clone(),
            images.clone(),
            storage_driver,
        );
        let microvm = Arc::new(crate::isolation::microvm::MicrovmIsolation::new(
            dirs,
            paths.agent_bin.clone(),
            images.clone(),
            &paths.microvm,
        )?);
        microvm.collect_unused_image_disks(events);
        // Process isolation stays the default unless asked: it needs nothing beyond the
        // host kernel, while a microVM needs a guest kernel and (here) software emulation.
        let default = match paths.default_isolation.as_deref() {
            None | Some("") | Some("process") => Isolation::Process,
            Some("microvm") => Isolation::Microvm,
            Some(other) => {
                return Err(Error::invalid(format!(
                    "unknown --default-isolation {other:?}: use process or microvm"
                )))
            }
        };
        let backends = IsolationBackends::new(Arc::new(process), microvm, default)?;
        for b in backends.all() {
            tracing::info!(mode = b.mode().as_str(), "isolation {}", b.describe());
        }
        tracing::info!(default = default.as_str(), "default isolation");
        Ok(backends)
    }

    /// Persist the record atomically. Callers need not hold `c.op`: saves of one
    /// container are serialised by [`Container::persist`].
    pub(crate) fn save(&self, c: &Container) -> Result<()> {
        c.persist(&self.container_dir(&c.id).join("container.json"))
    }

    pub fn register_log_driver(&self, driver: Arc<dyn crate::logs::LogDriver>) {
        self.log_drivers.write().unwrap().register(driver);
    }

    pub fn log_driver_names(&self) -> Vec<String> {
        self.log_drivers.read().unwrap().names()
    }

    pub(crate) fn log_info(&self, rec: &ContainerRecord) -> LogInfo {
        LogInfo {
            container_id: rec.id.clone(),
            container_name: rec.name.clone(),
            image_id: rec.image_id.clone(),
            image_name: rec.image_ref.clone(),
            labels: rec.config.labels.clone().unwrap_or_default(),
            opts: rec.log_opts.clone(),
            dir: self.container_dir(&rec.id),
        }
    }

    /// Read a container's logs through its driver.
    pub fn logs(
        &self,
        c: &Container,
        mut opts: crate::logs::ReadOpts,
    ) -> Result<tokio::sync::mpsc::Receiver<crate::logs::LogEntry>> {
        let rec = c.record();
        let driver = self.log_drivers.read().unwrap().get(&rec.log_driver)?;
        if opts.follow.is_some() {
            // Docker follows a created container through its first run.
            opts.follow = Some(if rec.state.status == Status::Created {
                c.first_run_watch()
            } else {
                c.running_watch()
            });
        }
        driver.read(&self.log_info(&rec), opts)
    }

    fn remove_from_map(&self, id: &str) {
        self.map.write().unwrap().remove(id);
    }

    pub fn publish(&self, c: &ContainerRecord, action: &str, extra: &[(&str, String)]) {
        let mut attrs: Vec<(String, String)> = vec![
            ("image".into(), c.image_ref.clone()),
            ("name".into(), c.name.clone()),
        ];
        if let Some(labels) = &c.config.labels {
            for (k, v) in labels {
                attrs.push((k.clone(), v.clone()));
            }
        }
        for (k, v) in extra {
            attrs.push((k.to_string(), v.clone()));
        }
        self.events.publish("container", action, &c.id, attrs);
    }
}

/// 64 random hex digits, as Docker's ids.
pub use crate::fsutil::new_id;
pub use crate::isolation::default_agent_bin as runtime_default_agent_bin;

impl Containers {
    pub fn paths_agent_bin(&self) -> String {
        self.paths.agent_bin.display().to_string()
    }

    /// Bytes in the container's writable layer (`SizeRw`).
    pub fn container_rw_size(&self, id: &str) -> u64 {
        let dir = self.container_dir(id);
        crate::fsutil::dir_size(&dir.join("upper")) + crate::fsutil::dir_size(&dir.join("rootfs"))
    }
}
