//! Intel MultiProcessor Specification 1.4 table, so an SMP guest without ACPI
//! finds its CPUs and the IOAPIC. Written at the start of the EBDA.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{APIC_ADDR, EBDA_START, IOAPIC_ADDR, IRQ_MAX, LOW_MEM_END};
use crate::error::{Error, Result};

const MPC_SPEC: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const MP_INT: u8 = 0;
const MP_EXTINT: u8 = 3;
const MP_NMI: u8 = 1;
/// Most vCPUs whose entries fit between the EBDA start and 640 KiB.
pub const MAX_SUPPORTED_CPUS: u8 = 32;

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// Builds the floating pointer structure and the configuration table.
pub fn build_mptable(num_cpus: u8) -> Result<Vec<u8>> {
    if num_cpus == 0 || num_cpus > MAX_SUPPORTED_CPUS {
        return Err(Error::Config(format!(
            "vcpus must be 1..={MAX_SUPPORTED_CPUS}, got {num_cpus}"
        )));
    }
    let table_addr = EBDA_START as u32 + 16;
    let mut t: Vec<u8> = Vec::new();
    // Header; length, checksum and entry count are patched below.
    t.extend_from_slice(b"PCMP");
    t.extend_from_slice(&0u16.to_le_bytes());
    t.push(MPC_SPEC);
    t.push(0);
    t.extend_from_slice(b"BERTH   ");
    t.extend_from_slice(b"000000000000");
    t.extend_from_slice(&0u32.to_le_bytes()); // oemptr
    t.extend_from_slice(&0u16.to_le_bytes()); // oemsize
    t.extend_from_slice(&0u16.to_le_bytes()); // oemcount
    t.extend_from_slice(&APIC_ADDR.to_le_bytes());
    t.extend_from_slice(&0u32.to_le_bytes());
    let mut count: u16 = 0;
    for cpu in 0..num_cpus {
        t.push(0);
        t.push(cpu);
        t.push(APIC_VERSION);
        t.push(CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 });
        t.extend_from_slice(&0x600u32.to_le_bytes()); // family 6
        t.extend_from_slice(&0x201u32.to_le_bytes()); // APIC | FPU
        t.extend_from_slice(&[0u8; 8]);
        count += 1;
    }
    t.extend_from_slice(&[1, 0, b'I', b'S', b'A', b' ', b' ', b' ']);
    count += 1;
    let ioapic_id = num_cpus + 1;
    t.extend_from_slice(&[2, ioapic_id, IOAPIC_VERSION, 1]);
    t.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 1;
    for irq in 0..=IRQ_MAX as u8 {
        let kind = if irq == 0 { MP_EXTINT } else { MP_INT };
        t.extend_from_slice(&[3, kind, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    t.extend_from_slice(&[4, MP_EXTINT, 0, 0, 0, 0, 0, 0]);
    t.extend_from_slice(&[4, MP_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;
    let len = t.len() as u16;
    t[4..6].copy_from_slice(&len.to_le_bytes());
    t[34..36].copy_from_slice(&count.to_le_bytes());
    t[7] = checksum(&t);

    let mut f = Vec::with_capacity(16 + t.len());
    f.extend_from_slice(b"_MP_");
    f.extend_from_slice(&table_addr.to_le_bytes());
    f.push(1); // length in 16-byte units
    f.push(MPC_SPEC);
    f.push(0); // checksum
    f.extend_from_slice(&[0u8; 5]);
    f[10] = checksum(&f);
    f.extend_from_slice(&t);
    if EBDA_START + f.len() as u64 > LOW_MEM_END {
        return Err(Error::Config("MP table does not fit in the EBDA".into()));
    }
    Ok(f)
}

pub fn setup_mptable(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<()> {
    let table = build_mptable(num_cpus)?;
    mem.write_slice(&table, GuestAddress(EBDA_START))
        .map_err(|e| Error::Boot(format!("writing MP table: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_and_counts() {
        for n in [1u8, 2, 4, MAX_SUPPORTED_CPUS] {
            let m = build_mptable(n).unwrap();
            assert_eq!(&m[0..4], b"_MP_");
            assert_eq!(m[..16].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
            let t = &m[16..];
            assert_eq!(&t[0..4], b"PCMP");
            let len = u16::from_le_bytes([t[4], t[5]]) as usize;
            assert_eq!(len, t.len());
            assert_eq!(t.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
            let cpus = (0..n as usize).filter(|i| t[44 + i * 20] == 0).count();
            assert_eq!(cpus, n as usize);
            // Only the first CPU is the bootstrap processor.
            assert_eq!(t[44 + 3] & CPU_BOOTPROCESSOR, CPU_BOOTPROCESSOR);
            if n > 1 {
                assert_eq!(t[64 + 3] & CPU_BOOTPROCESSOR, 0);
            }
        }
        assert!(build_mptable(0).is_err());
        assert!(build_mptable(MAX_SUPPORTED_CPUS + 1).is_err());
    }
}
