//! Namespace helpers: joining a running container's namespaces and bringing up loopback.
use std::{io, os::fd::AsRawFd};

use nix::sched::{setns, CloneFlags};

/// Namespaces an exec joins, in order (mnt last: it changes the root used to open the others).
pub const EXEC_NAMESPACES: &[(&str, CloneFlags)] = &[
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

/// Joins the namespaces of `pid` listed in [`EXEC_NAMESPACES`]. All are opened before any join.
pub fn join_all(pid: i32) -> io::Result<()> {
    let mut fds = Vec::new();
    for (name, flag) in EXEC_NAMESPACES {
        let f = std::fs::File::open(format!("/proc/{pid}/ns/{name}"))?;
        fds.push((f, *flag));
    }
    for (f, flag) in fds {
        setns(&f, flag).map_err(crate::util::errno_io)?;
    }
    Ok(())
}

/// Joins the namespace file at `path` (e.g. a netns prepared by the host).
pub fn join_path(path: &std::path::Path, flag: CloneFlags) -> io::Result<()> {
    let f = std::fs::File::open(path)?;
    setns(&f, flag).map_err(crate::util::errno_io)
}

/// `ip link set lo up` in the current network namespace.
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: plain socket/ioctl calls on a local ifreq.
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            return Err(io::Error::last_os_error());
        }
        let sock = std::os::fd::OwnedFd::from_raw_fd_checked(sock);
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            ifr.ifr_name[i] = *b as libc::c_char;
        }
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) < 0 {
            return Err(io::Error::last_os_error());
        }
        ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

trait FromRawChecked {
    unsafe fn from_raw_fd_checked(fd: i32) -> Self;
}

impl FromRawChecked for std::os::fd::OwnedFd {
    unsafe fn from_raw_fd_checked(fd: i32) -> Self {
        // SAFETY: the caller passes a freshly created, owned fd.
        unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }
    }
}
