//! The default seccomp filter: an equivalent of Docker's default profile written as a deny-list.
//!
//! Docker's profile allows ~350 syscalls and returns EPERM for the rest; most of what it leaves
//! out is either obsolete or gated on a capability the default set does not have. We allow
//! everything except that list (x86_64 only; other ABIs — i386 `int 0x80`, x32 — are denied
//! wholesale so they cannot bypass the list):
//! - always denied: keyring (`add_key`, `keyctl`, `request_key`), `userfaultfd`, `io_uring_*`,
//!   obsolete calls (`uselib`, `ustat`, `sysfs`, `_sysctl`, `nfsservctl`, ...), `personality`
//!   other than the harmless values;
//! - denied unless the container has the capability Docker gates them on: SYS_ADMIN (`mount`,
//!   `umount2`, `unshare`, `setns`, `pivot_root`, new-mount-API calls, `quotactl`, `fanotify_init`,
//!   `name_to_handle_at`, `bpf`, `perf_event_open`, `lookup_dcookie`, `vhangup`, and `clone` with
//!   namespace flags), SYS_BOOT (`reboot`, `kexec_*`), SYS_MODULE (module calls), SYS_RAWIO
//!   (`iopl`, `ioperm`), SYS_TIME (`settimeofday`, `clock_settime`, `clock_adjtime`), SYS_PACCT
//!   (`acct`), SYS_NICE (NUMA policy calls), SYSLOG (`syslog`), DAC_READ_SEARCH
//!   (`open_by_handle_at`), SYS_PTRACE is not needed (ptrace is allowed on kernels >= 4.8, as
//!   Docker does).
//! - `clone3` returns ENOSYS without SYS_ADMIN (its flags live in memory and cannot be checked),
//!   so libc falls back to `clone`, whose flags we can check — Docker does the same.
//!
//! A crate of its own (the agent installs the filters) so that the profile compiler, which
//! takes a client's JSON, is fuzzed without the agent (`host/fuzz`, target
//! `seccomp_profile`). Capabilities reach it as a question, [`HasCap`], so it carries no
//! capability table of its own.
use std::io;

use berth_agent_protocol::SeccompMode;

pub mod profile;
mod syscalls;

pub use profile::{check_program, kernel_version};

/// Whether the process the filter is for has a capability, by its name as Docker writes
/// it (`SYS_ADMIN`, or `CAP_SYS_ADMIN` as profiles often do).
pub type HasCap<'a> = &'a dyn Fn(&str) -> bool;

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const CLONE_NS_FLAGS: u32 = 0x7E02_0000;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

// BPF opcodes.
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_JGE_K: u16 = 0x35;
const BPF_JSET_K: u16 = 0x45;
const BPF_RET_K: u16 = 0x06;

fn always_denied() -> Vec<i64> {
    use libc::*;
    vec![
        SYS_add_key,
        SYS_keyctl,
        SYS_request_key,
        SYS_userfaultfd,
        SYS_uselib,
        SYS_ustat,
        SYS_sysfs,
        SYS__sysctl,
        SYS_nfsservctl,
        174, /* create_module */
        177, /* get_kernel_syms */
        178, /* query_module */
        SYS_swapon,
        SYS_swapoff,
        SYS_io_uring_setup,
        SYS_io_uring_enter,
        SYS_io_uring_register,
        SYS_afs_syscall,
        SYS_tuxcall,
        SYS_security,
        SYS_vserver,
        SYS_getpmsg,
        SYS_putpmsg,
    ]
}

fn gated() -> Vec<(&'static str, Vec<i64>)> {
    use libc::*;
    vec![
        (
            "SYS_ADMIN",
            vec![
                SYS_mount,
                SYS_umount2,
                SYS_unshare,
                SYS_setns,
                SYS_pivot_root,
                SYS_quotactl,
                SYS_fanotify_init,
                SYS_name_to_handle_at,
                SYS_bpf,
                SYS_perf_event_open,
                SYS_lookup_dcookie,
                SYS_vhangup,
                SYS_open_tree,
                SYS_move_mount,
                SYS_fsopen,
                SYS_fsconfig,
                SYS_fsmount,
                SYS_fspick,
                SYS_mount_setattr,
            ],
        ),
        (
            "SYS_BOOT",
            vec![SYS_reboot, SYS_kexec_load, SYS_kexec_file_load],
        ),
        (
            "SYS_MODULE",
            vec![SYS_init_module, SYS_finit_module, SYS_delete_module],
        ),
        ("SYS_RAWIO", vec![SYS_iopl, SYS_ioperm]),
        (
            "SYS_TIME",
            vec![SYS_settimeofday, SYS_clock_settime, SYS_clock_adjtime],
        ),
        ("SYS_PACCT", vec![SYS_acct]),
        (
            "SYS_NICE",
            vec![
                SYS_mbind,
                SYS_set_mempolicy,
                SYS_migrate_pages,
                SYS_move_pages,
            ],
        ),
        ("SYSLOG", vec![SYS_syslog]),
        ("DAC_READ_SEARCH", vec![SYS_open_by_handle_at]),
    ]
}

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The start of every filter: EPERM for any ABI but native x86_64 (i386 `int 0x80`, x32),
/// so they cannot bypass rules written with x86_64 numbers. Leaves the syscall number in
/// the accumulator.
fn prologue() -> Vec<libc::sock_filter> {
    let eperm = SECCOMP_RET_ERRNO | libc::EPERM as u32;
    vec![
        stmt(BPF_LD_W_ABS, 4), // seccomp_data.arch
        jump(BPF_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(BPF_RET_K, eperm),
        stmt(BPF_LD_W_ABS, 0), // seccomp_data.nr
        jump(BPF_JGE_K, X32_SYSCALL_BIT, 0, 1),
        stmt(BPF_RET_K, eperm),
    ]
}

/// The filter `mode` asks for, for a process with the capabilities `has`; `None` for
/// `unconfined`.
pub fn filter_for(
    mode: &SeccompMode,
    has: HasCap,
) -> Result<Option<Vec<libc::sock_filter>>, String> {
    match mode {
        SeccompMode::Unconfined => Ok(None),
        SeccompMode::Default => Ok(Some(build_filter(has))),
        SeccompMode::Profile(p) => profile::build(p, has, kernel_version()).map(Some),
    }
}

/// Builds the default filter for a container with the capabilities `has`.
pub fn build_filter(has: HasCap) -> Vec<libc::sock_filter> {
    let mut denied = always_denied();
    for (cap, calls) in gated() {
        if !has(cap) {
            denied.extend(calls);
        }
    }
    let eperm = SECCOMP_RET_ERRNO | libc::EPERM as u32;
    let enosys = SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    let mut p = prologue();
    for nr in denied {
        p.push(jump(BPF_JEQ_K, nr as u32, 0, 1));
        p.push(stmt(BPF_RET_K, eperm));
    }
    // personality(2): only the values Docker allows (PER_LINUX, PER_LINUX32, UNAME26 variants, query).
    p.push(jump(BPF_JEQ_K, libc::SYS_personality as u32, 0, 8));
    p.push(stmt(BPF_LD_W_ABS, 16)); // args[0], low word
    for (i, v) in [0u32, 0x8, 0x20000, 0x20008, 0xffff_ffff]
        .iter()
        .enumerate()
    {
        p.push(jump(BPF_JEQ_K, *v, (5 - i) as u8, 0));
    }
    p.push(stmt(BPF_RET_K, eperm));
    p.push(stmt(BPF_RET_K, SECCOMP_RET_ALLOW));
    if !has("SYS_ADMIN") {
        p.push(jump(BPF_JEQ_K, libc::SYS_clone3 as u32, 0, 1));
        p.push(stmt(BPF_RET_K, enosys));
        p.push(jump(BPF_JEQ_K, libc::SYS_clone as u32, 0, 3));
        p.push(stmt(BPF_LD_W_ABS, 16)); // clone flags (x86_64: args[0])
        p.push(jump(BPF_JSET_K, CLONE_NS_FLAGS, 0, 1));
        p.push(stmt(BPF_RET_K, eperm));
    }
    p.push(stmt(BPF_RET_K, SECCOMP_RET_ALLOW));
    p
}

/// Installs `filter` on the calling thread (needs CAP_SYS_ADMIN or no_new_privs).
pub fn install(filter: &[libc::sock_filter]) -> io::Result<()> {
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points to a valid filter that outlives the call (the kernel copies it).
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &prog as *const _ as libc::c_ulong,
            0,
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Docker's default capabilities include none the filter gates calls on.
    pub(crate) const DEFAULT_CAPS: HasCap = &|_| false;
    pub(crate) const SYS_ADMIN: HasCap = &|c| c.trim_start_matches("CAP_") == "SYS_ADMIN";

    #[test]
    fn filter_shape() {
        let f = build_filter(DEFAULT_CAPS);
        check_program(&f).unwrap();
        let has_nr = |f: &[libc::sock_filter], nr: i64| {
            f.iter().any(|i| i.code == BPF_JEQ_K && i.k == nr as u32)
        };
        assert!(has_nr(&f, libc::SYS_mount));
        assert!(has_nr(&f, libc::SYS_keyctl));
        let admin = build_filter(SYS_ADMIN);
        assert!(!has_nr(&admin, libc::SYS_mount));
        assert!(has_nr(&admin, libc::SYS_keyctl));
    }

    /// Runs `f` in a forked child with `filter` installed; returns the child's exit code.
    pub(crate) fn in_child(filter: Vec<libc::sock_filter>, f: fn() -> i32) -> i32 {
        // SAFETY: the child only makes raw syscalls and _exits.
        unsafe {
            let pid = libc::fork();
            assert!(pid >= 0);
            if pid == 0 {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                if install(&filter).is_err() {
                    libc::_exit(100);
                }
                libc::_exit(f());
            }
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
            assert!(libc::WIFEXITED(status), "child died: {status}");
            libc::WEXITSTATUS(status)
        }
    }

    pub(crate) fn errno_of(rc: libc::c_long) -> i32 {
        if rc == -1 {
            io::Error::last_os_error().raw_os_error().unwrap_or(0)
        } else {
            0
        }
    }

    #[test]
    fn filter_denies_in_a_real_process() {
        // Each check sets one bit of the exit code when it misbehaves.
        let code = in_child(build_filter(DEFAULT_CAPS), || {
            let mut bad = 0;
            // SAFETY: syscalls with invalid or harmless arguments.
            unsafe {
                if errno_of(libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0)) != libc::EPERM {
                    bad |= 1;
                }
                if errno_of(libc::syscall(libc::SYS_clone3, 0, 0)) != libc::ENOSYS {
                    bad |= 2;
                }
                if errno_of(libc::syscall(libc::SYS_personality, 0x0040000)) != libc::EPERM {
                    bad |= 4;
                }
                if libc::syscall(libc::SYS_personality, 0xffff_ffffu32 as libc::c_long) == -1 {
                    bad |= 8;
                }
                if libc::syscall(libc::SYS_getpid) <= 0 {
                    bad |= 16;
                }
                // Even root with CAP_SYS_ADMIN is refused by the filter.
                if errno_of(libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUTS)) != libc::EPERM {
                    bad |= 32;
                }
                if errno_of(libc::syscall(
                    libc::SYS_clone,
                    (libc::CLONE_NEWNET | libc::SIGCHLD) as libc::c_long,
                    0,
                    0,
                    0,
                    0,
                )) != libc::EPERM
                {
                    bad |= 64;
                }
            }
            bad
        });
        assert_eq!(code, 0, "seccomp checks failed (bitmask {code:#b})");
    }

    #[test]
    fn sys_admin_reopens_what_docker_gates_on_it() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP: needs root to observe unshare succeeding");
            return;
        }
        let code = in_child(build_filter(SYS_ADMIN), || {
            // SAFETY: unshare of a UTS namespace in a throwaway child.
            let rc = unsafe { libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUTS) };
            let keyctl = unsafe { libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0) };
            i32::from(rc != 0) | (i32::from(errno_of(keyctl) != libc::EPERM) << 1)
        });
        assert_eq!(code, 0);
    }
}
