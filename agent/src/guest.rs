//! Guest mode: the agent as PID 1 of a microVM. It mounts the kernel filesystems, then serves
//! the host over vsock (port from `berth.port=` on the kernel command line, default 1024).
use std::{fs, path::Path};

use nix::mount::{mount, MsFlags};
use tracing::warn;

pub const DEFAULT_VSOCK_PORT: u32 = 1024;

/// Moves PID 1 off the initramfs onto a tmpfs root of its own, as `switch_root` does:
/// pivot_root(2) refuses to move away from the initramfs (`rootfs` has no parent mount), and
/// every container start pivots into its rootfs. Called first, before anything is mounted.
/// The agent binary keeps running from the old root, which stays in memory, unreachable.
pub fn leave_initramfs() -> nix::Result<()> {
    // Only an initramfs root needs this (ramfs, or tmpfs when the kernel picks it for
    // rootfs). Anywhere else — a PID 1 in a namespace on a host, as the agent's tests run
    // it — the real root stays.
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    let fs_type = nix::sys::statfs::statfs("/")?.filesystem_type().0 as i64;
    if fs_type != RAMFS_MAGIC && fs_type != TMPFS_MAGIC {
        return Ok(());
    }
    let new_root = "/newroot";
    let _ = fs::create_dir_all(new_root);
    mount(
        Some("tmpfs"),
        new_root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )?;
    nix::unistd::chdir(new_root)?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)?;
    nix::unistd::chroot(".")?;
    nix::unistd::chdir("/")
}

/// Mounts /proc, /sys, /dev, /dev/pts, /dev/shm, /run and the cgroup2 hierarchy; entries
/// already mounted (EBUSY) are skipped.
pub fn mount_kernel_filesystems() {
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let list: &[(&str, &str, &str, MsFlags, Option<&str>)] = &[
        ("proc", "/proc", "proc", nodev, None),
        ("sysfs", "/sys", "sysfs", nodev, None),
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        ),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620"),
        ),
        ("tmpfs", "/dev/shm", "tmpfs", nodev, Some("mode=1777")),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ),
        ("cgroup2", "/sys/fs/cgroup", "cgroup2", nodev, None),
    ];
    for (src, target, fstype, flags, data) in list {
        let _ = fs::create_dir_all(target);
        if let Err(e) = mount(Some(*src), *target, Some(*fstype), *flags, *data) {
            if e != nix::errno::Errno::EBUSY {
                warn!("mount {fstype} on {target}: {e}");
            }
        }
    }
    if !Path::new("/dev/ptmx").exists() {
        let _ = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx");
    }
}

/// One `berth.disk=<ro|rw>,<fstype>,<target>` from the kernel command line: mount the
/// first not yet used virtio disk with that read-only flag at `target`. Disks are matched by
/// their read-only flag rather than their name, because the order in which a VMM's
/// virtio-mmio devices become `vda`, `vdb`, ... is not something every VMM promises.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DiskMount {
    read_only: bool,
    fstype: String,
    target: String,
}

fn parse_disk(v: &str) -> Option<DiskMount> {
    let mut it = v.splitn(3, ',');
    let read_only = match it.next()? {
        "ro" => true,
        "rw" => false,
        _ => return None,
    };
    let fstype = it.next()?.to_string();
    let target = it.next()?.to_string();
    target.starts_with('/').then_some(DiskMount {
        read_only,
        fstype,
        target,
    })
}

/// Mounts the container's disks named by `berth.disk=` (the image, read-only, and the
/// writable disk with the overlay's upper and work dirs). Failures are logged; the container
/// then fails to start with the mount error, which reaches the user.
pub fn mount_disks_from_cmdline() {
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let wants: Vec<DiskMount> = cmdline
        .split_whitespace()
        .filter_map(|a| a.strip_prefix("berth.disk="))
        .filter_map(|v| {
            let d = parse_disk(v);
            if d.is_none() {
                warn!("ignoring malformed berth.disk={v}");
            }
            d
        })
        .collect();
    if wants.is_empty() {
        return;
    }
    let mut disks: Vec<(String, bool)> = fs::read_dir("/sys/block")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let ro = fs::read_to_string(e.path().join("ro")).ok()?;
                    name.starts_with("vd").then(|| (name, ro.trim() == "1"))
                })
                .collect()
        })
        .unwrap_or_default();
    disks.sort();
    for want in wants {
        let Some(i) = disks.iter().position(|(_, ro)| *ro == want.read_only) else {
            warn!(
                "no {} disk for {}",
                if want.read_only {
                    "read-only"
                } else {
                    "writable"
                },
                want.target
            );
            continue;
        };
        let (name, _) = disks.remove(i);
        let dev = format!("/dev/{name}");
        let _ = fs::create_dir_all(&want.target);
        let flags = if want.read_only {
            MsFlags::MS_RDONLY
        } else {
            MsFlags::empty()
        };
        if let Err(e) = mount(
            Some(dev.as_str()),
            want.target.as_str(),
            Some(want.fstype.as_str()),
            flags,
            None::<&str>,
        ) {
            warn!("mount {dev} ({}) on {}: {e}", want.fstype, want.target);
        }
    }
}

/// `berth.port=N` from the kernel command line.
pub fn vsock_port_from_cmdline() -> u32 {
    fs::read_to_string("/proc/cmdline")
        .unwrap_or_default()
        .split_whitespace()
        .find_map(|a| a.strip_prefix("berth.port=").and_then(|v| v.parse().ok()))
        .unwrap_or(DEFAULT_VSOCK_PORT)
}

/// What PID 1 does after the agent is told to shut down: power the VM off.
pub fn power_off() -> ! {
    // SAFETY: sync and reboot have no memory preconditions; as PID 1 of the VM this ends it
    // (the VMM runs the guest with reboot=t / -no-reboot, so a restart exits the VM).
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
        libc::_exit(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_args() {
        assert_eq!(
            parse_disk("ro,erofs,/run/vm/image"),
            Some(DiskMount {
                read_only: true,
                fstype: "erofs".into(),
                target: "/run/vm/image".into()
            })
        );
        assert!(parse_disk("rw,ext4,relative").is_none());
        assert!(parse_disk("maybe,ext4,/x").is_none());
        assert!(parse_disk("ro").is_none());
    }
}
