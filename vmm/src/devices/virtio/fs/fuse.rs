//! Just enough FUSE (linux/fuse.h, protocol 7.31) to drive a real
//! virtiofsd from tests: request builders and reply parsers.

pub const FUSE_LOOKUP: u32 = 1;
pub const FUSE_OPEN: u32 = 14;
pub const FUSE_READ: u32 = 15;
pub const FUSE_INIT: u32 = 26;
pub const ROOT_ID: u64 = 1;
const IN_HEADER_LEN: usize = 40;
pub const OUT_HEADER_LEN: usize = 16;

/// fuse_in_header followed by `body`.
fn request(opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
    let len = (IN_HEADER_LEN + body.len()) as u32;
    let mut v = Vec::with_capacity(len as usize);
    v.extend_from_slice(&len.to_le_bytes());
    v.extend_from_slice(&opcode.to_le_bytes());
    v.extend_from_slice(&unique.to_le_bytes());
    v.extend_from_slice(&nodeid.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes()); // uid
    v.extend_from_slice(&0u32.to_le_bytes()); // gid
    v.extend_from_slice(&1u32.to_le_bytes()); // pid
    v.extend_from_slice(&[0u8; 4]); // total_extlen, padding
    v.extend_from_slice(body);
    v
}

/// FUSE_INIT 7.31 with no optional flags (fuse_init_in before INIT_EXT).
pub fn init(unique: u64) -> Vec<u8> {
    let mut b = Vec::new();
    for x in [7u32, 31, 128 << 10, 0] {
        b.extend_from_slice(&x.to_le_bytes());
    }
    request(FUSE_INIT, unique, 0, &b)
}

pub fn lookup(unique: u64, parent: u64, name: &str) -> Vec<u8> {
    let mut b = name.as_bytes().to_vec();
    b.push(0);
    request(FUSE_LOOKUP, unique, parent, &b)
}

pub fn open(unique: u64, nodeid: u64) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&(libc::O_RDONLY as u32).to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    request(FUSE_OPEN, unique, nodeid, &b)
}

pub fn read(unique: u64, nodeid: u64, fh: u64, offset: u64, size: u32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&fh.to_le_bytes());
    b.extend_from_slice(&offset.to_le_bytes());
    b.extend_from_slice(&size.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes()); // read_flags
    b.extend_from_slice(&0u64.to_le_bytes()); // lock_owner
    b.extend_from_slice(&libc::O_RDONLY.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    request(FUSE_READ, unique, nodeid, &b)
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// fuse_out_header: (len, error, unique).
pub fn out_header(reply: &[u8]) -> (u32, i32, u64) {
    assert!(reply.len() >= OUT_HEADER_LEN, "short reply {reply:?}");
    (u32_at(reply, 0), u32_at(reply, 4) as i32, u64_at(reply, 8))
}

/// fuse_init_out: (major, minor).
pub fn init_version(reply: &[u8]) -> (u32, u32) {
    let b = &reply[OUT_HEADER_LEN..];
    (u32_at(b, 0), u32_at(b, 4))
}

/// fuse_entry_out: (nodeid, attr.size, attr.mode).
pub fn entry(reply: &[u8]) -> (u64, u64, u32) {
    let b = &reply[OUT_HEADER_LEN..];
    // nodeid, generation, entry_valid, attr_valid, 2 x nsec, then fuse_attr
    // (ino, size, blocks, atime, mtime, ctime, 3 x nsec, mode, ...).
    let attr = 40;
    (u64_at(b, 0), u64_at(b, attr + 8), u32_at(b, attr + 60))
}

/// fuse_open_out: the file handle.
pub fn open_fh(reply: &[u8]) -> u64 {
    u64_at(&reply[OUT_HEADER_LEN..], 0)
}
