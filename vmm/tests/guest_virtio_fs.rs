//! A tiny guest drives the virtio-fs device on real KVM against a real
//! virtiofsd: identification, config space, features, both queues,
//! DRIVER_OK (vhost-user setup on the device loop, under its seccomp
//! filter), a FUSE_INIT request whose QueueNotify write goes through the
//! KVM ioeventfd straight to virtiofsd, the used ring, and the used-ring
//! bit in InterruptStatus that the device loop sets from virtiofsd's call.
//! A Linux guest cannot boot under PVM, so this is the end-to-end test
//! there is; it skips when KVM or virtiofsd is missing.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_vmm::arch::BootMode;
use berth_vmm::devices::virtio::fs::Fs;
use berth_vmm::memory::MemoryBacking;
use berth_vmm::{ExitReason, MicroVm};
use common::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const RESULTS: u32 = 0x3000;
const HIPRIO: u64 = 0x4000;
const REQUEST: u64 = 0x5000;
const REQ: u64 = 0x20000;
const REPLY: u64 = 0x21000;
const QSIZE: u32 = 8;

fn virtiofsd() -> Option<PathBuf> {
    [
        std::env::var_os("BERTH_VIRTIOFSD").map(PathBuf::from),
        Some(PathBuf::from("/var/cache/berth/tools/bin/virtiofsd")),
        Some(PathBuf::from("/usr/libexec/virtiofsd")),
    ]
    .into_iter()
    .flatten()
    .find(|p| p.is_file())
}

// Ring layout inside a 4 KiB page: descriptors, avail at +0x100, used at +0x200.
fn write_desc(m: &GuestMemoryMmap, ring: u64, i: u64, addr: u64, len: u32, flags: u16, next: u16) {
    let d = ring + i * 16;
    m.write_obj(addr, GuestAddress(d)).unwrap();
    m.write_obj(len, GuestAddress(d + 8)).unwrap();
    m.write_obj(flags, GuestAddress(d + 12)).unwrap();
    m.write_obj(next, GuestAddress(d + 14)).unwrap();
}

/// FUSE_INIT 7.31 (fuse_in_header + fuse_init_in without INIT_EXT).
fn fuse_init() -> Vec<u8> {
    let mut v = Vec::new();
    for x in [56u32, 26] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.extend_from_slice(&7u64.to_le_bytes()); // unique
    v.extend_from_slice(&0u64.to_le_bytes()); // nodeid
    v.extend_from_slice(&[0u8; 16]); // uid, gid, pid, extlen, padding
    for x in [7u32, 31, 128 << 10, 0] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v
}

#[test]
fn long_mode_guest_sends_fuse_init_through_virtiofsd() {
    if !kvm_available() {
        return;
    }
    let Some(bin) = virtiofsd() else {
        eprintln!(
            "skipping: virtiofsd not found (scripts/install-vm-tools.sh, or $BERTH_VIRTIOFSD)"
        );
        return;
    };
    let dir = std::env::temp_dir().join(format!("berth-vmm-vfs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("shared")).unwrap();
    let sock = dir.join("fs.sock");
    let mut daemon = Command::new(bin)
        .arg("--socket-path")
        .arg(&sock)
        .arg("--shared-dir")
        .arg(dir.join("shared"))
        .args(["--sandbox", "none", "--log-level", "error"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "virtiofsd did not listen");
        std::thread::sleep(Duration::from_millis(5));
    }

    let cap = Capture::default();
    let mut vm = MicroVm::with_memory(
        1,
        4,
        MemoryBacking::SharedMemfd,
        Box::new(cap.clone()),
        Instant::now(),
    )
    .unwrap();
    let fs = Fs::new("tag0", &sock).unwrap();
    let (base, _gsi, transport) = vm.add_virtio_device(Box::new(fs)).unwrap();
    let m = vm.memory().clone();

    // The driver's FUSE_INIT, prepared in guest RAM on the request queue.
    let req = fuse_init();
    m.write_slice(&req, GuestAddress(REQ)).unwrap();
    write_desc(&m, REQUEST, 0, REQ, req.len() as u32, 1, 1);
    write_desc(&m, REQUEST, 1, REPLY, 256, 2, 0);
    m.write_obj(0u16, GuestAddress(REQUEST + 0x104)).unwrap();
    m.write_obj(1u16, GuestAddress(REQUEST + 0x102)).unwrap();

    let mut a = Asm::new(BootMode::Long);
    a.mov_ebx(base as u32).mov_edi(RESULTS);
    a.load(0x008).save(0);
    a.store(0x070, 1).store(0x070, 3);
    // VERSION_1 only: no EVENT_IDX, so every used buffer is signalled.
    a.store(0x024, 1)
        .store(0x020, 1)
        .store(0x024, 0)
        .store(0x020, 0);
    a.store(0x070, 0xb).load(0x070).save(4);
    for (q, ring) in [(0u32, HIPRIO), (1, REQUEST)] {
        a.store(0x030, q)
            .store(0x038, QSIZE)
            .store(0x080, ring as u32)
            .store(0x084, 0)
            .store(0x090, ring as u32 + 0x100)
            .store(0x094, 0)
            .store(0x0a0, ring as u32 + 0x200)
            .store(0x0a4, 0)
            .store(0x044, 1);
    }
    a.store(0x070, 0xf).load(0x070).save(8);
    a.load(0x100).save(12).load(0x124).save(16);
    // Notify the request queue right after DRIVER_OK (the vhost-user setup
    // may still be running: the kick waits in the eventfd), wait for the
    // used ring, then for the interrupt status bit; ack it.
    a.store(0x050, 1)
        .mov_esi((REQUEST + 0x202) as u32)
        .spin_until_word(1)
        .spin_until_reg_nonzero(0x060)
        .load(0x060)
        .save(20)
        .store(0x064, 1);
    a.print("virtio-fs ok\n").reset();
    vm.load_raw(&a.code, CODE_ADDR, BootMode::Long).unwrap();

    let exit = wait_with_deadline(vm.start().unwrap(), Duration::from_secs(30));
    let _ = daemon.kill();
    let _ = daemon.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(exit, ExitReason::Reset, "serial: {:?}", cap.text());
    assert_eq!(cap.text(), "virtio-fs ok\n");
    let r = |off: u64| {
        m.read_obj::<u32>(GuestAddress(u64::from(RESULTS) + off))
            .unwrap()
    };
    assert_eq!(r(0), 26, "device id (fs)");
    assert_eq!(r(4), 0xb, "FEATURES_OK accepted");
    assert_eq!(r(8), 0xf, "DRIVER_OK without FAILED");
    assert_eq!(&r(12).to_le_bytes(), b"tag0");
    assert_eq!(r(16), 1, "num_request_queues");
    assert_eq!(r(20) & 1, 1, "used-ring interrupt");
    // virtiofsd's reply: fuse_out_header { len, error 0, unique 7 }, 7.x.
    let used_len: u32 = m.read_obj(GuestAddress(REQUEST + 0x208)).unwrap();
    let hdr_len: u32 = m.read_obj(GuestAddress(REPLY)).unwrap();
    assert_eq!(hdr_len, used_len);
    assert_eq!(m.read_obj::<i32>(GuestAddress(REPLY + 4)).unwrap(), 0);
    assert_eq!(m.read_obj::<u64>(GuestAddress(REPLY + 8)).unwrap(), 7);
    assert_eq!(m.read_obj::<u32>(GuestAddress(REPLY + 16)).unwrap(), 7);
    assert!(transport.lock().unwrap().is_activated());
}
