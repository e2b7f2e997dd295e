//! `docker exec`: extra processes in a running container. Exec instances live in
//! memory, as in dockerd, and are dropped with their container.

use std::sync::{Arc, Mutex};

use berth_agent_protocol::client::{AgentClient, OutputStream, StdinWriter};
use berth_agent_protocol::{ErrorKind, ExecSpec, ProcessId, ProcessSpec};
use serde::Deserialize;
use tokio::sync::watch;

use super::record::Status;
use super::{new_id, Container, Containers};
use crate::{Error, Result};

/// The `POST /containers/{id}/exec` body (Docker's field names).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ExecConfig {
    pub attach_stdin: bool,
    pub attach_stdout: bool,
    pub attach_stderr: bool,
    pub tty: bool,
    pub detach_keys: Option<String>,
    pub env: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub privileged: bool,
    pub user: Option<String>,
    pub working_dir: Option<String>,
    pub console_size: Option<Vec<u16>>,
}

#[derive(Debug, Clone, Default)]
pub struct ExecState {
    pub running: bool,
    pub exit_code: Option<i64>,
    pub pid: u32,
    pub started: bool,
    pub process: Option<ProcessId>,
}

pub struct ExecInstance {
    pub id: String,
    pub container_id: String,
    pub config: ExecConfig,
    state: Mutex<ExecState>,
    done: watch::Sender<bool>,
    agent: Mutex<Option<AgentClient>>,
}

impl ExecInstance {
    pub fn state(&self) -> ExecState {
        self.state.lock().unwrap().clone()
    }

    /// Resolves once the exit code is recorded.
    pub async fn wait_done(&self) {
        let mut rx = self.done.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }
}

pub struct ExecStartOpts {
    pub tty: Option<bool>,
    pub console_size: Option<(u16, u16)>,
}

/// A started exec: its output (None if it never ran) and stdin.
pub struct ExecStarted {
    pub output: Option<OutputStream>,
    pub stdin: Option<StdinWriter>,
    /// Docker writes a start failure into the stream; the exit code is 126/127.
    pub error: Option<String>,
    pub tty: bool,
}

impl Containers {
    pub fn exec_create(&self, c: &Arc<Container>, config: ExecConfig) -> Result<String> {
        match c.status() {
            Status::Running => {}
            Status::Paused => {
                return Err(Error::conflict(format!(
                    "Container {} is paused, unpause the container before exec",
                    c.id
                )))
            }
            Status::Restarting => {
                return Err(Error::conflict(format!(
                    "Container {} is restarting, wait until the container is running",
                    c.id
                )))
            }
            _ => return Err(c.not_running()),
        }
        if config.cmd.as_ref().is_none_or(|c| c.is_empty()) {
            return Err(Error::invalid("No exec command specified"));
        }
        let id = new_id();
        let inst = Arc::new(ExecInstance {
            id: id.clone(),
            container_id: c.id.clone(),
            config: config.clone(),
            state: Mutex::new(ExecState::default()),
            done: watch::channel(false).0,
            agent: Mutex::new(None),
        });
        self.execs.lock().unwrap().insert(id.clone(), inst);
        let cmd = config.cmd.unwrap_or_default().join(" ");
        self.publish(
            &c.record(),
            &format!("exec_create: {cmd}"),
            &[("execID", id.clone())],
        );
        Ok(id)
    }

    pub fn exec_get(&self, id: &str) -> Result<Arc<ExecInstance>> {
        self.execs
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("No such exec instance: {id}")))
    }

    pub async fn exec_start(
        &self,
        e: &Arc<ExecInstance>,
        opts: ExecStartOpts,
    ) -> Result<ExecStarted> {
        let c = self.get(&e.container_id)?;
        {
            let mut st = e.state.lock().unwrap();
            if st.started {
                return Err(Error::conflict(format!(
                    "Error: Exec command {} is already running",
                    e.id
                )));
            }
            st.started = true;
        }
        if c.status() == Status::Paused {
            return Err(Error::conflict(format!(
                "Container {} is paused, unpause the container before exec",
                c.id
            )));
        }
        let agent = c
            .agent()
            .filter(|_| c.status() == Status::Running)
            .ok_or_else(|| c.not_running())?;
        let rec = c.record();
        let tty = opts.tty.unwrap_or(e.config.tty);
        let mut env = rec.config.env.clone().unwrap_or_default();
        env.extend(e.config.env.clone().unwrap_or_default());
        let console = opts
            .console_size
            .or_else(|| {
                e.config
                    .console_size
                    .as_ref()
                    .filter(|v| v.len() == 2)
                    .map(|v| (v[0], v[1]))
            })
            .filter(|(h, w)| *h > 0 && *w > 0);
        let spec = ExecSpec {
            process: ProcessSpec {
                args: e.config.cmd.clone().unwrap_or_default(),
                env,
                cwd: e
                    .config
                    .working_dir
                    .clone()
                    .filter(|w| !w.is_empty())
                    .or(rec.config.working_dir.clone())
                    .unwrap_or_default(),
                user: e
                    .config
                    .user
                    .clone()
                    .filter(|u| !u.is_empty())
                    .or(rec.config.user.clone())
                    .unwrap_or_default(),
                additional_groups: rec.host_config.group_add.clone().unwrap_or_default(),
                tty,
                open_stdin: e.config.attach_stdin,
                console_size: console,
            },
            privileged: e.config.privileged,
        };
        let process = agent
            .exec(spec)
            .await
            .map_err(|e| Error::internal(format!("exec: {e}")))?;
        let output = agent
            .output(process)
            .await
            .map_err(|e| Error::internal(format!("exec: {e}")))?;
        {
            let mut st = e.state.lock().unwrap();
            st.process = Some(process);
        }
        *e.agent.lock().unwrap() = Some(agent.clone());
        match agent.start(process).await {
            Ok(pid) => {
                {
                    let mut st = e.state.lock().unwrap();
                    st.running = true;
                    st.pid = pid;
                }
                let cmd = e.config.cmd.clone().unwrap_or_default().join(" ");
                self.publish(
                    &rec,
                    &format!("exec_start: {cmd}"),
                    &[("execID", e.id.clone())],
                );
                let inst = e.clone();
                let events = self.events.clone();
                let rec2 = rec.clone();
                tokio::spawn(async move {
                    let code = match agent.wait(process).await {
                        Ok(s) => s.code as i64,
                        Err(_) => 126,
                    };
                    {
                        let mut st = inst.state.lock().unwrap();
                        st.running = false;
                        st.exit_code = Some(code);
                    }
                    let _ = inst.done.send_replace(true);
                    events.publish(
                        "container",
                        "exec_die",
                        &rec2.id,
                        [
                            ("execID".to_string(), inst.id.clone()),
                            ("exitCode".to_string(), code.to_string()),
                            ("name".to_string(), rec2.name.clone()),
                            ("image".to_string(), rec2.image_ref.clone()),
                        ],
                    );
                });
                let stdin = e
                    .config
                    .attach_stdin
                    .then(|| c.agent().map(|a| a.stdin(process)))
                    .flatten();
                Ok(ExecStarted {
                    output: Some(output),
                    stdin,
                    error: None,
                    tty,
                })
            }
            Err(err) => {
                let (code, msg) = match err.remote() {
                    Some(r) if r.kind == ErrorKind::ExecFailed => {
                        (r.exit_code.unwrap_or(126) as i64, r.message.clone())
                    }
                    _ => (126, err.to_string()),
                };
                {
                    let mut st = e.state.lock().unwrap();
                    st.exit_code = Some(code);
                }
                let _ = e.done.send_replace(true);
                Ok(ExecStarted {
                    output: None,
                    stdin: None,
                    error: Some(format!("OCI runtime exec failed: exec failed: unable to start container process: {msg}: unknown")),
                    tty,
                })
            }
        }
    }

    pub async fn exec_resize(&self, e: &Arc<ExecInstance>, h: u16, w: u16) -> Result<()> {
        let (agent, process) = (e.agent.lock().unwrap().clone(), e.state().process);
        match (agent, process) {
            (Some(a), Some(p)) => a
                .resize(p, h, w)
                .await
                .map_err(|err| Error::internal(format!("resize: {err}"))),
            _ => Err(Error::conflict(format!("Exec {} is not running", e.id))),
        }
    }

    pub async fn exec_close_stdin(&self, e: &Arc<ExecInstance>) {
        let (agent, process) = (e.agent.lock().unwrap().clone(), e.state().process);
        if let (Some(a), Some(p)) = (agent, process) {
            let _ = a.close_stdin(p).await;
        }
    }
}

impl Containers {
    /// Exec ids of a container, for inspect's `ExecIDs`.
    pub fn exec_ids(&self, container_id: &str) -> Vec<String> {
        self.execs
            .lock()
            .unwrap()
            .values()
            .filter(|e| e.container_id == container_id)
            .map(|e| e.id.clone())
            .collect()
    }
}
