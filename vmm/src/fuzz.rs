//! Fuzzing entry points for descriptor-chain parsing of every virtio
//! device. The input bytes become a small guest memory holding split
//! virtqueues (descriptor table, avail ring) and the buffers they point
//! to; the device then processes the queue exactly as on a notification.
//! Nothing here may panic or touch memory outside the guest mapping.

use std::cell::RefCell;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::devices::virtio::block::Block;
use crate::devices::virtio::net::{read_tx_frame, write_rx_frame};
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::VirtioDevice;

pub const MEM_SIZE: usize = 0x1_0000;
pub const QUEUE_SIZE: u16 = 16;
/// Two queues per input: (descriptor table, avail ring, used ring).
pub const QUEUES: [(u64, u64, u64); 2] = [(0x0, 0x100, 0x200), (0x300, 0x400, 0x500)];

fn memory(data: &[u8]) -> GuestMemoryMmap {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("fuzz memory");
    let n = data.len().min(MEM_SIZE);
    mem.write_slice(&data[..n], GuestAddress(0))
        .expect("fuzz memory write");
    mem
}

fn used(mem: &GuestMemoryMmap, i: usize) -> usize {
    mem.read_obj::<u16>(GuestAddress(QUEUES[i].2 + 2))
        .map_or(0, usize::from)
}

fn queue(i: usize) -> Queue {
    let (d, a, u) = QUEUES[i];
    let mut q = Queue::new(QUEUE_SIZE).expect("queue");
    q.set_size(QUEUE_SIZE);
    q.set_desc_table_address(Some(d as u32), Some(0));
    q.set_avail_ring_address(Some(a as u32), Some(0));
    q.set_used_ring_address(Some(u as u32), Some(0));
    q.set_ready(true);
    q
}

thread_local! {
    static DISK: RefCell<Option<(vmm_sys_util::tempfile::TempFile, Block)>> = const { RefCell::new(None) };
    static VSOCK: RefCell<Option<(std::path::PathBuf, Vsock)>> = const { RefCell::new(None) };
}

/// virtio-blk: queue 0 of the input is the request queue. Returns the
/// number of completed chains.
pub fn block(data: &[u8]) -> usize {
    let mem = memory(data);
    DISK.with(|d| {
        let mut d = d.borrow_mut();
        let (_, blk) = d.get_or_insert_with(|| {
            let t = vmm_sys_util::tempfile::TempFile::new().expect("tempfile");
            t.as_file().set_len(8 * 512).expect("disk size");
            let b = Block::new(t.as_path(), false, "fuzz").expect("block");
            (t, b)
        });
        let mut qs = [queue(0)];
        blk.process_queue(&mem, &mut qs, 0);
    });
    used(&mem, 0)
}

/// virtio-vsock: queue 0 is RX, queue 1 is TX (packets from the guest,
/// whose replies land in RX buffers).
pub fn vsock(data: &[u8]) -> usize {
    let mem = memory(data);
    VSOCK.with(|v| {
        let mut v = v.borrow_mut();
        let (_, dev) = v.get_or_insert_with(|| {
            let dir = std::env::temp_dir().join(format!(
                "berth-fuzz-vsock-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::create_dir_all(&dir);
            let dev = Vsock::new(3, &dir.join("v.sock")).expect("vsock");
            (dir, dev)
        });
        let mut qs = [queue(0), queue(1), queue(0)];
        dev.process_queue(&mem, &mut qs, 1);
        dev.process_queue(&mem, &mut qs, 0);
        // Do not carry connection state from one input to the next.
        dev.reset();
    });
    used(&mem, 1)
}

/// virtio-net: queue 1 is TX (frames read out), queue 0 is RX (a frame
/// written in).
pub fn net(data: &[u8]) -> usize {
    let mem = memory(data);
    let mut tx = queue(1);
    let mut frame = Vec::new();
    while let Some(chain) = tx.pop_descriptor_chain(&mem) {
        let head = chain.head_index();
        read_tx_frame(&mem, chain, &mut frame);
        if tx.add_used(&mem, head, 0).is_err() {
            break;
        }
    }
    let mut rx = queue(0);
    let incoming = [0x5au8; 90];
    while let Some(chain) = rx.pop_descriptor_chain(&mem) {
        let head = chain.head_index();
        let len = write_rx_frame(&mem, chain, &incoming);
        if rx.add_used(&mem, head, len).is_err() {
            break;
        }
    }
    used(&mem, 0) + used(&mem, 1)
}

/// Deterministic generator of structured inputs (for the fixed-seed unit
/// test and as a seed corpus): plausible descriptors with hostile twists.
pub struct InputGen(u64);

impl InputGen {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn input(&mut self) -> Vec<u8> {
        let mut m = vec![0u8; MEM_SIZE];
        for b in m.iter_mut().skip(0x600) {
            *b = self.next() as u8;
        }
        for &(desc, avail, _) in &QUEUES {
            for i in 0..u64::from(QUEUE_SIZE) {
                let addr = match self.below(8) {
                    0 => self.next(),                      // anywhere
                    1 => MEM_SIZE as u64 - self.below(64), // straddles the end
                    _ => 0x1000 + self.below(0xe000),      // inside
                };
                let len = match self.below(6) {
                    0 => self.next() as u32,
                    1 => 0,
                    _ => self.below(0x1200) as u32,
                };
                let flags = [0u16, 1, 2, 3, 4, 5, 7][self.below(7) as usize];
                let next = self.below(u64::from(QUEUE_SIZE) + 4) as u16;
                let o = (desc + i * 16) as usize;
                m[o..o + 8].copy_from_slice(&addr.to_le_bytes());
                m[o + 8..o + 12].copy_from_slice(&len.to_le_bytes());
                m[o + 12..o + 14].copy_from_slice(&flags.to_le_bytes());
                m[o + 14..o + 16].copy_from_slice(&next.to_le_bytes());
                // Make request/packet headers at in-memory buffers plausible.
                if addr < MEM_SIZE as u64 - 64 && addr >= 0x600 {
                    let a = addr as usize;
                    let t = [0u32, 1, 4, 8, 5, 1][self.below(6) as usize];
                    m[a..a + 4].copy_from_slice(&t.to_le_bytes());
                }
            }
            let idx = self.below(u64::from(QUEUE_SIZE) * 2) as u16;
            m[avail as usize + 2..avail as usize + 4].copy_from_slice(&idx.to_le_bytes());
            for i in 0..usize::from(QUEUE_SIZE) {
                let head = self.below(u64::from(QUEUE_SIZE) + 2) as u16;
                let o = avail as usize + 4 + i * 2;
                m[o..o + 2].copy_from_slice(&head.to_le_bytes());
            }
        }
        let keep = 0x600 + self.below((MEM_SIZE - 0x600) as u64) as usize;
        m.truncate(keep);
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_seed_random_inputs_do_not_panic() {
        let mut g = InputGen::new(0x6265_7274_6821);
        let (mut b, mut v, mut n) = (0, 0, 0);
        for _ in 0..600 {
            let input = g.input();
            b += block(&input);
            v += vsock(&input);
            n += net(&input);
        }
        // The inputs reach the parsers rather than failing queue checks.
        assert!(
            b > 500 && v > 500 && n > 500,
            "completed chains: blk {b} vsock {v} net {n}"
        );
        // Short and empty inputs too.
        for n in [0usize, 1, 16, 0x101] {
            // The avail index is not part of these inputs: nothing to do.
            let input = g.input();
            assert_eq!(
                block(&input[..n]) + vsock(&input[..n]) + net(&input[..n]),
                0
            );
        }
        let input = g.input();
        block(&input[..0x2ff]);
        vsock(&input[..0x2ff]);
        net(&input[..0x2ff]);
    }
}
