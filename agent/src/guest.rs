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

/// One `berth.disk=<ro|rw>,<fstype>,<target>[,<uuid>]` from the kernel command line.
///
/// A disk with a filesystem UUID (volumes, the writable layer) is found by that UUID in its
/// superblock; one without (the image) is the first unused virtio disk with its read-only
/// flag. The order in which a VMM's virtio-mmio devices become `vda`, `vdb`, ... is not
/// something every VMM promises, so names are never used.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DiskMount {
    read_only: bool,
    fstype: String,
    target: String,
    /// ext4 `s_uuid` as 32 lowercase hex digits.
    uuid: Option<String>,
}

fn parse_disk(v: &str) -> Option<DiskMount> {
    let mut it = v.splitn(4, ',');
    let read_only = match it.next()? {
        "ro" => true,
        "rw" => false,
        _ => return None,
    };
    let fstype = it.next()?.to_string();
    let target = it.next()?.to_string();
    let uuid = match it.next() {
        Some(u) if u.len() == 32 && u.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Some(u.to_ascii_lowercase())
        }
        Some(_) => return None,
        None => None,
    };
    target.starts_with('/').then_some(DiskMount {
        read_only,
        fstype,
        target,
        uuid,
    })
}

/// The ext2/3/4 superblock's UUID of a block device, if it has one.
fn ext4_uuid(dev: &str) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    // The superblock starts at byte 1024: magic 0xEF53 at +0x38, s_uuid at +0x68.
    let mut f = fs::File::open(dev).ok()?;
    let mut sb = [0u8; 0x78];
    f.seek(SeekFrom::Start(1024)).ok()?;
    f.read_exact(&mut sb).ok()?;
    if sb[0x38..0x3a] != [0x53, 0xEF] {
        return None;
    }
    Some(sb[0x68..0x78].iter().map(|b| format!("{b:02x}")).collect())
}

/// Mounts the container's disks named by `berth.disk=` (the image, read-only; the writable
/// disk with the overlay's upper and work dirs; block volumes). Failures are logged; the
/// container then fails to start with the mount error, which reaches the user.
pub fn mount_disks_from_cmdline() {
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let mut wants: Vec<DiskMount> = cmdline
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
    // Disks named by UUID first, so the flag-matched ones choose among what is left.
    wants.sort_by_key(|w| w.uuid.is_none());
    for want in wants {
        let found = match &want.uuid {
            Some(u) => disks
                .iter()
                .position(|(name, _)| ext4_uuid(&format!("/dev/{name}")).as_ref() == Some(u)),
            None => disks.iter().position(|(_, ro)| *ro == want.read_only),
        };
        let Some(i) = found else {
            warn!(
                "no {} disk{} for {}",
                if want.read_only {
                    "read-only"
                } else {
                    "writable"
                },
                want.uuid
                    .as_ref()
                    .map(|u| format!(" with filesystem UUID {u}"))
                    .unwrap_or_default(),
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

/// One `berth.fs=<tag>,<target>[,ro][,suid]`: a virtio-fs share (a host directory served
/// by virtiofsd) to mount at `target`. `suid` is for the pod share, which carries the
/// members' root filesystems (their setuid programs must work, as under runc); other shares
/// are data and mounted nosuid.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FsMount {
    tag: String,
    target: String,
    read_only: bool,
    suid: bool,
}

fn parse_fs(v: &str) -> Option<FsMount> {
    let mut it = v.split(',');
    let tag = it.next().filter(|t| !t.is_empty())?.to_string();
    let target = it.next().filter(|t| t.starts_with('/'))?.to_string();
    let mut share = FsMount {
        tag,
        target,
        read_only: false,
        suid: false,
    };
    for opt in it {
        match opt {
            "ro" => share.read_only = true,
            "suid" => share.suid = true,
            _ => return None,
        }
    }
    Some(share)
}

/// Mounts the virtio-fs shares named by `berth.fs=` (bind mounts and directory volumes).
/// The guest's read-only flag is only a second line: a read-only share is also refused
/// writes by virtiofsd on the host.
pub fn mount_shares_from_cmdline() {
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    for v in cmdline
        .split_whitespace()
        .filter_map(|a| a.strip_prefix("berth.fs="))
    {
        let Some(share) = parse_fs(v) else {
            warn!("ignoring malformed berth.fs={v}");
            continue;
        };
        let _ = fs::create_dir_all(&share.target);
        let mut flags = MsFlags::MS_NODEV;
        if !share.suid {
            flags |= MsFlags::MS_NOSUID;
        }
        if share.read_only {
            flags |= MsFlags::MS_RDONLY;
        }
        if let Err(e) = mount(
            Some(share.tag.as_str()),
            share.target.as_str(),
            Some("virtiofs"),
            flags,
            None::<&str>,
        ) {
            warn!("mount virtio-fs {} on {}: {e}", share.tag, share.target);
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
                target: "/run/vm/image".into(),
                uuid: None,
            })
        );
        assert_eq!(
            parse_disk("rw,ext4,/run/vm/vol/1,0123456789ABCDEF0123456789abcdef")
                .and_then(|d| d.uuid),
            Some("0123456789abcdef0123456789abcdef".into())
        );
        assert!(parse_disk("rw,ext4,/x,notauuid").is_none());
        assert!(parse_disk("rw,ext4,relative").is_none());
        assert!(parse_disk("maybe,ext4,/x").is_none());
        assert!(parse_disk("ro").is_none());
    }

    #[test]
    fn share_args() {
        assert_eq!(
            parse_fs("fs2,/run/vm/fs/2,ro"),
            Some(FsMount {
                tag: "fs2".into(),
                target: "/run/vm/fs/2".into(),
                read_only: true,
                suid: false,
            })
        );
        assert_eq!(parse_fs("fs0,/a").map(|f| f.read_only), Some(false));
        assert_eq!(
            parse_fs("pod,/run/berth/pod,suid").map(|f| (f.read_only, f.suid)),
            Some((false, true))
        );
        assert!(parse_fs("fs0,relative").is_none());
        assert!(parse_fs(",/a").is_none());
        assert!(parse_fs("fs0,/a,rw").is_none());
        assert!(parse_fs("fs0,/a,ro,x").is_none());
    }
}
