//! Jailer mode: once every host resource is open, chroot and drop to an
//! unprivileged uid/gid. Also closes inherited file descriptors at start.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;

use crate::config::JailConfig;
use crate::error::{Error, Result};

/// Closes every fd above stderr: the VMM must not leak descriptors it was
/// not configured with into the guest's reach. Call first thing in main.
pub fn close_inherited_fds() -> Result<()> {
    // SAFETY: close_range on a range of fds we do not use yet.
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if r != 0 {
        return Err(Error::Jail(format!(
            "close_range: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// Applies the jail to the whole process.
pub fn enter(jail: &JailConfig) -> Result<()> {
    let os = |what: &str| Error::Jail(format!("{what}: {}", std::io::Error::last_os_error()));
    if let Some(root) = &jail.chroot {
        let c =
            CString::new(root.as_os_str().as_bytes()).map_err(|e| Error::Jail(e.to_string()))?;
        // SAFETY: valid NUL-terminated path.
        if unsafe { libc::chroot(c.as_ptr()) } != 0 {
            return Err(os("chroot"));
        }
        // SAFETY: static path.
        if unsafe { libc::chdir(c"/".as_ptr()) } != 0 {
            return Err(os("chdir"));
        }
    }
    if let Some(gid) = jail.gid {
        // SAFETY: empty group list.
        if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
            return Err(os("setgroups"));
        }
        // SAFETY: plain syscall; glibc applies it to every thread.
        if unsafe { libc::setresgid(gid, gid, gid) } != 0 {
            return Err(os("setresgid"));
        }
    }
    if let Some(uid) = jail.uid {
        // SAFETY: plain syscall; glibc applies it to every thread.
        if unsafe { libc::setresuid(uid, uid, uid) } != 0 {
            return Err(os("setresuid"));
        }
    }
    // SAFETY: plain prctl.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(os("PR_SET_NO_NEW_PRIVS"));
    }
    Ok(())
}
