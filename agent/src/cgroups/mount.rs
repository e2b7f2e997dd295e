//! `/sys/fs/cgroup` inside a container, as Docker shows it: the container's own cgroup
//! (one directory per v1 hierarchy under a tmpfs, or the v2 directory itself), read-only
//! unless `--privileged`.
//!
//! Both `--cgroupns` modes bind the container's own directories rather than mounting a
//! fresh cgroupfs: in a private namespace that is the same tree a fresh mount would show
//! (the namespace's root is the container's cgroup), and with `--cgroupns host` it keeps the
//! rest of the host's hierarchy out of sight, as runc does on v1. The namespace itself only
//! changes what `/proc/self/cgroup` and `mountinfo` show.
use std::{fs, io, path::Path};

use nix::mount::{mount, MsFlags};

use super::Cgroup;
use crate::util::errno_io;

fn bind(src: &Path, target: &Path, readonly: bool) -> io::Result<()> {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    let err = |what: &str, e: nix::Error| {
        io::Error::new(
            errno_io(e).kind(),
            format!("{what} {} on {}: {e}", src.display(), target.display()),
        )
    };
    mount(
        Some(src),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| err("bind", e))?;
    let mut again = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags;
    if readonly {
        again |= MsFlags::MS_RDONLY;
    }
    mount(None::<&str>, target, None::<&str>, again, None::<&str>).map_err(|e| err("remount", e))
}

/// Mounts the container's cgroup at `target` (the rootfs's `/sys/fs/cgroup`, already
/// created). Runs in the container's mount namespace before `pivot_root`, while the
/// agent's cgroup paths are still reachable.
pub fn mount_in_container(cg: &Cgroup, target: &Path, readonly: bool) -> io::Result<()> {
    fs::create_dir_all(target)?;
    match cg {
        Cgroup::V2(c) => bind(c.path(), target, readonly),
        Cgroup::V1(c) => {
            let flags = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
            mount(
                Some("tmpfs"),
                target,
                Some("tmpfs"),
                flags,
                Some("mode=755"),
            )
            .map_err(|e| io::Error::other(format!("tmpfs on {}: {e}", target.display())))?;
            for (ctrl, dir) in c.dirs() {
                let sub = target.join(ctrl);
                fs::create_dir_all(&sub)?;
                bind(dir, &sub, readonly)?;
            }
            if readonly {
                mount(
                    None::<&str>,
                    target,
                    None::<&str>,
                    flags | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                    None::<&str>,
                )
                .map_err(|e| io::Error::other(format!("remount {}: {e}", target.display())))?;
            }
            Ok(())
        }
    }
}
