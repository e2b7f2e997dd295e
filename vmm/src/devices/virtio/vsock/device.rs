//! virtio-vsock device: moves packets between the guest's TX/RX queues and
//! the muxer.

use std::os::unix::io::{AsRawFd, RawFd};
use std::path::Path;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use virtio_vsock::packet::VsockPacket;
use vm_memory::{Bytes, GuestMemoryMmap};

use super::muxer::Muxer;
use super::packet::*;
use crate::devices::virtio::{read_config_bytes, VirtioDevice, TYPE_VSOCK};
use crate::error::Result;

pub const VSOCK_QUEUE_SIZE: u16 = 256;
const RXQ: usize = 0;
const TXQ: usize = 1;

pub struct Vsock {
    guest_cid: u64,
    muxer: Muxer,
    acked: u64,
}

impl Vsock {
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Self> {
        if guest_cid <= HOST_CID || guest_cid >= u64::from(u32::MAX) {
            return Err(crate::error::Error::Config(format!(
                "invalid vsock guest CID {guest_cid}"
            )));
        }
        Ok(Self {
            guest_cid,
            muxer: Muxer::new(guest_cid, uds_path)?,
            acked: 0,
        })
    }

    pub fn muxer(&mut self) -> &mut Muxer {
        &mut self.muxer
    }

    /// Handles every pending TX chain. Returns whether any was used.
    pub fn process_tx(&mut self, mem: &GuestMemoryMmap, q: &mut Queue) -> bool {
        let mut used = false;
        while let Some(mut chain) = q.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            match VsockPacket::from_tx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
                Ok(pkt) => {
                    let hdr = Hdr {
                        src_cid: pkt.src_cid(),
                        dst_cid: pkt.dst_cid(),
                        src_port: pkt.src_port(),
                        dst_port: pkt.dst_port(),
                        type_: pkt.type_(),
                        op: pkt.op(),
                        flags: pkt.flags(),
                        buf_alloc: pkt.buf_alloc(),
                        fwd_cnt: pkt.fwd_cnt(),
                    };
                    let mut data = Vec::new();
                    if let Some(s) = pkt.data_slice() {
                        data.resize(s.len(), 0);
                        if s.read_slice(&mut data, 0).is_err() {
                            data.clear();
                        }
                    }
                    self.muxer.handle_tx(&hdr, &data);
                }
                Err(e) => tracing::debug!("vsock: dropping malformed TX chain: {e}"),
            }
            if q.add_used(mem, head, 0).is_err() {
                break;
            }
            used = true;
        }
        used
    }

    /// Fills RX buffers with what the muxer has for the guest.
    pub fn process_rx(&mut self, mem: &GuestMemoryMmap, q: &mut Queue) -> bool {
        let mut used = false;
        loop {
            if !self.muxer.has_rx() {
                break;
            }
            let Some(mut chain) = q.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let mut pkt = match VsockPacket::from_rx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!("vsock: unusable RX chain: {e}");
                    if q.add_used(mem, head, 0).is_err() {
                        break;
                    }
                    used = true;
                    continue;
                }
            };
            let cap = pkt.data_slice().map_or(0, |s| s.len());
            let Some((hdr, data)) = self.muxer.next_rx(cap) else {
                // Nothing fit after all: give the buffer back to the queue.
                q.go_to_previous_position();
                break;
            };
            pkt.set_src_cid(hdr.src_cid)
                .set_dst_cid(hdr.dst_cid)
                .set_src_port(hdr.src_port)
                .set_dst_port(hdr.dst_port)
                .set_type(hdr.type_)
                .set_op(hdr.op)
                .set_flags(hdr.flags)
                .set_buf_alloc(hdr.buf_alloc)
                .set_fwd_cnt(hdr.fwd_cnt)
                .set_len(data.len() as u32);
            if !data.is_empty() {
                if let Some(s) = pkt.data_slice() {
                    let _ = s.write_slice(&data, 0);
                }
            }
            let len = pkt.header_slice().len() + data.len();
            if q.add_used(mem, head, len as u32).is_err() {
                break;
            }
            used = true;
        }
        used
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[VSOCK_QUEUE_SIZE; 3]
    }

    fn features(&self) -> u64 {
        0
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn process_queue(&mut self, mem: &GuestMemoryMmap, queues: &mut [Queue], idx: usize) -> bool {
        if queues.len() < 3 {
            return false;
        }
        let mut used = false;
        if idx == TXQ {
            used |= self.process_tx(mem, &mut queues[TXQ]);
        }
        // TX may have produced replies; RX notifications mean new buffers.
        used |= self.process_rx(mem, &mut queues[RXQ]);
        used
    }

    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.muxer.epoll_fd())
    }

    fn process_backend(&mut self, mem: &GuestMemoryMmap, queues: &mut [Queue]) -> bool {
        self.muxer.process_events();
        if queues.is_empty() {
            return false;
        }
        self.process_rx(mem, &mut queues[RXQ])
    }

    fn reset(&mut self) {
        self.muxer.reset();
    }
}

impl AsRawFd for Vsock {
    fn as_raw_fd(&self) -> RawFd {
        self.muxer.epoll_fd()
    }
}
