//! Guest RAM, split around the 32-bit MMIO gap: anonymous private mappings,
//! or one memfd mapped shared when a vhost-user backend must map it too.

use std::fs::File;
use std::os::fd::FromRawFd;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::layout::{MMIO_GAP_END, MMIO_GAP_START};
use crate::error::{Error, Result};

/// Smallest guest the VMM accepts (enough for the low-memory boot structures).
pub const MIN_MEM_MIB: u64 = 2;

/// How guest RAM is backed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MemoryBacking {
    /// Anonymous private memory: transparent huge pages (THP `madvise` mode
    /// is the usual host default) and nothing another process can map.
    #[default]
    Anonymous,
    /// One memfd mapped `MAP_SHARED`, every region at its own file offset, so
    /// vhost-user backends (virtiofsd) can map guest RAM from the fd passed
    /// in SET_MEM_TABLE. Costs: shmem only gets huge pages when the host's
    /// `shmem_enabled` allows it (often `never`), and the pages are tmpfs
    /// pages. Used only for VMs that have vhost-user devices.
    SharedMemfd,
}

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

/// Anonymous guest memory (see [`create_guest_memory_with`]).
pub fn create_guest_memory(mem_mib: u64) -> Result<GuestMemoryMmap> {
    create_guest_memory_with(mem_mib, MemoryBacking::Anonymous)
}

/// Allocates guest memory. Pages are only backed when the guest touches them.
pub fn create_guest_memory_with(mem_mib: u64, backing: MemoryBacking) -> Result<GuestMemoryMmap> {
    if mem_mib < MIN_MEM_MIB {
        return Err(Error::Memory(format!(
            "{mem_mib} MiB is too small (minimum {MIN_MEM_MIB} MiB)"
        )));
    }
    let size = mem_mib
        .checked_mul(1 << 20)
        .ok_or_else(|| Error::Memory(format!("{mem_mib} MiB overflows")))?;
    let ranges = ram_ranges(size);
    let mem = match backing {
        MemoryBacking::Anonymous => GuestMemoryMmap::from_ranges(&ranges),
        MemoryBacking::SharedMemfd => {
            let file = guest_memfd(size)?;
            let mut offset = 0u64;
            let mut with_files = Vec::new();
            for (addr, len) in ranges {
                let f = file
                    .try_clone()
                    .map_err(|e| Error::Memory(format!("dup guest memfd: {e}")))?;
                with_files.push((addr, len, Some(FileOffset::new(f, offset))));
                offset += len as u64;
            }
            GuestMemoryMmap::from_ranges_with_files(with_files)
        }
    }
    .map_err(|e| Error::Memory(format!("cannot map {mem_mib} MiB: {e}")))?;
    for region in mem.iter() {
        if let Ok(host) = mem.get_host_address(region.start_addr()) {
            // Transparent huge pages: far fewer faults while the kernel image
            // is copied in, and 2 MiB mappings for the guest. Advisory only
            // (for shmem it depends on the host's shmem_enabled).
            // SAFETY: the range is exactly this region's live mapping.
            unsafe { libc::madvise(host.cast(), region.len() as usize, libc::MADV_HUGEPAGE) };
        }
    }
    Ok(mem)
}

/// A memfd of `size` bytes (sparse until the guest touches it).
fn guest_memfd(size: u64) -> Result<File> {
    let name = c"berth-guest-ram";
    // SAFETY: a valid NUL-terminated name; the returned fd is owned below.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(Error::Memory(format!(
            "memfd_create: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: fd was just created and nothing else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)
        .map_err(|e| Error::Memory(format!("sizing guest memfd to {size} bytes: {e}")))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn split_around_gap() {
        assert_eq!(ram_ranges(128 << 20), vec![(GuestAddress(0), 128 << 20)]);
        let r = ram_ranges(4 << 30);
        assert_eq!(r[0], (GuestAddress(0), MMIO_GAP_START as usize));
        assert_eq!(r[1], (GuestAddress(MMIO_GAP_END), (1 << 30) as usize));
        assert!(create_guest_memory(1).is_err());
        let m = create_guest_memory(4).unwrap();
        assert_eq!(m.num_regions(), 1);
        assert!(m.iter().all(|r| r.file_offset().is_none()));
    }

    #[test]
    fn shared_memfd_regions_have_consecutive_file_offsets() {
        // 3.5 GiB + 512 MiB above the gap: sparse, nothing is touched but two pages.
        let m = create_guest_memory_with(4096, MemoryBacking::SharedMemfd).unwrap();
        let regions: Vec<_> = m.iter().collect();
        assert_eq!(regions.len(), 2);
        let f0 = regions[0].file_offset().unwrap();
        let f1 = regions[1].file_offset().unwrap();
        assert_eq!(f0.start(), 0);
        assert_eq!(f1.start(), MMIO_GAP_START);
        // Same memfd: a write through the mapping is visible through the file.
        m.write_obj(0xabcd_u32, GuestAddress(MMIO_GAP_END)).unwrap();
        let mut buf = [0u8; 4];
        use std::os::unix::fs::FileExt;
        f0.file().read_exact_at(&mut buf, MMIO_GAP_START).unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0xabcd);
    }

    /// The cost behind the choice in `MemoryBacking`: first-touch of guest
    /// RAM (what loading a kernel and initrd, and a booting guest, do).
    /// `cargo test -p berth-vmm --release memory::tests::touch_cost -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn touch_cost_anonymous_vs_memfd() {
        const MIB: u64 = 256;
        for backing in [MemoryBacking::Anonymous, MemoryBacking::SharedMemfd] {
            let mut best = u128::MAX;
            for _ in 0..3 {
                let m = create_guest_memory_with(MIB, backing).unwrap();
                let t = std::time::Instant::now();
                for page in 0..(MIB << 20) / 4096 {
                    m.write_obj(1u8, GuestAddress(page * 4096)).unwrap();
                }
                best = best.min(t.elapsed().as_micros());
            }
            eprintln!("{backing:?}: first touch of {MIB} MiB: {} ms", best / 1000);
        }
    }
}
