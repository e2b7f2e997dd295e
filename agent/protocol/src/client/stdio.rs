//! Output streams and stdin writers of the host client.
use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{AgentClient, OutputItem};
use crate::{Frame, FrameKind, ProcessId, ProtocolError, MAX_DATA_CHUNK, OUTPUT_WINDOW};

/// Which stream a chunk came from. With a tty everything is `Stdout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdStream {
    Stdout,
    Stderr,
}

impl StdStream {
    /// Docker's stdcopy stream byte (1 = stdout, 2 = stderr).
    pub fn stdcopy_id(self) -> u8 {
        match self {
            StdStream::Stdout => 1,
            StdStream::Stderr => 2,
        }
    }
}

#[derive(Debug, Clone)]
pub struct OutputChunk {
    pub stream: StdStream,
    pub data: Bytes,
}

impl OutputChunk {
    /// The chunk as one Docker stdcopy frame (`[stream,0,0,0,len BE]` + data), for non-tty
    /// attach/logs streams.
    pub fn to_stdcopy(&self) -> Bytes {
        let mut b = bytes::BytesMut::with_capacity(8 + self.data.len());
        b.extend_from_slice(&[self.stream.stdcopy_id(), 0, 0, 0]);
        b.extend_from_slice(&(self.data.len() as u32).to_be_bytes());
        b.extend_from_slice(&self.data);
        b.freeze()
    }
}

/// Output of one process run. Ends (`None`) after the run's output is complete — the process's
/// `Exited` event has been sent before that — or when the connection is lost
/// ([`completed`](Self::completed) tells which). Also a `futures_core::Stream`.
pub struct OutputStream {
    process: ProcessId,
    rx: mpsc::UnboundedReceiver<OutputItem>,
    tx: mpsc::UnboundedSender<Frame>,
    unacked: u32,
    /// The consumer credits the agent itself ([`OutputStream::manual_credit`]).
    manual: bool,
    completed: bool,
    finished: bool,
}

/// Returns output window to the agent for a stream in manual-credit mode: call it once
/// the bytes are stored, and the agent forgets them; bytes never credited are sent again
/// to the next subscriber (e.g. after a daemon restart).
#[derive(Clone)]
pub struct CreditHandle {
    process: ProcessId,
    tx: mpsc::UnboundedSender<Frame>,
}

impl CreditHandle {
    pub fn credit(&self, bytes: u32) {
        if bytes > 0 {
            let _ = self.tx.send(Frame::credit(self.process.0, bytes));
        }
    }
}

impl OutputStream {
    pub(crate) fn new(
        process: ProcessId,
        rx: mpsc::UnboundedReceiver<OutputItem>,
        tx: mpsc::UnboundedSender<Frame>,
    ) -> Self {
        OutputStream {
            process,
            rx,
            tx,
            unacked: 0,
            manual: false,
            completed: false,
            finished: false,
        }
    }

    pub fn process(&self) -> ProcessId {
        self.process
    }

    /// From now on the consumer returns credit through the handle, after storing the
    /// output, instead of the stream crediting on receipt.
    pub fn manual_credit(&mut self) -> CreditHandle {
        self.manual = true;
        let pending = std::mem::take(&mut self.unacked);
        let handle = CreditHandle {
            process: self.process,
            tx: self.tx.clone(),
        };
        handle.credit(pending);
        handle
    }

    /// True once the agent said the output is complete (vs. the connection dropping).
    pub fn completed(&self) -> bool {
        self.completed
    }

    pub async fn recv(&mut self) -> Option<OutputChunk> {
        std::future::poll_fn(|cx| self.poll_next_chunk(cx)).await
    }

    fn poll_next_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<OutputChunk>> {
        if self.finished {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(OutputItem::Data(stream, data))) => {
                if !self.manual {
                    // Return window in batches of a quarter window under load, and at once
                    // when nothing more is waiting: the agent ends the output (EOF) only
                    // once everything it sent was credited.
                    self.unacked += data.len() as u32;
                    if self.unacked >= OUTPUT_WINDOW / 4 || self.rx.is_empty() {
                        let _ = self.tx.send(Frame::credit(self.process.0, self.unacked));
                        self.unacked = 0;
                    }
                }
                Poll::Ready(Some(OutputChunk { stream, data }))
            }
            Poll::Ready(Some(OutputItem::Eof)) => {
                self.completed = true;
                self.finished = true;
                Poll::Ready(None)
            }
            Poll::Ready(None) => {
                self.finished = true;
                Poll::Ready(None)
            }
        }
    }
}

impl futures_core::Stream for OutputStream {
    type Item = OutputChunk;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<OutputChunk>> {
        self.get_mut().poll_next_chunk(cx)
    }
}

/// Chunks of one `StdinWriter::write` that may be unacknowledged at once.
pub const STDIN_IN_FLIGHT: usize = 8;

/// Writes a process's stdin; each write completes when the agent has written it to the process.
pub struct StdinWriter {
    process: ProcessId,
    tx: mpsc::UnboundedSender<Frame>,
    acks: mpsc::UnboundedReceiver<Result<(), String>>,
    client: AgentClient,
}

impl StdinWriter {
    pub(crate) fn new(
        process: ProcessId,
        tx: mpsc::UnboundedSender<Frame>,
        acks: mpsc::UnboundedReceiver<Result<(), String>>,
        client: AgentClient,
    ) -> Self {
        StdinWriter {
            process,
            tx,
            acks,
            client,
        }
    }

    /// Writes `data`; returns once the agent has written all of it to the process. Up to
    /// [`STDIN_IN_FLIGHT`] chunks are in flight, so a process that stops reading pushes back.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), ProtocolError> {
        let mut in_flight = 0usize;
        let mut first_err = None;
        for chunk in data.chunks(MAX_DATA_CHUNK) {
            if in_flight == STDIN_IN_FLIGHT {
                self.ack(&mut first_err).await?;
                in_flight -= 1;
            }
            if first_err.is_some() {
                break;
            }
            let frame = Frame::new(
                FrameKind::Stdin,
                self.process.0,
                Bytes::copy_from_slice(chunk),
            );
            self.tx.send(frame).map_err(|_| ProtocolError::Closed)?;
            in_flight += 1;
        }
        for _ in 0..in_flight {
            self.ack(&mut first_err).await?;
        }
        match first_err {
            Some(msg) => Err(ProtocolError::Io(std::io::Error::other(msg))),
            None => Ok(()),
        }
    }

    async fn ack(&mut self, first_err: &mut Option<String>) -> Result<(), ProtocolError> {
        match self.acks.recv().await {
            Some(Ok(())) => Ok(()),
            Some(Err(msg)) => {
                first_err.get_or_insert(msg);
                Ok(())
            }
            None => Err(ProtocolError::Closed),
        }
    }

    /// Closes the process's stdin.
    pub async fn close(self) -> Result<(), ProtocolError> {
        self.client.close_stdin(self.process).await
    }
}
