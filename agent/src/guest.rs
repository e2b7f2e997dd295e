//! Guest mode: the agent as PID 1 of a microVM. It mounts the kernel filesystems, then serves
//! the host over vsock (port from `berth.port=` on the kernel command line, default 1024).
use std::{fs, path::Path};

use nix::mount::{mount, MsFlags};
use tracing::warn;

pub const DEFAULT_VSOCK_PORT: u32 = 1024;

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
