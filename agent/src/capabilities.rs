//! Linux capabilities: Docker's default set, `--cap-add`/`--cap-drop`, `--privileged`.
//!
//! What a container process ends up with is decided by the bounding set: for uid 0, execve gives
//! permitted = effective = bounding (inheritable and ambient are cleared first); for other uids
//! execve clears them (Docker shows CapEff 0 for non-root users too).
use std::io;

pub const CAP_NAMES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Docker's default capabilities (moby `oci/caps/defaults.go`).
pub const DOCKER_DEFAULT: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

pub fn cap_number(name: &str) -> Option<u32> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    CAP_NAMES.iter().position(|n| *n == bare).map(|i| i as u32)
}

pub fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// The capability mask for a container: Docker's rules for privileged, `ALL` and add/drop order
/// (drops apply to the defaults, adds win over drops unless dropping `ALL`... as in moby's
/// `TweakCapabilities`: add ALL => everything minus drops; drop ALL => only adds).
pub fn compute(privileged: bool, cap_add: &[String], cap_drop: &[String]) -> Result<u64, String> {
    let all: u64 = if last_cap() >= 63 {
        u64::MAX
    } else {
        (1u64 << (last_cap() + 1)) - 1
    };
    if privileged {
        return Ok(all);
    }
    let parse = |list: &[String]| -> Result<(bool, u64), String> {
        let mut has_all = false;
        let mut mask = 0u64;
        for c in list {
            if c.eq_ignore_ascii_case("ALL") {
                has_all = true;
            } else {
                let n = cap_number(c).ok_or_else(|| format!("unknown capability: {c:?}"))?;
                mask |= 1 << n;
            }
        }
        Ok((has_all, mask))
    };
    let (add_all, add) = parse(cap_add)?;
    let (drop_all, drop) = parse(cap_drop)?;
    let mut base: u64 = DOCKER_DEFAULT
        .iter()
        .map(|n| 1u64 << cap_number(n).expect("known cap"))
        .sum();
    if add_all {
        base = all;
    }
    if drop_all {
        base = 0;
    }
    Ok(((base & !drop) | add) & all)
}

/// Drops every capability outside `keep` from the bounding set and clears the inheritable and
/// ambient sets. Runs as root in the child, before the uid change.
pub fn apply_bounding(keep: u64) -> io::Result<()> {
    for cap in 0..=last_cap() {
        if keep & (1u64 << cap) == 0 {
            // SAFETY: prctl with integer arguments only.
            if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    // SAFETY: as above.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    let (eff, perm, _) = capget()?;
    capset(eff, perm, 0)
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_V3: u32 = 0x2008_0522;

pub fn capget() -> io::Result<(u64, u64, u64)> {
    let mut hdr = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and a 2-element data array as the v3 ABI requires.
    if unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut hdr as *mut CapHeader,
            data.as_mut_ptr(),
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    let join = |lo: u32, hi: u32| (lo as u64) | ((hi as u64) << 32);
    Ok((
        join(data[0].effective, data[1].effective),
        join(data[0].permitted, data[1].permitted),
        join(data[0].inheritable, data[1].inheritable),
    ))
}

pub fn capset(eff: u64, perm: u64, inh: u64) -> io::Result<()> {
    let mut hdr = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: eff as u32,
            permitted: perm as u32,
            inheritable: inh as u32,
        },
        CapData {
            effective: (eff >> 32) as u32,
            permitted: (perm >> 32) as u32,
            inheritable: (inh >> 32) as u32,
        },
    ];
    // SAFETY: as in capget.
    if unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_default_mask() {
        assert_eq!(compute(false, &[], &[]).unwrap(), 0xa80425fb);
        let dropped = compute(false, &[], &["net_raw".into(), "CAP_CHOWN".into()]).unwrap();
        assert_eq!(dropped, 0xa80425fb & !(1 << 13) & !1);
        let only = compute(false, &["NET_ADMIN".into()], &["ALL".into()]).unwrap();
        assert_eq!(only, 1 << 12);
        assert!(compute(false, &["BOGUS".into()], &[]).is_err());
        assert_eq!(
            compute(true, &[], &[]).unwrap().count_ones(),
            last_cap() + 1
        );
    }
}
