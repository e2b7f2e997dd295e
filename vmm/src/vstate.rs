//! KVM VM and vCPU setup and the vCPU run loop.

use std::sync::Arc;

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::layout::{KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};
use crate::arch::{cpuid, regs};
use crate::devices::bus::Bus;
use crate::error::{Error, Result};
use crate::state::{ExitReason, VmmShared};

/// Opens /dev/kvm and creates a VM with the in-kernel LAPIC/IOAPIC/PIC and PIT.
pub fn create_vm(
    mem: &GuestMemoryMmap,
    shared: &Arc<VmmShared>,
) -> Result<(Kvm, VmFd, MemRegistration)> {
    let kvm = Kvm::new().map_err(Error::NoKvm)?;
    let vm = kvm.create_vm().map_err(Error::kvm("KVM_CREATE_VM"))?;
    vm.set_tss_address(KVM_TSS_ADDRESS as usize)
        .map_err(Error::kvm("KVM_SET_TSS_ADDR"))?;
    vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
        .map_err(Error::kvm("KVM_SET_IDENTITY_MAP_ADDR"))?;
    vm.create_irq_chip()
        .map_err(Error::kvm("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(Error::kvm("KVM_CREATE_PIT2"))?;
    let mut regions = Vec::new();
    for (slot, region) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|e| Error::Memory(e.to_string()))?;
        regions.push(kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        });
    }
    let registration = MemRegistration::spawn(&vm, regions, shared.clone())?;
    Ok((kvm, vm, registration))
}

/// KVM_SET_USER_MEMORY_REGION = _IOW(KVMIO, 0x46, struct kvm_userspace_memory_region).
const KVM_SET_USER_MEMORY_REGION: libc::c_ulong = 0x4020_ae46;

/// Guest RAM registration running on a helper thread: the ioctl waits for
/// an SRCU grace period (milliseconds on some hosts) and nothing before the
/// first KVM_RUN needs it, so it overlaps with device and kernel setup.
pub struct MemRegistration(Option<std::thread::JoinHandle<Result<()>>>);

impl MemRegistration {
    fn spawn(
        vm: &VmFd,
        regions: Vec<kvm_userspace_memory_region>,
        shared: Arc<VmmShared>,
    ) -> Result<Self> {
        use std::os::unix::io::AsRawFd;
        let fd = vm.as_raw_fd();
        let h = std::thread::Builder::new()
            .name("vmm-memslots".into())
            .spawn(move || {
                let t = std::time::Instant::now();
                for r in regions {
                    // SAFETY: `fd` is the VM fd, kept open until this thread is
                    // joined (MemRegistration is joined before the VmFd drops);
                    // the region stays mapped for the VM's lifetime.
                    let ret = unsafe { libc::ioctl(fd, KVM_SET_USER_MEMORY_REGION as _, &r) };
                    if ret < 0 {
                        return Err(Error::Kvm {
                            op: "KVM_SET_USER_MEMORY_REGION",
                            err: kvm_ioctls::Error::last(),
                        });
                    }
                }
                shared.set_memslot_us(t.elapsed().as_micros() as u64);
                Ok(())
            })
            .map_err(Error::io("spawn memslot thread"))?;
        Ok(Self(Some(h)))
    }

    /// Waits for the registration; must happen before any vCPU runs.
    pub fn wait(&mut self) -> Result<()> {
        match self.0.take() {
            Some(h) => h
                .join()
                .map_err(|_| Error::Boot("memslot thread panicked".into()))?,
            None => Ok(()),
        }
    }
}

impl Drop for MemRegistration {
    fn drop(&mut self) {
        let _ = self.wait();
    }
}

/// Creates and configures vCPU `id` (CPUID, MSRs, FPU, LAPIC LINTs).
/// What KVM supports, fetched once per VM and filtered per vCPU.
pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(Error::kvm("KVM_GET_SUPPORTED_CPUID"))
}

pub fn create_vcpu(
    base_cpuid: &CpuId,
    vm: &VmFd,
    id: u8,
    nr_vcpus: u8,
    features: crate::config::CpuFeatures,
) -> Result<VcpuFd> {
    let vcpu = vm
        .create_vcpu(u64::from(id))
        .map_err(Error::kvm("KVM_CREATE_VCPU"))?;
    let mut cpuid = base_cpuid.clone();
    cpuid::filter_cpuid(&mut cpuid, id, nr_vcpus, features);
    vcpu.set_cpuid2(&cpuid)
        .map_err(Error::kvm("KVM_SET_CPUID2"))?;
    regs::setup_msrs(&vcpu)?;
    regs::setup_fpu(&vcpu)?;
    regs::set_lint(&vcpu)?;
    Ok(vcpu)
}

/// Runs one vCPU until the VM stops.
pub struct VcpuRunner {
    pub id: u8,
    pub fd: VcpuFd,
    pub pio: Bus,
    pub mmio: Bus,
    pub shared: Arc<VmmShared>,
}

impl VcpuRunner {
    pub fn run(&mut self) {
        if self.id == 0 {
            self.shared.mark_first_run();
        }
        while !self.shared.stopping() {
            if let Some(reason) = self.run_once() {
                self.shared.request_exit(reason);
                return;
            }
        }
    }

    /// One KVM_RUN; returns Some when the VM must stop.
    fn run_once(&mut self) -> Option<ExitReason> {
        match self.fd.run() {
            Ok(exit) => match exit {
                VcpuExit::IoIn(port, data) => {
                    self.pio.read(u64::from(port), data);
                    None
                }
                VcpuExit::IoOut(port, data) => {
                    self.pio.write(u64::from(port), data);
                    None
                }
                VcpuExit::MmioRead(addr, data) => {
                    self.mmio.read(addr, data);
                    None
                }
                VcpuExit::MmioWrite(addr, data) => {
                    self.mmio.write(addr, data);
                    None
                }
                VcpuExit::Hlt => Some(ExitReason::Halted),
                VcpuExit::Shutdown => Some(ExitReason::TripleFault),
                VcpuExit::SystemEvent(kind, _) => match kind {
                    kvm_bindings::KVM_SYSTEM_EVENT_RESET => Some(ExitReason::Reset),
                    kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => Some(ExitReason::Shutdown),
                    k => Some(ExitReason::VcpuError(format!(
                        "unexpected system event {k}"
                    ))),
                },
                VcpuExit::Intr => None,
                VcpuExit::FailEntry(reason, cpu) => Some(ExitReason::VcpuError(format!(
                    "KVM_EXIT_FAIL_ENTRY reason {reason:#x} on cpu {cpu}"
                ))),
                VcpuExit::InternalError => Some(ExitReason::VcpuError(format!(
                    "KVM internal error on vcpu {}",
                    self.id
                ))),
                other => Some(ExitReason::VcpuError(format!(
                    "unhandled exit on vcpu {}: {other:?}",
                    self.id
                ))),
            },
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
            Err(e) => Some(ExitReason::VcpuError(format!(
                "KVM_RUN on vcpu {}: {e}",
                self.id
            ))),
        }
    }
}
