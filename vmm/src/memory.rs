//! Guest RAM: anonymous private mappings, split around the 32-bit MMIO gap.

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::layout::{MMIO_GAP_END, MMIO_GAP_START};
use crate::error::{Error, Result};

/// Smallest guest the VMM accepts (enough for the low-memory boot structures).
pub const MIN_MEM_MIB: u64 = 2;

/// RAM ranges for `mem_size` bytes of guest memory.
pub fn ram_ranges(mem_size: u64) -> Vec<(GuestAddress, usize)> {
    if mem_size <= MMIO_GAP_START {
        vec![(GuestAddress(0), mem_size as usize)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START as usize),
            (
                GuestAddress(MMIO_GAP_END),
                (mem_size - MMIO_GAP_START) as usize,
            ),
        ]
    }
}

/// Allocates guest memory. Pages are only backed when the guest touches them.
pub fn create_guest_memory(mem_mib: u64) -> Result<GuestMemoryMmap> {
    if mem_mib < MIN_MEM_MIB {
        return Err(Error::Memory(format!(
            "{mem_mib} MiB is too small (minimum {MIN_MEM_MIB} MiB)"
        )));
    }
    let size = mem_mib
        .checked_mul(1 << 20)
        .ok_or_else(|| Error::Memory(format!("{mem_mib} MiB overflows")))?;
    let mem = GuestMemoryMmap::from_ranges(&ram_ranges(size))
        .map_err(|e| Error::Memory(format!("cannot map {mem_mib} MiB: {e}")))?;
    for region in mem.iter() {
        if let Ok(host) = mem.get_host_address(region.start_addr()) {
            // Transparent huge pages: far fewer faults while the kernel image
            // is copied in, and 2 MiB mappings for the guest. Advisory only.
            // SAFETY: the range is exactly this region's live mapping.
            unsafe { libc::madvise(host.cast(), region.len() as usize, libc::MADV_HUGEPAGE) };
        }
    }
    Ok(mem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_around_gap() {
        assert_eq!(ram_ranges(128 << 20), vec![(GuestAddress(0), 128 << 20)]);
        let r = ram_ranges(4 << 30);
        assert_eq!(r[0], (GuestAddress(0), MMIO_GAP_START as usize));
        assert_eq!(r[1], (GuestAddress(MMIO_GAP_END), (1 << 30) as usize));
        assert!(create_guest_memory(1).is_err());
        let m = create_guest_memory(4).unwrap();
        assert_eq!(m.num_regions(), 1);
    }
}
