//! vCPU register state for the three entry modes: real mode (tiny guests),
//! 32-bit protected mode (PVH entry) and 64-bit long mode (Linux 64-bit boot
//! protocol). The VMM writes the GDT/IDT/page tables itself.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::gdt::{kvm_segment_from_gdt, GDT_LONG, GDT_PROTECTED};
use super::layout::*;
use crate::error::{Error, Result};

/// How the boot vCPU starts executing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootMode {
    /// 16-bit real mode, flat segments at 0 (for tiny test guests).
    Real,
    /// 32-bit protected mode, paging off (PVH entry; `ebx` = start_info).
    Protected,
    /// 64-bit long mode with an identity map of the first 1 GiB
    /// (Linux 64-bit boot protocol; `rsi` = zero page).
    Long,
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

fn write_gdt(mem: &GuestMemoryMmap, gdt: &[u64]) -> Result<()> {
    for (i, entry) in gdt.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_OFFSET + (i as u64) * 8))
            .map_err(|e| Error::Boot(format!("writing GDT: {e}")))?;
    }
    // Empty IDT: any exception before the guest installs its own triple-faults,
    // which KVM reports as a shutdown exit.
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_OFFSET))
        .map_err(|e| Error::Boot(format!("writing IDT: {e}")))
}

/// Identity-maps the first 4 GiB with 2 MiB pages (PML4 -> one PDPT -> four
/// PDs), so the kernel and the 32-bit MMIO hole (boot timer, virtio-mmio)
/// are reachable before the guest installs its own tables.
pub fn write_page_tables(mem: &GuestMemoryMmap) -> Result<()> {
    let w = |v: u64, a: u64| {
        mem.write_obj(v, GuestAddress(a))
            .map_err(|e| Error::Boot(format!("writing page tables: {e}")))
    };
    w(PDPTE_START | 0x03, PML4_START)?;
    for pd in 0..PDE_COUNT {
        let pd_addr = PDE_START + pd * 0x1000;
        w(pd_addr | 0x03, PDPTE_START + pd * 8)?;
        for i in 0..512u64 {
            // Present | writable | page size (2 MiB).
            w(((pd * 512 + i) << 21) | 0x83, pd_addr + i * 8)?;
        }
    }
    Ok(())
}

/// Computes special registers for `mode`, writing GDT/IDT/page tables into
/// guest memory as needed.
pub fn sregs_for_mode(
    mem: &GuestMemoryMmap,
    mut sregs: kvm_sregs,
    mode: BootMode,
    entry: u64,
) -> Result<kvm_sregs> {
    match mode {
        BootMode::Real => {
            if entry >= 0x10_0000 {
                return Err(Error::Boot(format!(
                    "real-mode entry {entry:#x} is above 1 MiB"
                )));
            }
            // CS:IP = (entry & 0xf0000):(entry & 0xffff); data segments at 0.
            sregs.cs.base = entry & 0xf_0000;
            sregs.cs.selector = (sregs.cs.base >> 4) as u16;
            for seg in [
                &mut sregs.ds,
                &mut sregs.es,
                &mut sregs.fs,
                &mut sregs.gs,
                &mut sregs.ss,
            ] {
                seg.base = 0;
                seg.selector = 0;
            }
            sregs.cr0 &= !(X86_CR0_PE | X86_CR0_PG);
        }
        BootMode::Protected | BootMode::Long => {
            let gdt: &[u64] = if mode == BootMode::Long {
                &GDT_LONG
            } else {
                &GDT_PROTECTED
            };
            write_gdt(mem, gdt)?;
            sregs.gdt.base = BOOT_GDT_OFFSET;
            sregs.gdt.limit = (std::mem::size_of_val(gdt) - 1) as u16;
            sregs.idt.base = BOOT_IDT_OFFSET;
            sregs.idt.limit = 7;
            let code = kvm_segment_from_gdt(gdt[1], 1);
            let data = kvm_segment_from_gdt(gdt[2], 2);
            sregs.cs = code;
            sregs.ds = data;
            sregs.es = data;
            sregs.fs = data;
            sregs.gs = data;
            sregs.ss = data;
            sregs.tr = kvm_segment_from_gdt(gdt[3], 3);
            sregs.cr0 |= X86_CR0_PE | X86_CR0_ET;
            sregs.cr0 &= !X86_CR0_PG;
            sregs.cr4 = 0;
            sregs.efer = 0;
            if mode == BootMode::Long {
                write_page_tables(mem)?;
                sregs.cr3 = PML4_START;
                sregs.cr4 |= X86_CR4_PAE;
                sregs.cr0 |= X86_CR0_PG;
                sregs.efer |= EFER_LME | EFER_LMA;
            }
        }
    }
    Ok(sregs)
}

/// General-purpose registers at entry.
pub fn regs_for_mode(mode: BootMode, entry: u64) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        ..Default::default()
    };
    match mode {
        BootMode::Real => regs.rip = entry & 0xffff,
        BootMode::Protected => regs.rbx = PVH_INFO_START,
        BootMode::Long => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
    }
    regs
}

/// Sets all boot registers on `vcpu`.
pub fn setup_vcpu_regs(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    mode: BootMode,
    entry: u64,
) -> Result<()> {
    let sregs = vcpu.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?;
    let sregs = sregs_for_mode(mem, sregs, mode, entry)?;
    vcpu.set_sregs(&sregs)
        .map_err(Error::kvm("KVM_SET_SREGS"))?;
    vcpu.set_regs(&regs_for_mode(mode, entry))
        .map_err(Error::kvm("KVM_SET_REGS"))?;
    Ok(())
}

/// x87/SSE control words as after FNINIT / reset.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<()> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(Error::kvm("KVM_SET_FPU"))
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MISC_ENABLE_FAST_STRING: u64 = 1;

/// The MSRs the VMM sets at boot (and their values).
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    let e = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        e(MSR_IA32_SYSENTER_CS, 0),
        e(MSR_IA32_SYSENTER_ESP, 0),
        e(MSR_IA32_SYSENTER_EIP, 0),
        e(MSR_STAR, 0),
        e(MSR_CSTAR, 0),
        e(MSR_KERNEL_GS_BASE, 0),
        e(MSR_SYSCALL_MASK, 0),
        e(MSR_LSTAR, 0),
        e(MSR_IA32_TSC, 0),
        e(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        // MTRRs enabled, default type write-back.
        e(MSR_MTRR_DEF_TYPE, (1 << 11) | 6),
    ]
}

pub fn setup_msrs(vcpu: &VcpuFd) -> Result<()> {
    let entries = boot_msr_entries();
    let msrs = Msrs::from_entries(&entries).map_err(|e| Error::Boot(format!("MSR list: {e:?}")))?;
    let n = vcpu.set_msrs(&msrs).map_err(Error::kvm("KVM_SET_MSRS"))?;
    if n != entries.len() {
        return Err(Error::Boot(format!(
            "KVM accepted only {n} of {} boot MSRs (first rejected: {:#x})",
            entries.len(),
            entries[n].index
        )));
    }
    Ok(())
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn set_apic_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// LINT0 = ExtINT (legacy PIC), LINT1 = NMI, as the MP spec's virtual wire mode expects.
pub fn set_lint(vcpu: &VcpuFd) -> Result<()> {
    let mut klapic = vcpu.get_lapic().map_err(Error::kvm("KVM_GET_LAPIC"))?;
    for (off, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let bytes: [u8; 4] = std::array::from_fn(|i| klapic.regs[off + i] as u8);
        let v = set_apic_delivery_mode(u32::from_le_bytes(bytes), mode);
        for (i, b) in v.to_le_bytes().iter().enumerate() {
            klapic.regs[off + i] = *b as _;
        }
    }
    vcpu.set_lapic(&klapic).map_err(Error::kvm("KVM_SET_LAPIC"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap()
    }

    #[test]
    fn long_mode_sregs_and_page_tables() {
        let m = mem();
        let s = sregs_for_mode(&m, kvm_sregs::default(), BootMode::Long, 0x100_0000).unwrap();
        assert_eq!(s.cr3, PML4_START);
        assert_ne!(s.cr0 & X86_CR0_PG, 0);
        assert_ne!(s.cr4 & X86_CR4_PAE, 0);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(s.cs.l, 1);
        assert_eq!(
            m.read_obj::<u64>(GuestAddress(PML4_START)).unwrap(),
            PDPTE_START | 3
        );
        assert_eq!(
            m.read_obj::<u64>(GuestAddress(PDPTE_START)).unwrap(),
            PDE_START | 3
        );
        assert_eq!(
            m.read_obj::<u64>(GuestAddress(PDE_START + 8 * 511))
                .unwrap(),
            (511 << 21) | 0x83
        );
        // 0xC000_0000 (boot timer) is in the fourth PD, entry 0.
        assert_eq!(
            m.read_obj::<u64>(GuestAddress(PDPTE_START + 24)).unwrap(),
            (PDE_START + 0x3000) | 3
        );
        assert_eq!(
            m.read_obj::<u64>(GuestAddress(PDE_START + 0x3000)).unwrap(),
            0xc000_0000 | 0x83
        );
        assert_eq!(
            m.read_obj::<u64>(GuestAddress(BOOT_GDT_OFFSET + 8))
                .unwrap(),
            GDT_LONG[1]
        );
    }

    #[test]
    fn protected_and_real_mode() {
        let m = mem();
        let p = sregs_for_mode(&m, kvm_sregs::default(), BootMode::Protected, 0x10_0000).unwrap();
        assert_eq!(p.cr0 & (X86_CR0_PE | X86_CR0_PG), X86_CR0_PE);
        assert_eq!((p.cs.db, p.efer), (1, 0));
        let mut init = kvm_sregs::default();
        init.cs.base = 0xffff_0000;
        init.cs.selector = 0xf000;
        let r = sregs_for_mode(&m, init, BootMode::Real, 0x1_2345).unwrap();
        assert_eq!((r.cs.base, r.cs.selector, r.cr0 & 1), (0x1_0000, 0x1000, 0));
        assert_eq!(r.ds.base, 0);
        assert_eq!(regs_for_mode(BootMode::Real, 0x1_2345).rip, 0x2345);
        assert!(sregs_for_mode(&m, init, BootMode::Real, 0x10_0000).is_err());
        let regs = regs_for_mode(BootMode::Long, 0x100_0000);
        assert_eq!((regs.rip, regs.rsi), (0x100_0000, ZERO_PAGE_START));
        assert_eq!(
            regs_for_mode(BootMode::Protected, 0x10_0000).rbx,
            PVH_INFO_START
        );
    }

    #[test]
    fn apic_delivery_mode() {
        assert_eq!(
            set_apic_delivery_mode(0x0001_0000, APIC_MODE_EXTINT),
            0x0001_0700
        );
        assert_eq!(set_apic_delivery_mode(0x700, APIC_MODE_NMI), 0x400);
    }
}
