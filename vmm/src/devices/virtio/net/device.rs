//! virtio-net device model.

use std::io::{ErrorKind, Read, Write};

use std::os::unix::io::{AsRawFd, RawFd};
use virtio_queue::DescriptorChain;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use super::tap::Tap;
use crate::devices::virtio::{read_config_bytes, VirtioDevice, TYPE_NET};
use crate::error::{Error, Result};

pub const NET_QUEUE_SIZE: u16 = 256;
/// virtio_net_hdr_v1 (VERSION_1 always includes num_buffers).
pub const NET_HDR_LEN: usize = 12;
const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// Largest frame without offloads: header + 64 KiB (generous vs the MTU).
pub const MAX_FRAME: usize = NET_HDR_LEN + 65_550;
const RXQ: usize = 0;
const TXQ: usize = 1;

pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    let bad = || Error::Config(format!("bad MAC address {s:?}"));
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        mac[i] = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    Ok(mac)
}

/// Reads a TX chain into a frame (vnet header + Ethernet frame); None for
/// malformed chains or frames outside [NET_HDR_LEN, MAX_FRAME].
pub fn read_tx_frame(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    frame: &mut Vec<u8>,
) -> bool {
    frame.clear();
    let mut r = match chain.reader(mem) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!("virtio-net: malformed TX chain: {e}");
            return false;
        }
    };
    let n = r.available_bytes();
    if !(NET_HDR_LEN..=MAX_FRAME).contains(&n) {
        tracing::debug!("virtio-net: dropping TX frame of {n} bytes");
        return false;
    }
    frame.resize(n, 0);
    r.read_exact(frame).is_ok()
}

/// Writes `frame` into an RX chain; returns the used length (0 when the
/// chain is malformed or too small).
pub fn write_rx_frame(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    frame: &[u8],
) -> u32 {
    match chain.writer(mem) {
        Ok(mut w) if w.available_bytes() >= frame.len() => match w.write_all(frame) {
            Ok(()) => frame.len() as u32,
            Err(_) => 0,
        },
        Ok(w) => {
            tracing::debug!(
                "virtio-net: RX buffer of {} bytes too small for a {}-byte frame",
                w.available_bytes(),
                frame.len()
            );
            0
        }
        Err(e) => {
            tracing::debug!("virtio-net: malformed RX chain: {e}");
            0
        }
    }
}

pub struct Net {
    tap: Tap,
    mac: Option<[u8; 6]>,
    acked: u64,
    /// A frame read from the TAP that found no RX buffer yet.
    pub(super) rx_pending: Option<Vec<u8>>,
    rx_buf: Vec<u8>,
}

impl Net {
    pub fn new(tap: Tap, mac: Option<[u8; 6]>) -> Self {
        Self {
            tap,
            mac,
            acked: 0,
            rx_pending: None,
            rx_buf: vec![0u8; MAX_FRAME],
        }
    }

    pub fn tap(&self) -> &Tap {
        &self.tap
    }

    /// Sends every TX chain to the TAP. Malformed chains are completed
    /// with length 0 and dropped.
    pub fn process_tx(&mut self, mem: &GuestMemoryMmap, q: &mut Queue) -> bool {
        let mut used = false;
        let mut frame = Vec::with_capacity(2048);
        while let Some(chain) = q.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            if read_tx_frame(mem, chain, &mut frame) {
                if let Err(e) = self.tap.write_frame(&frame) {
                    tracing::debug!("virtio-net: TAP write failed: {e}");
                }
            }
            if q.add_used(mem, head, 0).is_err() {
                break;
            }
            used = true;
        }
        used
    }

    /// Moves frames from the TAP into RX buffers until either runs out.
    pub fn process_rx(&mut self, mem: &GuestMemoryMmap, q: &mut Queue) -> bool {
        let mut used = false;
        loop {
            let frame = match self.rx_pending.take() {
                Some(f) => f,
                None => match self.tap.read_frame(&mut self.rx_buf) {
                    Ok(n) if n >= NET_HDR_LEN => {
                        let mut f = self.rx_buf[..n].to_vec();
                        // num_buffers = 1 (no mergeable buffers).
                        f[10..12].copy_from_slice(&1u16.to_le_bytes());
                        f
                    }
                    Ok(_) => continue,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => {
                        if e.kind() != ErrorKind::WouldBlock {
                            tracing::debug!("virtio-net: TAP read failed: {e}");
                        }
                        break;
                    }
                },
            };
            let Some(chain) = q.pop_descriptor_chain(mem) else {
                self.rx_pending = Some(frame);
                break;
            };
            let head = chain.head_index();
            let len = write_rx_frame(mem, chain, &frame);
            if q.add_used(mem, head, len).is_err() {
                q.go_to_previous_position();
                break;
            }
            used = true;
        }
        used
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[NET_QUEUE_SIZE; 2]
    }

    fn features(&self) -> u64 {
        if self.mac.is_some() {
            VIRTIO_NET_F_MAC
        } else {
            0
        }
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.mac.unwrap_or_default(), offset, data);
    }

    fn process_queue(&mut self, mem: &GuestMemoryMmap, queues: &mut [Queue], idx: usize) -> bool {
        if queues.len() < 2 {
            return false;
        }
        match idx {
            TXQ => self.process_tx(mem, &mut queues[TXQ]),
            RXQ => self.process_rx(mem, &mut queues[RXQ]),
            _ => false,
        }
    }

    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.tap.as_raw_fd())
    }

    fn backend_edge_triggered(&self) -> bool {
        true
    }

    fn process_backend(&mut self, mem: &GuestMemoryMmap, queues: &mut [Queue]) -> bool {
        match queues.get_mut(RXQ) {
            Some(q) => self.process_rx(mem, q),
            None => false,
        }
    }

    fn reset(&mut self) {
        self.rx_pending = None;
    }
}
