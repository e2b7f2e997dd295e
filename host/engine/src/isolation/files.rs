//! A container's files as a tar stream from its isolation backend, for backends whose
//! files the host cannot reach ([`super::Capabilities::host_file_access`] is false):
//! `docker commit`, `diff`, `export`, `cp` and the builder's RUN steps read them through
//! this.

use std::any::Any;
use std::future::Future;
use std::io::{Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What to stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilesExport {
    /// The writable layer as an OCI layer diff (whiteouts as `.wh.` entries).
    Changes,
    /// A session of the chrooted archive child (`berth_layer::archive`) with these
    /// arguments, framed as `berth_agent_protocol::export` describes (`docker cp`,
    /// `docker export`).
    Archive {
        args: Vec<String>,
        /// A VM booted for this session also attaches the record's block volumes, which
        /// the caller has mounted through their driver (and releases with its hold):
        /// `docker cp` into a stopped container's volume reaches the volume.
        block_volumes: bool,
    },
}

/// Whatever the caller must hold until the export is over (e.g. a stopped container's op
/// lock, so it cannot start on the disks a short-lived VM still has open).
pub type Hold = Box<dyn Any + Send>;

/// The connection an export is read from (and, for an archive session, written to);
/// dropping it ends what was started for it (a VM booted for the export), in the
/// background, and only then releases the caller's [`Hold`].
pub struct FilesStream {
    inner: Pin<Box<dyn AsyncReadWrite>>,
    cleanup: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl FilesStream {
    pub fn new(
        inner: impl AsyncRead + AsyncWrite + Send + 'static,
        cleanup: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        FilesStream {
            inner: Box::pin(inner),
            cleanup: Some(Box::pin(cleanup)),
        }
    }
}

impl AsyncRead for FilesStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.inner.as_mut().poll_read(cx, buf)
    }
}

impl AsyncWrite for FilesStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.inner.as_mut().poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.inner.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.inner.as_mut().poll_shutdown(cx)
    }
}

trait AsyncReadWrite: AsyncRead + AsyncWrite + Send {}
impl<T: AsyncRead + AsyncWrite + Send> AsyncReadWrite for T {}

impl Drop for FilesStream {
    fn drop(&mut self) {
        if let Some(c) = self.cleanup.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(h) => {
                    h.spawn(c);
                }
                // No runtime (process exit): the VM's state file lets the next start or
                // `rm` find and stop it.
                Err(_) => tracing::warn!("export cleanup skipped: no runtime"),
            }
        }
    }
}

/// Copies a tar from `r` to `w` and fails unless it ended with the end-of-archive marker:
/// a stream cut short (an agent or VM that died mid-way) must not pass for a layer with
/// files missing.
pub fn copy_complete_tar(mut r: impl Read, mut w: impl Write) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 256 << 10];
    let mut tail = [0u8; 1024];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        w.write_all(&buf[..n])?;
        total += n as u64;
        const T: usize = 1024;
        if n >= T {
            tail.copy_from_slice(&buf[n - T..n]);
        } else {
            tail.copy_within(n.., 0);
            tail[T - n..].copy_from_slice(&buf[..n]);
        }
    }
    if total < 1024 || !berth_agent_protocol::export::ends_with_tar_trailer(&tail) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the container's files ended before the end of the archive (its agent stopped mid-way?)",
        ));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_tar_is_refused() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3000);
        h.set_mode(0o644);
        b.append_data(&mut h, "f", &[7u8; 3000][..]).unwrap();
        let whole = b.into_inner().unwrap();
        let mut out = Vec::new();
        assert_eq!(
            copy_complete_tar(&whole[..], &mut out).unwrap(),
            whole.len() as u64
        );
        assert_eq!(out, whole);
        // Read in small pieces, so the trailer spans reads.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
                let n = self.0.len().min(b.len()).min(100);
                b[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        assert!(copy_complete_tar(Trickle(&whole), std::io::sink()).is_ok());
        let cut = &whole[..whole.len() - 1024];
        assert!(copy_complete_tar(cut, std::io::sink()).is_err());
        assert!(copy_complete_tar(&whole[..600], std::io::sink()).is_err());
    }
}
