//! A process's stdio through containerd's FIFOs: the agent's output frames go to the
//! stdout/stderr FIFOs, the stdin FIFO feeds the agent's stdin pipe.

use std::path::PathBuf;

use berth_agent_protocol::client::{AgentClient, OutputStream, StdStream};
use berth_agent_protocol::ProcessId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

/// The FIFO paths containerd gave for one process (empty = not attached).
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// Open a FIFO for writing without waiting for a reader: read-write keeps the open from
/// blocking and from failing while containerd has not opened its end yet.
fn open_writer(path: &str) -> std::io::Result<Option<pipe::Sender>> {
    if path.is_empty() {
        return Ok(None);
    }
    pipe::OpenOptions::new()
        .read_write(true)
        .open_sender(path)
        .map(Some)
}

/// Copy `out` (subscribed before the process started) to the FIFOs until the run's output
/// is complete. The returned task ends after the last byte was written.
pub fn pump_output(mut out: OutputStream, paths: &StdioPaths) -> std::io::Result<JoinHandle<()>> {
    let mut stdout = open_writer(&paths.stdout)?;
    let mut stderr = open_writer(&paths.stderr)?;
    Ok(tokio::spawn(async move {
        while let Some(chunk) = out.recv().await {
            let dest = match chunk.stream {
                StdStream::Stdout => stdout.as_mut(),
                // With a terminal there is one stream; without a stderr FIFO it is dropped.
                StdStream::Stderr => stderr.as_mut(),
            };
            if let Some(w) = dest {
                if let Err(e) = w.write_all(&chunk.data).await {
                    tracing::debug!("writing output to its FIFO: {e}");
                }
            }
        }
    }))
}

/// The stdin FIFO, being opened for reading. Opened at create/exec time, while containerd's
/// client is still there to open its end: `ctr run -d` exits right after Start, and an
/// open started after that would block its thread for good.
pub type StdinOpen = JoinHandle<std::io::Result<std::fs::File>>;

pub fn open_stdin(path: &str) -> Option<StdinOpen> {
    if path.is_empty() {
        return None;
    }
    let path = PathBuf::from(path);
    // The open blocks until containerd's side opens its end.
    Some(tokio::task::spawn_blocking(move || {
        std::fs::File::open(&path)
    }))
}

/// Feed the stdin FIFO to the started process until containerd closes its end, then
/// close the process's stdin.
pub fn pump_stdin(agent: &AgentClient, process: ProcessId, opening: StdinOpen) -> JoinHandle<()> {
    let mut writer = agent.stdin(process);
    tokio::spawn(async move {
        let file = match opening.await {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                tracing::warn!("opening the stdin FIFO: {e}");
                return;
            }
            Err(_) => return,
        };
        let mut file = tokio::fs::File::from_std(file);
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match file.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if writer.write(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = writer.close().await;
    })
}
