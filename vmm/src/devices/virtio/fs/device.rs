//! The virtio-fs device model: config space, feature offer, and the state
//! machine that carries activation and reset from the vCPU thread that
//! wrote the MMIO register to the device loop that talks to the backend.

use std::os::unix::io::{AsRawFd, RawFd};
use std::path::Path;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::vhost::VhostUserConn;
use crate::devices::virtio::{read_config_bytes, VirtioDevice, TYPE_FS};
use crate::error::{Error, Result};

/// virtio-fs config space: the tag is at most 36 bytes, NUL-padded.
pub const MAX_TAG_LEN: usize = 36;
const CONFIG_LEN: usize = MAX_TAG_LEN + 4;
/// hiprio + one request queue.
const NUM_QUEUES: usize = 2;
const NUM_REQUEST_QUEUES: u32 = 1;
/// Ring size offered to the driver (virtiofsd accepts up to 32768).
pub const FS_QUEUE_SIZE: u16 = 1024;

/// Transport features the backend may pass on to the driver. The rings are
/// split rings checked by our transport, so no RING_PACKED; no
/// ACCESS_PLATFORM (no IOMMU); and no VIRTIO_FS_F_NOTIFICATION, which would
/// need a notification queue we do not create. VHOST_USER_F_PROTOCOL_FEATURES
/// and VHOST_F_LOG_ALL are vhost-user bits, not virtio ones.
const GUEST_FEATURES: u64 =
    (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_INDIRECT_DESC) | (1 << VIRTIO_RING_F_EVENT_IDX);

// Tokens in the device's inner epoll set.
const TOK_CALL: u64 = 1;
const TOK_WORK: u64 = 2;
const TOK_SOCK: u64 = 3;

pub struct Fs {
    tag: String,
    config: [u8; CONFIG_LEN],
    conn: VhostUserConn,
    acked: u64,
    /// Clones of the transport's per-queue ioeventfds, given to the backend.
    kicks: Vec<EventFd>,
    /// The backend's call fd for every ring; polled by the device loop.
    call: EventFd,
    /// vCPU thread -> device loop: `want_active`/`generation` changed.
    work: EventFd,
    /// Inner epoll over call, work and the socket: the loop's backend fd.
    epoll: Epoll,
    /// What the driver last asked for (DRIVER_OK sets it, a reset clears it).
    want_active: bool,
    /// Bumped on every activation, so a reset followed by a new activation
    /// before the device loop ran still restarts the rings.
    generation: u64,
    /// Rings running on the backend and the activation they belong to.
    running: Option<(u64, Vec<usize>)>,
    /// The backend is gone or refused setup; the device stays failed.
    failed: bool,
}

impl Fs {
    /// Connects to the vhost-user backend at `socket` and negotiates
    /// features. Runs before the jail and seccomp are entered.
    pub fn new(tag: &str, socket: &Path) -> Result<Self> {
        let dev_err = |reason: String| Error::Device {
            device: format!("virtio-fs {tag}"),
            reason,
        };
        if tag.is_empty() || tag.len() > MAX_TAG_LEN {
            return Err(Error::Config(format!(
                "virtio-fs tag {tag:?} must be 1..={MAX_TAG_LEN} bytes"
            )));
        }
        let mut config = [0u8; CONFIG_LEN];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config[MAX_TAG_LEN..].copy_from_slice(&NUM_REQUEST_QUEUES.to_le_bytes());
        let conn = VhostUserConn::connect(socket, NUM_QUEUES).map_err(dev_err)?;
        let io = |what: &'static str| move |e: std::io::Error| dev_err(format!("{what}: {e}"));
        let call = EventFd::new(libc::EFD_NONBLOCK).map_err(io("eventfd"))?;
        let work = EventFd::new(libc::EFD_NONBLOCK).map_err(io("eventfd"))?;
        let epoll = Epoll::new().map_err(io("epoll_create"))?;
        for (fd, tok) in [
            (call.as_raw_fd(), TOK_CALL),
            (work.as_raw_fd(), TOK_WORK),
            (conn.sock_fd(), TOK_SOCK),
        ] {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, tok),
                )
                .map_err(io("epoll_ctl"))?;
        }
        Ok(Self {
            tag: tag.to_string(),
            config,
            conn,
            acked: 0,
            kicks: Vec::new(),
            call,
            work,
            epoll,
            want_active: false,
            generation: 0,
            running: None,
            failed: false,
        })
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    fn wake_loop(&self) {
        if let Err(e) = self.work.write(1) {
            tracing::warn!("virtio-fs {}: cannot wake the device loop: {e}", self.tag);
        }
    }

    fn fail(&mut self, why: &str) {
        if self.failed {
            return;
        }
        tracing::error!("virtio-fs {}: {why}; the device is failed", self.tag);
        self.failed = true;
        self.running = None;
        // A hung-up socket stays readable: stop polling it, or the
        // level-triggered device loop would spin.
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            self.conn.sock_fd(),
            EpollEvent::default(),
        );
    }

    /// Brings the backend to what the driver last asked for.
    fn reconcile(&mut self, mem: &GuestMemoryMmap, queues: &[Queue]) {
        if self.failed {
            return;
        }
        if let Some((gen, rings)) = &self.running {
            if !self.want_active || *gen != self.generation {
                let rings = rings.clone();
                self.running = None;
                if let Err(e) = self.conn.stop(&rings) {
                    return self.fail(&format!("stopping rings: {e}"));
                }
                tracing::debug!("virtio-fs {}: rings {rings:?} stopped", self.tag);
            }
        }
        if self.want_active && self.running.is_none() {
            match self
                .conn
                .start(mem, queues, self.acked, &self.kicks, &self.call)
            {
                Ok(rings) => {
                    tracing::debug!("virtio-fs {}: rings {rings:?} started", self.tag);
                    self.running = Some((self.generation, rings));
                }
                Err(e) => self.fail(&format!("starting the backend: {e}")),
            }
        }
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[FS_QUEUE_SIZE; NUM_QUEUES]
    }

    fn features(&self) -> u64 {
        self.conn.backend_features() & GUEST_FEATURES
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // The config space is read-only for the driver.
        tracing::debug!(
            "virtio-fs {}: ignored config write at {offset:#x} ({} bytes)",
            self.tag,
            data.len()
        );
    }

    /// Runs on a vCPU thread: only records the request (see mod.rs).
    fn activate(&mut self) -> std::result::Result<(), String> {
        if self.failed {
            return Err("the vhost-user backend has failed".into());
        }
        self.want_active = true;
        self.generation += 1;
        self.wake_loop();
        Ok(())
    }

    fn process_queue(&mut self, _: &GuestMemoryMmap, _: &mut [Queue], _: usize) -> bool {
        // Kicks go to the backend; the device loop never polls them.
        false
    }

    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.epoll.as_raw_fd())
    }

    fn process_backend(&mut self, mem: &GuestMemoryMmap, queues: &mut [Queue]) -> bool {
        let mut events = [EpollEvent::default(); 4];
        let n = match self.epoll.wait(0, &mut events) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("virtio-fs {}: epoll_wait: {e}", self.tag);
                0
            }
        };
        let mut called = false;
        for ev in &events[..n] {
            match ev.data() {
                TOK_CALL => {
                    let _ = self.call.read();
                    called = true;
                }
                TOK_WORK => {
                    let _ = self.work.read();
                }
                TOK_SOCK => self.fail("the backend closed its vhost-user socket"),
                _ => {}
            }
        }
        self.reconcile(mem, queues);
        called && self.running.is_some()
    }

    fn backend_while_inactive(&self) -> bool {
        true
    }

    fn needs_reset(&self) -> bool {
        self.failed
    }

    /// Runs on a vCPU thread: the device loop stops the rings.
    fn reset(&mut self) {
        self.want_active = false;
        self.wake_loop();
    }

    fn take_queue_events(&mut self, evts: &[EventFd]) -> std::io::Result<bool> {
        self.kicks = evts
            .iter()
            .map(EventFd::try_clone)
            .collect::<std::io::Result<_>>()?;
        Ok(true)
    }
}
