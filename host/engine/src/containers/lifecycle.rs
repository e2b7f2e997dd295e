//! Starting a container, watching its run, exit handling, restart policies, and
//! re-adoption of running containers after a daemon restart (live restore).

use std::sync::Arc;
use std::time::Duration;

use berth_agent_protocol::client::AgentClient;
use berth_agent_protocol::{ErrorKind, ExitStatus, ProcessId, ProcessStatus, ProtocolError};
use bollard_stubs::models::RestartPolicyNameEnum;

use super::record::Status;
use super::{stdio, Container, Containers, ExitNotice};
use crate::isolation::files::{copy_complete_tar, FilesExport};
use crate::{Error, Result};

pub(super) fn agent_err(e: ProtocolError) -> Error {
    match e.remote() {
        Some(r) => match r.kind {
            ErrorKind::NotFound => Error::not_found(r.message.clone()),
            ErrorKind::Conflict => Error::conflict(r.message.clone()),
            ErrorKind::InvalidArgument | ErrorKind::ExecFailed => Error::invalid(r.message.clone()),
            ErrorKind::Internal => Error::internal(r.message.clone()),
        },
        None => Error::internal(format!("agent: {e}")),
    }
}

impl Containers {
    pub async fn start(self: &Arc<Self>, c: &Arc<Container>) -> Result<()> {
        let _g = c.op.lock().await;
        match c.status() {
            Status::Running | Status::Restarting => {
                return Err(Error::NotModified("container already started".into()))
            }
            Status::Paused => {
                return Err(Error::conflict(
                    "cannot start a paused container, try unpause instead",
                ))
            }
            Status::Removing | Status::Dead => {
                return Err(Error::conflict(format!(
                    "container {} is marked for removal and cannot be started",
                    c.id
                )))
            }
            Status::Created | Status::Exited => {}
        }
        c.update(|r| r.state.has_been_manually_stopped = false);
        *c.stop_requested.lock().unwrap() = false;
        let res = self.start_run(c).await;
        if let Err(e) = &res {
            // As dockerd: a failed start is recorded (State.Error, a non-zero ExitCode).
            let msg = e.to_string();
            c.update(|r| {
                if r.state.error.is_empty() {
                    r.state.error = msg.clone();
                }
                if r.state.exit_code == 0 {
                    r.state.exit_code = 128;
                }
            });
            let _ = self.save(c);
            if c.record().host_config.auto_remove.unwrap_or(false) {
                // dockerd removes an AutoRemove container whose start failed.
                let this = self.clone();
                let c2 = c.clone();
                let msg = e.to_string();
                tokio::spawn(async move {
                    let _ = this.remove_with(&c2, true, true, Some(msg)).await;
                });
            }
        }
        res
    }

    /// Spawn the agent, create, subscribe output, start. Caller holds the op lock.
    pub(super) async fn start_run(self: &Arc<Self>, c: &Arc<Container>) -> Result<()> {
        let rec = c.record();
        let mut rec_mounts = rec.clone();
        self.resolve_volume_mounts(&mut rec_mounts).await?;
        let res = self.start_with_mounts(c, &rec, &rec_mounts).await;
        if res.is_err() {
            self.unmount_volumes(&rec).await;
        }
        res
    }

    pub(super) async fn start_with_mounts(
        self: &Arc<Self>,
        c: &Arc<Container>,
        rec: &super::ContainerRecord,
        rec_mounts: &super::ContainerRecord,
    ) -> Result<()> {
        let mut spec = self.build_spec(rec_mounts)?;
        spec.join_namespaces = self.join_namespaces(rec)?;
        // Only a backend sharing the host's namespaces (process isolation) sees host mounts.
        super::propagation::check(rec, !self.backend(rec).capabilities().host_namespaces)?;
        // The network is ready before the agent exists: the container's process starts
        // in a configured namespace.
        let net = match self.network_sandbox(rec, &mut spec).await {
            Ok(n) => n,
            Err(e) => {
                // Whatever part of the sandbox was made (e.g. the /etc files failed).
                self.release_network(rec).await;
                return Err(e);
            }
        };
        // The backend sees the resolved mounts: a microVM attaches them as devices (and
        // its NICs, on the sandbox's TAPs).
        let sandbox = match self.backend(rec).start(rec_mounts, &net).await {
            Ok(s) => s,
            Err(e) => {
                self.release_network(rec).await;
                return Err(e);
            }
        };
        let (agent, agent_pid) = (sandbox.agent, sandbox.agent_pid);
        let backend = self.backend(rec).clone();
        let fail = |agent: AgentClient, e: Error| async move {
            let _ = agent.shutdown().await;
            backend.release(rec).await;
            self.release_network(rec).await;
            Err::<(), Error>(e)
        };
        if let Err(e) = agent.create(spec).await {
            return fail(agent, agent_err(e)).await;
        }
        let out = match agent.output(ProcessId::INIT).await {
            Ok(o) => o,
            Err(e) => return fail(agent, agent_err(e)).await,
        };
        let log = self
            .log_drivers
            .read()
            .unwrap()
            .get(&rec.log_driver)
            .and_then(|d| d.open(&self.log_info(rec)));
        let log = match log {
            Ok(l) => l,
            Err(e) => return fail(agent, e).await,
        };
        let pump = tokio::spawn(stdio::pump(
            c.clone(),
            out,
            log,
            self.shutting_down.subscribe(),
            self.active_pumps.clone(),
        ));
        let pid = match agent.start(ProcessId::INIT).await {
            Ok(pid) => pid,
            Err(e) => {
                let (code, msg) = match e.remote() {
                    Some(r) if r.kind == ErrorKind::ExecFailed => {
                        (r.exit_code.unwrap_or(127), r.message.clone())
                    }
                    _ => (128, e.to_string()),
                };
                let msg = format!(
                    "failed to create task for container: failed to start container process: {msg}: unknown"
                );
                c.update(|r| {
                    r.state.exit_code = code as i64;
                    r.state.error = msg.clone();
                });
                let _ = self.save(c);
                let _ = agent.shutdown().await;
                let _ = tokio::time::timeout(Duration::from_secs(2), pump).await;
                self.backend(rec).release(rec).await;
                self.release_network(rec).await;
                return Err(Error::invalid(msg));
            }
        };
        *c.agent.lock().unwrap() = Some(agent.clone());
        c.update(|r| {
            r.state.status = Status::Running;
            r.state.pid = sandbox.host_pid_override.unwrap_or(pid);
            r.state.agent_pid = agent_pid;
            r.state.exit_code = 0;
            r.state.error.clear();
            r.state.oom_killed = false;
            r.state.started_at = crate::fsutil::now_rfc3339();
        });
        let _ = c.running.send_replace(true);
        self.save(c)?;
        self.publish(&c.record(), "start", &[]);
        self.refresh_linkers(&c.record()).await;
        self.spawn_monitor(c.clone(), agent, Some(pump));
        self.spawn_health_monitor(c.clone(), true);
        Ok(())
    }

    /// Wait for the run to end and handle it.
    pub(super) fn spawn_monitor(
        self: &Arc<Self>,
        c: Arc<Container>,
        agent: AgentClient,
        pump: Option<tokio::task::JoinHandle<()>>,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            let status = agent.wait(ProcessId::INIT).await;
            let backend = this.backend(&c.record()).clone();
            let status = match status {
                Ok(s) => s,
                Err(e) => {
                    let why = match backend.failure_reason(&c.record()).await {
                        Some(why) => why,
                        None => format!("berth-agent exited unexpectedly: {e}"),
                    };
                    ExitStatus {
                        code: 255,
                        error: Some(why),
                        finished_at_ns: crate::logs::now_nanos() as u64,
                        ..Default::default()
                    }
                }
            };
            if let Some(p) = pump {
                // Drain the run's output into the logs before anyone is told it exited.
                let _ = tokio::time::timeout(Duration::from_secs(5), p).await;
            }
            let save_to = c.changes_at_exit.lock().unwrap().take();
            if let Some(path) = save_to {
                this.save_changes(&c, &path).await;
            }
            // The agent kills leftovers, releases cgroups and mounts, and exits.
            let _ = tokio::time::timeout(Duration::from_secs(10), agent.shutdown()).await;
            *c.agent.lock().unwrap() = None;
            let rec = c.record();
            this.unmount_volumes(&rec).await;
            backend.release(&rec).await;
            this.release_network(&rec).await;
            this.on_exit(&c, status).await;
        });
    }

    /// Reads the ended run's changes from its still-running sandbox into `path`; on
    /// failure removes `path`, so a commit reads them the slow way.
    async fn save_changes(&self, c: &Arc<Container>, path: &std::path::Path) {
        let res = async {
            let stream = self
                .backend(&c.record())
                .export_files(&c.record(), FilesExport::Changes, Box::new(()))
                .await?;
            let bridge = tokio_util::io::SyncIoBridge::new(stream);
            let path = path.to_path_buf();
            tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
                let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
                let n = copy_complete_tar(bridge, &mut f)?;
                f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
                Ok(n)
            })
            .await
            .map_err(Error::internal)?
            .map_err(Error::from)
        }
        .await;
        if let Err(e) = res {
            tracing::warn!(id = %c.id, "saving the run's changes at exit: {e}");
            let _ = std::fs::remove_file(path);
        }
    }

    pub(super) async fn on_exit(self: &Arc<Self>, c: &Arc<Container>, status: ExitStatus) {
        let code = status.code as i64;
        let removing = c.status() == Status::Removing;
        c.update(|r| {
            if !removing {
                r.state.status = Status::Exited;
            }
            r.state.pid = 0;
            r.state.agent_pid = 0;
            r.state.exit_code = code;
            r.state.oom_killed = status.oom_killed;
            r.state.error = status.error.clone().unwrap_or_default();
            r.state.finished_at = crate::fsutil::now_rfc3339();
        });
        let _ = c.running.send_replace(false);
        // Without `c.op`: stop/kill/restart/rm hold it while they wait for the exit
        // notice sent below. Saves serialise themselves (containers/persist.rs).
        let _ = self.save(c);
        let rec = c.record();
        if status.oom_killed {
            self.publish(&rec, "oom", &[]);
        }
        self.publish(&rec, "die", &[("exitCode", code.to_string())]);
        c.exits.send_modify(|n| {
            *n = ExitNotice {
                seq: n.seq + 1,
                code,
                error: status.error.clone(),
            };
        });
        if removing {
            return;
        }
        if self.should_restart(c) {
            self.schedule_restart(c.clone());
        } else if rec.host_config.auto_remove.unwrap_or(false) {
            let _ = self.remove_with(c, true, true, None).await;
        }
    }

    pub(super) fn should_restart(&self, c: &Container) -> bool {
        if *c.stop_requested.lock().unwrap() {
            return false;
        }
        let rec = c.record();
        let Some(rp) = rec.host_config.restart_policy.as_ref() else {
            return false;
        };
        match rp.name.unwrap_or(RestartPolicyNameEnum::EMPTY) {
            RestartPolicyNameEnum::ALWAYS => true,
            RestartPolicyNameEnum::UNLESS_STOPPED => !rec.state.has_been_manually_stopped,
            RestartPolicyNameEnum::ON_FAILURE => {
                let max = rp.maximum_retry_count.unwrap_or(0);
                rec.state.exit_code != 0 && (max == 0 || rec.state.restart_count < max)
            }
            _ => false,
        }
    }

    /// Restart with Docker's backoff: 100 ms doubling, reset after a run of 10 s.
    pub(super) fn schedule_restart(self: &Arc<Self>, c: Arc<Container>) {
        let ran_long = {
            let r = c.record();
            match (
                crate::fsutil::parse_rfc3339_utc(&r.state.started_at),
                crate::fsutil::parse_rfc3339_utc(&r.state.finished_at),
            ) {
                (Some(s), Some(f)) => f - s >= 10_000_000_000,
                _ => false,
            }
        };
        let backoff = {
            let mut b = c.backoff.lock().unwrap();
            *b = if ran_long || *b == 0 {
                100
            } else {
                (*b * 2).min(60_000)
            };
            *b
        };
        c.update(|r| {
            r.state.status = Status::Restarting;
            r.state.restart_count += 1;
        });
        let _ = self.save(&c);
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(backoff)).await;
            let _g = c.op.lock().await;
            if c.status() != Status::Restarting || *c.stop_requested.lock().unwrap() {
                return;
            }
            if let Err(e) = this.start_run(&c).await {
                tracing::warn!(id = %c.id, "restart failed: {e}");
                c.update(|r| {
                    r.state.status = Status::Exited;
                    r.state.error = e.to_string();
                });
                let _ = this.save(&c);
            }
        });
    }

    pub(super) async fn adopt(self: &Arc<Self>, c: &Arc<Container>, agent: AgentClient) -> bool {
        let Ok(state) = agent.state().await else {
            return false;
        };
        let Some(init) = state.process(ProcessId::INIT).cloned() else {
            return false;
        };
        match init.status {
            ProcessStatus::Running | ProcessStatus::Paused => {
                let Ok(out) = agent.output(ProcessId::INIT).await else {
                    return false;
                };
                let rec = c.record();
                let log = match self
                    .log_drivers
                    .read()
                    .unwrap()
                    .get(&rec.log_driver)
                    .and_then(|d| d.open(&self.log_info(&rec)))
                {
                    Ok(l) => l,
                    Err(_) => return false,
                };
                let pump = tokio::spawn(stdio::pump(
                    c.clone(),
                    out,
                    log,
                    self.shutting_down.subscribe(),
                    self.active_pumps.clone(),
                ));
                *c.agent.lock().unwrap() = Some(agent.clone());
                c.update(|r| {
                    r.state.status = if state.paused {
                        Status::Paused
                    } else {
                        Status::Running
                    };
                });
                let _ = c.running.send_replace(true);
                let _ = self.save(c);
                tracing::info!(id = %c.id, "re-adopted running container");
                self.spawn_monitor(c.clone(), agent, Some(pump));
                self.spawn_health_monitor(c.clone(), false);
                true
            }
            ProcessStatus::Exited => {
                let status = init.exit.clone().unwrap_or_default();
                let _ = agent.shutdown().await;
                let rec = c.record();
                self.backend(&rec).release(&rec).await;
                self.release_network(&rec).await;
                self.on_exit(c, status).await;
                true
            }
            ProcessStatus::Created => false,
        }
    }
}
