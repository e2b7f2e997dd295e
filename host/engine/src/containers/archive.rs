//! `docker cp` (the archive endpoints) and `docker export`.
//!
//! Paths are resolved the way the container sees them, so a symlink planted in the
//! container can never reach the host: the work happens in a short-lived child
//! (`berthd __archive ...`, in `archive_child.rs`) that chroots into the container's root — the live root of
//! its main process, or for a stopped container an overlay mounted in the child's own
//! private mount namespace (gone when the child exits). This is Docker's
//! chrootarchive idea.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use berth_layer::archive::RawStat;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use super::record::Status;
use super::{Container, Containers};
use crate::{Error, Result};

pub use berth_layer::archive::child_main;

/// Docker's `X-Docker-Container-Path-Stat` payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PathStat {
    pub name: String,
    pub size: i64,
    /// Go's `os.FileMode` bits (type bits in the high positions).
    pub mode: u32,
    pub mtime: String,
    #[serde(rename = "linkTarget")]
    pub link_target: String,
}

impl From<RawStat> for PathStat {
    fn from(r: RawStat) -> PathStat {
        let mtime = std::time::UNIX_EPOCH
            + std::time::Duration::from_nanos(r.mtime_unix_nanos.clamp(0, u64::MAX as i128) as u64);
        PathStat {
            name: r.name,
            size: r.size,
            mode: r.mode,
            mtime: crate::fsutil::rfc3339_nanos(mtime),
            link_target: r.link_target,
        }
    }
}

/// How the child reaches the container's root.
#[derive(Debug, Clone)]
enum RootAccess {
    /// `/proc/<pid>/root` of the running container.
    Live(PathBuf),
    /// A prepared directory (copy storage).
    Dir(PathBuf),
    /// Mount this overlay privately, then chroot into it.
    Overlay {
        lower: Vec<PathBuf>,
        upper: PathBuf,
        work: PathBuf,
    },
    /// The running container's root inside its VM (the agent knows its init's pid).
    GuestContainer,
}

/// An archive op ready to run: the child on the host, or the same child in the
/// container's VM, run by its agent (`archive_guest.rs`).
pub(super) enum ArchiveRun {
    Host(tokio::process::Command),
    Guest {
        args: Vec<String>,
        /// The args address a stopped container's overlay: its block volumes are
        /// attached and bound too (see `archive_guest.rs`).
        block_volumes: bool,
    },
}

/// Where the archive child works: the root it enters and the path inside that root.
struct ArchiveTarget {
    access: RootAccess,
    path: String,
    /// The name of the root itself (`--root-name`) when the root is a mount's source, so
    /// `docker cp c:/data -` still names its top entry `data`.
    root_name: Option<String>,
    /// The root is on the container's guest disks: the child runs in its VM.
    in_guest: bool,
}

impl Containers {
    fn root_access(&self, c: &Arc<Container>) -> Result<RootAccess> {
        let rec = c.record();
        if matches!(rec.state.status, Status::Running | Status::Paused) && rec.state.pid > 0 {
            return Ok(RootAccess::Live(PathBuf::from(format!(
                "/proc/{}/root",
                rec.state.pid
            ))));
        }
        match self.rootfs_for(&rec)? {
            berth_agent_protocol::Rootfs::Overlay { lower, upper, work } => {
                Ok(RootAccess::Overlay { lower, upper, work })
            }
            berth_agent_protocol::Rootfs::Dir { path } => Ok(RootAccess::Dir(path)),
            berth_agent_protocol::Rootfs::Block { .. } => Err(Error::NotImplemented(
                "archive of block-device rootfs".into(),
            )),
        }
    }

    /// The root and path for `path` of the container. Where the host cannot see the
    /// container's files (a microVM: they live on a guest disk, which berthd never mounts
    /// in the host kernel), only paths inside a bind mount or directory volume — host
    /// directories the guest reaches over virtio-fs — are served, from that directory.
    async fn archive_target(&self, c: &Arc<Container>, path: &str) -> Result<ArchiveTarget> {
        let rec = c.record();
        if self.backend(&rec).capabilities().host_file_access {
            return Ok(ArchiveTarget {
                access: self.root_access(c)?,
                path: path.to_string(),
                root_name: None,
                in_guest: false,
            });
        }
        let clean = lexical_clean(path);
        // On the guest's disks: the agent runs the same child inside the VM.
        let in_guest = || -> Result<ArchiveTarget> {
            let access = if rec.state.status.is_running() {
                RootAccess::GuestContainer
            } else {
                match self.rootfs_for(&rec)? {
                    berth_agent_protocol::Rootfs::Overlay { lower, upper, work } => {
                        RootAccess::Overlay { lower, upper, work }
                    }
                    _ => {
                        return Err(Error::NotImplemented(
                            "archive of a guest rootfs that is not an overlay".into(),
                        ))
                    }
                }
            };
            Ok(ArchiveTarget {
                access,
                path: path.to_string(),
                root_name: None,
                in_guest: true,
            })
        };
        if clean.split('/').any(|c| c == "..") {
            return in_guest();
        }
        // The innermost mount holding the path.
        let best = self
            .mounts_for_child(c)
            .await
            .into_iter()
            .filter_map(|b| {
                let (source, dest) = b.split_once(':')?;
                let inside = clean == dest || clean.starts_with(&format!("{dest}/"));
                inside.then(|| (dest.to_string(), source.to_string()))
            })
            .max_by_key(|(dest, _)| dest.len());
        let Some((dest, source)) = best else {
            return in_guest();
        };
        let rel = &clean[dest.len()..];
        Ok(ArchiveTarget {
            access: RootAccess::Dir(PathBuf::from(source)),
            path: if rel.is_empty() {
                "/".into()
            } else {
                rel.to_string()
            },
            root_name: Path::new(&dest)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned()),
            in_guest: false,
        })
    }

    /// The container's binds and directory volumes as `SRC:DST`, for a child that builds
    /// the root of a container that is not running (a running one's root has them
    /// already). tmpfs mounts exist only while the container runs.
    async fn mounts_for_child(&self, c: &Arc<Container>) -> Vec<String> {
        let rec = c.record();
        let mut out = Vec::new();
        for m in &rec.mounts {
            let source = match m.kind.as_str() {
                "bind" => m.source.clone(),
                "volume" => match self.volumes() {
                    Ok(v) => match v.inspect(&m.name).await {
                        Ok(view) if Path::new(&view.mountpoint).is_dir() => view.mountpoint,
                        _ => continue,
                    },
                    Err(_) => continue,
                },
                _ => continue,
            };
            if !source.is_empty() && !source.contains(':') && !m.destination.contains(':') {
                out.push(format!("{source}:{}", m.destination));
            }
        }
        out
    }

    /// Docker refuses to write into a read-only mount of the container.
    fn check_writable(&self, c: &Arc<Container>, path: &str) -> Result<()> {
        let rec = c.record();
        let target = Path::new(path);
        let ro = rec
            .mounts
            .iter()
            .filter(|m| target.starts_with(&m.destination))
            .max_by_key(|m| m.destination.len())
            .is_some_and(|m| !m.rw);
        if ro {
            return Err(Error::Forbidden(
                "mounted volume is marked read-only".into(),
            ));
        }
        Ok(())
    }

    async fn archive_child(
        &self,
        c: &Arc<Container>,
        op: &str,
        path: &str,
        extra: &[&str],
    ) -> Result<ArchiveRun> {
        let target = self.archive_target(c, path).await?;
        let binds = match (&target.access, &target.root_name) {
            // A live root has its mounts already; a mount's own source has no others; an
            // export is of the container's own filesystem only; a microVM's mounts are
            // served from the host before a path ever reaches its guest disks.
            (RootAccess::Live(_) | RootAccess::GuestContainer, _) | (_, Some(_)) => Vec::new(),
            _ if op == "export" || target.in_guest => Vec::new(),
            _ => self.mounts_for_child(c).await,
        };
        // A stopped microVM container's block volumes live on disks only its VM mounts;
        // `export` leaves volumes out, as Docker's does.
        let block_volumes = target.in_guest
            && matches!(target.access, RootAccess::Overlay { .. })
            && op != "export";
        let mut args = vec![op.to_string(), target.path.clone()];
        for b in binds {
            args.extend(["--bind".to_string(), b]);
        }
        if let Some(name) = &target.root_name {
            args.extend(["--root-name".to_string(), name.clone()]);
        }
        match target.access {
            RootAccess::Live(p) | RootAccess::Dir(p) => {
                args.extend(["--root".to_string(), p.display().to_string()]);
            }
            RootAccess::Overlay { lower, upper, work } => {
                let lowers: Vec<String> = lower
                    .iter()
                    .rev()
                    .map(|p| p.display().to_string())
                    .collect();
                args.push("--overlay".into());
                args.push(format!(
                    "lowerdir={},upperdir={},workdir={}",
                    lowers.join(":"),
                    upper.display(),
                    work.display()
                ));
            }
            RootAccess::GuestContainer => {
                args.push(berth_agent_protocol::export::ARCHIVE_CONTAINER_ROOT.into());
            }
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        if target.in_guest {
            return Ok(ArchiveRun::Guest {
                args,
                block_volumes,
            });
        }
        sweep_archive_mountpoints();
        let exe = std::env::current_exe().map_err(Error::internal)?;
        let mut cmd = tokio::process::Command::new(exe);
        cmd.arg("__archive")
            .args(args)
            .env_clear()
            .kill_on_drop(true);
        Ok(ArchiveRun::Host(cmd))
    }

    /// HEAD/GET archive: stat of `path` in the container.
    pub async fn archive_stat(&self, c: &Arc<Container>, path: &str) -> Result<PathStat> {
        let run = self.archive_child(c, "stat", path, &[]).await?;
        let (code, stdout, stderr) = self.archive_output(c, run).await?;
        child_result(code, &stderr, c, path)?;
        let raw: RawStat = serde_json::from_slice(&stdout).map_err(Error::internal)?;
        Ok(PathStat::from(raw))
    }

    /// GET archive: a tar stream of `path`, with its stat.
    pub async fn archive_get(
        &self,
        c: &Arc<Container>,
        path: &str,
    ) -> Result<(PathStat, TarStream)> {
        let stat = self.archive_stat(c, path).await?;
        let ids = self.owner_map_args(&c.record());
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let run = self.archive_child(c, "get", path, &ids).await?;
        Ok((stat, self.archive_stream(c, run).await?))
    }

    /// PUT archive: extract a tar into the directory `path` of the container.
    pub async fn archive_put(
        &self,
        c: &Arc<Container>,
        path: &str,
        no_overwrite_dir_non_dir: bool,
        mut body: impl futures_util::Stream<Item = std::result::Result<bytes::Bytes, String>> + Unpin,
    ) -> Result<()> {
        use futures_util::StreamExt;
        let refused = if c.record().host_config.readonly_rootfs.unwrap_or(false) {
            Err(Error::Forbidden(
                "container rootfs is marked read-only".into(),
            ))
        } else {
            self.check_writable(c, path)
        };
        if let Err(e) = refused {
            // Read the upload to its end first: a client still sending would see a
            // broken pipe instead of this error.
            while let Some(Ok(_)) = body.next().await {}
            return Err(e);
        }
        let mut extra: Vec<String> = Vec::new();
        if no_overwrite_dir_non_dir {
            extra.push("--no-overwrite-dir-non-dir".into());
        }
        // Under `--userns-remap` what is copied in belongs to the container's root.
        if let Some(ns) = self.userns_for(&c.record()) {
            let (uid, gid) = ns.root();
            extra.extend(["--owner".into(), format!("{uid}:{gid}")]);
        }
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let mut cmd = match self.archive_child(c, "put", path, &extra).await? {
            ArchiveRun::Host(cmd) => cmd,
            ArchiveRun::Guest {
                args,
                block_volumes,
            } => {
                let (code, stderr) = self.archive_put_guest(c, args, block_volumes, body).await?;
                return child_result(code, &stderr, c, path);
            }
        };
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(Error::internal)?;
        let mut stdin = child.stdin.take().expect("piped");
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(Error::invalid)?;
            if stdin.write_all(&chunk).await.is_err() {
                break;
            }
        }
        drop(stdin);
        let out = child.wait_with_output().await.map_err(Error::internal)?;
        child_result(out.status.code(), &out.stderr, c, path)
    }

    /// `docker export`: a tar stream of the container's filesystem (without its volumes
    /// and binds), running or not.
    pub async fn export(&self, c: &Arc<Container>) -> Result<TarStream> {
        let ids = self.owner_map_args(&c.record());
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let run = self.archive_child(c, "export", "/", &ids).await?;
        self.archive_stream(c, run).await
    }

    /// Runs an archive op without input to its end: exit code, stdout, stderr.
    async fn archive_output(
        &self,
        c: &Arc<Container>,
        run: ArchiveRun,
    ) -> Result<(Option<i32>, Vec<u8>, Vec<u8>)> {
        match run {
            ArchiveRun::Host(mut cmd) => {
                let out = cmd
                    .stdin(Stdio::null())
                    .output()
                    .await
                    .map_err(Error::internal)?;
                Ok((out.status.code(), out.stdout, out.stderr))
            }
            ArchiveRun::Guest {
                args,
                block_volumes,
            } => self.archive_output_guest(c, args, block_volumes).await,
        }
    }

    /// Starts an archive op that writes a tar (`get`, `export`); the stream ends with it.
    async fn archive_stream(&self, c: &Arc<Container>, run: ArchiveRun) -> Result<TarStream> {
        match run {
            ArchiveRun::Host(cmd) => Ok(Box::pin(tar_stream(cmd)?)),
            ArchiveRun::Guest {
                args,
                block_volumes,
            } => self.archive_stream_guest(c, args, block_volumes).await,
        }
    }
}

/// A tar being produced for the client.
pub type TarStream = std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>;

/// dockerd's 404 for a path the container does not have. dockerd names the container as
/// the request did (name or id): the API layer swaps in what the client sent.
pub fn file_not_found(path: &str, container: &str) -> Error {
    Error::not_found(format!(
        "Could not find the file {path} in container {container}"
    ))
}

/// The archive child's exit code (`None`: killed) as the API error Docker gives.
fn child_result(code: Option<i32>, stderr: &[u8], c: &Container, path: &str) -> Result<()> {
    if code == Some(0) {
        return Ok(());
    }
    let msg = String::from_utf8_lossy(stderr).trim().to_string();
    match code {
        Some(2) => Err(file_not_found(path, &c.name())),
        Some(3) => Err(Error::invalid(msg)),
        _ => Err(Error::internal(format!("archive: {msg}"))),
    }
}

// ---------------------------------------------------------------------------------
/// Start an archive child that writes a tar to its stdout; the stream ends when it exits.
fn tar_stream(mut cmd: tokio::process::Command) -> Result<tokio::process::ChildStdout> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(Error::internal)?;
    let stdout = child.stdout.take().expect("piped");
    // Reap in the background.
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    Ok(stdout)
}

/// The archive child mounts a stopped container's overlay on `<tmp>/berth-archive-<pid>` in
/// its private mount namespace; the empty directory outlives it. Remove those of children
/// that are gone.
fn sweep_archive_mountpoints() {
    let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("berth-archive-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir(e.path());
        }
    }
}

/// `path` without repeated slashes and `.` components, absolute, keeping a trailing `/.`
/// (Docker's "the directory's contents").
fn lexical_clean(path: &str) -> String {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    let mut out = format!("/{}", parts.join("/"));
    if path.ends_with("/.") || path == "." {
        out = if out == "/" { "/.".into() } else { out + "/." };
    }
    out
}
