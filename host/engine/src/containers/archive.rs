//! `docker cp` (the archive endpoints) and `docker diff`.
//!
//! Paths are resolved the way the container sees them, so a symlink planted in the
//! container can never reach the host: the work happens in a short-lived child
//! (`berthd __archive ...`) that chroots into the container's root — the live root of
//! its main process, or for a stopped container an overlay mounted in the child's own
//! private mount namespace (gone when the child exits). This is Docker's
//! chrootarchive idea.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use super::record::Status;
use super::{Container, Containers};
use crate::{Error, Result};

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
}

impl Containers {
    fn root_access(&self, c: &Arc<Container>) -> Result<RootAccess> {
        let rec = c.record();
        // Checked first: a microVM's `State.Pid` is its VMM, whose root is the host's.
        self.require_host_file_access(&rec, "docker cp")?;
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
    ) -> Result<tokio::process::Command> {
        let access = self.root_access(c)?;
        let binds = match access {
            RootAccess::Live(_) => Vec::new(),
            _ => self.mounts_for_child(c).await,
        };
        let exe = std::env::current_exe().map_err(Error::internal)?;
        let mut cmd = tokio::process::Command::new(exe);
        cmd.arg("__archive").arg(op).arg(path);
        for b in binds {
            cmd.arg("--bind").arg(b);
        }
        match access {
            RootAccess::Live(p) | RootAccess::Dir(p) => {
                cmd.arg("--root").arg(p);
            }
            RootAccess::Overlay { lower, upper, work } => {
                let lowers: Vec<String> = lower
                    .iter()
                    .rev()
                    .map(|p| p.display().to_string())
                    .collect();
                cmd.arg("--overlay").arg(format!(
                    "lowerdir={},upperdir={},workdir={}",
                    lowers.join(":"),
                    upper.display(),
                    work.display()
                ));
            }
        }
        cmd.args(extra).env_clear().kill_on_drop(true);
        Ok(cmd)
    }

    /// HEAD/GET archive: stat of `path` in the container.
    pub async fn archive_stat(&self, c: &Arc<Container>, path: &str) -> Result<PathStat> {
        let out = self
            .archive_child(c, "stat", path, &[])
            .await?
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(Error::internal)?;
        child_result(&out.status, &out.stderr, c, path)?;
        serde_json::from_slice(&out.stdout).map_err(Error::internal)
    }

    /// GET archive: a tar stream of `path`, with its stat.
    pub async fn archive_get(
        &self,
        c: &Arc<Container>,
        path: &str,
    ) -> Result<(PathStat, tokio::process::ChildStdout)> {
        let stat = self.archive_stat(c, path).await?;
        let mut child = self
            .archive_child(c, "get", path, &[])
            .await?
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(Error::internal)?;
        let stdout = child.stdout.take().expect("piped");
        // Reap in the background; the stream ends when the child exits.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        Ok((stat, stdout))
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
        let extra: &[&str] = if no_overwrite_dir_non_dir {
            &["--no-overwrite-dir-non-dir"]
        } else {
            &[]
        };
        let mut child = self
            .archive_child(c, "put", path, extra)
            .await?
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
        child_result(&out.status, &out.stderr, c, path)
    }

    /// `docker diff`: changes in the writable layer against the image.
    pub fn changes(&self, c: &Arc<Container>) -> Result<Vec<(String, u8)>> {
        let rec = c.record();
        self.require_host_file_access(&rec, "docker diff")?;
        if rec.storage != "overlay" {
            return Err(Error::NotImplemented(
                "docker diff needs the overlay storage driver".into(),
            ));
        }
        let upper = self.container_dir(&c.id).join("upper");
        let lowers = self.images.layer_dirs(&rec.image_id)?;
        let mut hidden: Vec<PathBuf> = INIT_LAYER_PATHS.iter().map(PathBuf::from).collect();
        // Binds, volumes and tmpfs (`--tmpfs` is recorded as a mount too).
        hidden.extend(rec.mounts.iter().map(|m| PathBuf::from(&m.destination)));
        let mut out = Vec::new();
        walk_changes(&upper, Path::new("/"), &lowers, &hidden, &mut out);
        out.sort();
        Ok(out)
    }
}

fn child_result(
    status: &std::process::ExitStatus,
    stderr: &[u8],
    c: &Container,
    path: &str,
) -> Result<()> {
    if status.success() {
        return Ok(());
    }
    let msg = String::from_utf8_lossy(stderr).trim().to_string();
    match status.code() {
        Some(2) => Err(Error::not_found(format!(
            "Could not find the file {path} in container {}",
            c.name()
        ))),
        Some(3) => Err(Error::invalid(msg)),
        _ => Err(Error::internal(format!("archive: {msg}"))),
    }
}

/// What the engine itself creates in every container's root to mount over (Docker keeps
/// these in its `-init` layer, so they never show in `docker diff`).
const INIT_LAYER_PATHS: &[&str] = &[
    "/proc",
    "/sys",
    "/dev",
    "/etc/hosts",
    "/etc/hostname",
    "/etc/resolv.conf",
    "/etc/mtab",
    "/.dockerenv",
];

/// Appends the changes under `upper_dir`; returns whether it reported anything. Mount
/// points the engine owns (`hidden`, and the directories leading to them) are left out
/// unless something the user changed lies inside them.
fn walk_changes(
    upper_dir: &Path,
    rel: &Path,
    lowers: &[PathBuf],
    hidden: &[PathBuf],
    out: &mut Vec<(String, u8)>,
) -> bool {
    let Ok(rd) = std::fs::read_dir(upper_dir) else {
        return false;
    };
    let mut any = false;
    for e in rd.flatten() {
        let name = e.file_name();
        let path = rel.join(&name);
        let Ok(meta) = e.path().symlink_metadata() else {
            continue;
        };
        let in_lower = lowers.iter().any(|l| {
            l.join(path.strip_prefix("/").unwrap_or(&path))
                .symlink_metadata()
                .is_ok()
        });
        let shown = path.display().to_string();
        let is_whiteout = meta.file_type().is_char_device_compat() && meta.rdev() == 0;
        if is_whiteout {
            out.push((shown, 2));
            any = true;
            continue;
        }
        let owned = hidden.iter().any(|h| h == &path);
        let leads_to_owned = hidden.iter().any(|h| h.starts_with(&path));
        let at = out.len();
        let inner = meta.is_dir() && walk_changes(&e.path(), &path, lowers, hidden, out);
        if !owned && (!leads_to_owned || inner) {
            out.insert(at, (shown, if in_lower { 0 } else { 1 }));
            any = true;
        }
        any |= inner;
    }
    any
}

trait CharDev {
    fn is_char_device_compat(&self) -> bool;
}
impl CharDev for std::fs::FileType {
    fn is_char_device_compat(&self) -> bool {
        use std::os::unix::fs::FileTypeExt;
        self.is_char_device()
    }
}

// ---------------------------------------------------------------------------------
// The child side: `berthd __archive <stat|get|put> <path> (--root R | --overlay OPTS)`.
// Exit codes: 0 ok, 2 not found, 3 invalid request, 1 other failure.

fn go_file_mode(m: &std::fs::Metadata) -> u32 {
    let perm = m.permissions().mode() & 0o777;
    let ft = m.file_type();
    let mut mode = perm;
    if ft.is_dir() {
        mode |= 1 << 31;
    }
    if ft.is_symlink() {
        mode |= 1 << 27;
    }
    mode
}

fn fail(code: i32, msg: impl std::fmt::Display) -> i32 {
    let _ = writeln!(std::io::stderr(), "{msg}");
    code
}

/// Entry point of the archive child. Never returns to the daemon's runtime.
pub fn archive_child_main(args: &[String]) -> i32 {
    let (op, path) = match (args.first(), args.get(1)) {
        (Some(o), Some(p)) => (o.as_str(), p.clone()),
        _ => {
            return fail(
                3,
                "usage: __archive <stat|get|put> <path> (--root R | --overlay OPTS)",
            )
        }
    };
    let mut root: Option<String> = None;
    let mut overlay: Option<String> = None;
    let mut binds: Vec<(String, String)> = Vec::new();
    let mut no_overwrite = false;
    let mut i = 2;
    while i < args.len() {
        match args[i].as_str() {
            "--bind" => {
                if let Some((src, dst)) = args.get(i + 1).and_then(|b| b.split_once(':')) {
                    binds.push((src.to_string(), dst.to_string()));
                }
                i += 1;
            }
            "--root" => {
                root = args.get(i + 1).cloned();
                i += 1;
            }
            "--overlay" => {
                overlay = args.get(i + 1).cloned();
                i += 1;
            }
            "--no-overwrite-dir-non-dir" => no_overwrite = true,
            _ => {}
        }
        i += 1;
    }
    // A private mount namespace: nothing we mount is seen by, or outlives, us.
    // SAFETY: plain syscalls in a single-threaded child.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return fail(1, format!("unshare: {}", std::io::Error::last_os_error()));
        }
        let root_c = std::ffi::CString::new("/").unwrap();
        libc::mount(
            std::ptr::null(),
            root_c.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        );
    }
    let new_root = match (root, overlay) {
        (Some(r), _) => PathBuf::from(r),
        (None, Some(opts)) => {
            let dir = std::env::temp_dir().join(format!("berth-archive-{}", std::process::id()));
            if let Err(e) = std::fs::create_dir_all(&dir) {
                return fail(1, e);
            }
            let src = std::ffi::CString::new("overlay").unwrap();
            let tgt = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
            let data = std::ffi::CString::new(opts).unwrap();
            // SAFETY: valid C strings.
            if unsafe {
                libc::mount(
                    src.as_ptr(),
                    tgt.as_ptr(),
                    src.as_ptr(),
                    0,
                    data.as_ptr().cast(),
                )
            } != 0
            {
                return fail(
                    1,
                    format!("mount overlay: {}", std::io::Error::last_os_error()),
                );
            }
            dir
        }
        _ => return fail(3, "no root given"),
    };
    // Detached copies of the mount sources, taken before the chroot makes them
    // unreachable; attached below only after it, so a destination path is resolved
    // inside the container's root and its symlinks cannot point a mount at the host.
    let mut trees = Vec::new();
    for (src, dst) in &binds {
        match mount_api::clone_tree(Path::new(src)) {
            Ok(fd) => trees.push((fd, dst.clone())),
            Err(e) => return fail(1, format!("open mount source {src}: {e}")),
        }
    }
    let root_c = std::ffi::CString::new(new_root.as_os_str().as_bytes()).unwrap();
    // SAFETY: chroot + chdir into the container's root; from here every path,
    // including symlinks inside the container, resolves within it.
    unsafe {
        if libc::chroot(root_c.as_ptr()) != 0 {
            return fail(1, format!("chroot: {}", std::io::Error::last_os_error()));
        }
        let slash = std::ffi::CString::new("/").unwrap();
        libc::chdir(slash.as_ptr());
    }
    // Shallow mounts first, so a volume inside another one lands on top of it.
    trees.sort_by_key(|(_, dst)| dst.matches('/').count());
    for (fd, dst) in &trees {
        let _ = std::fs::create_dir_all(dst);
        if let Err(e) = mount_api::attach(fd, Path::new(dst)) {
            return fail(1, format!("mount {dst}: {e}"));
        }
    }
    let target = PathBuf::from(if path.starts_with('/') {
        path.clone()
    } else {
        format!("/{path}")
    });
    match op {
        "stat" => {
            let m = match std::fs::symlink_metadata(&target) {
                Ok(m) => m,
                Err(_) => return fail(2, format!("no such file: {path}")),
            };
            let stat = PathStat {
                name: target
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "/".into()),
                size: m.len() as i64,
                mode: go_file_mode(&m),
                mtime: crate::fsutil::rfc3339_nanos(m.modified().unwrap_or(std::time::UNIX_EPOCH)),
                link_target: std::fs::read_link(&target)
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            };
            let _ = std::io::stdout().write_all(&serde_json::to_vec(&stat).unwrap_or_default());
            0
        }
        "get" => {
            // `docker cp c:/dir -` gives a tar whose top entry is the dir's base name;
            // a trailing "/." means the contents only.
            let contents_only = path.ends_with("/.");
            let src = if contents_only {
                target.parent().unwrap_or(Path::new("/")).to_path_buf()
            } else {
                target.clone()
            };
            let m = match std::fs::symlink_metadata(&src) {
                Ok(m) => m,
                Err(_) => return fail(2, format!("no such file: {path}")),
            };
            let base = src
                .file_name()
                .map(|n| n.to_os_string())
                .unwrap_or_else(|| ".".into());
            let stdout = std::io::stdout().lock();
            let mut b = tar::Builder::new(std::io::BufWriter::new(stdout));
            b.follow_symlinks(false);
            let res = if m.is_dir() {
                b.append_dir_all(
                    if contents_only {
                        Path::new(".")
                    } else {
                        Path::new(&base)
                    },
                    &src,
                )
            } else {
                b.append_path_with_name(&src, &base)
            };
            match res.and_then(|_| b.finish()) {
                Ok(()) => 0,
                Err(e) => fail(1, e),
            }
        }
        "put" => {
            match std::fs::metadata(&target) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return fail(3, "extraction point is not a directory"),
                Err(_) => return fail(2, format!("no such directory: {path}")),
            }
            let mut input = std::io::stdin().lock();
            let mut ar = tar::Archive::new(&mut input);
            ar.set_preserve_permissions(true);
            ar.set_overwrite(true);
            ar.set_unpack_xattrs(false);
            let entries = match ar.entries() {
                Ok(e) => e,
                Err(e) => return fail(3, format!("invalid tar: {e}")),
            };
            for entry in entries {
                let mut entry = match entry {
                    Ok(e) => e,
                    Err(e) => return fail(3, format!("invalid tar: {e}")),
                };
                if no_overwrite {
                    if let Ok(p) = entry.path() {
                        let dest = target.join(&p);
                        if let Ok(existing) = std::fs::symlink_metadata(&dest) {
                            let incoming_dir = entry.header().entry_type().is_dir();
                            if existing.is_dir() != incoming_dir {
                                return fail(
                                    3,
                                    format!(
                                        "cannot overwrite {} with a different kind of file",
                                        p.display()
                                    ),
                                );
                            }
                        }
                    }
                }
                // Docker refuses an archive with a member that leaves the extraction
                // point; unpack_in alone would skip it silently.
                if let Ok(p) = entry.path() {
                    if escapes(&p) {
                        return fail(
                            3,
                            format!("{:?} is outside of {path:?}", p.display().to_string()),
                        );
                    }
                }
                // unpack_in also refuses `..` and absolute member names.
                if let Err(e) = entry.unpack_in(&target) {
                    return fail(3, format!("extract: {e}"));
                }
            }
            // Drain what follows the archive so the sender never sees a broken pipe.
            let _ = std::io::copy(&mut input, &mut std::io::sink());
            0
        }
        other => fail(3, format!("unknown archive op {other}")),
    }
}

/// Does a member name climb above the directory it is extracted into (after `a/..`
/// pairs cancel out, as Go's filepath.Join cleans them)?
fn escapes(p: &Path) -> bool {
    let mut depth = 0i32;
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            std::path::Component::Normal(_) => depth += 1,
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    #[test]
    fn member_escapes() {
        use std::path::Path;
        assert!(super::escapes(Path::new("../x")));
        assert!(super::escapes(Path::new("a/../../x")));
        assert!(!super::escapes(Path::new("a/../x")));
        assert!(!super::escapes(Path::new("/etc/x")));
    }
}

/// The new mount API (Linux 5.2+), which works on detached mounts held as fds.
mod mount_api {
    use std::io;
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const AT_RECURSIVE: libc::c_uint = 0x8000;
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

    /// A detached recursive bind of `src`, as an fd.
    pub fn clone_tree(src: &Path) -> io::Result<OwnedFd> {
        let c = std::ffi::CString::new(src.as_os_str().as_bytes())?;
        // SAFETY: open_tree with a valid path; the returned fd is owned below.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                c.as_ptr(),
                OPEN_TREE_CLONE | AT_RECURSIVE | libc::O_CLOEXEC as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd from the kernel, owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    /// Attach a detached tree at `dst`, resolved in the current root.
    pub fn attach(tree: &OwnedFd, dst: &Path) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let empty = std::ffi::CString::new("").unwrap();
        let c = std::ffi::CString::new(dst.as_os_str().as_bytes())?;
        // SAFETY: move_mount from an fd we own to a valid path.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                tree.as_raw_fd(),
                empty.as_ptr(),
                libc::AT_FDCWD,
                c.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
