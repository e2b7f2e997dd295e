//! Network namespaces berth prepares for containers before their process starts: a fresh
//! netns pinned by a bind mount at `<exec-root>/netns/<id>`, which the agent joins
//! (`NetworkSpec::Join`). The host configures it first, so the container's process never
//! sees a half-configured network.

use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

/// Run `f` on a fresh OS thread: namespace switches are per thread, and a thread of the
/// async runtime must never be left in a container's namespace.
fn on_thread<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    std::thread::spawn(f)
        .join()
        .map_err(|_| io::Error::other("netns thread panicked"))?
}

/// Create a new network namespace pinned at `path`.
pub fn create(path: &Path) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::File::create(path)?;
    let p = path.to_path_buf();
    on_thread(move || {
        unshare(CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        let me = format!("/proc/self/task/{}/ns/net", nix::unistd::gettid());
        mount(
            Some(me.as_str()),
            &p,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(io::Error::from)
    })
    .inspect_err(|_| {
        let _ = std::fs::remove_file(path);
    })
}

/// Unpin and remove a namespace made by [`create`]. Idempotent.
pub fn remove(path: &Path) -> io::Result<()> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(e.into()),
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// A persistent TAP `name` in the namespace at `path`, for a VMM that runs in that
/// namespace to open by name. Persistent, so it outlives this call's fd; it goes away
/// with the namespace (or when a VMM that opened it is gone and the namespace is removed).
pub fn create_tap(path: &Path, name: &str) -> io::Result<()> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::other(format!("invalid TAP name {name:?}")));
    }
    let p = path.to_path_buf();
    let name = name.to_string();
    on_thread(move || {
        let target = std::fs::File::open(&p)?;
        setns(&target, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        let tun = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")?;
        // SAFETY: ifreq is plain data (all-zero is valid); the ioctls read it (and an
        // integer) during the call only, on an fd we own.
        unsafe {
            let mut ifr: libc::ifreq = std::mem::zeroed();
            for (i, b) in name.bytes().enumerate() {
                ifr.ifr_name[i] = b as libc::c_char;
            }
            ifr.ifr_ifru.ifru_flags =
                (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
            use std::os::fd::AsRawFd;
            if libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &ifr) < 0
                || libc::ioctl(tun.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) < 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    })
}

/// Is `path` a pinned network namespace (a mount point, not the plain file left behind)?
pub fn is_pinned(path: &Path) -> bool {
    let (Ok(a), Some(Ok(b))) = (
        std::fs::metadata(path),
        path.parent().map(std::fs::metadata),
    ) else {
        return false;
    };
    use std::os::unix::fs::MetadataExt;
    a.dev() != b.dev()
}

/// A netlink connection whose socket lives in the namespace at `path`. The socket keeps
/// its namespace for life, so only its creation needs the thread switch.
pub fn netlink_in(path: &Path) -> io::Result<rtnetlink::Handle> {
    let p: PathBuf = path.to_path_buf();
    // The socket registers with the runtime's reactor when it is made.
    let rt = tokio::runtime::Handle::current();
    let (conn, handle, _) = on_thread(move || {
        let _enter = rt.enter();
        let target = std::fs::File::open(&p)?;
        setns(&target, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        rtnetlink::new_connection()
    })?;
    tokio::spawn(conn);
    Ok(handle)
}
