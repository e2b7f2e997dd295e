//! The agent's container state machine and request handlers.
use std::{
    collections::BTreeMap,
    fs::File,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use berth_agent_protocol::{
    AgentState, ContainerSpec, ErrorKind, Event, ExecSpec, ExitStatus, Frame, FrameKind, ProcessId,
    ProcessSpec, ProcessState, ProcessStatus, RemoteError, Reply, Request, Response, SeccompMode,
};
use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::{info, warn};

use crate::{
    capabilities,
    cgroups::Cgroup,
    process::{self, Launch, Target},
    stdio::Run,
    util::now_ns,
};

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

    fn create(&self, spec: ContainerSpec) -> Reply {
        let mut st = self.state.lock().unwrap();
        if st.spec.is_some() {
            return Err(err(ErrorKind::Conflict, "container already created"));
        }
        if spec.process.args.is_empty() {
            return Err(err(ErrorKind::InvalidArgument, "no command specified"));
        }
        capabilities::compute(
            spec.security.privileged,
            &spec.security.cap_add,
            &spec.security.cap_drop,
        )
        .map_err(|e| err(ErrorKind::InvalidArgument, e))?;
        info!(id = %spec.id, "container created");
        st.procs.insert(
            ProcessId::INIT,
            Proc::new(spec.process.clone(), spec.security.privileged),
        );
        st.next_exec = 1;
        st.spec = Some(Arc::new(spec));
        Ok(Response::Ok)
    }

    fn exec(&self, spec: ExecSpec) -> Reply {
        let mut st = self.state.lock().unwrap();
        let container = st
            .spec
            .clone()
            .ok_or_else(|| err(ErrorKind::Conflict, "container not created"))?;
        if st.paused {
            return Err(err(
                ErrorKind::Conflict,
                "container is paused, unpause the container before exec",
            ));
        }
        if !matches!(
            st.procs.get(&ProcessId::INIT).map(|p| p.status),
            Some(ProcessStatus::Running)
        ) {
            return Err(err(ErrorKind::Conflict, "container is not running"));
        }
        if spec.process.args.is_empty() {
            return Err(err(ErrorKind::InvalidArgument, "no command specified"));
        }
        // Docker: an exec inherits the container's env (exec entries win), user and cwd.
        let base = &container.process;
        let mut p = spec.process;
        let mut env = base.env.clone();
        for e in p.env.drain(..) {
            let key = e
                .split_once('=')
                .map(|(k, _)| k.to_string())
                .unwrap_or_else(|| e.clone());
            env.retain(|x| x.split_once('=').map(|(k, _)| k) != Some(key.as_str()));
            env.push(e);
        }
        p.env = env;
        if p.user.is_empty() {
            p.user = base.user.clone();
            if p.additional_groups.is_empty() {
                p.additional_groups = base.additional_groups.clone();
            }
        }
        if p.cwd.is_empty() {
            p.cwd = base.cwd.clone();
        }
        let id = ProcessId(st.next_exec);
        st.next_exec += 1;
        st.procs.insert(
            id,
            Proc::new(p, spec.privileged || container.security.privileged),
        );
        Ok(Response::ExecCreated { process: id })
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

    async fn start(self: &Arc<Self>, process: ProcessId) -> Reply {
        // A previous run of the container may still be tearing down its cgroup.
        let stopping = self.state.lock().unwrap().stopping.clone();
        if let Some(n) = stopping {
            let fut = n.notified();
            if self.state.lock().unwrap().stopping.is_some() {
                fut.await;
            }
        }
        let (e, cg) = match self.start_locked(process)? {
            Ok(resp) => return Ok(resp),
            Err(failed) => failed,
        };
        if let Some(cg) = cg {
            if let Err(e) = cg.destroy().await {
                warn!("removing cgroup: {e}");
            }
        }
        let kind = if e.code == 128 {
            ErrorKind::Internal
        } else {
            ErrorKind::ExecFailed
        };
        Err(RemoteError {
            kind,
            message: e.message,
            exit_code: Some(e.code),
        })
    }

    /// The synchronous part of `start` (holds the state lock while the child is set up).
    /// `Ok(Err(..))`: the launch failed; the cgroup (if any) still has to be removed.
    #[allow(clippy::type_complexity)]
    fn start_locked(
        self: &Arc<Self>,
        process: ProcessId,
    ) -> Result<Result<Response, (process::LaunchError, Option<Arc<Cgroup>>)>, RemoteError> {
        let mut st = self.state.lock().unwrap();
        let spec = st
            .spec
            .clone()
            .ok_or_else(|| err(ErrorKind::Conflict, "container not created"))?;
        let init_status = st.procs.get(&ProcessId::INIT).map(|p| p.status);
        let init_pid = st.procs.get(&ProcessId::INIT).and_then(|p| p.pid);
        let p = st
            .procs
            .get(&process)
            .ok_or_else(|| err(ErrorKind::NotFound, format!("no such process {process}")))?;
        let is_init = process == ProcessId::INIT;
        match p.status {
            ProcessStatus::Created => {}
            ProcessStatus::Exited if is_init => {}
            _ => {
                return Err(err(
                    ErrorKind::Conflict,
                    format!("process {process} already started"),
                ))
            }
        }
        let pspec = p.spec.clone();
        let privileged = p.privileged;
        let etc_files;
        let target = if is_init {
            let device_rules = crate::cgroups::device_rules(&spec.devices)
                .map_err(|e| err(ErrorKind::InvalidArgument, e))?;
            let cg = Cgroup::create(
                spec.cgroup_parent.as_deref().unwrap_or("berth"),
                &spec.id,
                &spec.resources,
                (!spec.security.privileged).then_some(device_rules.as_slice()),
            )
            .map_err(|e| err(ErrorKind::Internal, format!("cgroup: {e}")))?;
            st.cgroup = Some(Arc::new(cg));
            etc_files = crate::rootfs::write_etc_files(&spec, &self.exec_dir)
                .map_err(|e| err(ErrorKind::Internal, e.to_string()))?;
            Target::Init {
                etc_files: &etc_files,
            }
        } else {
            if st.paused {
                return Err(err(
                    ErrorKind::Conflict,
                    "container is paused, unpause the container before exec",
                ));
            }
            if init_status != Some(ProcessStatus::Running) {
                return Err(err(ErrorKind::Conflict, "container is not running"));
            }
            Target::Exec {
                init_pid: init_pid.expect("running init has a pid"),
            }
        };
        let caps = if privileged {
            capabilities::compute(true, &[], &[])
        } else {
            capabilities::compute(false, &spec.security.cap_add, &spec.security.cap_drop)
        }
        .map_err(|e| err(ErrorKind::InvalidArgument, e))?;
        let cgroup = st.cgroup.clone().expect("cgroup exists while starting");
        let launch = Launch {
            target,
            container: &spec,
            process: &pspec,
            caps,
            seccomp: !privileged && spec.security.seccomp == SeccompMode::Default,
            no_new_privs: spec.security.no_new_privileges,
            tiny_init: is_init && spec.init,
            exec_dir: &self.exec_dir,
            own_pidns: &self.own_pidns,
            cgroup: &cgroup,
        };
        let result = process::launch(&launch);
        let now = now_ns();
        let p = st.procs.get_mut(&process).expect("checked above");
        match result {
            Ok(launched) => {
                let subscribed = std::mem::take(&mut p.subscribe_next);
                let run = Run::start(self, process, launched.stdio, subscribed)
                    .map_err(|e| err(ErrorKind::Internal, e.to_string()))?;
                if let Some(old) = p.run.replace(run) {
                    old.retire();
                }
                p.status = ProcessStatus::Running;
                p.pid = Some(launched.pid);
                p.started_at_ns = Some(now);
                p.exit = None;
                info!(%process, pid = launched.pid, "started");
                Ok(Ok(Response::Started {
                    pid: launched.pid as u32,
                }))
            }
            Err(e) => {
                warn!(%process, code = e.code, "start failed: {}", e.message);
                let status = ExitStatus {
                    code: e.code,
                    signal: None,
                    oom_killed: false,
                    started_at_ns: None,
                    finished_at_ns: now,
                    error: Some(e.message.clone()),
                };
                let cg = if is_init { st.cgroup.take() } else { None };
                drop(st);
                // Waiters, the Exited event and (if subscribed) an empty output's EOF.
                self.publish_exit(process, status);
                Ok(Err((e, cg)))
            }
        }
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
