//! The archive child, `<exe> <stat|get|export|put> <path> (--root R | --overlay OPTS)`:
//! a short-lived process that enters a private mount namespace, builds or enters the
//! container's root, chroots into it and only then resolves the path, so no symlink in the
//! container can point it at the host (Docker's chrootarchive). berthd runs it as
//! `berthd __archive ...` for process containers; the guest agent as `berth-agent archive
//! ...` inside a microVM, for paths on the guest's disks.
//! Exit codes: 0 ok, 2 not found, 3 invalid request, 1 other failure.
//! `stat` prints a [`RawStat`] as JSON; `get` and `export` write a tar to stdout; `put`
//! reads one from stdin.

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What `stat` prints: the fields of Docker's `X-Docker-Container-Path-Stat`, with the
/// modification time as nanoseconds since the epoch (the daemon formats it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RawStat {
    pub name: String,
    pub size: i64,
    /// Go's `os.FileMode` bits (type bits in the high positions).
    pub mode: u32,
    pub mtime_unix_nanos: i128,
    pub link_target: String,
}

/// Go's `os.FileMode` of an lstat, as dockerd puts it in the stat header
/// (`fillFileStatFromSys`): type bits and setuid/setgid/sticky in Go's own positions.
fn go_file_mode(m: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::FileTypeExt;
    const DIR: u32 = 1 << 31;
    const SYMLINK: u32 = 1 << 27;
    const DEVICE: u32 = 1 << 26;
    const NAMED_PIPE: u32 = 1 << 25;
    const SOCKET: u32 = 1 << 24;
    const SETUID: u32 = 1 << 23;
    const SETGID: u32 = 1 << 22;
    const CHAR_DEVICE: u32 = 1 << 21;
    const STICKY: u32 = 1 << 20;
    let unix = m.permissions().mode();
    let ft = m.file_type();
    let mut mode = unix & 0o777;
    if ft.is_dir() {
        mode |= DIR;
    } else if ft.is_symlink() {
        mode |= SYMLINK;
    } else if ft.is_block_device() {
        mode |= DEVICE;
    } else if ft.is_char_device() {
        mode |= DEVICE | CHAR_DEVICE;
    } else if ft.is_fifo() {
        mode |= NAMED_PIPE;
    } else if ft.is_socket() {
        mode |= SOCKET;
    }
    for (unix_bit, go_bit) in [(0o4000, SETUID), (0o2000, SETGID), (0o1000, STICKY)] {
        if unix & unix_bit != 0 {
            mode |= go_bit;
        }
    }
    mode
}

fn fail(code: i32, msg: impl std::fmt::Display) -> i32 {
    let _ = writeln!(std::io::stderr(), "{msg}");
    code
}

/// Entry point of the archive child. Never returns to the daemon's runtime.
pub fn child_main(args: &[String]) -> i32 {
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
    let mut root_name: Option<String> = None;
    let mut overlay: Option<String> = None;
    let mut binds: Vec<(String, String)> = Vec::new();
    let mut no_overwrite = false;
    let mut owner: Option<(u32, u32)> = None;
    let mut owner_map = crate::owner_map::OwnerMap::default();
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
            "--root-name" => {
                root_name = args.get(i + 1).cloned();
                i += 1;
            }
            "--overlay" => {
                overlay = args.get(i + 1).cloned();
                i += 1;
            }
            "--no-overwrite-dir-non-dir" => no_overwrite = true,
            "--uid-map" | "--gid-map" => {
                let ranges = args
                    .get(i + 1)
                    .and_then(|r| crate::owner_map::OwnerMap::parse_ranges(r))
                    .unwrap_or_default();
                if args[i] == "--uid-map" {
                    owner_map.uids = ranges;
                } else {
                    owner_map.gids = ranges;
                }
                i += 1;
            }
            "--owner" => {
                owner = args.get(i + 1).and_then(|o| {
                    let (u, g) = o.split_once(':')?;
                    Some((u.parse().ok()?, g.parse().ok()?))
                });
                i += 1;
            }
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
    // Other filesystems mounted in the root, left out of an export; known only before
    // the chroot hides /proc.
    let other_mounts = match op {
        "export" => match crate::mountinfo::mounts_below(&new_root) {
            Ok(m) => m,
            Err(e) => return fail(1, format!("reading the root's mounts: {e}")),
        },
        _ => HashSet::new(),
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
            let mtime = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos() as i128)
                .unwrap_or(0);
            let stat = RawStat {
                name: target
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .or(root_name)
                    .unwrap_or_else(|| "/".into()),
                size: m.len() as i64,
                mode: go_file_mode(&m),
                mtime_unix_nanos: mtime,
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
                .or(root_name.map(Into::into))
                .unwrap_or_else(|| ".".into());
            let mut b = tar::Builder::new(tar_out(&owner_map));
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
        "export" => {
            // `docker export`: the container's own filesystem. Volumes, binds and the
            // kernel filesystems are other mounts (another device than the root): their
            // mount points are kept, empty, as the image has them.

            let mut b = tar::Builder::new(tar_out(&owner_map));
            b.follow_symlinks(false);
            match export_tree(&mut b, Path::new("/"), Path::new(""), &other_mounts)
                .and_then(|_| b.finish())
            {
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
            if let Err(msg) = extract_put(&mut input, &target, &path, no_overwrite, owner) {
                return fail(3, msg);
            }
            // Drain what follows the archive so the sender never sees a broken pipe.
            let _ = std::io::copy(&mut input, &mut std::io::sink());
            0
        }
        other => fail(3, format!("unknown archive op {other}")),
    }
}

/// Where `get` and `export` write their tar: stdout, through the owner map of a remapped
/// container (host ids back to the container's), or straight when there is none.
fn tar_out(map: &crate::owner_map::OwnerMap) -> Box<dyn Write> {
    let out = std::io::BufWriter::new(std::io::stdout().lock());
    if map.uids.is_empty() && map.gids.is_empty() {
        Box::new(out)
    } else {
        Box::new(crate::owner_map::OwnerMapWriter::new(out, map.clone()))
    }
}

/// `put`: extracts the tar on `input` under the directory `target` (`path` is how the
/// client named it, for messages). Runs inside the archive child's chroot, which is what
/// keeps a symlink in the container from pointing the extraction at a host file; the
/// checks here are Docker's refusals, with its wording. `owner` (host uid, gid): what
/// is extracted belongs to it, as Docker's `cp` gives files to the container's root
/// (its host ids under `--userns-remap`); `None` leaves the extractor's (host root).
pub fn extract_put(
    input: impl std::io::Read,
    target: &Path,
    path: &str,
    no_overwrite: bool,
    owner: Option<(u32, u32)>,
) -> Result<(), String> {
    let mut ar = tar::Archive::new(input);
    ar.set_preserve_permissions(true);
    ar.set_overwrite(true);
    ar.set_unpack_xattrs(false);
    let entries = match ar.entries() {
        Ok(e) => e,
        Err(e) => return Err(format!("invalid tar: {e}")),
    };
    for entry in entries {
        let mut entry = match entry {
            Ok(e) => e,
            Err(e) => return Err(format!("invalid tar: {e}")),
        };
        if no_overwrite {
            if let Ok(p) = entry.path() {
                let dest = target.join(&p);
                if let Ok(existing) = std::fs::symlink_metadata(&dest) {
                    let incoming_dir = entry.header().entry_type().is_dir();
                    if existing.is_dir() != incoming_dir {
                        return Err(format!(
                            "cannot overwrite {} with a different kind of file",
                            p.display()
                        ));
                    }
                }
            }
        }
        // Docker refuses an archive with a member that leaves the extraction
        // point; unpack_in alone would skip it silently.
        if let Ok(p) = entry.path() {
            if escapes(&p) {
                return Err(format!(
                    "{:?} is outside of {path:?}",
                    p.display().to_string()
                ));
            }
        }
        // unpack_in also refuses `..` and absolute member names.
        if let Err(e) = entry.unpack_in(target) {
            return Err(format!("extract: {e}"));
        }
        if let (Some((uid, gid)), Ok(p)) = (owner, entry.path()) {
            std::os::unix::fs::lchown(target.join(&p), Some(uid), Some(gid))
                .map_err(|e| format!("chown {}: {e}", p.display()))?;
        }
    }
    Ok(())
}

/// Appends the tree under `dir` (named `name` in the archive), staying on device `dev`.
fn export_tree<W: std::io::Write>(
    b: &mut tar::Builder<W>,
    dir: &Path,
    name: &Path,
    other_mounts: &HashSet<PathBuf>,
) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let rel = name.join(e.file_name());
        let m = std::fs::symlink_metadata(&path)?;
        let mounted = other_mounts.contains(&path);
        if m.is_dir() {
            b.append_dir(&rel, &path)?;
            if !mounted {
                export_tree(b, &path, &rel, other_mounts)?;
            }
        } else if !mounted {
            b.append_path_with_name(&path, &rel)?;
        }
    }
    Ok(())
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

    #[test]
    fn go_file_mode_keeps_special_bits() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let sticky = d.path().join("sticky");
        std::fs::create_dir(&sticky).unwrap();
        std::fs::set_permissions(&sticky, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let m = std::fs::symlink_metadata(&sticky).unwrap();
        assert_eq!(super::go_file_mode(&m), (1 << 31) | (1 << 20) | 0o777);
        let suid = d.path().join("suid");
        std::fs::write(&suid, "").unwrap();
        std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o6755)).unwrap();
        let m = std::fs::symlink_metadata(&suid).unwrap();
        assert_eq!(super::go_file_mode(&m), (1 << 23) | (1 << 22) | 0o755);
        let m = std::fs::symlink_metadata("/dev/null").unwrap();
        assert_eq!(super::go_file_mode(&m) & !0o777, (1 << 26) | (1 << 21));
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
