//! One vhost-user connection to a virtio-fs backend, on rust-vmm's `vhost`
//! crate (frontend side): feature and protocol negotiation at connect time,
//! ring setup on activation, ring teardown on reset.

use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use vhost::vhost_user::message::{
    VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// A healthy backend answers in microseconds; a wedged one must not hold
/// the device loop (and with it every other device) for long.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Protocol features we use when the backend has them: MQ to check the
/// backend has our queues, REPLY_ACK so every setup message is confirmed
/// (a failed SET_MEM_TABLE is reported at activation, not as a hang later).
fn wanted_protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK
}

pub struct VhostUserConn {
    frontend: Frontend,
    sock_fd: RawFd,
    /// Virtio feature bits the backend offers (GET_FEATURES).
    backend_features: u64,
    /// Whether VHOST_USER_F_PROTOCOL_FEATURES is in use (rings then start
    /// disabled and need SET_VRING_ENABLE).
    protocol: bool,
    num_queues: usize,
}

pub type VuResult<T> = std::result::Result<T, String>;

fn vu(what: &str) -> impl FnOnce(vhost::Error) -> String + '_ {
    move |e| format!("vhost-user {what}: {e}")
}

impl VhostUserConn {
    /// Connects and negotiates everything that does not depend on the
    /// driver. Runs at VMM start-up, before the jail and seccomp.
    pub fn connect(path: &Path, num_queues: usize) -> VuResult<Self> {
        let stream = UnixStream::connect(path)
            .map_err(|e| format!("connecting to {}: {e}", path.display()))?;
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(REPLY_TIMEOUT)))
            .map_err(|e| format!("socket timeouts: {e}"))?;
        let sock_fd = stream.as_raw_fd();
        let mut frontend = Frontend::from_stream(stream, num_queues as u64);
        frontend.set_owner().map_err(vu("SET_OWNER"))?;
        let backend_features = frontend.get_features().map_err(vu("GET_FEATURES"))?;
        let protocol = backend_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0;
        if protocol {
            let offered = frontend
                .get_protocol_features()
                .map_err(vu("GET_PROTOCOL_FEATURES"))?;
            let acked = offered & wanted_protocol_features();
            frontend
                .set_protocol_features(acked)
                .map_err(vu("SET_PROTOCOL_FEATURES"))?;
            if acked.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
            if acked.contains(VhostUserProtocolFeatures::MQ) {
                let n = frontend.get_queue_num().map_err(vu("GET_QUEUE_NUM"))?;
                if n < num_queues as u64 {
                    return Err(format!(
                        "backend has {n} queues, virtio-fs needs {num_queues}"
                    ));
                }
            }
        }
        Ok(Self {
            frontend,
            sock_fd,
            backend_features,
            protocol,
            num_queues,
        })
    }

    pub fn backend_features(&self) -> u64 {
        self.backend_features
    }

    /// The socket, polled for hang-ups: a backend never writes unasked.
    pub fn sock_fd(&self) -> RawFd {
        self.sock_fd
    }

    /// Starts the backend on the driver's rings. Returns the indices of the
    /// rings started (queues the driver left not ready are skipped).
    pub fn start(
        &mut self,
        mem: &GuestMemoryMmap,
        queues: &[Queue],
        acked_features: u64,
        kicks: &[EventFd],
        call: &EventFd,
    ) -> VuResult<Vec<usize>> {
        let mut features = acked_features & self.backend_features;
        if self.protocol {
            features |= VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        }
        self.frontend
            .set_features(features)
            .map_err(vu("SET_FEATURES"))?;
        self.frontend
            .set_mem_table(&memory_table(mem)?)
            .map_err(vu("SET_MEM_TABLE"))?;
        let mut started = Vec::new();
        for (i, q) in queues.iter().enumerate().take(self.num_queues) {
            if !q.ready() {
                continue;
            }
            let kick = kicks.get(i).ok_or("missing kick eventfd")?;
            let config = VringConfigData {
                queue_max_size: q.max_size(),
                queue_size: q.size(),
                flags: 0,
                desc_table_addr: host_addr(mem, q.desc_table(), "descriptor table")?,
                used_ring_addr: host_addr(mem, q.used_ring(), "used ring")?,
                avail_ring_addr: host_addr(mem, q.avail_ring(), "available ring")?,
                log_addr: None,
            };
            let f = &mut self.frontend;
            f.set_vring_num(i, q.size()).map_err(vu("SET_VRING_NUM"))?;
            f.set_vring_base(i, q.next_avail())
                .map_err(vu("SET_VRING_BASE"))?;
            f.set_vring_addr(i, &config).map_err(vu("SET_VRING_ADDR"))?;
            f.set_vring_kick(i, kick).map_err(vu("SET_VRING_KICK"))?;
            f.set_vring_call(i, call).map_err(vu("SET_VRING_CALL"))?;
            started.push(i);
        }
        if self.protocol {
            // Rings start disabled with protocol features; enabling them
            // last means the backend sees a complete ring, and kicks that
            // arrived meanwhile are still pending in the eventfds.
            for &i in &started {
                self.frontend
                    .set_vring_enable(i, true)
                    .map_err(vu("SET_VRING_ENABLE"))?;
            }
        }
        Ok(started)
    }

    /// Stops the given rings: the backend stops touching guest memory for
    /// them once GET_VRING_BASE is answered.
    pub fn stop(&mut self, rings: &[usize]) -> VuResult<()> {
        for &i in rings {
            if self.protocol {
                self.frontend
                    .set_vring_enable(i, false)
                    .map_err(vu("SET_VRING_ENABLE"))?;
            }
            self.frontend
                .get_vring_base(i)
                .map_err(vu("GET_VRING_BASE"))?;
        }
        Ok(())
    }
}

/// SET_MEM_TABLE entries: every guest RAM region with its memfd and offset.
fn memory_table(mem: &GuestMemoryMmap) -> VuResult<Vec<VhostUserMemoryRegionInfo>> {
    mem.iter()
        .map(|r| {
            VhostUserMemoryRegionInfo::from_guest_region(r).map_err(|_| {
                "guest memory is not shared (virtio-fs needs memfd-backed RAM)".to_string()
            })
        })
        .collect()
}

/// The VMM's address of a ring: vhost-user ring addresses are frontend
/// virtual addresses, which the backend translates through the memory table.
fn host_addr(mem: &GuestMemoryMmap, gpa: u64, what: &str) -> VuResult<u64> {
    mem.get_host_address(GuestAddress(gpa))
        .map(|p| p as u64)
        .map_err(|e| format!("{what} at {gpa:#x}: {e}"))
}
