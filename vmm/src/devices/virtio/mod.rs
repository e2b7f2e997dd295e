//! virtio devices over a shared virtio-mmio (version 2) transport.

pub mod block;
pub mod fs;
pub mod mmio;
pub mod net;
#[cfg(test)]
pub(crate) mod testutil;
pub mod vsock;

use std::os::unix::io::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use mmio::MmioTransport;

pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_VSOCK: u32 = 19;
pub const TYPE_FS: u32 = 26;

/// VIRTIO_F_VERSION_1: we only speak the modern interface.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

pub const INTERRUPT_USED_RING: u32 = 1;
pub const INTERRUPT_CONFIG: u32 = 2;

/// Interrupt line of one device: status bits the driver reads and acks,
/// plus the irqfd KVM injects from.
pub struct Interrupt {
    pub status: AtomicU32,
    pub irqfd: EventFd,
}

impl Interrupt {
    pub fn new(irqfd: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            irqfd,
        }
    }

    pub fn signal(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
        if let Err(e) = self.irqfd.write(1) {
            tracing::warn!("irqfd write failed: {e}");
        }
    }
}

/// What a device model implements; the transport does the rest.
pub trait VirtioDevice: Send {
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Features offered (VIRTIO_F_VERSION_1 is added by the transport).
    fn features(&self) -> u64;
    fn set_acked_features(&mut self, features: u64);
    fn read_config(&self, offset: u64, data: &mut [u8]);
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Called when the driver sets DRIVER_OK.
    fn activate(&mut self) -> Result<(), String> {
        Ok(())
    }
    /// Queue `idx` was notified. Returns true when used buffers were added.
    fn process_queue(&mut self, mem: &GuestMemoryMmap, queues: &mut [Queue], idx: usize) -> bool;
    /// A file descriptor the device loop should poll for backend input
    /// (TAP fd, or an inner epoll fd for devices with many sockets).
    fn backend_fd(&self) -> Option<RawFd> {
        None
    }
    /// Edge-triggered backends must be drained; level-triggered ones (the
    /// default) may leave work pending without spinning only if they stop
    /// asking for the event.
    fn backend_edge_triggered(&self) -> bool {
        false
    }
    /// The backend fd is readable/writable. Returns true when used buffers were added.
    fn process_backend(&mut self, _mem: &GuestMemoryMmap, _queues: &mut [Queue]) -> bool {
        false
    }
    /// The driver reset the device: drop in-flight state.
    fn reset(&mut self) {}
    /// vhost-user devices hand the queue notifications straight to their
    /// backend: they keep clones of the transport's ioeventfds and return
    /// true, and the device loop then never reads those eventfds, so guest
    /// kicks reach the backend without waking the VMM.
    fn take_queue_events(&mut self, _evts: &[EventFd]) -> std::io::Result<bool> {
        Ok(false)
    }
    /// Whether `process_backend` must also run while the driver has not
    /// activated the device (or reset it): devices whose backend fd carries
    /// control work (vhost-user ring teardown, a dead backend's hang-up)
    /// that would otherwise stay pending and keep the device loop spinning.
    fn backend_while_inactive(&self) -> bool {
        false
    }
    /// The device failed (its backend died): the transport sets
    /// DEVICE_NEEDS_RESET and raises a configuration-change interrupt.
    fn needs_reset(&self) -> bool {
        false
    }
}

/// Bytes of a config-space struct, bounds-checked.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(off) = usize::try_from(offset) else {
        return;
    };
    if off >= config.len() {
        return;
    }
    let n = data.len().min(config.len() - off);
    data[..n].copy_from_slice(&config[off..off + n]);
}
