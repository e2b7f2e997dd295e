//! One process of a task (the container's init or an exec) as containerd sees it: its
//! status, pid, stdio and, once it ended, its exit status.

use berth_agent_protocol::ProcessId;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::stdio::{open_stdin, StdinOpen, StdioPaths};

/// How a process ended: exit code (128+signal when killed) and Unix nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub code: u32,
    pub at_ns: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Stopped,
}

pub struct Proc {
    pub id: ProcessId,
    pub stdio: StdioPaths,
    pub status: Status,
    /// Host pid (process mode) or guest pid (microVM) once started.
    pub pid: u32,
    pub exit_tx: watch::Sender<Option<Exit>>,
    /// The stdin FIFO being opened (until start).
    pub stdin_open: Option<StdinOpen>,
    /// The stdin pump, aborted by CloseIO.
    pub stdin_task: Option<JoinHandle<()>>,
}

impl Proc {
    pub fn new(id: ProcessId, stdio: StdioPaths) -> Self {
        Proc {
            id,
            stdin_open: open_stdin(&stdio.stdin),
            stdio,
            status: Status::Created,
            pid: 0,
            exit_tx: watch::channel(None).0,
            stdin_task: None,
        }
    }

    pub fn exit(&self) -> Option<Exit> {
        *self.exit_tx.borrow()
    }

    /// Record the end of the process (the first report wins).
    pub fn set_exited(&mut self, exit: Exit) -> bool {
        self.status = Status::Stopped;
        if let Some(t) = self.stdin_task.take() {
            t.abort();
        }
        if let Some(t) = self.stdin_open.take() {
            t.abort();
        }
        self.exit_tx.send_if_modified(|e| {
            if e.is_none() {
                *e = Some(exit);
                true
            } else {
                false
            }
        })
    }

    /// Resolves once the process has exited.
    pub fn exited(&self) -> impl std::future::Future<Output = Exit> + Send + 'static {
        let mut rx = self.exit_tx.subscribe();
        async move {
            loop {
                if let Some(e) = *rx.borrow_and_update() {
                    return e;
                }
                if rx.changed().await.is_err() {
                    // The process record is gone without an exit: it was deleted unstarted.
                    return Exit {
                        code: 137,
                        at_ns: crate::events::now_ns(),
                    };
                }
            }
        }
    }
}
