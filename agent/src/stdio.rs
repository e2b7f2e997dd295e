//! Process output and input in the agent.
//!
//! Each run of a process gets a [`Run`]: reader tasks move bytes from the pipes/pty into a
//! bounded queue ([`AGENT_OUTPUT_BUFFER`]); when it is full they stop reading, so the process
//! blocks in write(2) — output is never dropped and memory stays bounded. A delivery task sends
//! the queue to the connected host once it has subscribed, within the credit window the host
//! returns, and finishes with `OutputEof` after the process's exit event.
use std::{
    collections::VecDeque,
    io,
    os::fd::{AsRawFd, OwnedFd},
    sync::{Arc, Mutex},
};

use berth_agent_protocol::{
    Frame, FrameKind, ProcessId, AGENT_OUTPUT_BUFFER, MAX_DATA_CHUNK, OUTPUT_WINDOW,
};
use bytes::Bytes;
use tokio::{
    io::unix::AsyncFd,
    sync::{mpsc, Notify},
    task::JoinHandle,
};

/// Where a run's output goes: the agent's current host connection. (A trait, so this
/// module does not depend on the agent's state.)
pub trait OutputSink: Send + Sync + 'static {
    fn send(&self, frame: Frame) -> impl std::future::Future<Output = ()> + Send;
}

#[derive(Default)]
pub struct OutBuf {
    queue: VecDeque<(FrameKind, Bytes)>,
    bytes: usize,
    open_readers: u8,
    exited: bool,
    /// Readers still open after exit are abandoned (e.g. an exec's background child kept the
    /// pipe): finish without them.
    abandoned: bool,
    subscribed: bool,
    credit: i64,
    /// Sent to the host but not yet credited back: the host credits output once it is
    /// stored (the daemon's log driver wrote it), so if the host dies first, the next
    /// subscriber gets these again instead of losing them.
    inflight: VecDeque<(FrameKind, Bytes)>,
    inflight_bytes: usize,
    eof_sent: bool,
    /// A newer run replaced this one: stop delivering.
    retired: bool,
}

pub struct Run {
    out: Mutex<OutBuf>,
    /// Wakes the delivery task.
    changed: Notify,
    /// Wakes readers waiting for buffer space.
    space: Notify,
    stdin: tokio::sync::Mutex<Option<AsyncFd<OwnedFd>>>,
    /// Ordered stdin writes: (process, data, where to send the ack).
    stdin_queue: mpsc::UnboundedSender<(ProcessId, Bytes, mpsc::Sender<Frame>)>,
    tty: Option<OwnedFd>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

pub fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on an owned fd.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the fd is owned by the AsyncFd for its whole registration.
    unsafe { AsyncFd::register(fd) }.map_err(|e| io::Error::other(e.to_string()))
}

impl Run {
    /// Starts the reader and delivery tasks for a freshly launched process.
    pub fn start<S: OutputSink>(
        agent: &Arc<S>,
        process: ProcessId,
        stdio: crate::process::ParentStdio,
        subscribed: bool,
    ) -> io::Result<Arc<Run>> {
        use crate::process::ParentStdio;
        let (readers, stdin, tty): (Vec<(OwnedFd, FrameKind)>, Option<OwnedFd>, Option<OwnedFd>) =
            match stdio {
                ParentStdio::Pipes {
                    stdin,
                    stdout,
                    stderr,
                } => (
                    vec![(stdout, FrameKind::Stdout), (stderr, FrameKind::Stderr)],
                    stdin,
                    None,
                ),
                ParentStdio::Tty { master } => {
                    let writer = master.try_clone()?;
                    let resize = master.try_clone()?;
                    (
                        vec![(master, FrameKind::Stdout)],
                        Some(writer),
                        Some(resize),
                    )
                }
            };
        let stdin = match stdin {
            Some(fd) => {
                set_nonblocking(&fd)?;
                Some(register(fd)?)
            }
            None => None,
        };
        let (stdin_queue, mut stdin_rx) =
            mpsc::unbounded_channel::<(ProcessId, Bytes, mpsc::Sender<Frame>)>();
        let run = Arc::new(Run {
            out: Mutex::new(OutBuf {
                open_readers: readers.len() as u8,
                subscribed,
                credit: if subscribed { OUTPUT_WINDOW as i64 } else { 0 },
                ..OutBuf::default()
            }),
            changed: Notify::new(),
            space: Notify::new(),
            stdin: tokio::sync::Mutex::new(stdin),
            stdin_queue,
            tty,
            tasks: Mutex::new(Vec::new()),
        });
        let mut tasks = Vec::new();
        for (fd, kind) in readers {
            set_nonblocking(&fd)?;
            let afd = register(fd)?;
            tasks.push(tokio::spawn(pump(run.clone(), afd, kind)));
        }
        tokio::spawn(deliver(agent.clone(), process, run.clone()));
        let writer = Arc::downgrade(&run);
        tokio::spawn(async move {
            while let Some((process, data, ack_tx)) = stdin_rx.recv().await {
                let res = match writer.upgrade() {
                    Some(run) => run.write_stdin(&data).await.map_err(|e| e.to_string()),
                    None => Err("process has exited".to_string()),
                };
                let payload = res.err().unwrap_or_default().into_bytes();
                let _ = ack_tx
                    .send(Frame::new(FrameKind::StdinAck, process.0, payload))
                    .await;
            }
        });
        *run.tasks.lock().unwrap() = tasks;
        Ok(run)
    }

    pub fn tty_fd(&self) -> Option<i32> {
        self.tty.as_ref().map(|f| f.as_raw_fd())
    }

    /// Host subscribed: returns false when this run's output was already fully delivered.
    /// Output the previous subscriber received but never credited is sent again first.
    pub fn subscribe(&self) -> bool {
        let mut o = self.out.lock().unwrap();
        if o.eof_sent {
            return false;
        }
        while let Some(item) = o.inflight.pop_back() {
            o.queue.push_front(item);
        }
        o.bytes += std::mem::take(&mut o.inflight_bytes);
        o.subscribed = true;
        o.credit = OUTPUT_WINDOW as i64;
        drop(o);
        self.changed.notify_one();
        true
    }

    /// The connection went away: stop sending until the next subscribe.
    pub fn unsubscribe(&self) {
        let mut o = self.out.lock().unwrap();
        o.subscribed = false;
        o.credit = 0;
    }

    pub fn add_credit(&self, n: u32) {
        let mut o = self.out.lock().unwrap();
        o.credit += n as i64;
        // The host has stored this much (in order): forget it.
        let mut left = n as usize;
        while left > 0 {
            let Some((kind, data)) = o.inflight.pop_front() else {
                break;
            };
            if data.len() > left {
                o.inflight.push_front((kind, data.slice(left..)));
                o.inflight_bytes -= left;
                break;
            }
            left -= data.len();
            o.inflight_bytes -= data.len();
        }
        drop(o);
        self.changed.notify_one();
    }

    /// The process exited and its exit event was queued: EOF may follow once output is drained.
    pub fn mark_exited(self: &Arc<Self>, abandon_after: Option<std::time::Duration>) {
        self.out.lock().unwrap().exited = true;
        self.changed.notify_one();
        if let Some(after) = abandon_after {
            let run = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let mut o = run.out.lock().unwrap();
                if o.open_readers > 0 {
                    o.abandoned = true;
                    for t in run.tasks.lock().unwrap().drain(..) {
                        t.abort();
                    }
                }
                drop(o);
                run.changed.notify_one();
            });
        }
    }

    /// A newer run of the same process replaced this one.
    pub fn retire(&self) {
        self.out.lock().unwrap().retired = true;
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
        self.changed.notify_one();
    }

    pub fn queue_stdin(&self, process: ProcessId, data: Bytes, ack: mpsc::Sender<Frame>) {
        let _ = self.stdin_queue.send((process, data, ack));
    }

    pub async fn close_stdin(&self) {
        if self.tty.is_none() {
            self.stdin.lock().await.take();
        }
    }

    pub async fn write_stdin(&self, data: &[u8]) -> io::Result<()> {
        let guard = self.stdin.lock().await;
        let fd = guard
            .as_ref()
            .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "stdin is not open"))?;
        let mut off = 0;
        while off < data.len() {
            let mut ready = fd.writable().await?;
            match ready.try_io(|f| {
                // SAFETY: writing from a live slice to an owned fd.
                let n = unsafe {
                    libc::write(
                        f.get_ref().as_raw_fd(),
                        data[off..].as_ptr().cast(),
                        data.len() - off,
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            }) {
                Ok(Ok(n)) => off += n,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }
}

async fn pump(run: Arc<Run>, fd: AsyncFd<OwnedFd>, kind: FrameKind) {
    let mut buf = vec![0u8; MAX_DATA_CHUNK];
    loop {
        // Backpressure: wait for room in the queue before reading more.
        loop {
            let space = run.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            if run.out.lock().unwrap().bytes < AGENT_OUTPUT_BUFFER {
                break;
            }
            space.await;
        }
        let mut ready = match fd.readable().await {
            Ok(r) => r,
            Err(_) => break,
        };
        let res = ready.try_io(|f| {
            // SAFETY: reading into a live buffer from an owned fd.
            let n =
                unsafe { libc::read(f.get_ref().as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        match res {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => {
                let mut o = run.out.lock().unwrap();
                o.queue.push_back((kind, Bytes::copy_from_slice(&buf[..n])));
                o.bytes += n;
                drop(o);
                run.changed.notify_one();
            }
            // A pty master reads EIO once the last slave fd is closed.
            Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => break,
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
            Ok(Err(_)) => break,
            Err(_would_block) => continue,
        }
    }
    run.out.lock().unwrap().open_readers -= 1;
    run.changed.notify_one();
}

enum Step {
    Send(FrameKind, Bytes),
    Eof,
    Wait,
}

async fn deliver<S: OutputSink>(agent: Arc<S>, process: ProcessId, run: Arc<Run>) {
    loop {
        let changed = run.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let step = {
            let mut o = run.out.lock().unwrap();
            if o.retired {
                return;
            }
            if !o.subscribed {
                Step::Wait
            } else if !o.queue.is_empty() {
                if o.credit > 0 {
                    let (kind, data) = o.queue.pop_front().expect("non-empty");
                    o.bytes -= data.len();
                    o.credit -= data.len() as i64;
                    o.inflight_bytes += data.len();
                    o.inflight.push_back((kind, data.clone()));
                    Step::Send(kind, data)
                } else {
                    Step::Wait
                }
            } else if o.exited && (o.open_readers == 0 || o.abandoned) && o.inflight.is_empty() {
                // EOF once everything sent is also stored: a host that dies before then
                // gets the rest on its next subscribe.
                o.eof_sent = true;
                o.subscribed = false;
                Step::Eof
            } else {
                Step::Wait
            }
        };
        match step {
            Step::Send(kind, data) => {
                run.space.notify_waiters();
                agent.send(Frame::new(kind, process.0, data)).await;
            }
            Step::Eof => {
                agent
                    .send(Frame::new(FrameKind::OutputEof, process.0, Bytes::new()))
                    .await;
                return;
            }
            Step::Wait => changed.await,
        }
    }
}
