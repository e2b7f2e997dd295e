//! Removing containers: `docker rm` (its cleanup of sandbox, mounts, logs and
//! anonymous volumes) and `docker container prune`.

use std::sync::Arc;

use berth_agent_protocol::ExitStatus;
use bollard_stubs::models::RestartPolicyNameEnum;

use super::record::Status;
use super::{Container, Containers};
use crate::{Error, Result};

impl Containers {
    /// `docker rm [-f] [-v]`.
    pub async fn remove(
        self: &Arc<Self>,
        c: &Arc<Container>,
        force: bool,
        volumes: bool,
    ) -> Result<()> {
        self.remove_with(c, force, volumes, None).await
    }

    pub(super) async fn remove_with(
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
        // From here on a save (an exit handled late) must not recreate the directory.
        c.set_on_disk(false);
        let cleanup = tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_dir_all(&run);
            std::fs::remove_dir_all(&dir)
        })
        .await;
        if let Ok(Err(e)) = cleanup {
            if e.kind() != std::io::ErrorKind::NotFound {
                c.update(|r| r.state.status = Status::Dead);
                c.set_on_disk(true);
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
}
