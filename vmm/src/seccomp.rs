//! Per-thread seccomp filters, kept as data (syscall -> optional argument
//! conditions) and compiled with seccompiler. vCPU threads may only issue
//! KVM_RUN among ioctls; the device loop gets no ioctl but FIONBIO.

use std::collections::BTreeMap;
use std::sync::Once;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

use crate::error::{Error, Result};

const KVM_RUN: u64 = 0xae80;
const FIONBIO: u64 = 0x5421;

/// Syscalls every VMM thread needs: memory management, locks, signals,
/// thread exit, clocks and plain reads/writes on fds it already holds.
const COMMON: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_mprotect,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_exit,
    libc::SYS_clock_gettime,
    libc::SYS_sched_yield,
    libc::SYS_getrandom,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_fcntl,
];

/// The device loop: epoll, block I/O, sockets for vsock and the control
/// channel, kicking vCPUs at shutdown.
const DEVICE_LOOP: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_readv,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_lseek,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    libc::SYS_tgkill,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_newfstatat,
];

fn rules(extra: &[i64]) -> BTreeMap<i64, Vec<SeccompRule>> {
    COMMON.iter().chain(extra).map(|s| (*s, vec![])).collect()
}

fn arg_eq(index: u8, value: u64) -> Result<SeccompRule> {
    let cond = SeccompCondition::new(index, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
        .map_err(|e| Error::Seccomp(e.to_string()))?;
    SeccompRule::new(vec![cond]).map_err(|e| Error::Seccomp(e.to_string()))
}

fn compile(rules: BTreeMap<i64, Vec<SeccompRule>>) -> Result<BpfProgram> {
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        std::env::consts::ARCH
            .try_into()
            .map_err(|e: seccompiler::BackendError| Error::Seccomp(e.to_string()))?,
    )
    .map_err(|e| Error::Seccomp(e.to_string()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| Error::Seccomp(e.to_string()))
}

/// Filter for vCPU threads.
pub fn vcpu_filter() -> Result<BpfProgram> {
    let mut r = rules(&[]);
    r.insert(libc::SYS_ioctl, vec![arg_eq(1, KVM_RUN)?]);
    compile(r)
}

/// Filter for the device-loop thread.
pub fn device_loop_filter() -> Result<BpfProgram> {
    let mut r = rules(DEVICE_LOOP);
    r.insert(libc::SYS_ioctl, vec![arg_eq(1, FIONBIO)?]);
    // New sockets only for vsock's guest-initiated connections (AF_UNIX).
    r.insert(libc::SYS_socket, vec![arg_eq(0, libc::AF_UNIX as u64)?]);
    compile(r)
}

/// Signal used to kick a vCPU out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn noop_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) handler so the kick interrupts KVM_RUN with EINTR
/// instead of killing the process.
pub fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Err(e) = vmm_sys_util::signal::register_signal_handler(kick_signal(), noop_handler) {
            tracing::error!("cannot install vCPU kick handler: {e}");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile() {
        assert!(vcpu_filter().unwrap().len() > COMMON.len());
        assert!(device_loop_filter().unwrap().len() > DEVICE_LOOP.len());
    }

    #[test]
    fn vcpu_filter_blocks_other_ioctls_in_child() {
        // Apply the vCPU filter in a forked child: KVM_RUN-only ioctl means
        // TCGETS must kill it with SIGSYS, while plain writes still work.
        let prog = vcpu_filter().unwrap();
        // SAFETY: the child only calls async-signal-safe functions.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            if seccompiler::apply_filter(&prog).is_err() {
                unsafe { libc::_exit(3) };
            }
            let mut t = [0u8; 64];
            unsafe { libc::ioctl(0, libc::TCGETS, t.as_mut_ptr()) };
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
    }
}
