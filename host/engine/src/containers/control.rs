//! Controlling a running container: stop, kill, restart, pause, wait, rename, resize,
//! top, stats, stdin; Docker's wait conditions and signal names.

use std::sync::Arc;
use std::time::Duration;

use berth_agent_protocol::ProcessId;

use super::record::Status;
use super::{Container, Containers, ExitNotice};
use crate::{Error, Result};

use super::lifecycle::agent_err;

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

impl Containers {
    pub(super) fn wait_for_exit_after(
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

    pub(super) async fn stop_locked(
        &self,
        c: &Arc<Container>,
        sig: i32,
        timeout: i64,
    ) -> Result<()> {
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
                    "Error when allocating new name: Conflict. The container name \"/{new_name}\" is already in use by container \"{}\". You have to remove (or rename) that container to be able to reuse that name.",
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
