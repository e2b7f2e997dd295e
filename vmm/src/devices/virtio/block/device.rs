//! virtio-blk device model.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::request::*;
use crate::devices::virtio::{read_config_bytes, VirtioDevice, TYPE_BLOCK};
use crate::error::{Error, Result};

pub const BLOCK_QUEUE_SIZE: u16 = 256;
const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;

pub struct Block {
    file: File,
    read_only: bool,
    capacity_sectors: u64,
    id: [u8; VIRTIO_BLK_ID_BYTES],
    acked: u64,
    config: [u8; 8],
}

impl Block {
    /// Opens `path`; its size must be a whole number of sectors.
    pub fn new(path: &Path, read_only: bool, id: &str) -> Result<Self> {
        let dev = |reason: String| Error::Device {
            device: format!("virtio-blk {}", path.display()),
            reason,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| dev(e.to_string()))?;
        let len = file.metadata().map_err(|e| dev(e.to_string()))?.len();
        if len % SECTOR_SIZE != 0 {
            return Err(dev(format!(
                "size {len} is not a multiple of {SECTOR_SIZE}"
            )));
        }
        let mut idb = [0u8; VIRTIO_BLK_ID_BYTES];
        let n = id.len().min(VIRTIO_BLK_ID_BYTES);
        idb[..n].copy_from_slice(&id.as_bytes()[..n]);
        let capacity_sectors = len / SECTOR_SIZE;
        Ok(Self {
            file,
            read_only,
            capacity_sectors,
            id: idb,
            acked: 0,
            config: capacity_sectors.to_le_bytes(),
        })
    }

    pub fn capacity_sectors(&self) -> u64 {
        self.capacity_sectors
    }

    /// Executes one chain; returns the number of bytes written to the guest.
    pub fn handle_chain(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    ) -> u32 {
        let (req, mut reader, mut writer) =
            match parse_request(mem, chain.clone(), self.capacity_sectors) {
                Ok(v) => v,
                Err(e) => {
                    tracing::debug!("virtio-blk: malformed request: {e}");
                    return write_status_only(mem, chain, e);
                }
            };
        let total = writer.available_bytes();
        let mut status_writer = match writer.split_at(total - 1) {
            Ok(s) => s,
            Err(_) => return 0,
        };
        // Only IN/OUT use it, and their range was checked; FLUSH/GET_ID carry any sector.
        let offset = req.sector.saturating_mul(SECTOR_SIZE);
        let status = match req.kind {
            RequestType::In => {
                let mut buf = vec![0u8; req.data_len];
                match self.file.read_exact_at(&mut buf, offset) {
                    Ok(()) => match writer.write_all(&buf) {
                        Ok(()) => VIRTIO_BLK_S_OK,
                        Err(_) => VIRTIO_BLK_S_IOERR,
                    },
                    Err(_) => VIRTIO_BLK_S_IOERR,
                }
            }
            RequestType::Out if self.read_only => VIRTIO_BLK_S_IOERR,
            RequestType::Out => {
                let mut buf = vec![0u8; req.data_len];
                match std::io::Read::read_exact(&mut reader, &mut buf) {
                    Ok(()) => match self.file.write_all_at(&buf, offset) {
                        Ok(()) => VIRTIO_BLK_S_OK,
                        Err(_) => VIRTIO_BLK_S_IOERR,
                    },
                    Err(_) => VIRTIO_BLK_S_IOERR,
                }
            }
            RequestType::Flush if self.read_only => VIRTIO_BLK_S_OK,
            RequestType::Flush => match self.file.sync_data() {
                Ok(()) => VIRTIO_BLK_S_OK,
                Err(_) => VIRTIO_BLK_S_IOERR,
            },
            RequestType::GetId => match writer.write_all(&self.id[..req.data_len]) {
                Ok(()) => VIRTIO_BLK_S_OK,
                Err(_) => VIRTIO_BLK_S_IOERR,
            },
            RequestType::Unsupported(_) => VIRTIO_BLK_S_UNSUPP,
        };
        if status_writer.write_all(&[status]).is_err() {
            return writer.bytes_written() as u32;
        }
        (writer.bytes_written() + 1) as u32
    }
}

/// For a malformed chain, still report an error status when there is a
/// writable byte to put it in (the last one), so the driver is not stuck.
fn write_status_only(
    mem: &GuestMemoryMmap,
    chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    err: RequestError,
) -> u32 {
    let Ok(mut w) = chain.writer(mem) else {
        return 0;
    };
    let n = w.available_bytes();
    if n == 0 {
        return 0;
    }
    let status = match err {
        RequestError::Chain(_) => return 0,
        _ => VIRTIO_BLK_S_IOERR,
    };
    match w.split_at(n - 1) {
        Ok(mut s) => u32::from(s.write_all(&[status]).is_ok()),
        Err(_) => 0,
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[BLOCK_QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_BLK_F_FLUSH | if self.read_only { VIRTIO_BLK_F_RO } else { 0 }
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn process_queue(&mut self, mem: &GuestMemoryMmap, queues: &mut [Queue], idx: usize) -> bool {
        let Some(q) = queues.get_mut(idx) else {
            return false;
        };
        let mut used = false;
        while let Some(chain) = q.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let len = self.handle_chain(mem, chain);
            if q.add_used(mem, head, len).is_err() {
                tracing::warn!("virtio-blk: cannot add used element");
                break;
            }
            used = true;
        }
        used
    }
}
