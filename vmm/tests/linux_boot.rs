//! Boot-protocol tests against a real Debian kernel: what the VMM writes
//! into guest memory for a bzImage and for an ELF vmlinux, read back.

mod common;

use std::io::Write;

use berth_vmm::arch::boot::BootParams;
use berth_vmm::arch::layout::*;
use berth_vmm::arch::BootMode;
use common::kernel::debian_kernel;
use common::*;
use kvm_bindings::kvm_sregs;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::tempfile::TempFile;

const CMDLINE: &str = "console=ttyS0 reboot=k panic=1";

fn initrd_file() -> (TempFile, Vec<u8>) {
    let t = TempFile::new().unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    t.as_file().write_all(&data).unwrap();
    (t, data)
}

fn cstr_at(m: &GuestMemoryMmap, addr: u64) -> String {
    let mut buf = vec![0u8; CMDLINE_MAX_SIZE];
    m.read_slice(&mut buf, GuestAddress(addr)).unwrap();
    let end = buf.iter().position(|b| *b == 0).unwrap();
    String::from_utf8(buf[..end].to_vec()).unwrap()
}

#[test]
fn bzimage_zero_page_e820_cmdline_initrd() {
    if !kvm_available() {
        return;
    }
    let Some(k) = debian_kernel() else { return };
    let (mut vm, _) = tiny_vm(2, 256);
    let disk = TempFile::new().unwrap();
    disk.as_file().write_all(&[0u8; 4096]).unwrap();
    vm.add_virtio_device(Box::new(
        berth_vmm::devices::virtio::block::Block::new(disk.as_path(), true, "d").unwrap(),
    ))
    .unwrap();
    let (initrd, initrd_data) = initrd_file();
    let entry = vm
        .load_linux(&k.bzimage, Some(initrd.as_path()), CMDLINE)
        .unwrap();
    let m = vm.memory().clone();
    let img = std::fs::read(&k.bzimage).unwrap();
    let setup_sects = img[0x1f1] as usize;
    assert_eq!(entry.mode, BootMode::Long);
    assert_eq!(entry.addr, HIMEM_START + 0x200, "64-bit entry of a bzImage");
    // The protected-mode kernel is copied to 1 MiB.
    let pm_start = (setup_sects + 1) * 512;
    let mut loaded = vec![0u8; 4096];
    m.read_slice(&mut loaded, GuestAddress(HIMEM_START))
        .unwrap();
    assert_eq!(&loaded[..], &img[pm_start..pm_start + 4096]);

    let bp: BootParams = m.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
    let hdr = bp.0.hdr;
    assert_eq!({ hdr.boot_flag }, 0xaa55);
    assert_eq!({ hdr.header }, 0x5372_6448);
    assert_eq!({ hdr.type_of_loader }, 0xff);
    assert_eq!(
        { hdr.setup_sects } as usize,
        setup_sects,
        "setup header copied from the image"
    );
    assert_eq!(
        { hdr.version },
        u16::from_le_bytes([img[0x206], img[0x207]])
    );
    assert!({ hdr.version } >= 0x20c);
    assert_eq!({ hdr.cmd_line_ptr } as u64, CMDLINE_START);
    let cmdline = cstr_at(&m, CMDLINE_START);
    assert_eq!(
        cmdline,
        format!("{CMDLINE} virtio_mmio.device=4K@0xd0000000:5")
    );
    assert_eq!({ hdr.cmdline_size } as usize, cmdline.len() + 1);
    // initrd: page aligned, at the top of RAM, bytes intact.
    let (ramdisk, rsize) = ({ hdr.ramdisk_image } as u64, { hdr.ramdisk_size } as u64);
    assert_eq!(rsize, initrd_data.len() as u64);
    assert_eq!(ramdisk % 4096, 0);
    assert!(ramdisk + rsize <= 256 << 20 && ramdisk + rsize > (256 << 20) - 4096);
    let mut back = vec![0u8; initrd_data.len()];
    m.read_slice(&mut back, GuestAddress(ramdisk)).unwrap();
    assert_eq!(back, initrd_data);
    // e820: low RAM, legacy hole, RAM from 1 MiB to the end.
    let e820: Vec<(u64, u64, u32)> = bp.0.e820_table[..bp.0.e820_entries as usize]
        .iter()
        .map(|e| ({ e.addr }, { e.size }, { e.r#type }))
        .collect();
    assert_eq!(
        e820,
        vec![
            (0, EBDA_START, 1),
            (EBDA_START, HIMEM_START - EBDA_START, 2),
            (HIMEM_START, (256 << 20) - HIMEM_START, 1)
        ]
    );
    // MP table for the 2 vCPUs.
    let mut mp = [0u8; 4];
    m.read_slice(&mut mp, GuestAddress(EBDA_START)).unwrap();
    assert_eq!(&mp, b"_MP_");
    // Page tables and segments from the VMM's long-mode setup path.
    let s = berth_vmm::arch::regs::sregs_for_mode(&m, kvm_sregs::default(), entry.mode, entry.addr)
        .unwrap();
    assert_eq!(s.cr3, PML4_START);
    let pml4: u64 = m.read_obj(GuestAddress(PML4_START)).unwrap();
    assert_eq!(pml4, PDPTE_START | 3);
    // The entry point (1 MiB + 0x200) is identity-mapped by PD 0, entry 0.
    let pde0: u64 = m.read_obj(GuestAddress(PDE_START)).unwrap();
    assert_eq!(pde0, 0x83);
    let regs = berth_vmm::arch::regs::regs_for_mode(entry.mode, entry.addr);
    assert_eq!((regs.rsi, regs.rip), (ZERO_PAGE_START, HIMEM_START + 0x200));
}

#[test]
fn elf_vmlinux_pvh_start_info() {
    if !kvm_available() {
        return;
    }
    let Some(k) = debian_kernel() else { return };
    let (mut vm, _) = tiny_vm(1, 256);
    let (initrd, initrd_data) = initrd_file();
    let entry = vm
        .load_linux(&k.vmlinux, Some(initrd.as_path()), CMDLINE)
        .unwrap();
    let m = vm.memory().clone();
    // Debian builds CONFIG_PVH: the ELF carries XEN_ELFNOTE_PHYS32_ENTRY.
    assert_eq!(entry.mode, BootMode::Protected, "PVH entry used");
    assert!(entry.addr >= HIMEM_START && entry.addr < 256 << 20);
    let r32 = |a: u64| m.read_obj::<u32>(GuestAddress(a)).unwrap();
    let r64 = |a: u64| m.read_obj::<u64>(GuestAddress(a)).unwrap();
    assert_eq!(r32(PVH_INFO_START), 0x336e_c578, "hvm_start_info magic");
    assert_eq!(r32(PVH_INFO_START + 4), 1, "version");
    assert_eq!(r32(PVH_INFO_START + 12), 1, "nr_modules");
    assert_eq!(r64(PVH_INFO_START + 16), PVH_MODLIST_START);
    assert_eq!(r64(PVH_INFO_START + 24), CMDLINE_START);
    assert_eq!(r64(PVH_INFO_START + 40), PVH_MEMMAP_START);
    assert_eq!(r32(PVH_INFO_START + 48), 3, "memmap entries");
    assert_eq!(cstr_at(&m, CMDLINE_START), CMDLINE);
    // Memory map entries: addr, size, type.
    assert_eq!(
        (r64(PVH_MEMMAP_START + 48), r64(PVH_MEMMAP_START + 56)),
        (HIMEM_START, (256 << 20) - HIMEM_START)
    );
    assert_eq!(r32(PVH_MEMMAP_START + 64), 1);
    let (paddr, size) = (r64(PVH_MODLIST_START), r64(PVH_MODLIST_START + 8));
    assert_eq!(size, initrd_data.len() as u64);
    let mut back = vec![0u8; 64];
    m.read_slice(&mut back, GuestAddress(paddr)).unwrap();
    assert_eq!(&back[..], &initrd_data[..64]);
    // The ELF's first loadable segment is at its physical address (16 MiB).
    let elf = std::fs::read(&k.vmlinux).unwrap();
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let p_offset = u64::from_le_bytes(elf[phoff + 8..phoff + 16].try_into().unwrap()) as usize;
    let p_paddr = u64::from_le_bytes(elf[phoff + 24..phoff + 32].try_into().unwrap());
    let mut seg = vec![0u8; 256];
    m.read_slice(&mut seg, GuestAddress(p_paddr)).unwrap();
    assert_eq!(&seg[..], &elf[p_offset..p_offset + 256]);
    let regs = berth_vmm::arch::regs::regs_for_mode(entry.mode, entry.addr);
    assert_eq!(regs.rbx, PVH_INFO_START, "ebx points at start_info");
}

#[test]
fn kernel_larger_than_memory_is_refused() {
    if !kvm_available() {
        return;
    }
    let Some(k) = debian_kernel() else { return };
    let (mut vm, _) = tiny_vm(1, 8);
    let err = vm.load_linux(&k.vmlinux, None, CMDLINE).unwrap_err();
    assert_eq!(err.exit_code(), 5, "{err}");
    assert!(err.to_string().contains("too small for kernel"), "{err}");
    assert!(err.to_string().contains("vmlinux"), "{err}");
}
