//! Bounds-checked parsing of a virtio-blk descriptor chain.
//!
//! Layout: a device-readable header (type, reserved, sector), then data
//! buffers (device-writable for reads, device-readable for writes), then
//! a one-byte device-writable status. virtio-queue's Reader/Writer check
//! every descriptor against guest memory; this module checks the request
//! against the shape above and the disk size.

use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::{ByteValued, GuestMemoryMmap};

pub const SECTOR_SIZE: u64 = 512;
pub const SECTOR_SHIFT: u64 = 9;

pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;

pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

pub const VIRTIO_BLK_ID_BYTES: usize = 20;

/// Largest data transfer accepted in one request (the guest's default
/// max_sectors is far below this).
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
struct RequestHeader {
    type_: u32,
    _reserved: u32,
    sector: u64,
}
// SAFETY: plain integers, no padding.
unsafe impl ByteValued for RequestHeader {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestType {
    In,
    Out,
    Flush,
    GetId,
    Unsupported(u32),
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("descriptor chain is invalid: {0}")]
    Chain(String),
    #[error("header descriptor too short or not device-readable")]
    BadHeader,
    #[error("no device-writable status byte")]
    NoStatus,
    #[error("data length {0} is not a multiple of the sector size")]
    Unaligned(usize),
    #[error("request of {0} bytes is too large")]
    TooLarge(usize),
    #[error("sector range beyond end of disk")]
    OutOfRange,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub kind: RequestType,
    pub sector: u64,
    /// Bytes to transfer (reads: device-writable data, writes: readable data).
    pub data_len: usize,
}

/// Parses a chain. Returns the request plus a reader positioned at the
/// data to write to disk and a writer for data to the guest, whose last
/// byte is the status.
pub fn parse_request<'a>(
    mem: &'a GuestMemoryMmap,
    chain: DescriptorChain<&'a GuestMemoryMmap>,
    capacity_sectors: u64,
) -> Result<(Request, Reader<'a>, Writer<'a>), RequestError> {
    let mut reader = chain
        .clone()
        .reader(mem)
        .map_err(|e| RequestError::Chain(e.to_string()))?;
    let writer = chain
        .writer(mem)
        .map_err(|e| RequestError::Chain(e.to_string()))?;
    if reader.available_bytes() < std::mem::size_of::<RequestHeader>() {
        return Err(RequestError::BadHeader);
    }
    let hdr: RequestHeader = reader.read_obj().map_err(|_| RequestError::BadHeader)?;
    if writer.available_bytes() < 1 {
        return Err(RequestError::NoStatus);
    }
    let kind = match hdr.type_ {
        VIRTIO_BLK_T_IN => RequestType::In,
        VIRTIO_BLK_T_OUT => RequestType::Out,
        VIRTIO_BLK_T_FLUSH => RequestType::Flush,
        VIRTIO_BLK_T_GET_ID => RequestType::GetId,
        t => RequestType::Unsupported(t),
    };
    let data_len = match kind {
        RequestType::In => writer.available_bytes() - 1,
        RequestType::Out => reader.available_bytes(),
        RequestType::GetId => (writer.available_bytes() - 1).min(VIRTIO_BLK_ID_BYTES),
        _ => 0,
    };
    if matches!(kind, RequestType::In | RequestType::Out) {
        if data_len > MAX_REQUEST_BYTES {
            return Err(RequestError::TooLarge(data_len));
        }
        if !(data_len as u64).is_multiple_of(SECTOR_SIZE) {
            return Err(RequestError::Unaligned(data_len));
        }
        let end = hdr
            .sector
            .checked_add(data_len as u64 >> SECTOR_SHIFT)
            .ok_or(RequestError::OutOfRange)?;
        if end > capacity_sectors {
            return Err(RequestError::OutOfRange);
        }
    }
    Ok((
        Request {
            kind,
            sector: hdr.sector,
            data_len,
        },
        reader,
        writer,
    ))
}
