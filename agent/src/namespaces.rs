//! Namespace helpers: joining a running container's namespaces and bringing up loopback.
use std::{
    io,
    os::fd::{AsRawFd, OwnedFd},
};

use nix::sched::{setns, CloneFlags};

/// Namespaces an exec joins, in order (mnt last: it changes the root used to open the others).
/// `cgroup` is the agent's own with `--cgroupns host`; joining it again is a no-op.
pub const EXEC_NAMESPACES: &[(&str, CloneFlags)] = &[
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
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

/// A detached copy of the mount at `path` as the mount namespace `mnt_ns` sees it, to be
/// attached in ours with [`attach_tree`]. A classic bind cannot cross mount namespaces;
/// a tree cloned while inside the other namespace can. Returns to our namespace (which
/// also resets root and cwd to its root) before answering.
pub fn clone_tree_from(mnt_ns: &std::path::Path, path: &str) -> io::Result<OwnedFd> {
    let own = std::fs::File::open("/proc/self/ns/mnt")?;
    let theirs = std::fs::File::open(mnt_ns)?;
    setns(&theirs, CloneFlags::CLONE_NEWNS).map_err(crate::util::errno_io)?;
    let c_path = std::ffi::CString::new(path).map_err(io::Error::other)?;
    // SAFETY: open_tree(2) with a live NUL-terminated path; the result is a new fd we own.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c_path.as_ptr(),
            (libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC) as libc::c_uint,
        )
    };
    let cloned = if fd < 0 {
        Err(io::Error::last_os_error())
    } else {
        // SAFETY: a fresh fd returned by the kernel.
        Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd as i32) })
    };
    setns(&own, CloneFlags::CLONE_NEWNS).map_err(crate::util::errno_io)?;
    cloned
}

/// Attaches a tree from [`clone_tree_from`] at `target`.
pub fn attach_tree(tree: &OwnedFd, target: &std::path::Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c_target =
        std::ffi::CString::new(target.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // MOVE_MOUNT_F_EMPTY_PATH: the source is the fd itself.
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
    // SAFETY: move_mount(2) with an fd we own and live NUL-terminated paths.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            c_target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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
