//! User namespaces (`berthd --userns-remap`): the container's root is an unprivileged host
//! uid.
//!
//! The launching child stays real root (in the agent's user namespace) while it builds the
//! container: it creates the user namespace through a short-lived holder process and writes
//! its maps from outside (the parent side, as runc and youki do), mounts the rootfs, /proc,
//! /sys and /dev with the agent's privileges, and only then enters the new namespace, just
//! before it drops to the container's user. So every other namespace (mount, pid, net, ...)
//! stays owned by the agent's user namespace, as dockerd's network namespace is: the
//! container's root has its capabilities over its own files and processes, never over a
//! mount or a kernel object of the host, and cannot unmount what masks /proc.
//!
//! Image layers are shared with unremapped containers; each lower dir is seen through an
//! idmapped mount (host uid 0 appears as the container's root), and the overlay's upper dir
//! stores what the container writes under host uids of the remapped range.
use std::{
    fs::File,
    io::{self, Read, Write},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
};

use berth_agent_protocol::{IdMap, UserNamespace};
use nix::{
    sched::{setns, unshare, CloneFlags},
    sys::wait::waitpid,
    unistd::{fork, ForkResult},
};

use crate::util::errno_io;

/// A container's user namespace, held open by the launching child.
pub struct Userns {
    pub fd: OwnedFd,
    /// Host uid and gid of the container's root.
    pub root: (u32, u32),
    pub spec: UserNamespace,
}

impl Userns {
    /// The host gid of container gid `gid` (e.g. `tty` for devpts), or the root's.
    pub fn host_gid(&self, gid: u32) -> u32 {
        IdMap::to_host(&self.spec.gid_map, gid).unwrap_or(self.root.1)
    }

    /// `uid=..,gid=..` for a tmpfs mounted for the container: its root owns it, as a
    /// tmpfs mounted inside the namespace would be.
    pub fn tmpfs_owner(&self, options: &str) -> String {
        let has = |k: &str| options.split(',').any(|o| o.starts_with(k));
        let mut out = options.to_string();
        for (key, id) in [("uid=", self.root.0), ("gid=", self.root.1)] {
            if !has(key) {
                if !out.is_empty() {
                    out.push(',');
                }
                out.push_str(&format!("{key}{id}"));
            }
        }
        out
    }
}

/// Creates a user namespace with `spec`'s maps. A holder child unshares it and waits; we
/// (privileged in the parent namespace) write its maps and keep a handle to it.
pub fn create(spec: &UserNamespace) -> io::Result<Userns> {
    let (ready_r, ready_w) = pipe()?;
    let (done_r, done_w) = pipe()?;
    // SAFETY: called in the single-threaded launching child; the holder only makes raw
    // syscalls and `_exit`s.
    match unsafe { fork() }.map_err(errno_io)? {
        ForkResult::Child => {
            drop(ready_r);
            drop(done_w);
            // Our pid as the agent's /proc names it: the launching child may already be
            // in the container's new pid namespace, where fork returned another number.
            let pid: i32 = std::fs::read_link("/proc/self")
                .ok()
                .and_then(|p| p.to_str()?.parse().ok())
                .unwrap_or(0);
            let ok = pid > 0 && unshare(CloneFlags::CLONE_NEWUSER).is_ok();
            let mut msg = [0u8; 5];
            msg[0] = ok as u8;
            msg[1..].copy_from_slice(&pid.to_be_bytes());
            let _ = File::from(ready_w).write_all(&msg);
            // Block until the parent has its handle (it closes its end).
            let _ = File::from(done_r).read(&mut [0u8; 1]);
            // SAFETY: leaving the forked holder without running destructors.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            drop(ready_w);
            drop(done_r);
            let result = (|| {
                let mut b = [0u8; 5];
                File::from(ready_r).read_exact(&mut b)?;
                if b[0] != 1 {
                    return Err(io::Error::other("unshare(CLONE_NEWUSER) failed"));
                }
                let pid = i32::from_be_bytes(b[1..].try_into().expect("4 bytes"));
                write_map(pid, "uid_map", &spec.uid_map)?;
                write_map(pid, "gid_map", &spec.gid_map)?;
                File::open(format!("/proc/{pid}/ns/user")).map(OwnedFd::from)
            })();
            drop(done_w);
            let _ = waitpid(child, None);
            Ok(Userns {
                fd: result?,
                root: spec.root(),
                spec: spec.clone(),
            })
        }
    }
}

fn write_map(pid: i32, file: &str, maps: &[IdMap]) -> io::Result<()> {
    // One write: the kernel accepts a map file's contents only once, whole.
    std::fs::write(format!("/proc/{pid}/{file}"), IdMap::file_text(maps))
        .map_err(|e| io::Error::new(e.kind(), format!("writing {file}: {e}")))
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(errno_io)
}

/// Enters the user namespace `ns` and becomes its root (full capabilities in it, none
/// outside). Must follow every step that needs the agent's privileges (mounts, rlimits).
pub fn enter(ns: &impl std::os::fd::AsFd) -> io::Result<()> {
    setns(ns, CloneFlags::CLONE_NEWUSER).map_err(errno_io)?;
    // The agent's ids are not mapped in here; become the namespace's root so files the
    // setup still creates (the pty, the working directory) belong to the container.
    let root_gid = nix::unistd::Gid::from_raw(0);
    let root_uid = nix::unistd::Uid::from_raw(0);
    nix::unistd::setgroups(&[]).map_err(errno_io)?;
    nix::unistd::setresgid(root_gid, root_gid, root_gid).map_err(errno_io)?;
    nix::unistd::setresuid(root_uid, root_uid, root_uid).map_err(errno_io)
}

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// Mounts `src` at `target` (an existing directory) through the id mapping of `ns`: files
/// the host owns as uid N appear owned by the host id that container id N maps to.
pub fn idmapped_bind(src: &Path, target: &Path, ns: &Userns) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c_src = std::ffi::CString::new(src.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: open_tree(2) with a live NUL-terminated path; returns a new fd we own.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c_src.as_ptr(),
            (libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC) as libc::c_uint,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("open_tree {}: {e}", src.display()),
        ));
    }
    // SAFETY: a fresh fd returned by the kernel.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: ns.fd.as_raw_fd() as u64,
    };
    // SAFETY: mount_setattr(2) on our detached tree with a live, correctly sized struct.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("idmapped mount of {}: {e}", src.display()),
        ));
    }
    crate::namespaces::attach_tree(&tree, target)
}
