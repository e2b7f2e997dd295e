//! The container's output path: agent → pump → (log driver, attached clients).
//!
//! One pump per run. Lines go to the log driver first; then each attached client gets
//! the raw chunk through a bounded channel, so a slow client slows the container (as
//! with Docker) instead of growing memory. A log driver in blocking mode (the default)
//! that falls behind slows the container the same way: no line is dropped. When the run's output ends, every attached
//! client's channel closes, which ends its attach stream.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use berth_agent_protocol::client::{OutputChunk, OutputStream, StdStream};
use tokio::sync::mpsc;

use super::{Container, Containers};
use crate::logs::{LineSplitter, LogWriter, Source};

#[derive(Debug, Clone, Copy, Default)]
pub struct AttachOpts {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// What an attach request gets: the output of the current or next run.
pub struct Attachment {
    pub output: mpsc::Receiver<OutputChunk>,
    pub tty: bool,
    id: u64,
    container: Arc<Container>,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        self.container.attachers.detach(self.id);
    }
}

#[derive(Clone)]
struct Attacher {
    id: u64,
    tx: mpsc::Sender<OutputChunk>,
    stdout: bool,
    stderr: bool,
}

#[derive(Default)]
pub(crate) struct Attachers {
    list: Mutex<Vec<Attacher>>,
    next: AtomicU64,
}

impl Attachers {
    fn add(&self, a: Attacher) {
        self.list.lock().unwrap().push(a);
    }
    fn detach(&self, id: u64) {
        self.list.lock().unwrap().retain(|a| a.id != id);
    }
    fn snapshot(&self) -> Vec<Attacher> {
        self.list.lock().unwrap().clone()
    }
    /// End of a run's output: every attached stream ends.
    fn close_all(&self) {
        self.list.lock().unwrap().clear();
    }
}

/// Chunks buffered per attached client before the pump waits for it.
const ATTACH_BUFFER: usize = 64;

impl Containers {
    /// Attach to the container's output (before or during a run).
    pub fn attach(&self, c: &Arc<Container>, opts: AttachOpts) -> Attachment {
        let (tx, rx) = mpsc::channel(ATTACH_BUFFER);
        let id = c.attachers.next.fetch_add(1, Ordering::Relaxed);
        c.attachers.add(Attacher {
            id,
            tx,
            stdout: opts.stdout,
            stderr: opts.stderr,
        });
        Attachment {
            output: rx,
            tty: c.record().config.tty.unwrap_or(false),
            id,
            container: c.clone(),
        }
    }
}

/// Move one run's output into the log driver and the attached clients. At daemon shutdown
/// (`shutting_down`), the pump stops taking output, writes what it holds and ends.
pub(crate) async fn pump(
    c: Arc<Container>,
    mut out: OutputStream,
    mut log: Box<dyn LogWriter>,
    mut shutting_down: tokio::sync::watch::Receiver<bool>,
    active: tokio::sync::watch::Sender<usize>,
) {
    active.send_modify(|n| *n += 1);
    let mut split = LineSplitter::default();
    // The agent keeps output until it is credited; credit it once the log driver stored
    // it, in order, so output in flight when the daemon dies is sent again, not lost.
    let credit = out.manual_credit();
    let (stored_tx, mut stored_rx) = tokio::sync::mpsc::unbounded_channel::<(
        std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
        u32,
    )>();
    let committer = tokio::spawn(async move {
        while let Some((stored, bytes)) = stored_rx.recv().await {
            stored.await;
            credit.credit(bytes);
        }
    });
    loop {
        let chunk = tokio::select! {
            biased;
            chunk = out.recv() => chunk,
            _ = shutting_down.wait_for(|s| *s) => None,
        };
        let Some(chunk) = chunk else { break };
        let source = match chunk.stream {
            StdStream::Stdout => Source::Stdout,
            StdStream::Stderr => Source::Stderr,
        };
        split.push(source, &chunk.data, |e| log.write(&e));
        log.flush();
        let _ = stored_tx.send((log.stored(), chunk.data.len() as u32));
        for a in c.attachers.snapshot() {
            let wanted = match chunk.stream {
                StdStream::Stdout => a.stdout,
                StdStream::Stderr => a.stderr,
            };
            if wanted && a.tx.send(chunk.clone()).await.is_err() {
                c.attachers.detach(a.id);
            }
        }
        log.ready().await;
    }
    split.finish(|e| log.write(&e));
    log.flush();
    drop(stored_tx);
    log.finish().await;
    // Closing the session stored everything: the last credits go out.
    let _ = committer.await;
    c.attachers.close_all();
    active.send_modify(|n| *n -= 1);
}
