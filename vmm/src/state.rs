//! State shared by the vCPU threads, the device loop and the control socket.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;
use vmm_sys_util::eventfd::EventFd;

/// Why the VM stopped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "detail")]
pub enum ExitReason {
    /// The guest asked for a reset (i8042 0xFE or KVM reset event): the
    /// normal way a `reboot=k` guest ends.
    Reset,
    /// The guest powered off (KVM system event shutdown).
    Shutdown,
    /// Triple fault or other KVM shutdown exit.
    TripleFault,
    /// A vCPU executed HLT with no interrupt controller able to wake it.
    Halted,
    /// The host forced the VM down (control socket or signal).
    Forced,
    /// A vCPU failed (KVM error, unhandled exit).
    VcpuError(String),
}

impl ExitReason {
    /// Process exit status for this reason (0 for a clean guest exit).
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::Reset | ExitReason::Shutdown | ExitReason::Halted => 0,
            ExitReason::Forced => 0,
            ExitReason::TripleFault => 11,
            ExitReason::VcpuError(_) => 12,
        }
    }
}

pub struct VmmShared {
    start: Instant,
    boot_time_us: AtomicU64,
    boot_cpu_us: AtomicU64,
    first_run_us: AtomicU64,
    memslot_us: AtomicU64,
    first_run_cpu_us: AtomicU64,
    stopping: AtomicBool,
    exit: Mutex<Option<ExitReason>>,
    /// Written when the VM must stop; the device loop watches it.
    pub exit_evt: EventFd,
}

/// CPU time used by this process so far, in microseconds.
pub fn process_cpu_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

impl VmmShared {
    pub fn new(start: Instant) -> std::io::Result<Self> {
        Ok(Self {
            start,
            boot_time_us: AtomicU64::new(0),
            boot_cpu_us: AtomicU64::new(0),
            first_run_us: AtomicU64::new(0),
            memslot_us: AtomicU64::new(0),
            first_run_cpu_us: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            exit: Mutex::new(None),
            exit_evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    pub fn elapsed_us(&self) -> u64 {
        self.start.elapsed().as_micros().max(1) as u64
    }

    /// Records the first boot-complete signal and logs it.
    pub fn mark_boot_complete(&self) {
        let us = self.elapsed_us();
        if self
            .boot_time_us
            .compare_exchange(0, us, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            let cpu = process_cpu_us();
            self.boot_cpu_us.store(cpu, Ordering::SeqCst);
            tracing::info!(
                "Guest-boot-time = {us} us {} ms, {cpu} CPU us {} CPU ms",
                us / 1000,
                cpu / 1000
            );
        }
    }

    pub fn boot_time_us(&self) -> Option<u64> {
        Some(self.boot_time_us.load(Ordering::SeqCst)).filter(|v| *v != 0)
    }

    pub fn boot_cpu_us(&self) -> Option<u64> {
        Some(self.boot_cpu_us.load(Ordering::SeqCst)).filter(|v| *v != 0)
    }

    /// Called by vCPU 0 just before its first KVM_RUN.
    pub fn mark_first_run(&self) {
        let now = self.elapsed_us();
        if self
            .first_run_us
            .compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            self.first_run_cpu_us
                .store(process_cpu_us().max(1), Ordering::SeqCst);
        }
    }

    /// CPU time the VMM process used up to vCPU 0's first KVM_RUN (all
    /// threads): unlike wall time, not inflated by a busy host.
    pub fn first_run_cpu_us(&self) -> Option<u64> {
        Some(self.first_run_cpu_us.load(Ordering::SeqCst)).filter(|v| *v != 0)
    }

    pub fn first_run_us(&self) -> Option<u64> {
        Some(self.first_run_us.load(Ordering::SeqCst)).filter(|v| *v != 0)
    }

    /// Duration of the guest RAM registration ioctls (KVM_SET_USER_MEMORY_REGION).
    pub fn set_memslot_us(&self, us: u64) {
        self.memslot_us.store(us.max(1), Ordering::SeqCst);
    }

    pub fn memslot_us(&self) -> Option<u64> {
        Some(self.memslot_us.load(Ordering::SeqCst)).filter(|v| *v != 0)
    }

    /// Requests a stop; the first reason wins.
    pub fn request_exit(&self, reason: ExitReason) {
        let mut exit = self.exit.lock().unwrap();
        if exit.is_none() {
            tracing::info!("VM exit requested: {reason:?}");
            *exit = Some(reason);
        }
        self.stopping.store(true, Ordering::SeqCst);
        let _ = self.exit_evt.write(1);
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    pub fn exit_reason(&self) -> Option<ExitReason> {
        self.exit.lock().unwrap().clone()
    }
}
