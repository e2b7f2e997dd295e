//! The agent's container state machine and request handlers.

mod launch;
mod nic;
use std::{
    collections::BTreeMap,
    fs::File,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use berth_agent_protocol::{
    AgentState, ContainerSpec, ErrorKind, Event, ExitStatus, Frame, FrameKind, ProcessId,
    ProcessSpec, ProcessState, ProcessStatus, RemoteError, Reply, Request, Response,
};
use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::{info, warn};

use crate::{cgroups::Cgroup, stdio::Run, util::now_ns};

/// How long an exec's output may stay open after it exited (a background child holding the pipe).
const EXEC_OUTPUT_GRACE: Duration = Duration::from_secs(2);

struct Proc {
    spec: ProcessSpec,
    privileged: bool,
    status: ProcessStatus,
    pid: Option<i32>,
    started_at_ns: Option<u64>,
    exit: Option<ExitStatus>,
    run: Option<Arc<Run>>,
    /// Subscribed before this process had a run to deliver (created, or previous run drained).
    subscribe_next: bool,
    waiters: Vec<oneshot::Sender<ExitStatus>>,
}

impl Proc {
    fn new(spec: ProcessSpec, privileged: bool) -> Self {
        Proc {
            spec,
            privileged,
            status: ProcessStatus::Created,
            pid: None,
            started_at_ns: None,
            exit: None,
            run: None,
            subscribe_next: false,
            waiters: Vec::new(),
        }
    }
}

#[derive(Default)]
struct State {
    spec: Option<Arc<ContainerSpec>>,
    procs: BTreeMap<ProcessId, Proc>,
    next_exec: u32,
    cgroup: Option<Arc<Cgroup>>,
    paused: bool,
    /// Set while the init's cgroup is being torn down (exit not yet published).
    stopping: Option<Arc<Notify>>,
}

pub struct Agent {
    pub exec_dir: PathBuf,
    own_pidns: File,
    state: Mutex<State>,
    conn: Mutex<Option<(u64, mpsc::Sender<Frame>)>>,
    conn_gen: Mutex<u64>,
    pub shutdown: Notify,
    /// The agent's own helper processes (see `helpers`).
    pub helpers: Arc<crate::helpers::Helpers>,
}

fn err(kind: ErrorKind, msg: impl Into<String>) -> RemoteError {
    RemoteError::new(kind, msg)
}

impl Agent {
    pub fn new(exec_dir: PathBuf) -> std::io::Result<Arc<Agent>> {
        Ok(Arc::new(Agent {
            exec_dir,
            own_pidns: File::open("/proc/self/ns/pid")?,
            state: Mutex::new(State::default()),
            conn: Mutex::new(None),
            conn_gen: Mutex::new(0),
            shutdown: Notify::new(),
            helpers: Default::default(),
        }))
    }

    /// Makes `tx` the connection that receives events and output. Returns its generation.
    pub fn attach_conn(&self, tx: mpsc::Sender<Frame>) -> u64 {
        let gen = {
            let mut g = self.conn_gen.lock().unwrap();
            *g += 1;
            *g
        };
        self.reset_subscriptions();
        *self.conn.lock().unwrap() = Some((gen, tx));
        gen
    }

    pub fn detach_conn(&self, gen: u64) {
        let mut c = self.conn.lock().unwrap();
        if c.as_ref().map(|(g, _)| *g) == Some(gen) {
            *c = None;
            drop(c);
            self.reset_subscriptions();
        }
    }

    pub fn current_gen(&self) -> u64 {
        self.conn
            .lock()
            .unwrap()
            .as_ref()
            .map(|(g, _)| *g)
            .unwrap_or(0)
    }

    fn reset_subscriptions(&self) {
        let mut st = self.state.lock().unwrap();
        for p in st.procs.values_mut() {
            p.subscribe_next = false;
            if let Some(r) = &p.run {
                r.unsubscribe();
            }
        }
    }

    /// Sends to the current connection (dropped when there is none).
    pub async fn send(&self, frame: Frame) {
        let tx = self.conn.lock().unwrap().as_ref().map(|(_, tx)| tx.clone());
        if let Some(tx) = tx {
            let _ = tx.send(frame).await;
        }
    }

    pub fn credit(&self, process: ProcessId, n: u32) {
        if let Some(run) = self
            .state
            .lock()
            .unwrap()
            .procs
            .get(&process)
            .and_then(|p| p.run.clone())
        {
            run.add_credit(n);
        }
    }

    /// Writes a `Stdin` frame's bytes and acknowledges on `tx`.
    pub fn stdin(&self, process: ProcessId, data: bytes::Bytes, tx: mpsc::Sender<Frame>) {
        let run = self
            .state
            .lock()
            .unwrap()
            .procs
            .get(&process)
            .and_then(|p| p.run.clone());
        match run {
            // Queued per run: chunks are written in arrival order, each acknowledged when written.
            Some(run) => run.queue_stdin(process, data, tx),
            None => {
                tokio::spawn(async move {
                    let ack =
                        Frame::new(FrameKind::StdinAck, process.0, &b"process has no stdin"[..]);
                    let _ = tx.send(ack).await;
                });
            }
        }
    }

    pub async fn handle(self: &Arc<Self>, req: Request) -> Reply {
        match req {
            Request::Create { spec } => self.create(*spec),
            Request::Start { process } => self.start(process).await,
            Request::Exec { spec } => self.exec(*spec),
            Request::Subscribe { process } => self.subscribe(process),
            Request::CloseStdin { process } => {
                let run = self.run_of(process)?;
                if let Some(run) = run {
                    run.close_stdin().await;
                }
                Ok(Response::Ok)
            }
            Request::Signal { process, signal } => self.signal(process, signal),
            Request::Resize {
                process,
                rows,
                cols,
            } => {
                if let Some(run) = self.run_of(process)? {
                    if let Some(fd) = run.tty_fd() {
                        crate::tty::set_winsize(fd, rows, cols)
                            .map_err(|e| err(ErrorKind::Internal, e.to_string()))?;
                    }
                }
                Ok(Response::Ok)
            }
            Request::Wait { process } => {
                let rx = {
                    let mut st = self.state.lock().unwrap();
                    let p = st.procs.get_mut(&process).ok_or_else(|| {
                        err(ErrorKind::NotFound, format!("no such process {process}"))
                    })?;
                    match (&p.status, &p.exit) {
                        (ProcessStatus::Exited, Some(exit)) => {
                            return Ok(Response::Exited {
                                status: exit.clone(),
                            })
                        }
                        _ => {
                            let (tx, rx) = oneshot::channel();
                            p.waiters.push(tx);
                            rx
                        }
                    }
                };
                let status = rx
                    .await
                    .map_err(|_| err(ErrorKind::Internal, "agent shutting down"))?;
                Ok(Response::Exited { status })
            }
            Request::State => Ok(Response::State {
                state: self.snapshot(),
            }),
            Request::Stats => {
                let cg = self.cgroup()?;
                Ok(Response::Stats { stats: cg.stats() })
            }
            Request::Top => {
                let cg = self.cgroup()?;
                Ok(Response::Top {
                    top: crate::top::top(&cg.pids()),
                })
            }
            Request::Pause | Request::Resume => {
                let pause = matches!(req, Request::Pause);
                let cg = self.cgroup()?;
                cg.set_frozen(pause)
                    .map_err(|e| err(ErrorKind::Internal, e.to_string()))?;
                let mut st = self.state.lock().unwrap();
                st.paused = pause;
                for p in st.procs.values_mut() {
                    match (p.status, pause) {
                        (ProcessStatus::Running, true) => p.status = ProcessStatus::Paused,
                        (ProcessStatus::Paused, false) => p.status = ProcessStatus::Running,
                        _ => {}
                    }
                }
                Ok(Response::Ok)
            }
            Request::Update { resources } => {
                let cg = self.cgroup()?;
                cg.update(&resources)
                    .map_err(|e| err(ErrorKind::Internal, e.to_string()))?;
                Ok(Response::Ok)
            }
            Request::Shutdown => {
                self.kill_all().await;
                self.shutdown.notify_one();
                Ok(Response::Ok)
            }
            Request::StartPodMember { port } => {
                let helpers = self.helpers.clone();
                tokio::task::spawn_blocking(move || crate::pod_member::start(&helpers, port))
                    .await
                    .map_err(|e| err(ErrorKind::Internal, e.to_string()))?
                    .map_err(|m| err(ErrorKind::InvalidArgument, m))?;
                Ok(Response::Ok)
            }
            Request::ConfigureNic {
                version,
                nic,
                resolv_conf,
            } => self.configure_nic(version, nic, resolv_conf).await,
            Request::DeconfigureNic {
                version,
                mac,
                spare_name,
            } => self.deconfigure_nic(version, mac, spare_name).await,
            Request::RewriteEtcHosts { version, hosts } => {
                self.rewrite_etc_file(version, "hosts", hosts)
            }
        }
    }

    fn run_of(&self, process: ProcessId) -> Result<Option<Arc<Run>>, RemoteError> {
        let st = self.state.lock().unwrap();
        let p = st
            .procs
            .get(&process)
            .ok_or_else(|| err(ErrorKind::NotFound, format!("no such process {process}")))?;
        Ok(p.run.clone())
    }

    fn cgroup(&self) -> Result<Arc<Cgroup>, RemoteError> {
        self.state
            .lock()
            .unwrap()
            .cgroup
            .clone()
            .ok_or_else(|| err(ErrorKind::Conflict, "container is not running"))
    }

    fn subscribe(&self, process: ProcessId) -> Reply {
        let mut st = self.state.lock().unwrap();
        let p = st
            .procs
            .get_mut(&process)
            .ok_or_else(|| err(ErrorKind::NotFound, format!("no such process {process}")))?;
        let delivered = match &p.run {
            Some(run) => !run.subscribe(),
            None => true,
        };
        if delivered {
            p.subscribe_next = true;
        }
        Ok(Response::Ok)
    }

    fn signal(&self, process: ProcessId, signal: i32) -> Reply {
        let sig = Signal::try_from(signal).map_err(|_| {
            err(
                ErrorKind::InvalidArgument,
                format!("invalid signal {signal}"),
            )
        })?;
        let st = self.state.lock().unwrap();
        let p = st
            .procs
            .get(&process)
            .ok_or_else(|| err(ErrorKind::NotFound, format!("no such process {process}")))?;
        let pid = match (p.status, p.pid) {
            (ProcessStatus::Running | ProcessStatus::Paused, Some(pid)) => pid,
            _ => {
                return Err(err(
                    ErrorKind::Conflict,
                    format!("process {process} is not running"),
                ))
            }
        };
        kill(Pid::from_raw(pid), sig)
            .map_err(|e| err(ErrorKind::Internal, format!("kill: {e}")))?;
        // A frozen process only dies once thawed.
        if sig == Signal::SIGKILL && process == ProcessId::INIT && st.paused {
            if let Some(cg) = &st.cgroup {
                let _ = cg.set_frozen(false);
            }
        }
        Ok(Response::Ok)
    }

    /// Called by the reaper for every child that ended.
    pub fn on_exit(self: &Arc<Self>, pid: i32, code: i32, signal: Option<i32>) {
        let mut st = self.state.lock().unwrap();
        let Some((&process, _)) = st.procs.iter().find(|(_, p)| {
            p.pid == Some(pid) && matches!(p.status, ProcessStatus::Running | ProcessStatus::Paused)
        }) else {
            return;
        };
        let started = st.procs[&process].started_at_ns;
        let mut status = ExitStatus {
            code,
            signal,
            oom_killed: false,
            started_at_ns: started,
            finished_at_ns: now_ns(),
            error: None,
        };
        if process != ProcessId::INIT {
            drop(st);
            self.publish_exit(process, status);
            return;
        }
        // The container's PID 1 is gone: the kernel kills the rest of its pid namespace. Publish
        // the exit only once the cgroup is removed, so "exited" means nothing is left behind.
        let cg = st.cgroup.take();
        let done = Arc::new(Notify::new());
        st.stopping = Some(done.clone());
        st.paused = false;
        drop(st);
        let agent = self.clone();
        tokio::spawn(async move {
            if let Some(cg) = cg {
                status.oom_killed = cg.oom_kills() > 0;
                if let Err(e) = cg.destroy().await {
                    warn!("removing cgroup: {e}");
                }
            }
            if status.oom_killed {
                if let Ok(f) = Frame::json(FrameKind::Event, 0, &Event::Oom) {
                    agent.send(f).await;
                }
            }
            agent.publish_exit(ProcessId::INIT, status);
            agent.state.lock().unwrap().stopping = None;
            done.notify_waiters();
        });
    }

    fn publish_exit(self: &Arc<Self>, process: ProcessId, status: ExitStatus) {
        info!(%process, code = status.code, oom = status.oom_killed, "exited");
        let mut st = self.state.lock().unwrap();
        let Some(p) = st.procs.get_mut(&process) else {
            return;
        };
        p.status = ProcessStatus::Exited;
        p.exit = Some(status.clone());
        let waiters = std::mem::take(&mut p.waiters);
        let run = p.run.clone();
        // Subscribed, but no run will deliver output (the process never started): end the
        // subscriber's stream right after the exit event.
        let eof_now = std::mem::take(&mut p.subscribe_next);
        drop(st);
        for w in waiters {
            let _ = w.send(status.clone());
        }
        let agent = self.clone();
        tokio::spawn(async move {
            // The exit event goes out before the run's OutputEof (same channel, in order).
            if let Ok(f) = Frame::json(FrameKind::Event, 0, &Event::Exited { process, status }) {
                agent.send(f).await;
            }
            if eof_now {
                agent
                    .send(Frame::new(
                        FrameKind::OutputEof,
                        process.0,
                        bytes::Bytes::new(),
                    ))
                    .await;
            } else if let Some(run) = run {
                let grace = (process != ProcessId::INIT).then_some(EXEC_OUTPUT_GRACE);
                run.mark_exited(grace);
            }
        });
    }

    /// The running (or paused) init's pid as the agent sees it, for `/proc/<pid>/root`.
    pub fn init_pid(&self) -> Option<i32> {
        let st = self.state.lock().unwrap();
        st.procs
            .get(&ProcessId::INIT)
            .filter(|p| matches!(p.status, ProcessStatus::Running | ProcessStatus::Paused))
            .and_then(|p| p.pid)
    }

    fn snapshot(&self) -> AgentState {
        let st = self.state.lock().unwrap();
        AgentState {
            container_id: st.spec.as_ref().map(|s| s.id.clone()),
            paused: st.paused,
            processes: st
                .procs
                .iter()
                .map(|(id, p)| ProcessState {
                    process: *id,
                    status: p.status,
                    pid: p.pid.map(|p| p as u32),
                    started_at_ns: p.started_at_ns,
                    exit: p.exit.clone(),
                    tty: p.spec.tty,
                })
                .collect(),
        }
    }

    /// Kills the container (if running) and waits until its exit is published.
    pub async fn kill_all(self: &Arc<Self>) {
        let (pid, cg, stopping) = {
            let st = self.state.lock().unwrap();
            let init = st.procs.get(&ProcessId::INIT);
            let running = init
                .map(|p| matches!(p.status, ProcessStatus::Running | ProcessStatus::Paused))
                .unwrap_or(false);
            (
                if running {
                    init.and_then(|p| p.pid)
                } else {
                    None
                },
                st.cgroup.clone(),
                st.stopping.clone(),
            )
        };
        if let Some(pid) = pid {
            let mut rx = {
                let (tx, rx) = oneshot::channel();
                if let Some(p) = self.state.lock().unwrap().procs.get_mut(&ProcessId::INIT) {
                    p.waiters.push(tx);
                }
                rx
            };
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            if let Some(cg) = &cg {
                cg.kill_all();
            }
            let _ = tokio::time::timeout(Duration::from_secs(10), &mut rx).await;
        } else if let Some(n) = stopping {
            let _ = tokio::time::timeout(Duration::from_secs(10), n.notified()).await;
        }
        let cg = self.state.lock().unwrap().cgroup.take();
        if let Some(cg) = cg {
            let _ = cg.destroy().await;
        }
    }
}

impl crate::stdio::OutputSink for Agent {
    async fn send(&self, frame: Frame) {
        Agent::send(self, frame).await
    }
}
