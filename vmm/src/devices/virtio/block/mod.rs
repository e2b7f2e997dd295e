//! virtio-blk backed by a raw file (read-only or read-write, with flush).

mod device;
mod request;

pub use device::{Block, BLOCK_QUEUE_SIZE};
pub use request::{parse_request, Request, RequestError, RequestType, SECTOR_SIZE};

#[cfg(test)]
mod tests;
