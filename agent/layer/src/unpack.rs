//! Safe layer extraction into a per-layer directory usable as an overlayfs lower dir.
//!
//! Every path is resolved component by component with `openat(O_NOFOLLOW)` from the
//! layer root, so nothing in the tar (a planted symlink, a `..`, an absolute name) can
//! make us write outside it. Whiteouts become overlayfs markers: `.wh.x` → char device
//! 0:0 named `x`; `.wh..wh..opq` → `trusted.overlay.opaque=y` on the directory.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use tar::EntryType;

use crate::{OPAQUE_MARKER, WHITEOUT_PREFIX};

pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

pub use crate::{Error, Result};

fn bad(msg: impl Into<String>) -> Error {
    Error::Invalid(msg.into())
}

/// The current OS error, with what was being done.
fn os_error(what: impl std::fmt::Display) -> Error {
    let e = errno();
    Error::Io(io::Error::new(e.kind(), format!("{what}: {e}")))
}

fn cstr(name: &OsStr) -> Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| bad("invalid path: contains NUL"))
}

fn errno() -> io::Error {
    io::Error::last_os_error()
}

fn openat_dir(dir: RawFd, name: &OsStr) -> io::Result<OwnedFd> {
    let c = CString::new(name.as_bytes()).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: valid C string; the fd is owned by the returned OwnedFd.
    let fd = unsafe {
        libc::openat(
            dir,
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: fd was just returned by openat.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn open_root(path: &Path) -> io::Result<OwnedFd> {
    openat_dir(libc::AT_FDCWD, path.as_os_str())
}

/// `lstat` of `name` in `dir`; None if it does not exist.
fn lstat_at(dir: RawFd, name: &CString) -> io::Result<Option<libc::stat>> {
    // SAFETY: zeroed stat is a valid out-buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd/name/buffer.
    let r = unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
    if r == 0 {
        Ok(Some(st))
    } else {
        let e = errno();
        if e.raw_os_error() == Some(libc::ENOENT) {
            Ok(None)
        } else {
            Err(e)
        }
    }
}

fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

fn is_whiteout(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == 0
}

/// Remove whatever is at `name` in `dir` (recursively for directories) without
/// following symlinks.
pub fn remove_at(dir: RawFd, name: &CString) -> io::Result<()> {
    let Some(st) = lstat_at(dir, name)? else {
        return Ok(());
    };
    if is_dir(&st) {
        // std's remove_dir_all is symlink-safe (openat-based); /proc/self/fd/N is our dir.
        let p = Path::new(&format!("/proc/self/fd/{dir}")).join(OsStr::from_bytes(name.as_bytes()));
        std::fs::remove_dir_all(p)
    } else {
        // SAFETY: valid fd and name.
        if unsafe { libc::unlinkat(dir, name.as_ptr(), 0) } != 0 {
            return Err(errno());
        }
        Ok(())
    }
}

/// Split a tar member name into clean components. Rejects absolute paths, `..` and
/// NULs; drops `.` and empty components.
pub fn clean_components(raw: &[u8]) -> Result<Vec<OsString>> {
    let shown = String::from_utf8_lossy(raw);
    if raw.first() == Some(&b'/') {
        return Err(bad(format!("invalid tar entry {shown:?}: absolute path")));
    }
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                return Err(bad(format!(
                    "invalid tar entry {shown:?}: path escapes the layer root"
                )))
            }
            c if c.contains(&0) => return Err(bad(format!("invalid tar entry {shown:?}"))),
            c => out.push(OsStr::from_bytes(c).to_os_string()),
        }
    }
    Ok(out)
}

/// Walk to the directory `comps` under `root`, never following symlinks. Missing
/// directories are created (0755) when `create`; our own whiteout markers in the way
/// are replaced by directories (a later entry re-creates what a whiteout removed).
fn walk(root: RawFd, comps: &[OsString], create: bool, shown: &str) -> Result<OwnedFd> {
    // SAFETY: dup of a valid fd.
    let d = unsafe { libc::fcntl(root, libc::F_DUPFD_CLOEXEC, 0) };
    if d < 0 {
        return Err(errno().into());
    }
    // SAFETY: fd just returned by fcntl.
    let mut cur = unsafe { OwnedFd::from_raw_fd(d) };
    for c in comps {
        match openat_dir(cur.as_raw_fd(), c) {
            Ok(fd) => cur = fd,
            Err(e) => {
                let cn = cstr(c)?;
                let code = e.raw_os_error();
                let st = lstat_at(cur.as_raw_fd(), &cn)?;
                let replaceable = st.as_ref().map(is_whiteout).unwrap_or(false);
                if create && (code == Some(libc::ENOENT) || replaceable) {
                    if replaceable {
                        remove_at(cur.as_raw_fd(), &cn)?;
                    }
                    // SAFETY: valid fd and name.
                    if unsafe { libc::mkdirat(cur.as_raw_fd(), cn.as_ptr(), 0o755) } != 0 {
                        return Err(errno().into());
                    }
                    cur = openat_dir(cur.as_raw_fd(), c)?;
                } else if matches!(code, Some(libc::ELOOP) | Some(libc::ENOTDIR)) {
                    return Err(bad(format!(
                        "invalid tar entry {shown:?}: parent {:?} is a symlink or not a directory",
                        c
                    )));
                } else if code == Some(libc::ENOENT) {
                    return Err(bad(format!(
                        "invalid tar entry {shown:?}: {c:?} does not exist"
                    )));
                } else {
                    return Err(e.into());
                }
            }
        }
    }
    Ok(cur)
}

/// True when a relative symlink target, resolved from `depth` directories below the
/// root, climbs above it (Docker's breakout check; absolute targets resolve inside the
/// container root and are fine).
fn symlink_escapes(depth: usize, target: &[u8]) -> bool {
    if target.first() == Some(&b'/') {
        return false;
    }
    let mut d = depth as i64;
    for c in target.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                d -= 1;
                if d < 0 {
                    return true;
                }
            }
            _ => d += 1,
        }
    }
    false
}

struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: i64,
}

fn set_times(dir: RawFd, name: &CString, mtime: i64, flags: i32) {
    let ts = [
        libc::timespec {
            tv_sec: mtime as libc::time_t,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: mtime as libc::time_t,
            tv_nsec: 0,
        },
    ];
    // SAFETY: valid fd/name/array. Timestamps are best effort.
    unsafe { libc::utimensat(dir, name.as_ptr(), ts.as_ptr(), flags) };
}

fn apply_fd_meta(fd: RawFd, m: &Meta) -> Result<()> {
    // SAFETY: valid fd. chown first: it clears setuid bits that fchmod then restores.
    unsafe {
        if libc::fchown(fd, m.uid, m.gid) != 0 {
            return Err(errno().into());
        }
        if libc::fchmod(fd, (m.mode & 0o7777) as libc::mode_t) != 0 {
            return Err(errno().into());
        }
    }
    Ok(())
}

fn set_xattr(fd: RawFd, key: &str, value: &[u8]) -> Result<()> {
    let k = CString::new(key).map_err(|_| bad("invalid xattr name"))?;
    // SAFETY: valid fd, name and buffer.
    let r = unsafe { libc::fsetxattr(fd, k.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if r != 0 {
        return Err(os_error(format_args!("set xattr {key}")));
    }
    Ok(())
}

/// Extract `reader` (an uncompressed tar) into the empty directory `dest`.
/// Returns the total size of the regular files written.
pub fn unpack_layer<R: Read>(reader: R, dest: &Path) -> Result<u64> {
    let root = open_root(dest)?;
    let rootfd = root.as_raw_fd();
    // The layer root is the container's `/` (temp dirs start as 0700).
    // SAFETY: valid fd.
    unsafe { libc::fchmod(rootfd, 0o755) };
    let mut archive = tar::Archive::new(reader);
    let mut size = 0u64;
    // Directory mtimes are set last: creating children changes them.
    let mut dir_times: Vec<(Vec<OsString>, i64)> = Vec::new();
    let entries = archive
        .entries()
        .map_err(|e| bad(format!("invalid tar archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("invalid tar archive: {e}")))?;
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            continue;
        }
        let comps = clean_components(&raw)?;
        let Some((name, parents)) = comps.split_last() else {
            // The layer root itself ("./"): take its mode, never a non-directory type.
            if kind == EntryType::Directory {
                if let Ok(mode) = entry.header().mode() {
                    // SAFETY: valid fd.
                    unsafe { libc::fchmod(rootfd, (mode & 0o7777) as libc::mode_t) };
                }
            }
            continue;
        };
        let hdr = entry.header();
        // Like Go's archive/tar, an empty (all-NUL) numeric field reads as 0.
        let meta = Meta {
            uid: hdr.uid().unwrap_or(0) as u32,
            gid: hdr.gid().unwrap_or(0) as u32,
            mode: hdr.mode().unwrap_or(if kind == EntryType::Directory {
                0o755
            } else {
                0o644
            }),
            mtime: hdr.mtime().unwrap_or(0) as i64,
        };
        let parent = walk(rootfd, parents, true, &shown)?;
        let pfd = parent.as_raw_fd();
        let name_b = name.as_bytes();

        if name_b == OPAQUE_MARKER.as_bytes() {
            set_xattr(pfd, OPAQUE_XATTR, b"y")?;
            continue;
        }
        if let Some(target) = name_b.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            if target.is_empty() || target == b"." || target == b".." {
                return Err(bad(format!("invalid whiteout {shown:?}")));
            }
            let t = cstr(OsStr::from_bytes(target))?;
            remove_at(pfd, &t)?;
            // SAFETY: valid fd/name; char device 0:0 is overlayfs' whiteout.
            if unsafe { libc::mknodat(pfd, t.as_ptr(), libc::S_IFCHR, 0) } != 0 {
                return Err(os_error(format_args!("create whiteout {shown}")));
            }
            continue;
        }

        let cname = cstr(name)?;
        let existing = lstat_at(pfd, &cname)?;
        match kind {
            EntryType::Directory => {
                if let Some(st) = &existing {
                    if !is_dir(st) {
                        remove_at(pfd, &cname)?;
                    }
                }
                if existing.as_ref().map(|s| !is_dir(s)).unwrap_or(true) {
                    // SAFETY: valid fd/name.
                    if unsafe { libc::mkdirat(pfd, cname.as_ptr(), 0o700) } != 0 {
                        return Err(errno().into());
                    }
                }
                let dfd = openat_dir(pfd, name)?;
                apply_fd_meta(dfd.as_raw_fd(), &meta)?;
                apply_pax_xattrs(&mut entry, dfd.as_raw_fd())?;
                dir_times.push((comps.clone(), meta.mtime));
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                if existing.is_some() {
                    remove_at(pfd, &cname)?;
                }
                // SAFETY: valid fd/name; O_EXCL|O_NOFOLLOW: never through a symlink.
                let fd = unsafe {
                    libc::openat(
                        pfd,
                        cname.as_ptr(),
                        libc::O_CREAT
                            | libc::O_EXCL
                            | libc::O_WRONLY
                            | libc::O_NOFOLLOW
                            | libc::O_CLOEXEC,
                        0o600,
                    )
                };
                if fd < 0 {
                    return Err(os_error(format_args!("create {shown}")));
                }
                // SAFETY: fd just returned by openat.
                let mut file = unsafe { File::from_raw_fd(fd) };
                let want = entry.header().entry_size().unwrap_or(0);
                let got = io::copy(&mut entry, &mut file)
                    .map_err(|e| bad(format!("invalid tar archive: reading {shown}: {e}")))?;
                if kind != EntryType::GNUSparse && got != want {
                    return Err(bad(format!(
                        "invalid tar archive: unexpected EOF in {shown}"
                    )));
                }
                size += got;
                apply_fd_meta(file.as_raw_fd(), &meta)?;
                apply_pax_xattrs(&mut entry, file.as_raw_fd())?;
                drop(file);
                set_times(pfd, &cname, meta.mtime, 0);
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| {
                        bad(format!(
                            "invalid tar entry {shown:?}: symlink without target"
                        ))
                    })?
                    .into_owned();
                if symlink_escapes(parents.len(), &target) {
                    return Err(bad(format!(
                        "invalid symlink {shown:?} -> {:?}: points outside the layer root",
                        String::from_utf8_lossy(&target)
                    )));
                }
                if existing.is_some() {
                    remove_at(pfd, &cname)?;
                }
                let t = CString::new(target).map_err(|_| bad("invalid symlink target"))?;
                // SAFETY: valid strings and fd.
                if unsafe { libc::symlinkat(t.as_ptr(), pfd, cname.as_ptr()) } != 0 {
                    return Err(errno().into());
                }
                // SAFETY: valid fd/name; lchown semantics.
                unsafe {
                    libc::fchownat(
                        pfd,
                        cname.as_ptr(),
                        meta.uid,
                        meta.gid,
                        libc::AT_SYMLINK_NOFOLLOW,
                    )
                };
                set_times(pfd, &cname, meta.mtime, libc::AT_SYMLINK_NOFOLLOW);
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| {
                        bad(format!(
                            "invalid tar entry {shown:?}: hardlink without target"
                        ))
                    })?
                    .into_owned();
                // Hardlink names are archive member names: relative to the layer root.
                let trimmed: &[u8] = {
                    let mut t = &target[..];
                    while t.first() == Some(&b'/') {
                        t = &t[1..];
                    }
                    t
                };
                let tshown = String::from_utf8_lossy(&target).into_owned();
                let tcomps = clean_components(trimmed).map_err(|_| {
                    bad(format!(
                        "invalid hardlink {shown:?} -> {tshown:?}: points outside the layer root"
                    ))
                })?;
                let Some((tname, tparents)) = tcomps.split_last() else {
                    return Err(bad(format!("invalid hardlink {shown:?} -> {tshown:?}")));
                };
                let tdir = walk(rootfd, tparents, false, &tshown)?;
                let tn = cstr(tname)?;
                match lstat_at(tdir.as_raw_fd(), &tn)? {
                    None => {
                        return Err(bad(format!(
                            "invalid hardlink {shown:?}: target {tshown:?} does not exist"
                        )))
                    }
                    Some(st) if is_dir(&st) => {
                        return Err(bad(format!(
                            "invalid hardlink {shown:?}: target {tshown:?} is a directory"
                        )))
                    }
                    Some(_) => {}
                }
                if tparents == parents && tname == name {
                    continue;
                }
                if existing.is_some() {
                    remove_at(pfd, &cname)?;
                }
                // SAFETY: valid fds/names; flags 0: a symlink target is linked, not followed.
                if unsafe { libc::linkat(tdir.as_raw_fd(), tn.as_ptr(), pfd, cname.as_ptr(), 0) }
                    != 0
                {
                    return Err(errno().into());
                }
            }
            EntryType::Fifo => {
                if existing.is_some() {
                    remove_at(pfd, &cname)?;
                }
                // SAFETY: valid fd/name.
                if unsafe { libc::mknodat(pfd, cname.as_ptr(), libc::S_IFIFO | 0o600, 0) } != 0 {
                    return Err(errno().into());
                }
                // SAFETY: valid fd/name.
                unsafe {
                    libc::fchownat(
                        pfd,
                        cname.as_ptr(),
                        meta.uid,
                        meta.gid,
                        libc::AT_SYMLINK_NOFOLLOW,
                    );
                    libc::fchmodat(pfd, cname.as_ptr(), (meta.mode & 0o7777) as libc::mode_t, 0);
                }
                set_times(pfd, &cname, meta.mtime, libc::AT_SYMLINK_NOFOLLOW);
            }
            EntryType::Char | EntryType::Block => {
                // Containers get their /dev from the engine; a device node in an image
                // layer would hand raw host (or guest) hardware to whoever runs it.
                return Err(bad(format!(
                    "invalid tar entry {shown:?}: device nodes are not allowed in image layers"
                )));
            }
            other => {
                tracing::warn!(entry = %shown, kind = ?other, "skipping unsupported tar entry type");
            }
        }
    }
    for (comps, mtime) in dir_times.into_iter().rev() {
        if let Some((name, parents)) = comps.split_last() {
            if let Ok(p) = walk(rootfd, parents, false, "") {
                if let Ok(n) = cstr(name) {
                    set_times(p.as_raw_fd(), &n, mtime, libc::AT_SYMLINK_NOFOLLOW);
                }
            }
        }
    }
    Ok(size)
}

/// PAX `SCHILY.xattr.*` records. `trusted.*` is never taken from a tar: overlayfs
/// reads its own metadata there (opaque, redirect, metacopy).
fn apply_pax_xattrs<R: Read>(entry: &mut tar::Entry<'_, R>, fd: RawFd) -> Result<()> {
    let Ok(Some(exts)) = entry.pax_extensions() else {
        return Ok(());
    };
    let mut pairs = Vec::new();
    for ext in exts.flatten() {
        if let Ok(key) = ext.key() {
            if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                if !name.starts_with("trusted.") {
                    pairs.push((name.to_string(), ext.value_bytes().to_vec()));
                }
            }
        }
    }
    for (k, v) in pairs {
        if let Err(e) = set_xattr(fd, &k, &v) {
            tracing::warn!(xattr = %k, error = %e, "could not apply xattr");
        }
    }
    Ok(())
}

/// Sync everything under `dir` to disk (one `syncfs`, not one fsync per file).
pub fn syncfs(dir: &Path) -> Result<()> {
    let fd = open_root(dir)?;
    // SAFETY: valid fd.
    if unsafe { libc::syncfs(fd.as_raw_fd()) } != 0 {
        return Err(errno().into());
    }
    Ok(())
}
