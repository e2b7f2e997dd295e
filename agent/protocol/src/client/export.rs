//! Host side of the guest agent's export channel (see [`crate::export`]).

use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::hybrid_vsock_stream;
use super::Result;
use crate::export::{
    ExportRequest, ARCHIVE_EXIT, ARCHIVE_MAX_FRAME, ARCHIVE_STDERR, ARCHIVE_STDOUT, EXPORT_PORT,
    STATUS_ERROR, STATUS_OK,
};
use crate::{ProtocolError, RemoteError};

/// Asks the guest agent behind the hybrid vsock socket `uds` for an export; on success the
/// returned stream is positioned at the first byte of the tar.
pub async fn open_export(uds: &Path, req: &ExportRequest) -> Result<tokio::net::UnixStream> {
    let mut s = hybrid_vsock_stream(uds, EXPORT_PORT).await?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    s.write_all(&line).await?;
    // The status line, byte by byte so no tar bytes are consumed.
    let mut status = Vec::new();
    loop {
        let b = s.read_u8().await?;
        if b == b'\n' {
            break;
        }
        status.push(b);
        if status.len() > 4096 {
            return Err(ProtocolError::Malformed(
                "export status line too long".into(),
            ));
        }
    }
    let status = String::from_utf8_lossy(&status);
    if status == STATUS_OK {
        return Ok(s);
    }
    match status.strip_prefix(STATUS_ERROR) {
        Some(msg) => Err(ProtocolError::Remote(RemoteError {
            kind: crate::ErrorKind::Internal,
            message: msg.to_string(),
            exit_code: None,
        })),
        None => Err(ProtocolError::Malformed(format!(
            "export status line {status:?}"
        ))),
    }
}

/// What the archive child in the guest sent (see [`crate::export`]).
#[derive(Debug)]
pub enum ArchiveEvent {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit(i32),
}

/// Sends the archive child's stdin: frames of at most [`ARCHIVE_MAX_FRAME`] bytes.
pub async fn archive_send<W: tokio::io::AsyncWrite + Unpin>(w: &mut W, data: &[u8]) -> Result<()> {
    for chunk in data.chunks(ARCHIVE_MAX_FRAME as usize) {
        if chunk.is_empty() {
            continue;
        }
        w.write_all(&(chunk.len() as u32).to_be_bytes()).await?;
        w.write_all(chunk).await?;
    }
    Ok(())
}

/// Ends the archive child's stdin.
pub async fn archive_finish<W: tokio::io::AsyncWrite + Unpin>(w: &mut W) -> Result<()> {
    w.write_all(&0u32.to_be_bytes()).await?;
    w.flush().await?;
    Ok(())
}

/// The next frame from the archive child, `None` at the end of the stream.
pub async fn archive_next<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<ArchiveEvent>> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    if len > ARCHIVE_MAX_FRAME {
        return Err(ProtocolError::FrameTooLarge {
            len: len as usize,
            max: ARCHIVE_MAX_FRAME as usize,
        });
    }
    let mut data = vec![0u8; len as usize];
    r.read_exact(&mut data).await?;
    match head[0] {
        ARCHIVE_STDOUT => Ok(Some(ArchiveEvent::Stdout(data))),
        ARCHIVE_STDERR => Ok(Some(ArchiveEvent::Stderr(data))),
        ARCHIVE_EXIT if data.len() == 4 => Ok(Some(ArchiveEvent::Exit(i32::from_be_bytes([
            data[0], data[1], data[2], data[3],
        ])))),
        k => Err(ProtocolError::Malformed(format!("archive frame kind {k}"))),
    }
}
