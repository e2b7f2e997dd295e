//! virtio-fs (device type 26) as a vhost-user frontend: the file system is
//! served by an external backend (virtiofsd) that maps guest RAM itself and
//! processes the queues directly. The VMM only negotiates: it connects to
//! the backend's socket at start-up, and when the driver sets DRIVER_OK it
//! hands over the memory table (memfd regions), the ring addresses, the
//! transport's ioeventfds as kick fds and its own eventfd as call fd.
//!
//! Queues: 0 is hiprio (FUSE_INTERRUPT, FUSE_FORGET), 1 the one request
//! queue. Config space: `tag[36]` + `num_request_queues` (u32 LE) = 1.
//!
//! Guest kicks never pass through the VMM (KVM signals the ioeventfd the
//! backend polls). Used-buffer notifications do: the backend's call eventfd
//! is polled by the device loop, which sets the used-ring bit in
//! InterruptStatus before it fires the irqfd, because a virtio-mmio driver
//! ignores an interrupt whose status bit is clear.
//!
//! vhost-user messages are sent only from the device loop thread, never
//! from a vCPU: activation and reset (MMIO writes on a vCPU thread) record
//! what is wanted and wake the device loop through an eventfd. vCPU threads
//! thus keep their KVM_RUN-only seccomp filter.

mod device;
mod vhost;

pub use device::{Fs, FS_QUEUE_SIZE, MAX_TAG_LEN};

#[cfg(test)]
mod fuse;
#[cfg(test)]
mod tests;
