//! A tiny guest drives a virtio-blk device through the virtio-mmio
//! registers: identification, feature negotiation, queue setup, notify
//! (through the ioeventfd), used ring and interrupt status.

mod common;

use std::io::Write;
use std::time::Duration;

use berth_vmm::arch::BootMode;
use berth_vmm::devices::virtio::block::Block;
use berth_vmm::ExitReason;
use common::*;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::tempfile::TempFile;

const RESULTS: u32 = 0x3000;
const DESC: u64 = 0x4000;
const AVAIL: u64 = 0x4100;
const USED: u64 = 0x4200;
const HDR: u64 = 0x21000;
const DATA: u64 = 0x20000;
const STATUS: u64 = 0x22000;

fn write_desc(m: &vm_memory::GuestMemoryMmap, i: u64, addr: u64, len: u32, flags: u16, next: u16) {
    let d = DESC + i * 16;
    m.write_obj(addr, GuestAddress(d)).unwrap();
    m.write_obj(len, GuestAddress(d + 8)).unwrap();
    m.write_obj(flags, GuestAddress(d + 12)).unwrap();
    m.write_obj(next, GuestAddress(d + 14)).unwrap();
}

fn run(mode: BootMode) {
    if !kvm_available() {
        return;
    }
    let disk = TempFile::new().unwrap();
    let mut content = vec![0u8; 8 * 512];
    for (i, b) in content.iter_mut().enumerate() {
        *b = (i * 7 % 251) as u8;
    }
    disk.as_file().write_all(&content).unwrap();

    let (mut vm, cap) = tiny_vm(1, 4);
    let blk = Block::new(disk.as_path(), true, "disk0").unwrap();
    let (base, gsi, transport) = vm.add_virtio_device(Box::new(blk)).unwrap();
    assert_eq!(
        vm.cmdline_devices(),
        format!("virtio_mmio.device=4K@{base:#x}:{gsi}")
    );
    let m = vm.memory().clone();

    // The driver's request, prepared in guest RAM: read sector 1.
    m.write_obj(0u32, GuestAddress(HDR)).unwrap();
    m.write_obj(1u64, GuestAddress(HDR + 8)).unwrap();
    m.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    write_desc(&m, 0, HDR, 16, 1, 1);
    write_desc(&m, 1, DATA, 512, 3, 2);
    write_desc(&m, 2, STATUS, 1, 2, 0);
    m.write_obj(0u16, GuestAddress(AVAIL + 4)).unwrap();
    m.write_obj(1u16, GuestAddress(AVAIL + 2)).unwrap();

    let mut a = Asm::new(mode);
    a.mov_ebx(base as u32).mov_edi(RESULTS);
    a.load(0x000)
        .save(0)
        .load(0x004)
        .save(4)
        .load(0x008)
        .save(8)
        .load(0x00c)
        .save(12);
    a.store(0x070, 1).store(0x070, 3);
    a.store(0x014, 1).load(0x010).save(16);
    a.store(0x014, 0).load(0x010).save(20);
    a.store(0x024, 1)
        .store(0x020, 1)
        .store(0x024, 0)
        .store(0x020, 0);
    a.store(0x070, 0xb).load(0x070).save(24);
    a.store(0x030, 0).load(0x034).save(28);
    a.store(0x038, 8)
        .store(0x080, DESC as u32)
        .store(0x084, 0)
        .store(0x090, AVAIL as u32)
        .store(0x094, 0)
        .store(0x0a0, USED as u32)
        .store(0x0a4, 0)
        .store(0x044, 1)
        .load(0x044)
        .save(32);
    a.store(0x070, 0xf).load(0x070).save(36);
    a.load(0x100).save(40);
    // Notify queue 0, wait for the used ring, read and ack the interrupt.
    a.store(0x050, 0)
        .mov_esi((USED + 2) as u32)
        .spin_until_word(1);
    a.load(0x060).save(44).store(0x064, 1).load(0x060).save(48);
    a.print("virtio ok\n").reset();
    vm.load_raw(&a.code, CODE_ADDR, mode).unwrap();

    let exit = wait_with_deadline(vm.start().unwrap(), Duration::from_secs(30));
    assert_eq!(exit, ExitReason::Reset, "serial: {:?}", cap.text());
    assert_eq!(cap.text(), "virtio ok\n");
    let r = |off: u64| {
        m.read_obj::<u32>(GuestAddress(u64::from(RESULTS) + off))
            .unwrap()
    };
    assert_eq!(r(0), 0x7472_6976, "magic");
    assert_eq!(r(4), 2, "version");
    assert_eq!(r(8), 2, "device id (block)");
    assert_eq!(r(12), 0x4854_5242, "vendor");
    assert_eq!(r(16), 1, "features[63:32] = VERSION_1");
    assert_eq!(r(20), (1 << 9) | (1 << 5), "features[31:0] = FLUSH | RO");
    assert_eq!(r(24), 0xb, "FEATURES_OK accepted");
    assert_eq!(r(28), 256, "queue max size");
    assert_eq!(r(32), 1, "queue ready");
    assert_eq!(r(36), 0xf, "DRIVER_OK");
    assert_eq!(r(40), 8, "capacity in sectors");
    assert_eq!(r(44), 1, "used-ring interrupt pending");
    assert_eq!(r(48), 0, "interrupt acked");
    let mut data = [0u8; 512];
    m.read_slice(&mut data, GuestAddress(DATA)).unwrap();
    assert_eq!(&data[..], &content[512..1024]);
    assert_eq!(m.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 0);
    assert_eq!(
        m.read_obj::<u32>(GuestAddress(USED + 8)).unwrap(),
        513,
        "used len"
    );
    assert!(transport.lock().unwrap().is_activated());
}

#[test]
fn protected_mode_guest_drives_virtio_blk() {
    run(BootMode::Protected);
}

#[test]
fn long_mode_guest_drives_virtio_blk() {
    run(BootMode::Long);
}
