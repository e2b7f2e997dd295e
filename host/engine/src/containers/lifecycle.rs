//! Start, stop, kill, wait, pause, restart, remove, exit handling, restart policies
//! and re-adoption of running containers after a daemon restart (live restore).

use std::sync::Arc;
use std::time::Duration;

use berth_agent_protocol::client::AgentClient;
use berth_agent_protocol::{ErrorKind, ExitStatus, ProcessId, ProcessStatus, ProtocolError};
use bollard_stubs::models::RestartPolicyNameEnum;

use super::record::Status;
use super::{stdio, Container, Containers, ExitNotice};
use crate::{Error, Result};

/// Docker's wait conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitCondition {
    NotRunning,
    NextExit,
    Removed,
}

impl WaitCondition {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "" | "not-running" => Ok(WaitCondition::NotRunning),
            "next-exit" => Ok(WaitCondition::NextExit),
            "removed" => Ok(WaitCondition::Removed),
            other => Err(Error::invalid(format!("invalid condition: \"{other}\""))),
        }
    }
}

pub fn signal_number(s: &str) -> Result<i32> {
    let t = s.trim();
    if t.is_empty() {
        return Ok(libc::SIGKILL);
    }
    if let Ok(n) = t.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
        return Err(Error::invalid(format!("Invalid signal: {s}")));
    }
    let name = t.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    let n = match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "ILL" => libc::SIGILL,
        "TRAP" => libc::SIGTRAP,
        "ABRT" | "IOT" => libc::SIGABRT,
        "BUS" => libc::SIGBUS,
        "FPE" => libc::SIGFPE,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "SEGV" => libc::SIGSEGV,
        "USR2" => libc::SIGUSR2,
        "PIPE" => libc::SIGPIPE,
        "ALRM" => libc::SIGALRM,
        "TERM" => libc::SIGTERM,
        "STKFLT" => libc::SIGSTKFLT,
        "CHLD" => libc::SIGCHLD,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "TSTP" => libc::SIGTSTP,
        "TTIN" => libc::SIGTTIN,
        "TTOU" => libc::SIGTTOU,
        "URG" => libc::SIGURG,
        "XCPU" => libc::SIGXCPU,
        "XFSZ" => libc::SIGXFSZ,
        "VTALRM" => libc::SIGVTALRM,
        "PROF" => libc::SIGPROF,
        "WINCH" => libc::SIGWINCH,
        "IO" | "POLL" => libc::SIGIO,
        "PWR" => libc::SIGPWR,
        "SYS" => libc::SIGSYS,
        _ => return Err(Error::invalid(format!("Invalid signal: {s}"))),
    };
    Ok(n)
}

fn agent_err(e: ProtocolError) -> Error {
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
    async fn start_run(self: &Arc<Self>, c: &Arc<Container>) -> Result<()> {
        let rec = c.record();
        let mut rec_mounts = rec.clone();
        self.resolve_volume_mounts(&mut rec_mounts).await?;
        let res = self.start_with_mounts(c, &rec, &rec_mounts).await;
        if res.is_err() {
            self.unmount_volumes(&rec).await;
        }
        res
    }

    async fn start_with_mounts(
        self: &Arc<Self>,
        c: &Arc<Container>,
        rec: &super::ContainerRecord,
        rec_mounts: &super::ContainerRecord,
    ) -> Result<()> {
        let mut spec = self.build_spec(rec_mounts)?;
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
        self.spawn_monitor(c.clone(), agent, Some(pump));
        self.spawn_health_monitor(c.clone(), true);
        Ok(())
    }

    /// Wait for the run to end and handle it.
    fn spawn_monitor(
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

    async fn on_exit(self: &Arc<Self>, c: &Arc<Container>, status: ExitStatus) {
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

    fn should_restart(&self, c: &Container) -> bool {
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
    fn schedule_restart(self: &Arc<Self>, c: Arc<Container>) {
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

    fn wait_for_exit_after(
        c: &Container,
        seq0: u64,
    ) -> impl std::future::Future<Output = ()> + 'static {
        let mut rx = c.exits.subscribe();
        async move {
            let _ = rx.wait_for(|n| n.seq > seq0).await;
        }
    }

    /// `docker stop`: StopSignal, wait `timeout` (None = forever), then SIGKILL.
    pub async fn stop(
        self: &Arc<Self>,
        c: &Arc<Container>,
        signal: Option<&str>,
        timeout: Option<i64>,
    ) -> Result<()> {
        let _g = c.op.lock().await;
        *c.stop_requested.lock().unwrap() = true;
        match c.status() {
            Status::Created | Status::Exited | Status::Dead | Status::Removing => {
                return Err(Error::NotModified("container already stopped".into()))
            }
            Status::Restarting => {
                c.update(|r| {
                    r.state.status = Status::Exited;
                    r.state.has_been_manually_stopped = true;
                });
                let _ = c.running.send_replace(false);
                self.save(c)?;
                self.publish(&c.record(), "stop", &[]);
                return Ok(());
            }
            Status::Running | Status::Paused => {}
        }
        c.update(|r| r.state.has_been_manually_stopped = true);
        let _ = self.save(c);
        let rec = c.record();
        let sig = signal_number(
            signal
                .filter(|s| !s.is_empty())
                .or(rec.config.stop_signal.as_deref())
                .unwrap_or("SIGTERM"),
        )?;
        let timeout = timeout.or(rec.config.stop_timeout).unwrap_or(10);
        self.stop_locked(c, sig, timeout).await?;
        self.publish(&c.record(), "stop", &[]);
        Ok(())
    }

    async fn stop_locked(&self, c: &Arc<Container>, sig: i32, timeout: i64) -> Result<()> {
        let seq0 = c.exits.borrow().seq;
        let exited = Self::wait_for_exit_after(c, seq0);
        tokio::pin!(exited);
        let Some(agent) = c.agent() else {
            return Ok(());
        };
        self.publish(&c.record(), "kill", &[("signal", sig.to_string())]);
        if let Err(e) = agent.signal(ProcessId::INIT, sig).await {
            tracing::debug!(id = %c.id, "stop signal: {e}");
        }
        if sig != libc::SIGKILL {
            let waited = if timeout < 0 {
                (&mut exited).await;
                true
            } else {
                tokio::time::timeout(Duration::from_secs(timeout as u64), &mut exited)
                    .await
                    .is_ok()
            };
            if waited {
                return Ok(());
            }
            tracing::info!(id = %c.id, "container did not exit within {timeout}s of signal {sig}; killing");
            self.publish(
                &c.record(),
                "kill",
                &[("signal", libc::SIGKILL.to_string())],
            );
            let _ = agent.signal(ProcessId::INIT, libc::SIGKILL).await;
        }
        if tokio::time::timeout(Duration::from_secs(30), &mut exited)
            .await
            .is_err()
        {
            return Err(Error::internal(format!(
                "container {} did not exit after SIGKILL",
                c.id
            )));
        }
        Ok(())
    }

    /// `docker kill -s SIG`.
    pub async fn kill(&self, c: &Arc<Container>, signal: &str) -> Result<()> {
        let sig = signal_number(signal)?;
        if !matches!(c.status(), Status::Running | Status::Paused) {
            return Err(c.not_running());
        }
        let Some(agent) = c.agent() else {
            return Err(c.not_running());
        };
        c.update(|r| r.state.has_been_manually_stopped = true);
        let _ = self.save(c);
        let seq0 = c.exits.borrow().seq;
        let exited = Self::wait_for_exit_after(c, seq0);
        agent
            .signal(ProcessId::INIT, sig)
            .await
            .map_err(agent_err)?;
        self.publish(&c.record(), "kill", &[("signal", sig.to_string())]);
        if sig == libc::SIGKILL {
            let _ = tokio::time::timeout(Duration::from_secs(10), exited).await;
        }
        Ok(())
    }

    pub async fn restart(
        self: &Arc<Self>,
        c: &Arc<Container>,
        signal: Option<&str>,
        timeout: Option<i64>,
    ) -> Result<()> {
        match self.stop(c, signal, timeout).await {
            Ok(()) | Err(Error::NotModified(_)) => {}
            Err(e) => return Err(e),
        }
        // The exit handler may be about to auto-remove or restart; let it settle.
        match self.start(c).await {
            Ok(()) | Err(Error::NotModified(_)) => {}
            Err(e) => return Err(e),
        }
        self.publish(&c.record(), "restart", &[]);
        Ok(())
    }

    pub async fn pause(&self, c: &Arc<Container>) -> Result<()> {
        match c.status() {
            Status::Running => {}
            Status::Paused => {
                return Err(Error::conflict(format!(
                    "Container {} is already paused",
                    c.id
                )))
            }
            _ => return Err(c.not_running()),
        }
        let agent = c.live_agent()?;
        agent.pause().await.map_err(agent_err)?;
        c.update(|r| r.state.status = Status::Paused);
        self.save(c)?;
        self.publish(&c.record(), "pause", &[]);
        Ok(())
    }

    pub async fn unpause(&self, c: &Arc<Container>) -> Result<()> {
        if c.status() != Status::Paused {
            return Err(Error::conflict(format!("Container {} is not paused", c.id)));
        }
        let agent = c.live_agent()?;
        agent.resume().await.map_err(agent_err)?;
        c.update(|r| r.state.status = Status::Running);
        self.save(c)?;
        self.publish(&c.record(), "unpause", &[]);
        Ok(())
    }

    /// A future that resolves when `cond` is met. Subscribes before returning, so a
    /// caller may flush response headers and then await without missing the event.
    pub fn wait(
        &self,
        c: &Arc<Container>,
        cond: WaitCondition,
    ) -> impl std::future::Future<Output = ExitNotice> + Send + 'static {
        let mut exits = c.exits.subscribe();
        let mut removed = c.removed.subscribe();
        let seq0 = exits.borrow().seq;
        let running = c.status().is_running();
        let already_removed = *removed.borrow();
        let last = exits.borrow().clone();
        let rec_code = c.record().state.exit_code;
        async move {
            match cond {
                WaitCondition::NotRunning if !running => ExitNotice {
                    code: rec_code,
                    ..last
                },
                WaitCondition::Removed if already_removed => last,
                WaitCondition::Removed => {
                    let _ = removed.wait_for(|r| *r).await;
                    exits.borrow().clone()
                }
                _ => {
                    tokio::select! {
                        _ = exits.wait_for(|n| n.seq > seq0) => {}
                        _ = removed.wait_for(|r| *r) => {}
                    }
                    exits.borrow().clone()
                }
            }
        }
    }

    /// `docker rm [-f] [-v]`.
    pub async fn remove(
        self: &Arc<Self>,
        c: &Arc<Container>,
        force: bool,
        volumes: bool,
    ) -> Result<()> {
        self.remove_with(c, force, volumes, None).await
    }

    async fn remove_with(
        self: &Arc<Self>,
        c: &Arc<Container>,
        force: bool,
        volumes: bool,
        error: Option<String>,
    ) -> Result<()> {
        let _g = c.op.lock().await;
        if *c.removed.borrow() {
            return Ok(());
        }
        let name = c.name();
        match c.status() {
            Status::Running | Status::Paused | Status::Restarting if !force => {
                let what = if c.status() == Status::Paused {
                    "paused"
                } else {
                    "running"
                };
                return Err(Error::conflict(format!(
                    "cannot remove container \"/{name}\": container is {what}: stop the container before removing or force remove"
                )));
            }
            Status::Removing => {
                return Err(Error::conflict(format!(
                    "removal of container {} is already in progress",
                    c.id
                )))
            }
            _ => {}
        }
        *c.stop_requested.lock().unwrap() = true;
        if c.status().is_running() {
            let _ = self.stop_locked(c, libc::SIGKILL, 0).await;
        }
        c.update(|r| r.state.status = Status::Removing);
        if let Some(agent) = c.agent.lock().unwrap().take() {
            tokio::spawn(async move {
                let _ = agent.shutdown().await;
            });
        }
        let rec = c.record();
        // Whatever the run left on the host (VMM, helpers, cgroups, its network sandbox)
        // goes with the container.
        self.backend(&rec).release(&rec).await;
        self.release_network(&rec).await;
        if let Ok(d) = self.log_drivers.read().unwrap().get(&rec.log_driver) {
            d.remove(&self.log_info(&rec));
        }
        let dir = self.container_dir(&c.id);
        let run = self.run_dir(&c.id);
        let cleanup = tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_dir_all(&run);
            std::fs::remove_dir_all(&dir)
        })
        .await;
        if let Ok(Err(e)) = cleanup {
            if e.kind() != std::io::ErrorKind::NotFound {
                c.update(|r| r.state.status = Status::Dead);
                let _ = self.save(c);
                return Err(Error::internal(format!(
                    "unable to remove filesystem for {}: {e}",
                    c.id
                )));
            }
        }
        self.execs
            .lock()
            .unwrap()
            .retain(|_, e| e.container_id != c.id);
        self.remove_from_map(&c.id);
        if volumes {
            self.remove_anonymous_volumes(&rec).await;
        }
        self.publish(&rec, "destroy", &[]);
        c.exits.send_modify(|n| {
            n.seq += 1;
            if let Some(e) = &error {
                n.error = Some(e.clone());
            }
        });
        let _ = c.removed.send_replace(true);
        Ok(())
    }

    pub async fn rename(&self, c: &Arc<Container>, new_name: &str) -> Result<()> {
        let new_name = super::validate::validate_name(new_name)?;
        let old = c.name();
        if old == new_name {
            return Err(Error::invalid(
                "Renaming a container with the same name as its current name",
            ));
        }
        {
            let map = self.map.read().unwrap();
            if let Some(o) = map.values().find(|o| o.name() == new_name) {
                return Err(Error::conflict(format!(
                    "Conflict. The container name \"/{new_name}\" is already in use by container \"{}\". You have to remove (or rename) that container to be able to reuse that name.",
                    o.id
                )));
            }
            c.update(|r| r.name = new_name.clone());
        }
        self.save(c)?;
        self.publish(&c.record(), "rename", &[("oldName", format!("/{old}"))]);
        Ok(())
    }

    pub async fn resize(&self, c: &Arc<Container>, h: u16, w: u16) -> Result<()> {
        let agent = c.live_agent()?;
        agent
            .resize(ProcessId::INIT, h, w)
            .await
            .map_err(agent_err)?;
        self.publish(
            &c.record(),
            "resize",
            &[("height", h.to_string()), ("width", w.to_string())],
        );
        Ok(())
    }

    pub async fn top(&self, c: &Arc<Container>) -> Result<berth_agent_protocol::Top> {
        if !matches!(c.status(), Status::Running | Status::Paused) {
            return Err(c.not_running());
        }
        let agent = c.live_agent()?;
        agent.top().await.map_err(agent_err)
    }

    pub async fn stats(&self, c: &Arc<Container>) -> Result<Option<berth_agent_protocol::Stats>> {
        match c.agent() {
            Some(a) if c.status().is_running() => Ok(Some(a.stats().await.map_err(agent_err)?)),
            _ => Ok(None),
        }
    }

    /// Stdin of the container's main process (waits for the run to start).
    pub async fn stdin_writer(
        &self,
        c: &Arc<Container>,
    ) -> Option<berth_agent_protocol::client::StdinWriter> {
        let mut running = c.running.subscribe();
        if running.wait_for(|r| *r).await.is_err() {
            return None;
        }
        c.agent().map(|a| a.stdin(ProcessId::INIT))
    }

    pub async fn close_stdin(&self, c: &Arc<Container>) {
        if let Some(a) = c.agent() {
            let _ = a.close_stdin(ProcessId::INIT).await;
        }
    }

    /// Remove every stopped container (`docker container prune`).
    pub async fn prune(
        self: &Arc<Self>,
        keep: impl Fn(&super::ContainerRecord) -> bool,
    ) -> (Vec<String>, u64) {
        let mut deleted = Vec::new();
        let mut space = 0u64;
        for c in self.all() {
            let rec = c.record();
            if rec.state.status.is_running() || keep(&rec) {
                continue;
            }
            let size = crate::fsutil::dir_size(&self.container_dir(&c.id).join("upper"));
            if self.remove(&c, false, false).await.is_ok() {
                deleted.push(c.id.clone());
                space += size;
            }
        }
        (deleted, space)
    }

    /// After a daemon restart: re-adopt live agents, mark dead runs exited, apply
    /// restart policies and AutoRemove.
    pub(crate) async fn restore(self: &Arc<Self>) {
        for c in self.all() {
            let rec = c.record();
            if !rec.state.status.is_running() {
                if rec.host_config.auto_remove.unwrap_or(false) {
                    let _ = self.remove(&c, true, true).await;
                } else if rec.state.status == Status::Removing {
                    let _ = self.remove(&c, true, false).await;
                }
                continue;
            }
            let adopted = match self.backend(&rec).reconnect(&rec).await {
                Some(sandbox) => self.adopt(&c, sandbox.agent).await,
                None => false,
            };
            if !adopted {
                self.backend(&rec).release(&rec).await;
                // Before a restart policy can start it again with a fresh sandbox.
                self.release_network(&rec).await;
                tracing::warn!(id = %c.id, "container's agent is gone; marking it exited");
                self.on_exit(
                    &c,
                    ExitStatus {
                        code: 255,
                        error: Some(
                            "berth-agent is gone: the container stopped while berthd was down"
                                .into(),
                        ),
                        finished_at_ns: crate::logs::now_nanos() as u64,
                        ..Default::default()
                    },
                )
                .await;
            }
        }
        // Restart policies that apply at daemon start.
        for c in self.all() {
            let rec = c.record();
            let policy = rec.host_config.restart_policy.as_ref().and_then(|p| p.name);
            let wants = match policy {
                Some(RestartPolicyNameEnum::ALWAYS) => true,
                Some(RestartPolicyNameEnum::UNLESS_STOPPED) => !rec.state.has_been_manually_stopped,
                _ => false,
            };
            if wants
                && matches!(rec.state.status, Status::Exited | Status::Created)
                && rec.state.started_at != super::record::ZERO_TIME
            {
                if let Err(e) = self.start(&c).await {
                    tracing::warn!(id = %c.id, "restart at daemon start failed: {e}");
                }
            }
        }
    }

    async fn adopt(self: &Arc<Self>, c: &Arc<Container>, agent: AgentClient) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals() {
        assert_eq!(signal_number("SIGTERM").unwrap(), 15);
        assert_eq!(signal_number("term").unwrap(), 15);
        assert_eq!(signal_number("9").unwrap(), 9);
        assert_eq!(signal_number("").unwrap(), 9);
        assert!(signal_number("SIGNOPE").is_err());
        assert!(signal_number("99").is_err());
        assert_eq!(
            WaitCondition::parse("removed").unwrap(),
            WaitCondition::Removed
        );
        assert!(WaitCondition::parse("bogus").is_err());
    }
}
