use std::io::{Read, Seek, SeekFrom, Write};

use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::tempfile::TempFile;

use super::request::*;
use super::Block;
use crate::devices::virtio::testutil::*;
use crate::devices::virtio::VirtioDevice;

const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x11_0000;
const STATUS: u64 = 0x12_0000;

fn disk(sectors: u64, read_only: bool) -> (TempFile, Block) {
    let tmp = TempFile::new().unwrap();
    let mut f = tmp.as_file();
    for s in 0..sectors {
        f.write_all(&[s as u8; 512]).unwrap();
    }
    let blk = Block::new(tmp.as_path(), read_only, "berth-test-disk").unwrap();
    (tmp, blk)
}

fn header(mem: &vm_memory::GuestMemoryMmap, t: u32, sector: u64) {
    mem.write_obj(t, GuestAddress(HDR)).unwrap();
    mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
    mem.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
}

fn status(mem: &vm_memory::GuestMemoryMmap) -> u8 {
    mem.read_obj(GuestAddress(STATUS)).unwrap()
}

#[test]
fn read_sector() {
    let m = mem();
    let (_t, mut blk) = disk(4, false);
    let vq = MockSplitQueue::new(&m, 16);
    header(&m, VIRTIO_BLK_T_IN, 2);
    m.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let chain = vq
        .build_desc_chain(&[
            desc(HDR, 16, 0),
            desc(DATA, 1024, F_WRITE),
            desc(STATUS, 1, F_WRITE),
        ])
        .unwrap();
    assert_eq!(blk.handle_chain(&m, chain), 1025);
    assert_eq!(status(&m), VIRTIO_BLK_S_OK);
    let mut buf = [0u8; 1024];
    m.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
    assert!(buf[..512].iter().all(|b| *b == 2));
    assert!(buf[512..].iter().all(|b| *b == 3));
}

#[test]
fn write_then_flush_and_read_only_refusal() {
    let m = mem();
    let (tmp, mut blk) = disk(4, false);
    let vq = MockSplitQueue::new(&m, 16);
    header(&m, VIRTIO_BLK_T_OUT, 1);
    m.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
    let chain = vq
        .build_desc_chain(&[
            desc(HDR, 16, 0),
            desc(DATA, 512, 0),
            desc(STATUS, 1, F_WRITE),
        ])
        .unwrap();
    assert_eq!(blk.handle_chain(&m, chain), 1);
    assert_eq!(status(&m), VIRTIO_BLK_S_OK);
    let mut f = tmp.as_file();
    let mut buf = [0u8; 512];
    f.seek(SeekFrom::Start(512)).unwrap();
    f.read_exact(&mut buf).unwrap();
    assert_eq!(buf, [0xab; 512]);

    header(&m, VIRTIO_BLK_T_FLUSH, 0);
    let chain = vq
        .build_desc_chain(&[desc(HDR, 16, 0), desc(STATUS, 1, F_WRITE)])
        .unwrap();
    assert_eq!(blk.handle_chain(&m, chain), 1);
    assert_eq!(status(&m), VIRTIO_BLK_S_OK);

    let mut ro = Block::new(tmp.as_path(), true, "ro").unwrap();
    assert_ne!(ro.features() & (1 << 5), 0, "VIRTIO_BLK_F_RO offered");
    header(&m, VIRTIO_BLK_T_OUT, 0);
    m.write_slice(&[0xcd; 512], GuestAddress(DATA)).unwrap();
    let chain = vq
        .build_desc_chain(&[
            desc(HDR, 16, 0),
            desc(DATA, 512, 0),
            desc(STATUS, 1, F_WRITE),
        ])
        .unwrap();
    ro.handle_chain(&m, chain);
    assert_eq!(status(&m), VIRTIO_BLK_S_IOERR);
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_exact(&mut buf).unwrap();
    assert_eq!(buf, [0u8; 512], "read-only disk untouched");
}

#[test]
fn get_id() {
    let m = mem();
    let (_t, mut blk) = disk(1, true);
    let vq = MockSplitQueue::new(&m, 16);
    header(&m, VIRTIO_BLK_T_GET_ID, 0);
    let chain = vq
        .build_desc_chain(&[
            desc(HDR, 16, 0),
            desc(DATA, 64, F_WRITE),
            desc(STATUS, 1, F_WRITE),
        ])
        .unwrap();
    assert_eq!(blk.handle_chain(&m, chain), 21);
    let mut id = [0u8; 20];
    m.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..15], b"berth-test-disk");
}

#[test]
fn out_of_range_and_overflowing_sectors() {
    let m = mem();
    let (_t, mut blk) = disk(4, false);
    let vq = MockSplitQueue::new(&m, 16);
    for (sector, len) in [
        (4u64, 512u32),
        (3, 1024),
        (u64::MAX, 512),
        (u64::MAX / 512, 1024),
    ] {
        header(&m, VIRTIO_BLK_T_IN, sector);
        m.write_obj(0x55u8, GuestAddress(STATUS)).unwrap();
        let chain = vq
            .build_desc_chain(&[
                desc(HDR, 16, 0),
                desc(DATA, len, F_WRITE),
                desc(STATUS, 1, F_WRITE),
            ])
            .unwrap();
        blk.handle_chain(&m, chain);
        assert_eq!(status(&m), VIRTIO_BLK_S_IOERR, "sector {sector} len {len}");
    }
}

#[test]
fn malformed_chains() {
    let m = mem();
    let (_t, mut blk) = disk(4, false);
    let vq = MockSplitQueue::new(&m, 16);
    header(&m, VIRTIO_BLK_T_IN, 0);
    // Header too short.
    let chain = vq
        .build_desc_chain(&[desc(HDR, 8, 0), desc(STATUS, 1, F_WRITE)])
        .unwrap();
    blk.handle_chain(&m, chain);
    assert_eq!(status(&m), VIRTIO_BLK_S_IOERR);
    // No writable status byte at all: nothing is written.
    let chain = vq
        .build_desc_chain(&[desc(HDR, 16, 0), desc(DATA, 512, 0)])
        .unwrap();
    assert_eq!(blk.handle_chain(&m, chain), 0);
    // Data buffer outside guest memory.
    let chain = vq
        .build_desc_chain(&[
            desc(HDR, 16, 0),
            desc(0x1_0000_0000, 512, F_WRITE),
            desc(STATUS, 1, F_WRITE),
        ])
        .unwrap();
    assert_eq!(blk.handle_chain(&m, chain), 0);
    // Buffer straddling the end of guest memory.
    let chain = vq
        .build_desc_chain(&[
            desc(HDR, 16, 0),
            desc(0x40_0000 - 256, 512, F_WRITE),
            desc(STATUS, 1, F_WRITE),
        ])
        .unwrap();
    assert_eq!(blk.handle_chain(&m, chain), 0);
    // Unaligned data length.
    m.write_obj(0x55u8, GuestAddress(STATUS)).unwrap();
    let chain = vq
        .build_desc_chain(&[
            desc(HDR, 16, 0),
            desc(DATA, 100, F_WRITE),
            desc(STATUS, 1, F_WRITE),
        ])
        .unwrap();
    blk.handle_chain(&m, chain);
    assert_eq!(status(&m), VIRTIO_BLK_S_IOERR);
    // Unknown request type.
    header(&m, 0x77, 0);
    let chain = vq
        .build_desc_chain(&[desc(HDR, 16, 0), desc(STATUS, 1, F_WRITE)])
        .unwrap();
    assert_eq!(blk.handle_chain(&m, chain), 1);
    assert_eq!(status(&m), VIRTIO_BLK_S_UNSUPP);
}

#[test]
fn process_queue_completes_every_chain() {
    let m = mem();
    let (_t, mut blk) = disk(4, false);
    let vq = MockSplitQueue::new(&m, 16);
    header(&m, VIRTIO_BLK_T_IN, 0);
    // Two chains: a valid read and a loop (desc 3 -> 3) that must be cut off.
    vq.add_desc_chains(
        &[
            desc_next(HDR, 16, F_NEXT, 1),
            desc_next(DATA, 512, F_NEXT | F_WRITE, 2),
            desc_next(STATUS, 1, F_WRITE, 0),
            desc_next(HDR, 16, F_NEXT, 3),
        ],
        0,
    )
    .unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    assert!(blk.process_queue(&m, std::slice::from_mut(&mut q), 0));
    assert_eq!(vq.used().idx().load(), 2);
    let e0 = vq.used().ring().ref_at(0).unwrap().load();
    assert_eq!((e0.id(), e0.len()), (0, 513));
    let e1 = vq.used().ring().ref_at(1).unwrap().load();
    assert_eq!((e1.id(), e1.len()), (3, 0));
    // Nothing new: no interrupt needed.
    assert!(!blk.process_queue(&m, std::slice::from_mut(&mut q), 0));
}

#[test]
fn flush_and_get_id_ignore_huge_sector() {
    // Found by the fixed-seed fuzz test: sector * 512 overflowed.
    let m = mem();
    let (_t, mut blk) = disk(1, false);
    let vq = MockSplitQueue::new(&m, 16);
    header(&m, VIRTIO_BLK_T_FLUSH, u64::MAX);
    let chain = vq
        .build_desc_chain(&[desc(HDR, 16, 0), desc(STATUS, 1, F_WRITE)])
        .unwrap();
    assert_eq!(blk.handle_chain(&m, chain), 1);
    assert_eq!(status(&m), VIRTIO_BLK_S_OK);
}
