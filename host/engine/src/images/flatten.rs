//! Merge overlay-style layer dirs (bottom → top) into one plain directory tree: the
//! rootfs for the copy fallback and for VM block images.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use super::unpack::OPAQUE_XATTR;
use crate::Result;

fn is_opaque(path: &Path) -> bool {
    let (Ok(p), Ok(k)) = (
        CString::new(path.as_os_str().as_bytes()),
        CString::new(OPAQUE_XATTR),
    ) else {
        return false;
    };
    let mut buf = [0u8; 4];
    // SAFETY: valid strings and buffer.
    let n = unsafe { libc::lgetxattr(p.as_ptr(), k.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    n == 1 && buf[0] == b'y'
}

/// Copy extended attributes (file capabilities, ACLs…) except overlayfs' own.
fn copy_xattrs(src: &Path, dst: &Path) {
    let (Ok(s), Ok(d)) = (
        CString::new(src.as_os_str().as_bytes()),
        CString::new(dst.as_os_str().as_bytes()),
    ) else {
        return;
    };
    let mut names = vec![0u8; 4096];
    // SAFETY: valid path and buffer.
    let n = unsafe { libc::llistxattr(s.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n <= 0 {
        return;
    }
    for name in names[..n as usize]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
    {
        if name.starts_with(b"trusted.overlay.") {
            continue;
        }
        let Ok(k) = CString::new(name) else { continue };
        let mut val = vec![0u8; 64 * 1024];
        // SAFETY: valid strings and buffer.
        let len =
            unsafe { libc::lgetxattr(s.as_ptr(), k.as_ptr(), val.as_mut_ptr().cast(), val.len()) };
        if len >= 0 {
            // SAFETY: valid strings and buffer; best effort.
            unsafe {
                libc::lsetxattr(d.as_ptr(), k.as_ptr(), val.as_ptr().cast(), len as usize, 0)
            };
        }
    }
}

fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn set_times(path: &Path, m: &fs::Metadata) {
    if let Ok(p) = CString::new(path.as_os_str().as_bytes()) {
        let ts = [
            libc::timespec {
                tv_sec: m.atime() as libc::time_t,
                tv_nsec: m.atime_nsec() as _,
            },
            libc::timespec {
                tv_sec: m.mtime() as libc::time_t,
                tv_nsec: m.mtime_nsec() as _,
            },
        ];
        // SAFETY: valid path and array; best effort.
        unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                p.as_ptr(),
                ts.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
    }
}

/// Apply one layer dir on top of `dest`. `dest` is ours, and each directory is made a
/// real directory before we descend into it, so path-based writes cannot be redirected
/// by a symlink from a lower layer.
pub fn apply_layer(src: &Path, dest: &Path) -> Result<()> {
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let s = entry.path();
        let d = dest.join(entry.file_name());
        let m = fs::symlink_metadata(&s)?;
        let ft = m.file_type();
        if ft.is_char_device() && m.rdev() == 0 {
            remove_any(&d)?;
            continue;
        }
        if ft.is_dir() {
            let existing = fs::symlink_metadata(&d).ok();
            let keep = existing.as_ref().map(|e| e.is_dir()).unwrap_or(false) && !is_opaque(&s);
            if !keep {
                remove_any(&d)?;
                fs::create_dir(&d)?;
            }
            apply_layer(&s, &d)?;
            copy_xattrs(&s, &d);
            std::os::unix::fs::lchown(&d, Some(m.uid()), Some(m.gid()))?;
            fs::set_permissions(&d, fs::Permissions::from_mode(m.mode() & 0o7777))?;
            set_times(&d, &m);
            continue;
        }
        remove_any(&d)?;
        if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&s)?, &d)?;
        } else if ft.is_file() {
            fs::copy(&s, &d)?;
        } else if ft.is_fifo() {
            let p = CString::new(d.as_os_str().as_bytes()).map_err(io::Error::other)?;
            // SAFETY: valid path.
            if unsafe { libc::mknod(p.as_ptr(), libc::S_IFIFO | 0o600, 0) } != 0 {
                return Err(io::Error::last_os_error().into());
            }
        } else {
            continue;
        }
        std::os::unix::fs::lchown(&d, Some(m.uid()), Some(m.gid()))?;
        if !ft.is_symlink() {
            fs::set_permissions(&d, fs::Permissions::from_mode(m.mode() & 0o7777))?;
            // After chown (which drops security.capability) and chmod.
            copy_xattrs(&s, &d);
        }
        set_times(&d, &m);
    }
    Ok(())
}
