//! vsock device tests on mock queues against real unix sockets.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::muxer::BUF_ALLOC;
use super::packet::*;
use super::Vsock;
use crate::devices::virtio::testutil::*;
use crate::devices::virtio::VirtioDevice;

const GUEST_CID: u64 = 3;
const RX_BUFS: u64 = 0x10_0000;
const TX_BUFS: u64 = 0x20_0000;
const DATA_CAP: u32 = 4096;

struct H<'a> {
    m: &'a GuestMemoryMmap,
    rx: MockSplitQueue<'a, GuestMemoryMmap>,
    tx: MockSplitQueue<'a, GuestMemoryMmap>,
    queues: Vec<Queue>,
    dev: Vsock,
    rx_next: u16,
    tx_next: u16,
    rx_heads: HashMap<u16, u64>,
    rx_used_seen: u16,
    _dir: PathBuf,
    uds: PathBuf,
}

fn tmpdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "berth-vsock-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

impl<'a> H<'a> {
    fn new(m: &'a GuestMemoryMmap) -> Self {
        let dir = tmpdir();
        let uds = dir.join("v.sock");
        let rx = MockSplitQueue::create(m, GuestAddress(0), 64);
        let tx = MockSplitQueue::create(m, GuestAddress(0x4000), 64);
        let ev = MockSplitQueue::create(m, GuestAddress(0x8000), 64);
        let queues = vec![
            rx.create_queue().unwrap(),
            tx.create_queue().unwrap(),
            ev.create_queue().unwrap(),
        ];
        let dev = Vsock::new(GUEST_CID, &uds).unwrap();
        let mut h = H {
            m,
            rx,
            tx,
            queues,
            dev,
            rx_next: 0,
            tx_next: 0,
            rx_heads: HashMap::new(),
            rx_used_seen: 0,
            _dir: dir,
            uds,
        };
        for _ in 0..8 {
            h.add_rx_buf();
        }
        h
    }

    fn add_rx_buf(&mut self) {
        let i = self.rx_next;
        let hdr = RX_BUFS + u64::from(i) * 0x2000;
        self.rx
            .add_desc_chains(
                &[
                    desc_next(hdr, PKT_HEADER as u32, F_WRITE | F_NEXT, i + 1),
                    desc_next(hdr + 0x100, DATA_CAP, F_WRITE, 0),
                ],
                i,
            )
            .unwrap();
        self.rx_heads.insert(i, hdr);
        self.rx_next += 2;
    }

    /// Sends one packet from the guest on the TX queue.
    fn send(&mut self, h: Hdr, data: &[u8]) {
        let i = self.tx_next;
        let a = TX_BUFS + u64::from(i) * 0x2000;
        write_hdr(self.m, a, &h, data.len() as u32);
        if data.is_empty() {
            self.tx
                .add_desc_chains(&[desc_next(a, PKT_HEADER as u32, 0, 0)], i)
                .unwrap();
            self.tx_next += 1;
        } else {
            self.m.write_slice(data, GuestAddress(a + 0x100)).unwrap();
            self.tx
                .add_desc_chains(
                    &[
                        desc_next(a, PKT_HEADER as u32, F_NEXT, i + 1),
                        desc_next(a + 0x100, data.len() as u32, 0, 0),
                    ],
                    i,
                )
                .unwrap();
            self.tx_next += 2;
        }
        self.dev.process_queue(self.m, &mut self.queues, 1);
    }

    fn poll_backend(&mut self) {
        self.dev.process_backend(self.m, &mut self.queues);
    }

    /// Packets delivered to the guest since the last call.
    fn received(&mut self) -> Vec<(Hdr, Vec<u8>)> {
        let mut out = Vec::new();
        let idx = self.rx.used().idx().load();
        while self.rx_used_seen != idx {
            let e = self
                .rx
                .used()
                .ring()
                .ref_at(self.rx_used_seen as usize)
                .unwrap()
                .load();
            self.rx_used_seen += 1;
            let a = self.rx_heads[&(e.id() as u16)];
            let (h, len) = read_hdr(self.m, a);
            assert_eq!(e.len() as usize, PKT_HEADER + len as usize, "used length");
            let mut d = vec![0u8; len as usize];
            self.m.read_slice(&mut d, GuestAddress(a + 0x100)).unwrap();
            out.push((h, d));
        }
        out
    }

    /// Polls the backend until some packet reaches the guest.
    fn wait_rx(&mut self) -> Vec<(Hdr, Vec<u8>)> {
        for _ in 0..200 {
            self.poll_backend();
            let r = self.received();
            if !r.is_empty() {
                return r;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("nothing reached the guest");
    }
}

const PKT_HEADER: usize = 44;

fn write_hdr(m: &GuestMemoryMmap, a: u64, h: &Hdr, len: u32) {
    m.write_obj(h.src_cid, GuestAddress(a)).unwrap();
    m.write_obj(h.dst_cid, GuestAddress(a + 8)).unwrap();
    m.write_obj(h.src_port, GuestAddress(a + 16)).unwrap();
    m.write_obj(h.dst_port, GuestAddress(a + 20)).unwrap();
    m.write_obj(len, GuestAddress(a + 24)).unwrap();
    m.write_obj(h.type_, GuestAddress(a + 28)).unwrap();
    m.write_obj(h.op, GuestAddress(a + 30)).unwrap();
    m.write_obj(h.flags, GuestAddress(a + 32)).unwrap();
    m.write_obj(h.buf_alloc, GuestAddress(a + 36)).unwrap();
    m.write_obj(h.fwd_cnt, GuestAddress(a + 40)).unwrap();
}

fn read_hdr(m: &GuestMemoryMmap, a: u64) -> (Hdr, u32) {
    let r64 = |o| m.read_obj::<u64>(GuestAddress(a + o)).unwrap();
    let r32 = |o| m.read_obj::<u32>(GuestAddress(a + o)).unwrap();
    let r16 = |o| m.read_obj::<u16>(GuestAddress(a + o)).unwrap();
    (
        Hdr {
            src_cid: r64(0),
            dst_cid: r64(8),
            src_port: r32(16),
            dst_port: r32(20),
            type_: r16(28),
            op: r16(30),
            flags: r32(32),
            buf_alloc: r32(36),
            fwd_cnt: r32(40),
        },
        r32(24),
    )
}

/// A packet from the guest port `gport` to host port `hport`.
fn g(gport: u32, hport: u32, op: u16) -> Hdr {
    Hdr {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port: gport,
        dst_port: hport,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 64 * 1024,
        fwd_cnt: 0,
    }
}

fn read_exact_timeout(s: &mut UnixStream, n: usize) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = vec![0u8; n];
    s.read_exact(&mut b).unwrap();
    b
}

fn read_line(s: &mut UnixStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
        out.push(b[0]);
    }
    String::from_utf8(out).unwrap()
}

/// Host connects with CONNECT, the guest accepts; returns (host stream, host port).
fn host_connect(h: &mut H, guest_port: u32) -> (UnixStream, u32) {
    let mut host = UnixStream::connect(&h.uds).unwrap();
    host.write_all(format!("CONNECT {guest_port}\n").as_bytes())
        .unwrap();
    let pkts = h.wait_rx();
    assert_eq!(pkts.len(), 1);
    let (req, _) = &pkts[0];
    assert_eq!(req.op, OP_REQUEST);
    assert_eq!(
        (req.src_cid, req.dst_cid, req.dst_port),
        (HOST_CID, GUEST_CID, guest_port)
    );
    assert_eq!(req.type_, TYPE_STREAM);
    assert_eq!(req.buf_alloc, BUF_ALLOC);
    let hport = req.src_port;
    h.send(g(guest_port, hport, OP_RESPONSE), &[]);
    assert_eq!(read_line(&mut host), format!("OK {hport}"));
    (host, hport)
}

#[test]
fn host_connect_data_and_guest_shutdown() {
    let m = mem();
    let mut h = H::new(&m);
    let (mut host, hport) = host_connect(&mut h, 52);
    host.write_all(b"ping").unwrap();
    let pkts = h.wait_rx();
    assert_eq!(pkts[0].0.op, OP_RW);
    assert_eq!((pkts[0].0.src_port, pkts[0].0.dst_port), (hport, 52));
    assert_eq!(pkts[0].1, b"ping");
    h.send(g(52, hport, OP_RW), b"pong");
    assert_eq!(read_exact_timeout(&mut host, 4), b"pong");
    // Guest closes: the host sees EOF and the guest gets the final RST.
    let mut sd = g(52, hport, OP_SHUTDOWN);
    sd.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    h.send(sd, &[]);
    let mut b = [0u8; 1];
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(host.read(&mut b).unwrap(), 0);
    let pkts = h.received();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].0.op, OP_RST);
    assert_eq!(h.dev.muxer().connection_count(), 0);
}

#[test]
fn guest_connect_to_host_listener_and_refusal() {
    let m = mem();
    let mut h = H::new(&m);
    let listener = UnixListener::bind(format!("{}_5000", h.uds.display())).unwrap();
    h.send(g(1000, 5000, OP_REQUEST), &[]);
    let (mut peer, _) = listener.accept().unwrap();
    let pkts = h.received();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].0.op, OP_RESPONSE);
    assert_eq!((pkts[0].0.src_port, pkts[0].0.dst_port), (5000, 1000));
    h.send(g(1000, 5000, OP_RW), b"hello");
    assert_eq!(read_exact_timeout(&mut peer, 5), b"hello");
    peer.write_all(b"world").unwrap();
    let pkts = h.wait_rx();
    assert_eq!((pkts[0].0.op, pkts[0].1.as_slice()), (OP_RW, &b"world"[..]));
    // Nobody listens on port 5001.
    h.send(g(1001, 5001, OP_REQUEST), &[]);
    let pkts = h.received();
    assert_eq!(
        (pkts[0].0.op, pkts[0].0.src_port, pkts[0].0.dst_port),
        (OP_RST, 5001, 1001)
    );
    // Guest RST drops the connection; the host side sees EOF.
    h.send(g(1000, 5000, OP_RST), &[]);
    let mut b = [0u8; 1];
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(peer.read(&mut b).unwrap(), 0);
    assert_eq!(h.dev.muxer().connection_count(), 0);
}

#[test]
fn host_close_sends_shutdown_and_credit_is_respected() {
    let m = mem();
    let mut h = H::new(&m);
    let mut host = UnixStream::connect(&h.uds).unwrap();
    host.write_all(b"CONNECT 77\n").unwrap();
    let hport = h.wait_rx()[0].0.src_port;
    // The guest only has 4 bytes of buffer.
    let mut resp = g(77, hport, OP_RESPONSE);
    resp.buf_alloc = 4;
    h.send(resp, &[]);
    assert_eq!(read_line(&mut host), format!("OK {hport}"));
    host.write_all(b"abcdefgh").unwrap();
    let pkts = h.wait_rx();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].1, b"abcd");
    for _ in 0..5 {
        h.poll_backend();
    }
    assert!(h.received().is_empty(), "no data beyond the guest's credit");
    // The guest consumed the 4 bytes.
    let mut cu = g(77, hport, OP_CREDIT_UPDATE);
    cu.buf_alloc = 4;
    cu.fwd_cnt = 4;
    h.send(cu, &[]);
    let pkts = h.wait_rx();
    assert_eq!(pkts[0].1, b"efgh");
    // Credit request is answered with our counters.
    h.send(g(77, hport, OP_CREDIT_REQUEST), &[]);
    let pkts = h.received();
    assert_eq!(
        (pkts[0].0.op, pkts[0].0.buf_alloc),
        (OP_CREDIT_UPDATE, BUF_ALLOC)
    );
    // The guest frees its buffer, the host closes: the guest gets SHUTDOWN.
    let mut cu = g(77, hport, OP_CREDIT_UPDATE);
    cu.buf_alloc = 4;
    cu.fwd_cnt = 8;
    h.send(cu, &[]);
    drop(host);
    let pkts = h.wait_rx();
    assert_eq!(pkts[0].0.op, OP_SHUTDOWN);
    assert_eq!(pkts[0].0.flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
    h.send(g(77, hport, OP_RST), &[]);
    assert_eq!(h.dev.muxer().connection_count(), 0);
}

#[test]
fn malformed_and_foreign_packets() {
    let m = mem();
    let mut h = H::new(&m);
    // Header descriptor shorter than a vsock header: consumed, ignored.
    let a = TX_BUFS;
    h.tx.add_desc_chains(&[desc_next(a, 10, 0, 0)], 0).unwrap();
    h.tx_next = 1;
    assert!(h.dev.process_queue(&m, &mut h.queues, 1));
    assert!(h.received().is_empty());
    // Spoofed source CID: dropped without reply.
    let mut spoof = g(1, 2, OP_REQUEST);
    spoof.src_cid = 99;
    h.send(spoof, &[]);
    assert!(h.received().is_empty());
    // Data for a connection that does not exist: RST.
    h.send(g(9, 10, OP_RW), b"zz");
    assert_eq!(h.received()[0].0.op, OP_RST);
    // Datagram type is not supported: RST.
    let mut dgram = g(9, 11, OP_REQUEST);
    dgram.type_ = 2;
    h.send(dgram, &[]);
    assert_eq!(h.received()[0].0.op, OP_RST);
    // Header claims more data than its descriptor holds: dropped.
    let i = h.tx_next;
    let a = TX_BUFS + 0x10_0000;
    write_hdr(&m, a, &g(9, 12, OP_RW), 1000);
    h.tx.add_desc_chains(
        &[
            desc_next(a, 44, F_NEXT, i + 1),
            desc_next(a + 0x100, 10, 0, 0),
        ],
        i,
    )
    .unwrap();
    h.tx_next += 2;
    h.dev.process_queue(&m, &mut h.queues, 1);
    assert!(h.received().is_empty());
    // Bad CONNECT lines are dropped by the host side.
    let mut bad = UnixStream::connect(&h.uds).unwrap();
    bad.write_all(b"HELLO\n").unwrap();
    for _ in 0..5 {
        h.poll_backend();
    }
    assert!(h.received().is_empty());
    let mut b = [0u8; 1];
    bad.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(bad.read(&mut b).unwrap(), 0);
}
