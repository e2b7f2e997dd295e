//! Host-side tokio client for one agent (feature `client`).
//!
//! ```no_run
//! # async fn demo(spec: berth_agent_protocol::ContainerSpec) -> Result<(), berth_agent_protocol::ProtocolError> {
//! use berth_agent_protocol::{client::*, ProcessId};
//! let (agent, _pid) = spawn_process_agent(&SpawnOpts::new("/usr/libexec/berth-agent", "/run/berth/c1", "c1")).await?;
//! agent.create(spec).await?;
//! let mut out = agent.output(ProcessId::INIT).await?; // before start: nothing is lost
//! agent.start(ProcessId::INIT).await?;
//! while let Some(chunk) = out.recv().await {
//!     println!("{:?}: {:?}", chunk.stream, chunk.data);
//! }
//! let status = agent.wait(ProcessId::INIT).await?;
//! agent.shutdown().await?;
//! # let _ = status; Ok(()) }
//! ```
//!
//! `AgentClient` is cheap to clone (all clones share one connection). The connection closes when
//! every clone, [`OutputStream`] and [`StdinWriter`] is dropped; the agent keeps running.
mod export;
mod spawn;
mod stdio;

use std::{
    collections::HashMap,
    path::Path,
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use bytes::Bytes;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::{broadcast, mpsc, oneshot, watch},
};
use tracing::{debug, warn};

pub use export::{archive_finish, archive_next, archive_send, open_export, ArchiveEvent};
pub use spawn::{agent_socket_path, remove_orphaned_cgroups, spawn_process_agent, SpawnOpts};
pub use stdio::{CreditHandle, OutputChunk, OutputStream, StdStream, StdinWriter, STDIN_IN_FLIGHT};

use crate::{
    AgentState, ContainerSpec, ErrorKind, Event, ExecSpec, ExitStatus, Frame, FrameKind,
    FrameReader, FrameWriter, Hello, HelloReply, ProcessId, ProtocolError, Reply, Request,
    Response, Stats, Top, MAGIC, PROTOCOL_VERSION,
};

type Result<T> = std::result::Result<T, ProtocolError>;

/// What the agent said in the handshake.
#[derive(Debug, Clone)]
pub struct AgentInfo {
    pub version: u32,
    pub agent_version: String,
    pub agent_pid: u32,
}

pub(crate) enum OutputItem {
    Data(StdStream, Bytes),
    Eof,
}

/// State shared by the client handles and the reader task.
#[derive(Default)]
pub(crate) struct Shared {
    pending: Mutex<HashMap<u32, oneshot::Sender<Reply>>>,
    pub(crate) outputs: Mutex<HashMap<ProcessId, mpsc::UnboundedSender<OutputItem>>>,
    pub(crate) stdin_acks:
        Mutex<HashMap<ProcessId, mpsc::UnboundedSender<std::result::Result<(), String>>>>,
}

/// A connection to one agent.
#[derive(Clone)]
pub struct AgentClient {
    tx: mpsc::UnboundedSender<Frame>,
    shared: Arc<Shared>,
    next_id: Arc<AtomicU32>,
    events: broadcast::Sender<Event>,
    closed: watch::Receiver<bool>,
    info: Arc<AgentInfo>,
}

impl AgentClient {
    /// Handshakes over `stream` (unix socket, vsock, ...) and starts the connection's tasks.
    pub async fn connect<S>(stream: S) -> Result<AgentClient>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (r, w) = tokio::io::split(stream);
        let mut reader = FrameReader::new(r);
        let mut writer = FrameWriter::new(w);
        let hello = Hello {
            magic: MAGIC.into(),
            version: PROTOCOL_VERSION,
            client: format!("berth {}", env!("CARGO_PKG_VERSION")),
        };
        writer
            .send(Frame::json(FrameKind::Hello, 0, &hello)?)
            .await?;
        let reply = reader.next().await?.ok_or(ProtocolError::Closed)?;
        if reply.kind != FrameKind::HelloReply {
            return Err(ProtocolError::Malformed(format!(
                "expected HelloReply, got {:?}",
                reply.kind
            )));
        }
        let info = match reply.parse::<HelloReply>()? {
            HelloReply::Ok {
                version,
                agent_version,
                agent_pid,
            } => {
                if version != PROTOCOL_VERSION {
                    return Err(ProtocolError::VersionMismatch {
                        host: PROTOCOL_VERSION,
                        agent: version,
                    });
                }
                AgentInfo {
                    version,
                    agent_version,
                    agent_pid,
                }
            }
            HelloReply::Err { version, message } => {
                if version != PROTOCOL_VERSION {
                    return Err(ProtocolError::VersionMismatch {
                        host: PROTOCOL_VERSION,
                        agent: version,
                    });
                }
                return Err(ProtocolError::Refused(message));
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::default());
        let (events, _) = broadcast::channel(256);
        let (closed_tx, closed) = watch::channel(false);
        tokio::spawn(write_loop(writer, rx));
        tokio::spawn(read_loop(reader, shared.clone(), events.clone(), closed_tx));
        Ok(AgentClient {
            tx,
            shared,
            next_id: Arc::new(AtomicU32::new(1)),
            events,
            closed,
            info: Arc::new(info),
        })
    }

    /// Connects to a guest agent through a Firecracker-style hybrid vsock: the VMM's unix socket
    /// at `uds`, `CONNECT <port>\n` answered by `OK <host port>\n`.
    pub async fn connect_hybrid_vsock(uds: impl AsRef<Path>, port: u32) -> Result<AgentClient> {
        AgentClient::connect(hybrid_vsock_stream(uds.as_ref(), port).await?).await
    }

    /// Connects to a process-mode agent's socket (e.g. after a daemon restart).
    pub async fn connect_unix(path: impl AsRef<Path>) -> Result<AgentClient> {
        let s = tokio::net::UnixStream::connect(path.as_ref()).await?;
        AgentClient::connect(s).await
    }

    pub fn info(&self) -> &AgentInfo {
        &self.info
    }

    /// Sends a request and waits for its reply.
    pub async fn call(&self, req: Request) -> Result<Response> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (otx, orx) = oneshot::channel();
        self.shared.pending.lock().unwrap().insert(id, otx);
        if *self.closed.borrow() {
            self.shared.pending.lock().unwrap().remove(&id);
            return Err(ProtocolError::Closed);
        }
        let frame = Frame::json(FrameKind::Request, id, &req)?;
        if self.tx.send(frame).is_err() {
            self.shared.pending.lock().unwrap().remove(&id);
            return Err(ProtocolError::Closed);
        }
        match orx.await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(ProtocolError::Remote(e)),
            Err(_) => Err(ProtocolError::Closed),
        }
    }

    async fn call_ok(&self, req: Request) -> Result<()> {
        match self.call(req).await? {
            Response::Ok => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Registers the container (nothing runs yet).
    pub async fn create(&self, spec: ContainerSpec) -> Result<()> {
        self.call_ok(Request::Create {
            spec: Box::new(spec),
        })
        .await
    }

    /// Starts the container (`ProcessId::INIT`) or a created exec; returns its pid. An image
    /// command that cannot run gives `ProtocolError::Remote` with `kind == ExecFailed`,
    /// `exit_code` 127/126 and Docker's message; the process is then `Exited` with that code.
    pub async fn start(&self, process: ProcessId) -> Result<u32> {
        match self.call(Request::Start { process }).await? {
            Response::Started { pid } => Ok(pid),
            other => Err(unexpected(other)),
        }
    }

    /// Registers an exec; subscribe to its output, then [`start`](Self::start) it.
    pub async fn exec(&self, spec: ExecSpec) -> Result<ProcessId> {
        match self
            .call(Request::Exec {
                spec: Box::new(spec),
            })
            .await?
        {
            Response::ExecCreated { process } => Ok(process),
            other => Err(unexpected(other)),
        }
    }

    pub async fn signal(&self, process: ProcessId, signal: i32) -> Result<()> {
        self.call_ok(Request::Signal { process, signal }).await
    }

    pub async fn resize(&self, process: ProcessId, rows: u16, cols: u16) -> Result<()> {
        self.call_ok(Request::Resize {
            process,
            rows,
            cols,
        })
        .await
    }

    /// Waits for the current run of `process` to exit (returns at once if it has).
    /// `Err(Closed)` means the agent died: treat the container as exited.
    pub async fn wait(&self, process: ProcessId) -> Result<ExitStatus> {
        match self.call(Request::Wait { process }).await? {
            Response::Exited { status } => Ok(status),
            other => Err(unexpected(other)),
        }
    }

    /// Docker stop: `signal`, then SIGKILL after `timeout`; returns the exit status.
    pub async fn stop(
        &self,
        process: ProcessId,
        signal: i32,
        timeout: Duration,
    ) -> Result<ExitStatus> {
        let state = self.state().await?;
        match state.process(process).map(|p| p.status) {
            Some(crate::ProcessStatus::Exited) => return self.wait(process).await,
            Some(crate::ProcessStatus::Created) => {
                return Err(ProtocolError::Remote(crate::RemoteError::new(
                    ErrorKind::Conflict,
                    format!("process {process} is not running"),
                )))
            }
            _ => {}
        }
        let waiter = self.wait(process);
        tokio::pin!(waiter);
        // A process that exits on its own meanwhile makes `signal` fail with Conflict: fine.
        let not_running = |e: &ProtocolError| {
            e.remote()
                .map(|r| r.kind == ErrorKind::Conflict)
                .unwrap_or(false)
        };
        match self.signal(process, signal).await {
            Err(e) if !not_running(&e) => return Err(e),
            _ => {}
        }
        tokio::select! {
            r = &mut waiter => return r,
            _ = tokio::time::sleep(timeout) => {}
        }
        debug!(%process, "stop timeout, sending SIGKILL");
        match self.signal(process, 9).await {
            Err(e) if !not_running(&e) => return Err(e),
            _ => {}
        }
        waiter.await
    }

    pub async fn state(&self) -> Result<AgentState> {
        match self.call(Request::State).await? {
            Response::State { state } => Ok(state),
            other => Err(unexpected(other)),
        }
    }

    pub async fn stats(&self) -> Result<Stats> {
        match self.call(Request::Stats).await? {
            Response::Stats { stats } => Ok(stats),
            other => Err(unexpected(other)),
        }
    }

    pub async fn top(&self) -> Result<Top> {
        match self.call(Request::Top).await? {
            Response::Top { top } => Ok(top),
            other => Err(unexpected(other)),
        }
    }

    pub async fn pause(&self) -> Result<()> {
        self.call_ok(Request::Pause).await
    }

    pub async fn resume(&self) -> Result<()> {
        self.call_ok(Request::Resume).await
    }

    /// Changes the running container's cgroup limits (see [`Request::Update`]).
    pub async fn update(&self, resources: crate::Resources) -> Result<()> {
        self.call_ok(Request::Update { resources }).await
    }

    /// Asks a microVM's first agent to start another agent for a container of its pod,
    /// listening on vsock `port` (see [`Request::StartPodMember`]).
    pub async fn start_pod_member(&self, port: u32) -> Result<()> {
        self.call_ok(Request::StartPodMember { port }).await
    }

    /// A microVM guest configures one of its spare NICs (see [`Request::ConfigureNic`]).
    pub async fn configure_nic(
        &self,
        nic: crate::NicConfig,
        resolv_conf: Option<String>,
    ) -> Result<()> {
        self.call_ok(Request::ConfigureNic {
            version: nic.version(),
            nic,
            resolv_conf,
        })
        .await
    }

    /// A microVM guest turns a NIC back into a spare (see [`Request::DeconfigureNic`]).
    pub async fn deconfigure_nic(&self, mac: &str, spare_name: &str) -> Result<()> {
        self.call_ok(Request::DeconfigureNic {
            version: crate::NIC_REQUESTS_VERSION,
            mac: mac.to_string(),
            spare_name: spare_name.to_string(),
        })
        .await
    }

    /// A microVM guest's new `/etc/hosts` (see [`Request::RewriteEtcHosts`]).
    pub async fn rewrite_etc_hosts(&self, hosts: String) -> Result<()> {
        self.call_ok(Request::RewriteEtcHosts {
            version: crate::NIC_REQUESTS_VERSION,
            hosts,
        })
        .await
    }

    /// Kills the container's processes, removes its cgroups and makes the agent exit.
    pub async fn shutdown(&self) -> Result<()> {
        match self.call(Request::Shutdown).await {
            Ok(Response::Ok) | Err(ProtocolError::Closed) => {}
            Ok(other) => return Err(unexpected(other)),
            Err(e) => return Err(e),
        }
        self.closed().await;
        Ok(())
    }

    /// Subscribes to the output of `process`'s current run (or next run, if the current one's
    /// output was fully delivered). Call before `start` so nothing is lost. A newer subscription to
    /// the same process replaces this one.
    pub async fn output(&self, process: ProcessId) -> Result<OutputStream> {
        let (otx, orx) = mpsc::unbounded_channel();
        self.shared.outputs.lock().unwrap().insert(process, otx);
        self.call_ok(Request::Subscribe { process }).await?;
        Ok(OutputStream::new(process, orx, self.tx.clone()))
    }

    /// A writer for `process`'s stdin (requires `open_stdin`). One writer per process at a time.
    pub fn stdin(&self, process: ProcessId) -> StdinWriter {
        let (atx, arx) = mpsc::unbounded_channel();
        self.shared.stdin_acks.lock().unwrap().insert(process, atx);
        StdinWriter::new(process, self.tx.clone(), arx, self.clone())
    }

    /// Closes `process`'s stdin (Docker StdinOnce when the attached client goes away).
    pub async fn close_stdin(&self, process: ProcessId) -> Result<()> {
        self.call_ok(Request::CloseStdin { process }).await
    }

    /// Exit (and OOM) events as they happen.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Resolves when the connection is gone (agent exited or killed, or connection lost).
    pub async fn closed(&self) {
        let mut c = self.closed.clone();
        let _ = c.wait_for(|v| *v).await;
    }

    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }
}

fn unexpected(r: Response) -> ProtocolError {
    ProtocolError::UnexpectedReply(format!("{r:?}"))
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: FrameWriter<W>,
    mut rx: mpsc::UnboundedReceiver<Frame>,
) {
    while let Some(frame) = rx.recv().await {
        let mut res = writer.queue(frame);
        while res.is_ok() {
            match rx.try_recv() {
                Ok(f) => res = writer.queue(f),
                Err(_) => break,
            }
        }
        if let Err(e) = res {
            warn!("agent client: dropping unencodable frame: {e}");
            continue;
        }
        if let Err(e) = writer.flush().await {
            debug!("agent client write failed: {e}");
            return;
        }
    }
    let _ = writer.shutdown().await;
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut reader: FrameReader<R>,
    shared: Arc<Shared>,
    events: broadcast::Sender<Event>,
    closed: watch::Sender<bool>,
) {
    loop {
        let frame = match reader.next().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                warn!("agent connection error: {e}");
                break;
            }
        };
        let pid = ProcessId(frame.id);
        match frame.kind {
            FrameKind::Response => match frame.parse::<Reply>() {
                Ok(reply) => {
                    if let Some(tx) = shared.pending.lock().unwrap().remove(&frame.id) {
                        let _ = tx.send(reply);
                    }
                }
                Err(e) => warn!("bad response from agent: {e}"),
            },
            FrameKind::Event => match frame.parse::<Event>() {
                Ok(ev) => {
                    let _ = events.send(ev);
                }
                Err(e) => warn!("bad event from agent: {e}"),
            },
            FrameKind::Stdout | FrameKind::Stderr => {
                let stream = if frame.kind == FrameKind::Stdout {
                    StdStream::Stdout
                } else {
                    StdStream::Stderr
                };
                let outputs = shared.outputs.lock().unwrap();
                if let Some(tx) = outputs.get(&pid) {
                    let _ = tx.send(OutputItem::Data(stream, frame.payload));
                }
            }
            FrameKind::OutputEof => {
                if let Some(tx) = shared.outputs.lock().unwrap().remove(&pid) {
                    let _ = tx.send(OutputItem::Eof);
                }
            }
            FrameKind::StdinAck => {
                let res = if frame.payload.is_empty() {
                    Ok(())
                } else {
                    Err(String::from_utf8_lossy(&frame.payload).into_owned())
                };
                if let Some(tx) = shared.stdin_acks.lock().unwrap().get(&pid) {
                    let _ = tx.send(res);
                }
            }
            other => warn!("unexpected frame {other:?} from agent"),
        }
    }
    let _ = closed.send(true);
    shared.pending.lock().unwrap().clear();
    shared.outputs.lock().unwrap().clear();
    shared.stdin_acks.lock().unwrap().clear();
}

/// A stream to guest port `port` through a Firecracker-style hybrid vsock: the VMM's unix
/// socket at `uds`, `CONNECT <port>\n` answered by `OK <host port>\n`.
pub async fn hybrid_vsock_stream(uds: &Path, port: u32) -> Result<tokio::net::UnixStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(uds).await?;
    s.write_all(format!("CONNECT {port}\n").as_bytes()).await?;
    // Read the reply byte by byte so no agent bytes are consumed.
    let mut line = Vec::new();
    loop {
        let b = s.read_u8().await?;
        if b == b'\n' {
            break;
        }
        line.push(b);
        if line.len() > 64 {
            return Err(ProtocolError::Malformed(
                "hybrid vsock reply too long".into(),
            ));
        }
    }
    if !line.starts_with(b"OK ") {
        return Err(ProtocolError::Refused(format!(
            "vsock CONNECT {port}: {}",
            String::from_utf8_lossy(&line)
        )));
    }
    Ok(s)
}
