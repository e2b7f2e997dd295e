//! Linux kernel loading: uncompressed ELF vmlinux (PVH entry when the ELF has
//! the Xen PVH note, else the 64-bit entry) and bzImage (64-bit entry at
//! load address + 0x200). Writes the zero page or PVH start_info, the e820
//! map, the command line and an optional initrd.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{
    self, BzImage, Elf, KernelLoader, KernelLoaderResult, PvhBootCapability,
};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::*;
use super::regs::BootMode;
use crate::error::{Error, Result};
use crate::memory::ram_ranges;

// The linux-loader structs are plain data but do not implement ByteValued.
macro_rules! byte_valued {
    ($w:ident, $t:ty) => {
        #[derive(Clone, Copy, Default)]
        #[repr(transparent)]
        pub struct $w(pub $t);
        // SAFETY: repr(C) POD types generated from the Linux/Xen headers.
        unsafe impl ByteValued for $w {}
    };
}
byte_valued!(BootParams, boot_params);
byte_valued!(StartInfo, hvm_start_info);
byte_valued!(MemmapEntry, hvm_memmap_table_entry);
byte_valued!(ModlistEntry, hvm_modlist_entry);

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
const INITRD_ADDR_MAX: u64 = 0x7fff_ffff;
/// bzImage: the 64-bit entry is 0x200 past the protected-mode code start.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

/// Kind of image found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelKind {
    Elf,
    BzImage,
}

/// Where and how the boot vCPU enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryPoint {
    pub mode: BootMode,
    pub addr: u64,
}

#[derive(Debug)]
pub struct LoadedKernel {
    pub kind: KernelKind,
    pub result: KernelLoaderResult,
    pub entry: EntryPoint,
}

/// Loads `kernel` into guest memory (ELF first, then bzImage).
pub fn load_kernel(mem: &GuestMemoryMmap, kernel: &mut File, path: &str) -> Result<LoadedKernel> {
    let bad = |reason: String| Error::Kernel {
        path: path.to_string(),
        reason,
    };
    let mut magic = [0u8; 4];
    kernel
        .read_exact(&mut magic)
        .map_err(|e| bad(format!("cannot read header: {e}")))?;
    kernel
        .seek(SeekFrom::Start(0))
        .map_err(|e| bad(e.to_string()))?;
    if &magic == b"\x7fELF" {
        let result = Elf::load(mem, None, kernel, Some(GuestAddress(HIMEM_START)))
            .map_err(|e| bad(format!("ELF: {e}")))?;
        let entry = match result.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(addr) => EntryPoint {
                mode: BootMode::Protected,
                addr: addr.0,
            },
            _ => EntryPoint {
                mode: BootMode::Long,
                addr: result.kernel_load.0,
            },
        };
        return Ok(LoadedKernel {
            kind: KernelKind::Elf,
            result,
            entry,
        });
    }
    let result = BzImage::load(mem, None, kernel, Some(GuestAddress(HIMEM_START)))
        .map_err(|e| bad(format!("neither an ELF vmlinux nor a bzImage ({e})")))?;
    let entry = EntryPoint {
        mode: BootMode::Long,
        addr: result.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
    };
    Ok(LoadedKernel {
        kind: KernelKind::BzImage,
        result,
        entry,
    })
}

/// Places the initrd page-aligned at the top of low RAM (below the MMIO
/// gap), above the kernel. Returns (address, size).
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    kernel_end: u64,
    initrd: &mut File,
    path: &str,
) -> Result<(u64, u64)> {
    let bad = |reason: String| Error::Initrd {
        path: path.to_string(),
        reason,
    };
    let size = initrd.metadata().map_err(|e| bad(e.to_string()))?.len();
    // Below 2 GiB: the default initrd_addr_max of the 64-bit boot protocol.
    let low_end = mem_size.min(MMIO_GAP_START).min(INITRD_ADDR_MAX + 1);
    let addr = low_end
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|a| *a >= kernel_end)
        .ok_or_else(|| {
            bad(format!(
                "{size} bytes do not fit in guest RAM above the kernel (ends at {kernel_end:#x})"
            ))
        })?;
    mem.read_exact_volatile_from(GuestAddress(addr), initrd, size as usize)
        .map_err(|e| bad(format!("copy into guest memory: {e}")))?;
    Ok((addr, size))
}

/// The e820 map: low RAM below the EBDA, the legacy hole reserved, then RAM
/// from 1 MiB (split around the 32-bit MMIO gap).
pub fn e820_map(mem_size: u64) -> Vec<(u64, u64, u32)> {
    let mut map = vec![
        (0, EBDA_START, E820_RAM),
        (EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
    ];
    for (start, len) in ram_ranges(mem_size) {
        if start.0 == 0 {
            map.push((HIMEM_START, len as u64 - HIMEM_START, E820_RAM));
        } else {
            map.push((start.0, len as u64, E820_RAM));
        }
    }
    map
}

/// Writes the command line (NUL-terminated) at CMDLINE_START.
pub fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str) -> Result<()> {
    let mut c = linux_loader::cmdline::Cmdline::new(CMDLINE_MAX_SIZE)
        .map_err(|e| Error::Config(format!("cmdline: {e}")))?;
    c.insert_str(cmdline)
        .map_err(|e| Error::Config(format!("cmdline {cmdline:?}: {e}")))?;
    loader::load_cmdline(mem, GuestAddress(CMDLINE_START), &c)
        .map_err(|e| Error::Boot(format!("writing cmdline: {e}")))
}

/// Builds the Linux zero page.
pub fn build_boot_params(
    setup: Option<setup_header>,
    cmdline_len: usize,
    initrd: Option<(u64, u64)>,
    mem_size: u64,
) -> Result<boot_params> {
    let mut params = boot_params::default();
    if let Some(hdr) = setup {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    let map = e820_map(mem_size);
    if map.len() > params.e820_table.len() {
        return Err(Error::Boot("too many e820 entries".into()));
    }
    for (i, (addr, size, type_)) in map.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: *type_,
        };
    }
    params.e820_entries = map.len() as u8;
    Ok(params)
}

/// Writes the PVH start_info, memory map and module list.
pub fn write_pvh_info(
    mem: &GuestMemoryMmap,
    initrd: Option<(u64, u64)>,
    mem_size: u64,
) -> Result<()> {
    let w = |e: vm_memory::GuestMemoryError| Error::Boot(format!("writing PVH info: {e}"));
    let map = e820_map(mem_size);
    for (i, (addr, size, type_)) in map.iter().enumerate() {
        let entry = hvm_memmap_table_entry {
            addr: *addr,
            size: *size,
            type_: *type_,
            reserved: 0,
        };
        mem.write_obj(
            MemmapEntry(entry),
            GuestAddress(
                PVH_MEMMAP_START + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64,
            ),
        )
        .map_err(w)?;
    }
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    if let Some((addr, size)) = initrd {
        let module = hvm_modlist_entry {
            paddr: addr,
            size,
            ..Default::default()
        };
        mem.write_obj(ModlistEntry(module), GuestAddress(PVH_MODLIST_START))
            .map_err(w)?;
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_START;
    }
    mem.write_obj(StartInfo(info), GuestAddress(PVH_INFO_START))
        .map_err(w)
}

/// Everything the boot vCPU needs after the image is in memory.
pub fn configure_system(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    kernel: &LoadedKernel,
    cmdline: &str,
    initrd: Option<(u64, u64)>,
) -> Result<()> {
    write_cmdline(mem, cmdline)?;
    match kernel.entry.mode {
        BootMode::Protected => write_pvh_info(mem, initrd, mem_size),
        _ => {
            let params = build_boot_params(
                kernel.result.setup_header,
                cmdline.len() + 1,
                initrd,
                mem_size,
            )?;
            mem.write_obj(BootParams(params), GuestAddress(ZERO_PAGE_START))
                .map_err(|e| Error::Boot(format!("writing zero page: {e}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn initrd_placement_and_e820() {
        let size = 3u64 << 30;
        let mem = crate::memory::create_guest_memory(size >> 20).unwrap();
        let t = vmm_sys_util::tempfile::TempFile::new().unwrap();
        t.as_file().write_all(&[7u8; 5000]).unwrap();
        let mut f = File::open(t.as_path()).unwrap();
        let (addr, len) = load_initrd(&mem, size, 0x20_0000, &mut f, "initrd").unwrap();
        assert_eq!(len, 5000);
        assert_eq!(addr % 4096, 0);
        assert!(addr + len <= INITRD_ADDR_MAX + 1 && addr + len > INITRD_ADDR_MAX + 1 - 8192);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(addr + 4999)).unwrap(), 7);
        // Does not fit above the kernel.
        let mut f = File::open(t.as_path()).unwrap();
        let small = crate::memory::create_guest_memory(4).unwrap();
        let e = load_initrd(&small, 4 << 20, (4 << 20) - 4096, &mut f, "initrd").unwrap_err();
        assert_eq!(e.exit_code(), 4);
        // 5 GiB guest: RAM continues above the MMIO gap.
        let map = e820_map(5 << 30);
        assert_eq!(
            map.last().unwrap(),
            &(MMIO_GAP_END, (5u64 << 30) - MMIO_GAP_START, E820_RAM)
        );
    }
}
