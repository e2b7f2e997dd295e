//! virtio-net against a real TAP in a fresh network namespace.

use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;

use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{Net, Tap, NET_HDR_LEN};
use crate::devices::virtio::testutil::*;
use crate::devices::virtio::VirtioDevice;

const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// Runs `f` on a thread moved into a new network namespace. Returns false
/// (after saying why) when namespaces or TAP are unavailable.
fn in_netns(f: impl FnOnce() + Send + 'static) -> bool {
    std::thread::spawn(move || {
        // SAFETY: affects only this thread.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            eprintln!(
                "skipping: unshare(CLONE_NEWNET): {}",
                std::io::Error::last_os_error()
            );
            return false;
        }
        if !std::path::Path::new("/dev/net/tun").exists() {
            eprintln!("skipping: /dev/net/tun missing");
            return false;
        }
        f();
        true
    })
    .join()
    .unwrap()
}

fn ip(args: &str) {
    let st = Command::new("ip")
        .args(args.split_whitespace())
        .status()
        .unwrap();
    assert!(st.success(), "ip {args}");
}

fn tap_mac(name: &str) -> [u8; 6] {
    let out = Command::new("ip")
        .args(["-o", "link", "show", name])
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    let mac = s
        .split("link/ether ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    super::parse_mac(mac).unwrap()
}

fn setup_tap() -> (Tap, [u8; 6]) {
    let tap = Tap::open("btap0", NET_HDR_LEN as i32).unwrap();
    ip("addr add 10.0.0.1/24 dev btap0");
    ip("link set btap0 up");
    ip("neigh add 10.0.0.2 lladdr 02:00:00:00:00:02 dev btap0");
    let mac = tap_mac("btap0");
    (tap, mac)
}

fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in b.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// vnet header + Ethernet + IPv4 + UDP (no checksum) from 10.0.0.2:4000.
fn udp_frame(dst_mac: [u8; 6], dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; NET_HDR_LEN];
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    let mut iph = vec![
        0x45, 0, 0, 0, 0, 1, 0, 0, 64, 17, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1,
    ];
    iph[2..4].copy_from_slice(&total.to_be_bytes());
    let c = checksum(&iph);
    iph[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&iph);
    f.extend_from_slice(&4000u16.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

fn queues(
    m: &GuestMemoryMmap,
) -> (
    MockSplitQueue<'_, GuestMemoryMmap>,
    MockSplitQueue<'_, GuestMemoryMmap>,
    Vec<Queue>,
) {
    let rx = MockSplitQueue::create(m, GuestAddress(0), 64);
    let tx = MockSplitQueue::create(m, GuestAddress(0x4000), 64);
    let qs = vec![rx.create_queue().unwrap(), tx.create_queue().unwrap()];
    (rx, tx, qs)
}

#[test]
fn tx_frames_reach_the_host_stack() {
    in_netns(|| {
        let (tap, tap_mac) = setup_tap();
        let sock = UdpSocket::bind("10.0.0.1:5000").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut net = Net::new(tap, Some(GUEST_MAC));
        let m = mem();
        let (_rx, tx, mut qs) = queues(&m);
        let frame = udp_frame(tap_mac, 5000, b"hello-tap");
        m.write_slice(&frame, GuestAddress(0x10_0000)).unwrap();
        // Header and payload in separate descriptors, as Linux sends them.
        tx.add_desc_chains(
            &[
                desc_next(0x10_0000, NET_HDR_LEN as u32, F_NEXT, 1),
                desc_next(
                    0x10_0000 + NET_HDR_LEN as u64,
                    (frame.len() - NET_HDR_LEN) as u32,
                    0,
                    0,
                ),
                // Shorter than a virtio-net header: dropped.
                desc_next(0x10_0000, 4, 0, 0),
            ],
            0,
        )
        .unwrap();
        assert!(net.process_queue(&m, &mut qs, 1));
        assert_eq!(tx.used().idx().load(), 2);
        let mut buf = [0u8; 64];
        let (n, from) = sock.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello-tap");
        assert_eq!(from.to_string(), "10.0.0.2:4000");
    });
}

#[test]
fn rx_frames_reach_the_guest_buffers() {
    in_netns(|| {
        let (tap, _) = setup_tap();
        let mut net = Net::new(tap, Some(GUEST_MAC));
        let mut cfg = [0u8; 6];
        net.read_config(0, &mut cfg);
        assert_eq!(cfg, GUEST_MAC);
        let m = mem();
        let (rx, _tx, mut qs) = queues(&m);
        let sock = UdpSocket::bind("10.0.0.1:0").unwrap();
        sock.send_to(b"to-the-guest", "10.0.0.2:6000").unwrap();
        // No RX buffers yet: the frame waits in the device.
        for _ in 0..50 {
            net.process_backend(&m, &mut qs);
            if net.rx_pending.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(net.rx_pending.is_some(), "frame read from the TAP");
        for i in 0..15u16 {
            rx.add_desc_chains(
                &[desc_next(
                    0x20_0000 + u64::from(i) * 0x1000,
                    2048,
                    F_WRITE,
                    0,
                )],
                i,
            )
            .unwrap();
        }
        let mut found = false;
        let mut seen = 0u16;
        for _ in 0..100 {
            net.process_queue(&m, &mut qs, 0);
            let idx = rx.used().idx().load();
            while seen < idx {
                let e = rx.used().ring().ref_at(seen as usize).unwrap().load();
                seen += 1;
                let mut f = vec![0u8; e.len() as usize];
                m.read_slice(&mut f, GuestAddress(0x20_0000 + u64::from(e.id()) * 0x1000))
                    .unwrap();
                assert_eq!(u16::from_le_bytes([f[10], f[11]]), 1, "num_buffers");
                let eth = &f[NET_HDR_LEN..];
                if eth[..6] == GUEST_MAC && eth.ends_with(b"to-the-guest") {
                    assert_eq!(&eth[12..14], &[0x08, 0x00]);
                    found = true;
                }
            }
            if found {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(found, "UDP datagram delivered to a guest RX buffer");
        // A buffer too small for a frame comes back empty.
        let used_before = rx.used().idx().load();
        let avail = rx.avail().idx().load();
        let small_idx = 15u16;
        rx.add_desc_chains(&[desc_next(0x30_0000, 8, F_WRITE, 0)], small_idx)
            .unwrap();
        assert_eq!(rx.avail().idx().load(), avail + 1);
        // Fill the other outstanding buffers first by sending enough frames.
        let outstanding = avail - used_before;
        for _ in 0..=outstanding {
            sock.send_to(b"x", "10.0.0.2:6000").unwrap();
        }
        let mut small_seen = false;
        for _ in 0..100 {
            net.process_queue(&m, &mut qs, 0);
            let idx = rx.used().idx().load();
            while seen < idx {
                let e = rx.used().ring().ref_at(seen as usize % 64).unwrap().load();
                seen += 1;
                if e.id() == u32::from(small_idx) {
                    assert_eq!(e.len(), 0, "too-small buffer returned empty");
                    small_seen = true;
                }
            }
            if small_seen {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(small_seen);
    });
}

#[test]
fn missing_tap_is_a_clear_error() {
    // Opening needs /dev/net/tun; with it, an over-long name must fail
    // with the TAP error (exit code 6).
    let err = Tap::open("this-name-is-way-too-long", 12).err().unwrap();
    assert_eq!(err.exit_code(), 6);
    assert!(err.to_string().contains("this-name-is-way-too-long"));
}
