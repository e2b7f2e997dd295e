//! Archive ops on a microVM container's guest disks: the guest agent runs the same
//! chrooted archive child as berthd does for process containers, over its export channel
//! (`berth_agent_protocol::export`), so `docker cp` and `docker export` behave the same in
//! both isolation modes while the host never mounts a disk the guest wrote.

use std::sync::Arc;

use berth_agent_protocol::client::{archive_finish, archive_next, archive_send, ArchiveEvent};
use bytes::Bytes;
use futures_util::StreamExt;

use super::archive::TarStream;
use super::{Container, Containers};
use crate::isolation::files::{FilesExport, FilesStream};
use crate::{Error, Result};

/// Most stderr kept from the child (one error message).
const MAX_STDERR: usize = 64 << 10;

type Reader = tokio::io::ReadHalf<FilesStream>;

fn session_error(e: impl std::fmt::Display) -> Error {
    Error::internal(format!("archive in the container's microVM: {e}"))
}

/// Reads the session to its exit frame: exit code, stdout, stderr.
async fn collect(r: &mut Reader) -> Result<(Option<i32>, Vec<u8>, Vec<u8>)> {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    loop {
        match archive_next(r).await.map_err(session_error)? {
            Some(ArchiveEvent::Stdout(d)) => out.extend_from_slice(&d),
            Some(ArchiveEvent::Stderr(d)) => {
                let room = MAX_STDERR.saturating_sub(err.len());
                err.extend_from_slice(&d[..d.len().min(room)]);
            }
            Some(ArchiveEvent::Exit(code)) => return Ok((Some(code), out, err)),
            None => return Err(session_error("the agent closed the session early")),
        }
    }
}

/// Releases the volumes mounted for a VM booted to reach a stopped container's files,
/// and only then the container's op lock: a start waiting on it mounts them again.
struct VolumeHold {
    volumes: Arc<crate::volumes::Volumes>,
    names: Vec<String>,
    id: String,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for VolumeHold {
    fn drop(&mut self) {
        let (volumes, names, id) = (
            self.volumes.clone(),
            std::mem::take(&mut self.names),
            std::mem::take(&mut self.id),
        );
        let guard = self.guard.take();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            for name in names {
                volumes.unmount(&name, &id).await;
            }
            drop(guard);
        });
    }
}

impl Containers {
    /// An archive session in the container's VM. With `block_volumes` (the args address a
    /// stopped container's overlay), a VM booted for it also gets the container's block
    /// volumes, mounted through their driver like a start does (refused while another
    /// running container has one attached), and bound at their destinations in the
    /// child's root.
    async fn archive_session(
        &self,
        c: &Arc<Container>,
        mut args: Vec<String>,
        block_volumes: bool,
    ) -> Result<(Reader, tokio::io::WriteHalf<FilesStream>)> {
        let guard = self.stopped_guard(c).await?;
        let mut rec = c.record();
        let has_volumes = rec.mounts.iter().any(|m| m.kind == "volume");
        let s = match guard {
            Some(guard) if block_volumes && has_volumes => {
                self.resolve_volume_mounts(&mut rec).await?;
                let hold = VolumeHold {
                    volumes: self.volumes()?.clone(),
                    names: rec
                        .mounts
                        .iter()
                        .filter(|m| m.kind == "volume")
                        .map(|m| m.name.clone())
                        .collect(),
                    id: rec.id.clone(),
                    guard: Some(guard),
                };
                let backend = self.backend(&rec);
                for (i, m) in rec.mounts.iter().enumerate().filter(|(_, m)| m.block) {
                    if m.destination.contains(':') {
                        continue;
                    }
                    args.push("--bind".into());
                    args.push(format!(
                        "{}:{}",
                        backend.mount_source(i, m).display(),
                        m.destination
                    ));
                }
                let what = FilesExport::Archive {
                    args,
                    block_volumes: true,
                };
                backend.export_files(&rec, what, Box::new(hold)).await?
            }
            guard => {
                let hold: crate::isolation::files::Hold = match guard {
                    Some(g) => Box::new(g),
                    None => Box::new(()),
                };
                let what = FilesExport::Archive {
                    args,
                    block_volumes: false,
                };
                self.backend(&rec).export_files(&rec, what, hold).await?
            }
        };
        Ok(tokio::io::split(s))
    }

    pub(super) async fn archive_output_guest(
        &self,
        c: &Arc<Container>,
        args: Vec<String>,
        block_volumes: bool,
    ) -> Result<(Option<i32>, Vec<u8>, Vec<u8>)> {
        let (mut r, mut w) = self.archive_session(c, args, block_volumes).await?;
        archive_finish(&mut w).await.map_err(session_error)?;
        collect(&mut r).await
    }

    pub(super) async fn archive_stream_guest(
        &self,
        c: &Arc<Container>,
        args: Vec<String>,
        block_volumes: bool,
    ) -> Result<TarStream> {
        let (r, mut w) = self.archive_session(c, args, block_volumes).await?;
        archive_finish(&mut w).await.map_err(session_error)?;
        // The halves travel with the stream: the session (and a VM booted for it) ends
        // when the client has read the tar or gone away.
        let frames = futures_util::stream::unfold(Some((r, w)), |state| async move {
            let (mut r, w) = state?;
            loop {
                let err = match archive_next(&mut r).await {
                    Ok(Some(ArchiveEvent::Stdout(d))) => {
                        return Some((Ok(Bytes::from(d)), Some((r, w))))
                    }
                    Ok(Some(ArchiveEvent::Stderr(_))) => continue,
                    Ok(Some(ArchiveEvent::Exit(0))) => return None,
                    Ok(Some(ArchiveEvent::Exit(code))) => {
                        format!("the archive child exited {code}")
                    }
                    Ok(None) => "the agent closed the session early".to_string(),
                    Err(e) => e.to_string(),
                };
                return Some((Err(std::io::Error::other(err)), None));
            }
        });
        Ok(Box::pin(tokio_util::io::StreamReader::new(frames.boxed())))
    }

    /// `put`: the upload goes to the child's stdin as frames. Returns exit code and stderr.
    pub(super) async fn archive_put_guest(
        &self,
        c: &Arc<Container>,
        args: Vec<String>,
        block_volumes: bool,
        mut body: impl futures_util::Stream<Item = std::result::Result<Bytes, String>> + Unpin,
    ) -> Result<(Option<i32>, Vec<u8>)> {
        let (mut r, mut w) = self.archive_session(c, args, block_volumes).await?;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(Error::invalid)?;
            if let Err(e) = archive_send(&mut w, &chunk).await {
                // Read the upload to its end: the client would see a broken pipe instead
                // of the error.
                while let Some(Ok(_)) = body.next().await {}
                return Err(session_error(e));
            }
        }
        archive_finish(&mut w).await.map_err(session_error)?;
        let (code, _, err) = collect(&mut r).await?;
        Ok((code, err))
    }
}
