//! One containerd task: its agent (started through the engine's isolation seam) and its
//! processes. Every operation is a call to the agent; this module keeps the state
//! containerd asks about (status, pids, exit statuses) and publishes the task events.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_agent_protocol::client::{remove_orphaned_cgroups, AgentClient};
use berth_agent_protocol::{ErrorKind, ExecSpec, ProcessId, Resources};
use berth_engine::containers::record::ContainerRecord;
use berth_engine::isolation::{GuestNetwork, IsolationBackend};
use containerd_shim_protos::events::task::{
    TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskPaused, TaskResumed, TaskStart,
};
use containerd_shim_protos::topics;

use crate::error::{Result, ShimError};
use crate::events::{now_ns, timestamp, Events};
use crate::pod::MemberMounts;
use crate::process::{Exit, Proc, Status};
use crate::sandbox::{Launch, PodHost};
use crate::stdio::{pump_output, pump_stdin, StdioPaths};

/// How long the exit of a process waits for the rest of its output (a background child
/// can keep the pipes open for ever).
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);

/// The exec id of the container's main process.
const INIT: &str = "";

pub struct Container {
    pub id: String,
    pub bundle: String,
    /// What the isolation backend knows of the container (its key as id, cgroup parent).
    rec: ContainerRecord,
    backend: Arc<dyn IsolationBackend>,
    agent: AgentClient,
    /// The agent's (process) or VMM's (microVM) host pid.
    sandbox_pid: u32,
    /// The pid containerd shows for the main process instead of the agent's (the VMM).
    host_pid_override: Option<u32>,
    /// The agent's exec dir, removed at delete.
    run_dir: PathBuf,
    /// The container's cgroup (parent, name), removed at delete if the agent could not.
    cgroup: (String, String),
    procs: Mutex<HashMap<String, Proc>>,
    events: Events,
    /// Host mounts held until delete (a pod member's, under its pod VM's share).
    held_mounts: Mutex<Option<MemberMounts>>,
    /// The sandbox of a microVM pod: the next vsock port for a member's agent.
    pod_ports: Option<std::sync::atomic::AtomicU32>,
    /// The main process's pid as its agent sees it (in the guest for a microVM).
    init_agent_pid: Mutex<Option<u32>>,
}

pub struct CreateArgs {
    pub id: String,
    pub bundle: String,
    pub rec: ContainerRecord,
    pub backend: Arc<dyn IsolationBackend>,
    pub run_dir: PathBuf,
    pub cgroup: (String, String),
    pub spec: berth_agent_protocol::ContainerSpec,
    pub stdio: StdioPaths,
    pub events: Events,
    pub launch: Launch,
    pub held_mounts: Option<MemberMounts>,
}

impl Container {
    /// Start the container's agent and register the container with it (nothing runs yet).
    pub async fn create(a: CreateArgs) -> Result<Arc<Container>> {
        let no_net = GuestNetwork::default();
        let started = match &a.launch {
            Launch::Own => a.backend.start(&a.rec, &no_net).await,
            Launch::PodSandbox(vm) => vm.start_pod_sandbox(&a.rec, &no_net).await,
            Launch::PodMember(m) => {
                m.vm.join_pod(&m.host.sandbox_key, &m.host.sandbox_agent, m.host.port)
                    .await
            }
        };
        let sandbox = match started {
            Ok(s) => s,
            Err(e) => {
                if let Some(m) = a.held_mounts {
                    m.unmount();
                }
                return Err(ShimError::Internal(format!("starting the agent: {e}")));
            }
        };
        if let Err(e) = sandbox.agent.create(a.spec).await {
            let _ = sandbox.agent.shutdown().await;
            a.backend.release(&a.rec).await;
            if let Some(m) = a.held_mounts {
                m.unmount();
            }
            return Err(e.into());
        }
        let mut procs = HashMap::new();
        procs.insert(INIT.to_string(), Proc::new(ProcessId::INIT, a.stdio));
        Ok(Arc::new(Container {
            id: a.id,
            bundle: a.bundle,
            rec: a.rec,
            backend: a.backend,
            agent: sandbox.agent,
            sandbox_pid: sandbox.agent_pid,
            host_pid_override: sandbox.host_pid_override,
            run_dir: a.run_dir,
            cgroup: a.cgroup,
            procs: Mutex::new(procs),
            events: a.events,
            held_mounts: Mutex::new(a.held_mounts),
            pod_ports: matches!(a.launch, Launch::PodSandbox(_)).then(|| {
                std::sync::atomic::AtomicU32::new(*berth_agent_protocol::POD_MEMBER_PORTS.start())
            }),
            init_agent_pid: Mutex::new(None),
        }))
    }

    /// For the sandbox container of a microVM pod: what a new member of the pod needs
    /// (`None` when this container hosts no pod VM).
    pub fn pod_host(&self) -> Option<Result<PodHost>> {
        let ports = self.pod_ports.as_ref()?;
        let Some(init_pid) = *self.init_agent_pid.lock().unwrap() else {
            return Some(Err(ShimError::Precondition(format!(
                "the pod's sandbox container {} is not running",
                self.id
            ))));
        };
        let port = ports.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if !berth_agent_protocol::POD_MEMBER_PORTS.contains(&port) {
            return Some(Err(ShimError::Precondition(
                "the pod has used up its member ports".into(),
            )));
        }
        Some(Ok(PodHost {
            sandbox_key: self.rec.id.clone(),
            sandbox_agent: self.agent.clone(),
            port,
            init_pid,
        }))
    }

    /// The container's key (its id for the isolation backend).
    pub fn key(&self) -> &str {
        &self.rec.id
    }

    /// The pid containerd shows for the task before it runs: the agent's (or VMM's).
    pub fn sandbox_pid(&self) -> u32 {
        self.sandbox_pid
    }

    fn with_proc<T>(&self, exec_id: &str, f: impl FnOnce(&mut Proc) -> T) -> Result<T> {
        let mut procs = self.procs.lock().unwrap();
        let p = procs
            .get_mut(exec_id)
            .ok_or_else(|| ShimError::NotFound(format!("process {exec_id:?} not found")))?;
        Ok(f(p))
    }

    /// The id containerd gives a process in events: the container id for the init.
    fn event_id(&self, exec_id: &str) -> String {
        if exec_id == INIT {
            self.id.clone()
        } else {
            exec_id.to_string()
        }
    }

    pub async fn start(self: &Arc<Self>, exec_id: &str) -> Result<u32> {
        let (pid, stdio, status) =
            self.with_proc(exec_id, |p| (p.id, p.stdio.clone(), p.status))?;
        if status != Status::Created {
            return Err(ShimError::Precondition(format!(
                "process {exec_id:?} was already started"
            )));
        }
        // Subscribe before start so no output is lost.
        let out = self.agent.output(pid).await?;
        let pump = pump_output(out, &stdio).map_err(ShimError::internal)?;
        let started = self.agent.start(pid).await;
        // Even a process that could not run has an exit status now: watch for it.
        self.watch_exit(exec_id.to_string(), pid, pump);
        let agent_pid = match started {
            Ok(p) => p,
            Err(e) => {
                if let Some(r) = e.remote().filter(|r| r.kind == ErrorKind::ExecFailed) {
                    return Err(ShimError::Invalid(r.message.clone()));
                }
                return Err(e.into());
            }
        };
        let host_pid = match (exec_id, self.host_pid_override) {
            (INIT, Some(p)) => p,
            _ => agent_pid,
        };
        if exec_id == INIT {
            *self.init_agent_pid.lock().unwrap() = Some(agent_pid);
        }
        let agent = self.agent.clone();
        self.with_proc(exec_id, |p| {
            if p.status == Status::Created {
                p.status = Status::Running;
            }
            p.pid = host_pid;
            p.stdin_task = p.stdin_open.take().map(|o| pump_stdin(&agent, pid, o));
        })?;
        if exec_id == INIT {
            let ev = TaskStart {
                container_id: self.id.clone(),
                pid: host_pid,
                ..Default::default()
            };
            self.events
                .publish(topics::TASK_START_EVENT_TOPIC, Box::new(ev))
                .await;
        } else {
            let ev = TaskExecStarted {
                container_id: self.id.clone(),
                exec_id: exec_id.to_string(),
                pid: host_pid,
                ..Default::default()
            };
            self.events
                .publish(topics::TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(ev))
                .await;
        }
        Ok(host_pid)
    }

    /// Wait for the agent to report the end of the process (or for the agent to go away),
    /// let its output drain, record the exit and publish `/tasks/exit`.
    fn watch_exit(
        self: &Arc<Self>,
        exec_id: String,
        pid: ProcessId,
        pump: tokio::task::JoinHandle<()>,
    ) {
        let me = self.clone();
        tokio::spawn(async move {
            let exit = match me.agent.wait(pid).await {
                Ok(s) => Exit {
                    code: s.code as u32,
                    at_ns: s.finished_at_ns,
                },
                Err(e) => {
                    let why = me.backend.failure_reason(&me.rec).await;
                    tracing::warn!(id = %me.id, exec_id, "the agent went away: {e} {why:?}");
                    // As if SIGKILLed: the process is gone with its agent (or VM).
                    Exit {
                        code: 137,
                        at_ns: now_ns(),
                    }
                }
            };
            let _ = tokio::time::timeout(OUTPUT_DRAIN, pump).await;
            me.record_exit(&exec_id, exit).await;
        });
    }

    async fn record_exit(&self, exec_id: &str, exit: Exit) {
        let Ok((first, pid)) = self.with_proc(exec_id, |p| (p.set_exited(exit), p.pid)) else {
            return;
        };
        if !first {
            return;
        }
        let ev = TaskExit {
            container_id: self.id.clone(),
            id: self.event_id(exec_id),
            pid,
            exit_status: exit.code,
            exited_at: Some(timestamp(exit.at_ns)).into(),
            ..Default::default()
        };
        self.events
            .publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(ev))
            .await;
    }

    /// containerd's view of one process.
    pub fn state(&self, exec_id: &str) -> Result<ProcState> {
        self.with_proc(exec_id, |p| ProcState {
            pid: p.pid,
            status: p.status,
            stdio: p.stdio.clone(),
            exit: p.exit(),
        })
    }

    pub async fn wait(&self, exec_id: &str) -> Result<Exit> {
        let fut = self.with_proc(exec_id, |p| p.exited())?;
        Ok(fut.await)
    }

    pub async fn kill(&self, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let (pid, status) = self.with_proc(exec_id, |p| (p.id, p.status))?;
        match status {
            Status::Stopped => {
                return Err(ShimError::NotFound(format!(
                    "process {exec_id:?} already finished"
                )))
            }
            // Never started: it ends here, as if the signal killed it.
            Status::Created => {
                let exit = Exit {
                    code: 128 + signal,
                    at_ns: now_ns(),
                };
                self.record_exit(exec_id, exit).await;
                return Ok(());
            }
            Status::Running => {}
        }
        let sig = signal as i32;
        match self.agent.signal(pid, sig).await {
            Err(e) if e.remote().is_some_and(|r| r.kind == ErrorKind::Conflict) => {
                return Err(ShimError::NotFound(format!(
                    "process {exec_id:?} already finished"
                )))
            }
            r => r?,
        }
        if all && exec_id == INIT {
            let execs: Vec<ProcessId> = self
                .procs
                .lock()
                .unwrap()
                .values()
                .filter(|p| p.status == Status::Running && p.id != ProcessId::INIT)
                .map(|p| p.id)
                .collect();
            for p in execs {
                let _ = self.agent.signal(p, sig).await;
            }
        }
        Ok(())
    }

    pub async fn exec(&self, exec_id: &str, spec: ExecSpec, stdio: StdioPaths) -> Result<()> {
        if exec_id.is_empty() {
            return Err(ShimError::Invalid("an exec needs an id".into()));
        }
        if self.procs.lock().unwrap().contains_key(exec_id) {
            return Err(ShimError::AlreadyExists(format!(
                "exec {exec_id:?} already exists"
            )));
        }
        let pid = self.agent.exec(spec).await?;
        self.procs
            .lock()
            .unwrap()
            .insert(exec_id.to_string(), Proc::new(pid, stdio));
        let ev = TaskExecAdded {
            container_id: self.id.clone(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        self.events
            .publish(topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(ev))
            .await;
        Ok(())
    }

    /// Forget an exited exec; returns its pid and exit.
    pub fn delete_exec(&self, exec_id: &str) -> Result<(u32, Exit)> {
        let mut procs = self.procs.lock().unwrap();
        let p = procs
            .get(exec_id)
            .ok_or_else(|| ShimError::NotFound(format!("process {exec_id:?} not found")))?;
        if p.status == Status::Running {
            return Err(ShimError::Precondition(format!(
                "exec {exec_id:?} is still running"
            )));
        }
        let out = (p.pid, p.exit().unwrap_or(Exit { code: 0, at_ns: 0 }));
        procs.remove(exec_id);
        Ok(out)
    }

    /// Delete the task: the main process must have ended. Stops the agent (or VM), releases
    /// what the run held on the host and publishes `/tasks/delete`.
    pub async fn delete(&self) -> Result<(u32, Exit)> {
        let (pid, status, exit) = self.with_proc(INIT, |p| (p.pid, p.status, p.exit()))?;
        if status == Status::Running {
            return Err(ShimError::Precondition(format!(
                "task {} is still running",
                self.id
            )));
        }
        let exit = exit.unwrap_or(Exit {
            code: 0,
            at_ns: now_ns(),
        });
        self.release().await;
        let ev = TaskDelete {
            container_id: self.id.clone(),
            id: self.id.clone(),
            pid,
            exit_status: exit.code,
            exited_at: Some(timestamp(exit.at_ns)).into(),
            ..Default::default()
        };
        self.events
            .publish(topics::TASK_DELETE_EVENT_TOPIC, Box::new(ev))
            .await;
        Ok((pid, exit))
    }

    /// Stop the agent and free the host resources of the run. Idempotent.
    pub async fn release(&self) {
        if !self.agent.is_closed() {
            let _ = tokio::time::timeout(Duration::from_secs(10), self.agent.shutdown()).await;
        }
        self.backend.release(&self.rec).await;
        let held = self.held_mounts.lock().unwrap().take();
        if let Some(m) = held {
            m.unmount();
        }
        // The agent removes its cgroups at shutdown; one that died leaves them empty.
        let (parent, name) = &self.cgroup;
        if let Err(e) = remove_orphaned_cgroups(parent, name).await {
            tracing::warn!(id = %self.id, "removing the container's cgroups: {e}");
        }
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }

    pub async fn resize(&self, exec_id: &str, width: u32, height: u32) -> Result<()> {
        let pid = self.with_proc(exec_id, |p| p.id)?;
        self.agent.resize(pid, height as u16, width as u16).await?;
        Ok(())
    }

    pub async fn close_stdin(&self, exec_id: &str) -> Result<()> {
        let (pid, task) = self.with_proc(exec_id, |p| (p.id, p.stdin_task.take()))?;
        if let Some(t) = task {
            t.abort();
        }
        match self.agent.close_stdin(pid).await {
            Err(e) if e.remote().is_some() => Ok(()),
            r => Ok(r?),
        }
    }

    /// Host pids of the container's processes.
    pub async fn pids(&self) -> Result<Vec<u32>> {
        let top = self.agent.top().await?;
        let col = top.titles.iter().position(|t| t == "PID").unwrap_or(1);
        Ok(top
            .processes
            .iter()
            .filter_map(|row| row.get(col)?.parse().ok())
            .collect())
    }

    pub async fn pause(&self) -> Result<()> {
        self.agent.pause().await?;
        let ev = TaskPaused {
            container_id: self.id.clone(),
            ..Default::default()
        };
        self.events
            .publish(topics::TASK_PAUSED_EVENT_TOPIC, Box::new(ev))
            .await;
        Ok(())
    }

    pub async fn resume(&self) -> Result<()> {
        self.agent.resume().await?;
        let ev = TaskResumed {
            container_id: self.id.clone(),
            ..Default::default()
        };
        self.events
            .publish(topics::TASK_RESUMED_EVENT_TOPIC, Box::new(ev))
            .await;
        Ok(())
    }

    pub async fn update(&self, mut res: Resources) -> Result<()> {
        self.backend.map_resources(&mut res);
        self.agent.update(res).await?;
        Ok(())
    }

    pub async fn stats(&self) -> Result<berth_agent_protocol::Stats> {
        Ok(self.agent.stats().await?)
    }

    /// Is the agent paused (containerd's `PAUSED` status)?
    pub async fn agent_paused(&self) -> bool {
        self.agent.state().await.map(|s| s.paused).unwrap_or(false)
    }
}

pub struct ProcState {
    pub pid: u32,
    pub status: Status,
    pub stdio: StdioPaths,
    pub exit: Option<Exit>,
}
