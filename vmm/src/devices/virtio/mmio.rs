//! virtio-mmio transport (virtio 1.x, register layout version 2), shared by
//! all devices. Registers are accessed from vCPU threads; queue processing
//! runs on the device loop when an ioeventfd fires.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{Interrupt, VirtioDevice, INTERRUPT_CONFIG, INTERRUPT_USED_RING, VIRTIO_F_VERSION_1};
use crate::devices::bus::BusDevice;

pub const MMIO_MAGIC_VALUE: u32 = 0x7472_6976; // "virt"
pub const MMIO_VERSION: u32 = 2;
pub const VENDOR_ID: u32 = 0x4854_5242; // "BRTH"

pub const REG_MAGIC: u64 = 0x000;
pub const REG_VERSION: u64 = 0x004;
pub const REG_DEVICE_ID: u64 = 0x008;
pub const REG_VENDOR_ID: u64 = 0x00c;
pub const REG_DEVICE_FEATURES: u64 = 0x010;
pub const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
pub const REG_DRIVER_FEATURES: u64 = 0x020;
pub const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
pub const REG_QUEUE_SEL: u64 = 0x030;
pub const REG_QUEUE_NUM_MAX: u64 = 0x034;
pub const REG_QUEUE_NUM: u64 = 0x038;
pub const REG_QUEUE_READY: u64 = 0x044;
pub const REG_QUEUE_NOTIFY: u64 = 0x050;
pub const REG_INTERRUPT_STATUS: u64 = 0x060;
pub const REG_INTERRUPT_ACK: u64 = 0x064;
pub const REG_STATUS: u64 = 0x070;
pub const REG_QUEUE_DESC_LOW: u64 = 0x080;
pub const REG_QUEUE_DESC_HIGH: u64 = 0x084;
pub const REG_QUEUE_AVAIL_LOW: u64 = 0x090;
pub const REG_QUEUE_AVAIL_HIGH: u64 = 0x094;
pub const REG_QUEUE_USED_LOW: u64 = 0x0a0;
pub const REG_QUEUE_USED_HIGH: u64 = 0x0a4;
pub const REG_CONFIG_GENERATION: u64 = 0x0fc;
pub const REG_CONFIG: u64 = 0x100;

pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_DEVICE_NEEDS_RESET: u32 = 0x40;
pub const STATUS_FAILED: u32 = 0x80;

pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    pub interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    /// The device's backend reads `queue_evts` itself (vhost-user).
    external_kicks: bool,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    queue_sel: u32,
    status: u32,
    config_generation: u32,
    activated: bool,
}

impl MmioTransport {
    pub fn new(
        mut device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        irqfd: EventFd,
    ) -> std::io::Result<Self> {
        let mut queues = Vec::new();
        let mut queue_evts = Vec::new();
        for &max in device.queue_max_sizes() {
            queues.push(Queue::new(max).map_err(|e| std::io::Error::other(format!("queue: {e}")))?);
            queue_evts.push(EventFd::new(libc::EFD_NONBLOCK)?);
        }
        let external_kicks = device.take_queue_events(&queue_evts)?;
        Ok(Self {
            device,
            mem,
            interrupt: Arc::new(Interrupt::new(irqfd)),
            queues,
            queue_evts,
            external_kicks,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            queue_sel: 0,
            status: 0,
            config_generation: 0,
            activated: false,
        })
    }

    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    /// One eventfd per queue, registered as ioeventfds on QueueNotify.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// Whether the device loop should poll `queue_evts` (false when the
    /// device's vhost-user backend consumes them).
    pub fn polls_queue_evts(&self) -> bool {
        !self.external_kicks
    }

    pub fn backend_fd(&self) -> Option<std::os::unix::io::RawFd> {
        self.device.backend_fd()
    }

    pub fn backend_edge_triggered(&self) -> bool {
        self.device.backend_edge_triggered()
    }

    pub fn is_activated(&self) -> bool {
        self.activated
    }

    pub fn status(&self) -> u32 {
        self.status
    }

    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    fn offered_features(&self) -> u64 {
        self.device.features() | VIRTIO_F_VERSION_1
    }

    /// Handles a notification for queue `idx` (from its ioeventfd or a
    /// trapped QueueNotify write).
    pub fn notify_queue(&mut self, idx: usize) {
        if !self.activated || idx >= self.queues.len() {
            return;
        }
        if self.device.process_queue(&self.mem, &mut self.queues, idx) {
            self.interrupt.signal(INTERRUPT_USED_RING);
        }
    }

    /// Backend I/O is ready (TAP, sockets).
    pub fn process_backend(&mut self) {
        if !self.activated && !self.device.backend_while_inactive() {
            return;
        }
        if self.device.process_backend(&self.mem, &mut self.queues) && self.activated {
            self.interrupt.signal(INTERRUPT_USED_RING);
        }
        if self.device.needs_reset()
            && self.status & STATUS_DRIVER_OK != 0
            && self.status & STATUS_DEVICE_NEEDS_RESET == 0
        {
            tracing::warn!(
                "virtio device {} needs reset: its backend failed",
                self.device.device_type()
            );
            self.status |= STATUS_DEVICE_NEEDS_RESET;
            self.interrupt.signal(INTERRUPT_CONFIG);
        }
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn reset(&mut self) {
        for q in &mut self.queues {
            q.reset();
        }
        self.device.reset();
        self.status = 0;
        self.acked_features = 0;
        self.activated = false;
        self.interrupt.status.store(0, Ordering::SeqCst);
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        // FEATURES_OK is refused if the driver did not accept VERSION_1.
        let mut v = v;
        if v & STATUS_FEATURES_OK != 0 && self.acked_features & VIRTIO_F_VERSION_1 == 0 {
            v &= !STATUS_FEATURES_OK;
        }
        let newly_ok = v & STATUS_DRIVER_OK != 0 && self.status & STATUS_DRIVER_OK == 0;
        // DEVICE_NEEDS_RESET is the device's to set; only a reset clears it.
        self.status = v | (self.status & STATUS_DEVICE_NEEDS_RESET);
        if newly_ok && !self.activated {
            let ready = self
                .queues
                .iter()
                .all(|q| !q.ready() || q.is_valid(&self.mem));
            if self.status & STATUS_FEATURES_OK == 0 || !ready {
                tracing::warn!(
                    "virtio device {} set DRIVER_OK without valid features/queues",
                    self.device.device_type()
                );
                self.status |= STATUS_FAILED;
                return;
            }
            match self.device.activate() {
                Ok(()) => self.activated = true,
                Err(e) => {
                    tracing::warn!(
                        "virtio device {} activation failed: {e}",
                        self.device.device_type()
                    );
                    self.status |= STATUS_FAILED;
                }
            }
        }
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        match offset {
            REG_MAGIC => MMIO_MAGIC_VALUE,
            REG_VERSION => MMIO_VERSION,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| q.max_size().into()),
            REG_QUEUE_READY => self.selected_queue().map_or(0, |q| q.ready().into()),
            REG_INTERRUPT_STATUS => self.interrupt.status.load(Ordering::SeqCst),
            REG_STATUS => self.status,
            REG_CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        // Queue and feature setup is only legal before DRIVER_OK.
        let configuring = self.status & STATUS_DRIVER_OK == 0;
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            REG_DRIVER_FEATURES if configuring && self.status & STATUS_FEATURES_OK == 0 => {
                let shift = match self.driver_features_sel {
                    0 => 0,
                    1 => 32,
                    _ => return,
                };
                let mask = 0xffff_ffffu64 << shift;
                // Only features we offered can be acked.
                let v = (u64::from(v) << shift) & self.offered_features();
                self.acked_features = (self.acked_features & !mask) | v;
                self.device.set_acked_features(self.acked_features);
            }
            REG_QUEUE_SEL => self.queue_sel = v,
            REG_QUEUE_NUM if configuring => {
                if let Some(q) = self.selected_queue() {
                    q.set_size(v as u16);
                }
            }
            REG_QUEUE_READY if configuring => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(v == 1);
                }
            }
            REG_QUEUE_DESC_LOW if configuring => {
                self.with_queue(|q| q.set_desc_table_address(Some(v), None))
            }
            REG_QUEUE_DESC_HIGH if configuring => {
                self.with_queue(|q| q.set_desc_table_address(None, Some(v)))
            }
            REG_QUEUE_AVAIL_LOW if configuring => {
                self.with_queue(|q| q.set_avail_ring_address(Some(v), None))
            }
            REG_QUEUE_AVAIL_HIGH if configuring => {
                self.with_queue(|q| q.set_avail_ring_address(None, Some(v)))
            }
            REG_QUEUE_USED_LOW if configuring => {
                self.with_queue(|q| q.set_used_ring_address(Some(v), None))
            }
            REG_QUEUE_USED_HIGH if configuring => {
                self.with_queue(|q| q.set_used_ring_address(None, Some(v)))
            }
            REG_QUEUE_NOTIFY => {
                // Normally handled in the kernel by the ioeventfd; this path
                // is the fallback when the write traps to userspace.
                if let Some(evt) = self.queue_evts.get(v as usize) {
                    let _ = evt.write(1);
                }
            }
            REG_INTERRUPT_ACK => {
                self.interrupt.status.fetch_and(!v, Ordering::SeqCst);
            }
            REG_STATUS => self.set_status(v),
            _ => tracing::debug!("ignored virtio-mmio write {offset:#x} = {v:#x}"),
        }
    }

    fn with_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        if let Some(q) = self.selected_queue() {
            f(q)
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= REG_CONFIG {
            self.device.read_config(offset - REG_CONFIG, data);
            return;
        }
        // Registers are 32-bit and must be accessed as such.
        if data.len() != 4 || !offset.is_multiple_of(4) {
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= REG_CONFIG {
            self.device.write_config(offset - REG_CONFIG, data);
            self.config_generation = self.config_generation.wrapping_add(1);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            return;
        }
        let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        self.write_reg(offset, v);
    }
}
