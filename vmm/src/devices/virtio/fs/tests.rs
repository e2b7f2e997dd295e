//! virtio-fs against a real virtiofsd, without a guest kernel: the test
//! plays the driver through the virtio-mmio registers, puts FUSE requests
//! on the request queue in (memfd-backed) test guest memory, kicks the
//! queue's ioeventfd as KVM would, and pumps the device loop's backend fd.
//! Tests that need virtiofsd skip with a message when it is missing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::tempdir::TempDir;

use super::fuse;
use super::Fs;
use crate::devices::bus::BusDevice;
use crate::devices::virtio::mmio::*;
use crate::devices::virtio::{MmioTransport, INTERRUPT_CONFIG, INTERRUPT_USED_RING, TYPE_FS};
use crate::memory::{create_guest_memory_with, MemoryBacking};

const QSIZE: u16 = 16;
const HIPRIO_RING: u64 = 0x1000;
const REQUEST_RING: u64 = 0x8000;
const REQUEST_RING_2: u64 = 0x10000;
const BUFS: u64 = 0x10_0000;
const REQ_QUEUE: usize = 1;

fn virtiofsd() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("BERTH_VIRTIOFSD").map(PathBuf::from),
        Some(PathBuf::from("/var/cache/berth/tools/bin/virtiofsd")),
        Some(PathBuf::from("/usr/libexec/virtiofsd")),
    ];
    candidates.into_iter().flatten().find(|p| p.is_file())
}

/// A virtiofsd serving a fresh directory, and the transport around our
/// device connected to it.
struct Harness {
    dir: TempDir,
    daemon: Child,
    mem: GuestMemoryMmap,
    t: MmioTransport,
    irq: EventFd,
    kicks: Vec<EventFd>,
    /// Watches the device's backend fd, as the device loop's epoll does.
    ep: Epoll,
    unique: u64,
    next_desc: u16,
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

fn start(name: &str) -> Option<Harness> {
    let Some(bin) = virtiofsd() else {
        eprintln!("skipping {name}: virtiofsd not found (scripts/install-vm-tools.sh, or $BERTH_VIRTIOFSD)");
        return None;
    };
    let dir = TempDir::new_with_prefix("/tmp/berth-vfs-").unwrap();
    let shared = dir.as_path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("hello.txt"), b"hello from the host\n").unwrap();
    let sock = dir.as_path().join("fs.sock");
    let log = std::fs::File::create(dir.as_path().join("virtiofsd.log")).unwrap();
    let daemon = Command::new(bin)
        .arg("--socket-path")
        .arg(&sock)
        .arg("--shared-dir")
        .arg(&shared)
        .args([
            "--sandbox",
            "none",
            "--cache",
            "never",
            "--log-level",
            "info",
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_for(|| sock.exists(), "virtiofsd socket");
    let mem = create_guest_memory_with(8, MemoryBacking::SharedMemfd).unwrap();
    let fs = Fs::new("berthshare", &sock).unwrap();
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let t = MmioTransport::new(Box::new(fs), mem.clone(), irq.try_clone().unwrap()).unwrap();
    let kicks = t
        .queue_evts()
        .iter()
        .map(|e| e.try_clone().unwrap())
        .collect();
    let ep = Epoll::new().unwrap();
    ep.ctl(
        ControlOperation::Add,
        t.backend_fd().expect("virtio-fs has a backend fd"),
        EpollEvent::new(EventSet::IN, 1),
    )
    .unwrap();
    Some(Harness {
        dir,
        daemon,
        mem,
        t,
        irq,
        kicks,
        ep,
        unique: 0,
        next_desc: 0,
    })
}

fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn w32(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn r32(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

impl Harness {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.as_path().join("virtiofsd.log")).unwrap_or_default()
    }

    /// One round of the device loop: if the backend fd is readable, let the
    /// transport process it (the real loop does exactly this on TOK_BACKEND).
    fn pump(&mut self, timeout_ms: i32) {
        if self.backend_ready(timeout_ms) {
            self.t.process_backend();
        }
    }

    fn backend_ready(&self, timeout_ms: i32) -> bool {
        let mut ev = [EpollEvent::default(); 1];
        matches!(self.ep.wait(timeout_ms, &mut ev), Ok(n) if n > 0)
    }

    /// Driver-side initialisation through the registers, queues at the
    /// mock rings' addresses, up to DRIVER_OK, then one device-loop round,
    /// which runs the vhost-user setup.
    fn activate(&mut self, rings: [Ring; 2]) {
        self.driver_ok(rings);
        self.pump(1000);
    }

    /// What the guest driver does (on a vCPU thread): negotiate features,
    /// set up both queues, DRIVER_OK. The device only records the request.
    fn driver_ok(&mut self, rings: [Ring; 2]) {
        let t = &mut self.t;
        w32(t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        for sel in [0, 1] {
            w32(t, REG_DEVICE_FEATURES_SEL, sel);
            let v = r32(t, REG_DEVICE_FEATURES);
            w32(t, REG_DRIVER_FEATURES_SEL, sel);
            w32(t, REG_DRIVER_FEATURES, v);
        }
        w32(
            t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        for (q, vq) in rings.iter().enumerate() {
            w32(t, REG_QUEUE_SEL, q as u32);
            w32(t, REG_QUEUE_NUM, u32::from(QSIZE));
            for (lo_reg, addr) in [
                (REG_QUEUE_DESC_LOW, vq.desc_table_addr()),
                (REG_QUEUE_AVAIL_LOW, vq.avail_addr()),
                (REG_QUEUE_USED_LOW, vq.used_addr()),
            ] {
                w32(t, lo_reg, addr.0 as u32);
                w32(t, lo_reg + 4, (addr.0 >> 32) as u32);
            }
            w32(t, REG_QUEUE_READY, 1);
        }
        w32(
            t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        assert_eq!(r32(t, REG_STATUS) & STATUS_FAILED, 0);
        self.next_desc = 0;
    }

    /// Puts `req` on the request ring with a `reply_cap`-byte reply buffer,
    /// kicks, and pumps until the backend has used it. Checks the used-ring
    /// interrupt reached InterruptStatus and the irqfd.
    fn call(&mut self, vq: &Ring, req: &[u8], reply_cap: u32) -> Vec<u8> {
        let slot = self.next_desc;
        self.next_desc += 2;
        let req_addr = BUFS + u64::from(slot) * 0x2000;
        let reply_addr = req_addr + 0x1000;
        self.mem.write_slice(req, GuestAddress(req_addr)).unwrap();
        let used_before: u16 = self.mem.read_obj(vq.used_addr().unchecked_add(2)).unwrap();
        vq.add_chain(
            &self.mem,
            slot,
            &[
                (req_addr, req.len() as u32, 0),
                (reply_addr, reply_cap, F_WRITE),
            ],
        );
        // What KVM does on the guest's QueueNotify write.
        self.kicks[REQ_QUEUE].write(1).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let used_idx_addr = vq.used_addr().unchecked_add(2);
        loop {
            self.pump(100);
            let idx: u16 = self.mem.read_obj(used_idx_addr).unwrap();
            if idx != used_before {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no reply; virtiofsd log:\n{}",
                self.log()
            );
        }
        // The call may land after the used index moved: pump until the
        // interrupt is raised.
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.t.interrupt.status.load(Ordering::SeqCst) & INTERRUPT_USED_RING == 0 {
            assert!(Instant::now() < deadline, "no used-ring interrupt");
            self.pump(100);
        }
        assert!(self.irq.read().unwrap() >= 1, "irqfd not signalled");
        w32(&mut self.t, REG_INTERRUPT_ACK, INTERRUPT_USED_RING);
        let elem = vq
            .used_addr()
            .unchecked_add(4 + 8 * u64::from(used_before % QSIZE));
        let id: u32 = self.mem.read_obj(elem).unwrap();
        let len: u32 = self.mem.read_obj(elem.unchecked_add(4)).unwrap();
        assert_eq!(id, u32::from(slot));
        let mut reply = vec![0u8; len as usize];
        self.mem
            .read_slice(&mut reply, GuestAddress(reply_addr))
            .unwrap();
        let (out_len, _, unique) = fuse::out_header(&reply);
        assert_eq!(out_len, len, "reply length");
        assert_eq!(unique, self.unique);
        reply
    }

    fn next_unique(&mut self) -> u64 {
        self.unique += 1;
        self.unique
    }

    fn fuse_init(&mut self, vq: &Ring) {
        let u = self.next_unique();
        let r = self.call(vq, &fuse::init(u), 256);
        assert_eq!(fuse::out_header(&r).1, 0, "FUSE_INIT failed");
        assert_eq!(fuse::init_version(&r).0, 7);
    }

    fn lookup(&mut self, vq: &Ring, name: &str) -> (i32, Vec<u8>) {
        let u = self.next_unique();
        let r = self.call(vq, &fuse::lookup(u, fuse::ROOT_ID, name), 512);
        (fuse::out_header(&r).1, r)
    }
}

/// A split ring in test guest memory, as a driver lays it out (zeroed
/// memory is an empty ring).
#[derive(Clone, Copy)]
struct Ring {
    base: u64,
}

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

impl Ring {
    fn desc_table_addr(&self) -> GuestAddress {
        GuestAddress(self.base)
    }
    fn avail_addr(&self) -> GuestAddress {
        GuestAddress(self.base + 16 * u64::from(QSIZE))
    }
    fn used_addr(&self) -> GuestAddress {
        GuestAddress(self.base + 0x1000)
    }

    /// Writes descriptors `first..` and publishes the chain's head.
    fn add_chain(&self, mem: &GuestMemoryMmap, first: u16, descs: &[(u64, u32, u16)]) {
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let idx = first + i as u16;
            let last = i + 1 == descs.len();
            let d = GuestAddress(self.base + 16 * u64::from(idx));
            mem.write_obj(addr, d).unwrap();
            mem.write_obj(len, d.unchecked_add(8)).unwrap();
            let flags = if last { flags } else { flags | F_NEXT };
            mem.write_obj(flags, d.unchecked_add(12)).unwrap();
            mem.write_obj(if last { 0 } else { idx + 1 }, d.unchecked_add(14))
                .unwrap();
        }
        let idx_addr = self.avail_addr().unchecked_add(2);
        let idx: u16 = mem.read_obj(idx_addr).unwrap();
        let slot = self
            .avail_addr()
            .unchecked_add(4 + 2 * u64::from(idx % QSIZE));
        mem.write_obj(first, slot).unwrap();
        // EVENT_IDX is negotiated: ask for an interrupt once the used index
        // moves past its current value (used_event, after the avail ring).
        let used: u16 = mem.read_obj(self.used_addr().unchecked_add(2)).unwrap();
        let used_event = self.avail_addr().unchecked_add(4 + 2 * u64::from(QSIZE));
        mem.write_obj(used, used_event).unwrap();
        // The backend runs concurrently: the entry before the index.
        std::sync::atomic::fence(Ordering::SeqCst);
        mem.write_obj(idx.wrapping_add(1), idx_addr).unwrap();
    }
}

fn rings(request_at: u64) -> [Ring; 2] {
    [Ring { base: HIPRIO_RING }, Ring { base: request_at }]
}

#[test]
fn config_space_and_features() {
    let Some(mut h) = start("config_space_and_features") else {
        return;
    };
    let t = &mut h.t;
    assert_eq!(r32(t, REG_DEVICE_ID), TYPE_FS);
    let mut tag = [0u8; 36];
    t.read(REG_CONFIG, &mut tag);
    assert_eq!(&tag[..10], b"berthshare");
    assert!(tag[10..].iter().all(|b| *b == 0));
    assert_eq!(r32(t, REG_CONFIG + 36), 1, "num_request_queues");
    // Out of range and odd-sized config reads are zero-filled, not panics.
    let mut b = [0xffu8; 8];
    t.read(REG_CONFIG + 38, &mut b);
    assert_eq!(&b[..2], &[0, 0]);
    assert_eq!(b[2..], [0; 6]);
    t.write(REG_CONFIG, b"evil");
    t.read(REG_CONFIG, &mut tag[..4]);
    assert_eq!(&tag[..4], b"bert");
    w32(t, REG_DEVICE_FEATURES_SEL, 1);
    let hi = r32(t, REG_DEVICE_FEATURES);
    assert_eq!(hi & 1, 1, "VIRTIO_F_VERSION_1");
    w32(t, REG_DEVICE_FEATURES_SEL, 0);
    let lo = r32(t, REG_DEVICE_FEATURES);
    // virtiofsd offers INDIRECT_DESC and EVENT_IDX; its vhost-user bits
    // (PROTOCOL_FEATURES = 30, LOG_ALL = 26) never reach the driver.
    assert_ne!(lo & (1 << 28), 0);
    assert_ne!(lo & (1 << 29), 0);
    assert_eq!(lo & ((1 << 30) | (1 << 26)), 0);
    // Kicks bypass the VMM.
    assert!(!t.polls_queue_evts());
}

#[test]
fn fuse_init_lookup_open_read_through_virtiofsd() {
    let Some(mut h) = start("fuse_init_lookup_open_read_through_virtiofsd") else {
        return;
    };
    let [hiprio, req] = rings(REQUEST_RING);
    h.activate([hiprio, req]);
    h.fuse_init(&req);

    let (err, r) = h.lookup(&req, "hello.txt");
    assert_eq!(err, 0, "LOOKUP failed: {}", h.log());
    let (nodeid, size, mode) = fuse::entry(&r);
    assert_ne!(nodeid, 0);
    assert_eq!(size, 20);
    assert_eq!(mode & libc::S_IFMT, libc::S_IFREG);

    let u = h.next_unique();
    let r = h.call(&req, &fuse::open(u, nodeid), 64);
    assert_eq!(fuse::out_header(&r).1, 0, "OPEN failed");
    let fh = fuse::open_fh(&r);

    let u = h.next_unique();
    let r = h.call(&req, &fuse::read(u, nodeid, fh, 0, 4096), 4096 + 16);
    assert_eq!(fuse::out_header(&r).1, 0, "READ failed");
    assert_eq!(&r[fuse::OUT_HEADER_LEN..], b"hello from the host\n");

    let (err, _) = h.lookup(&req, "missing");
    assert_eq!(err, -libc::ENOENT);
    // A file created on the host afterwards is visible (cache=never).
    std::fs::write(h.dir.as_path().join("shared/later"), b"x").unwrap();
    assert_eq!(h.lookup(&req, "later").0, 0);
}

#[test]
fn reset_stops_the_rings_and_the_driver_can_start_again() {
    let Some(mut h) = start("reset_stops_the_rings_and_the_driver_can_start_again") else {
        return;
    };
    let mem = h.mem.clone();
    let [hiprio, req] = rings(REQUEST_RING);
    h.activate([hiprio, req]);
    h.fuse_init(&req);
    w32(&mut h.t, REG_STATUS, 0);
    h.pump(1000);
    // A request left on the old ring after the reset is never served.
    let used_idx = req.used_addr().unchecked_add(2);
    let before: u16 = mem.read_obj(used_idx).unwrap();
    let stale = fuse::lookup(99, fuse::ROOT_ID, "hello.txt");
    mem.write_slice(&stale, GuestAddress(BUFS)).unwrap();
    req.add_chain(
        &mem,
        4,
        &[(BUFS, stale.len() as u32, 0), (BUFS + 0x1000, 512, F_WRITE)],
    );
    h.kicks[REQ_QUEUE].write(1).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    h.pump(0);
    assert_eq!(mem.read_obj::<u16>(used_idx).unwrap(), before);
    // Re-initialised on new rings, the session goes on (FUSE state lives in
    // virtiofsd, not in the rings).
    let _ = h.kicks[REQ_QUEUE].read();
    let [hiprio2, req2] = rings(REQUEST_RING_2);
    h.activate([hiprio2, req2]);
    assert_eq!(h.lookup(&req2, "hello.txt").0, 0);
}

#[test]
fn backend_death_fails_the_device_without_panicking() {
    let Some(mut h) = start("backend_death_fails_the_device_without_panicking") else {
        return;
    };
    let [hiprio, req] = rings(REQUEST_RING);
    h.activate([hiprio, req]);
    h.fuse_init(&req);
    h.daemon.kill().unwrap();
    h.daemon.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while r32(&mut h.t, REG_STATUS) & STATUS_DEVICE_NEEDS_RESET == 0 {
        assert!(Instant::now() < deadline, "device not marked NEEDS_RESET");
        h.pump(100);
    }
    assert_ne!(
        h.t.interrupt.status.load(Ordering::SeqCst) & INTERRUPT_CONFIG,
        0
    );
    // The socket is no longer polled: the backend fd goes quiet (no spin).
    let _ = h.irq.read();
    h.pump(0);
    assert!(!h.backend_ready(50));
    // A new activation after a reset is refused.
    w32(&mut h.t, REG_STATUS, 0);
    h.pump(0);
    let t = &mut h.t;
    w32(t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    w32(t, REG_DRIVER_FEATURES_SEL, 1);
    w32(t, REG_DRIVER_FEATURES, 1);
    w32(
        t,
        REG_STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
    );
    w32(
        t,
        REG_STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
    );
    assert_ne!(r32(t, REG_STATUS) & STATUS_FAILED, 0);
}

#[test]
fn setup_and_teardown_fit_the_seccomp_filters() {
    let Some(mut h) = start("setup_and_teardown_fit_the_seccomp_filters") else {
        return;
    };
    let mem = h.mem.clone();
    let [hiprio, req] = rings(REQUEST_RING);
    // The register writes run on a thread with the vCPU filter (as on vCPU
    // threads), the vhost-user setup, a FUSE round trip and the teardown on
    // one with the device loop's. A syscall outside either list kills the
    // test process.
    std::thread::scope(|s| {
        s.spawn(|| {
            seccompiler::apply_filter(&crate::seccomp::vcpu_filter().unwrap()).unwrap();
            h.driver_ok([hiprio, req]);
        });
    });
    std::thread::scope(|s| {
        s.spawn(|| {
            seccompiler::apply_filter(&crate::seccomp::device_loop_filter().unwrap()).unwrap();
            h.pump(1000);
            h.fuse_init(&req);
        });
    });
    std::thread::scope(|s| {
        s.spawn(|| {
            seccompiler::apply_filter(&crate::seccomp::vcpu_filter().unwrap()).unwrap();
            w32(&mut h.t, REG_STATUS, 0);
        });
    });
    std::thread::scope(|s| {
        s.spawn(|| {
            seccompiler::apply_filter(&crate::seccomp::device_loop_filter().unwrap()).unwrap();
            h.pump(1000);
        });
    });
    // The rings were stopped: a kick now is not served.
    let used_idx = req.used_addr().unchecked_add(2);
    let before: u16 = mem.read_obj(used_idx).unwrap();
    h.kicks[REQ_QUEUE].write(1).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(mem.read_obj::<u16>(used_idx).unwrap(), before);
}

#[test]
fn connection_and_tag_errors() {
    let dir = TempDir::new_with_prefix("/tmp/berth-vfs-").unwrap();
    let e = Fs::new("t", &dir.as_path().join("nobody.sock"))
        .err()
        .unwrap();
    assert_eq!(e.exit_code(), 7, "{e}");
    let long = "x".repeat(37);
    let e = Fs::new(&long, Path::new("/nonexistent")).err().unwrap();
    assert_eq!(e.exit_code(), 2, "{e}");
    assert_eq!(Fs::new("", Path::new("/x")).err().unwrap().exit_code(), 2);
}
