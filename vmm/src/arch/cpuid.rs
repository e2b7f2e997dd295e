//! CPUID filtering: start from what KVM supports, then fix up topology and
//! hide features the VMM does not emulate (PMU, MONITOR/MWAIT, nested VMX,
//! SGX, energy-performance bias).

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

use crate::config::CpuFeatures;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE: u32 = 0x4;
const LEAF_THERMAL: u32 = 0x6;
const LEAF_EXT_FEATURES: u32 = 0x7;
const LEAF_PMU: u32 = 0xa;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;

// Leaf 1 ECX.
const ECX_MONITOR: u32 = 1 << 3;
const ECX_VMX: u32 = 1 << 5;
const ECX_CX16: u32 = 1 << 13;
const ECX_PDCM: u32 = 1 << 15;
const ECX_XSAVE: u32 = 1 << 26;
const ECX_OSXSAVE: u32 = 1 << 27;
const ECX_AVX: u32 = 1 << 28;
const ECX_RDRAND: u32 = 1 << 30;
/// What PVM's instruction emulator cannot execute for a guest (see
/// [`CpuFeatures::PvmEmulator`]); AVX and RDRAND go with XSAVE, as the kernel expects.
const ECX_PVM_EMULATOR_LACKS: u32 = ECX_CX16 | ECX_XSAVE | ECX_OSXSAVE | ECX_AVX | ECX_RDRAND;
const ECX_HYPERVISOR: u32 = 1 << 31;
// Leaf 1 EDX.
const EDX_HTT: u32 = 1 << 28;
// Leaf 7.0.
const EBX_SGX: u32 = 1 << 2;
const ECX_WAITPKG: u32 = 1 << 5;
const ECX_SGX_LC: u32 = 1 << 30;
// Leaf 6 ECX.
const ECX_EPB: u32 = 1 << 3;

fn bits_for(n: u32) -> u32 {
    // Smallest shift so that n ids fit (ceil(log2 n)).
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

fn filter_entry(e: &mut kvm_cpuid_entry2, cpu_id: u8, nr_cpus: u8, features: CpuFeatures) {
    let apic = u32::from(cpu_id);
    let n = u32::from(nr_cpus.max(1));
    match e.function {
        LEAF_FEATURES => {
            e.ebx = (e.ebx & 0x0000_00ff) | (apic << 24) | (n << 16) | (8 << 8);
            e.ecx = (e.ecx & !(ECX_MONITOR | ECX_VMX | ECX_PDCM)) | ECX_HYPERVISOR;
            if features == CpuFeatures::PvmEmulator {
                e.ecx &= !ECX_PVM_EMULATOR_LACKS;
            }
            if n > 1 {
                e.edx |= EDX_HTT;
            } else {
                e.edx &= !EDX_HTT;
            }
        }
        LEAF_CACHE => {
            let level = (e.eax >> 5) & 0x7;
            let sharing = if level >= 3 { n - 1 } else { 0 };
            // EAX[31:26] = cores per package - 1, EAX[25:14] = threads sharing - 1.
            e.eax = (e.eax & 0x3fff) | (sharing << 14) | ((n - 1) << 26);
        }
        LEAF_THERMAL => e.ecx &= !ECX_EPB,
        LEAF_EXT_FEATURES if e.index == 0 => {
            e.ebx &= !EBX_SGX;
            e.ecx &= !(ECX_WAITPKG | ECX_SGX_LC);
        }
        LEAF_PMU => {
            e.eax = 0;
            e.ebx = 0;
            e.ecx = 0;
            e.edx = 0;
        }
        LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
            // One thread per core, all vCPUs in one package.
            let (shift, count, kind) = match e.index {
                0 => (0, 1, 1),
                1 => (bits_for(n), n, 2),
                _ => (0, 0, 0),
            };
            e.eax = shift;
            e.ebx = count;
            e.ecx = (kind << 8) | (e.index & 0xff);
            e.edx = apic;
        }
        _ => {}
    }
}

/// Filters `cpuid` in place for vCPU `cpu_id` of `nr_cpus`.
pub fn filter_cpuid(cpuid: &mut CpuId, cpu_id: u8, nr_cpus: u8, features: CpuFeatures) {
    for e in cpuid.as_mut_slice().iter_mut() {
        filter_entry(e, cpu_id, nr_cpus, features);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xffff_ffff,
            ebx: 0xffff_ffff,
            ecx: 0xffff_ffff,
            edx: 0xffff_ffff,
            ..Default::default()
        }
    }

    #[test]
    fn leaf1_topology_and_hidden_features() {
        let mut e = entry(1, 0);
        filter_entry(&mut e, 3, 4, CpuFeatures::Host);
        assert_eq!(e.ebx >> 24, 3);
        assert_eq!((e.ebx >> 16) & 0xff, 4);
        assert_eq!(e.ecx & (ECX_MONITOR | ECX_VMX | ECX_PDCM), 0);
        assert_ne!(e.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e.edx & EDX_HTT, 0);
        let mut e = entry(1, 0);
        filter_entry(&mut e, 0, 1, CpuFeatures::Host);
        assert_eq!(e.edx & EDX_HTT, 0);
    }

    #[test]
    fn pmu_hidden_and_topology_leaf() {
        let mut e = entry(0xa, 0);
        filter_entry(&mut e, 0, 2, CpuFeatures::Host);
        assert_eq!((e.eax, e.ebx, e.ecx, e.edx), (0, 0, 0, 0));
        let mut e = entry(0xb, 1);
        filter_entry(&mut e, 2, 3, CpuFeatures::Host);
        assert_eq!((e.eax, e.ebx, e.edx), (2, 3, 2));
        assert_eq!(e.ecx, (2 << 8) | 1);
        assert_eq!(bits_for(1), 0);
        assert_eq!(bits_for(2), 1);
        assert_eq!(bits_for(5), 3);
    }

    #[test]
    fn filters_real_kvm_cpuid() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            eprintln!("skipping: /dev/kvm not available");
            return;
        };
        let mut cpuid = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .unwrap();
        filter_cpuid(&mut cpuid, 1, 2, CpuFeatures::Host);
        let leaf1 = cpuid.as_slice().iter().find(|e| e.function == 1).unwrap();
        assert_eq!(leaf1.ebx >> 24, 1);
        assert_eq!(leaf1.ecx & ECX_VMX, 0);
        assert_ne!(leaf1.ecx & ECX_HYPERVISOR, 0);
    }
}
