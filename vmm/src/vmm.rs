//! The microVM: builds guest memory, KVM VM, devices and vCPUs, then runs
//! one thread per vCPU plus one device-loop thread until the guest exits.

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::{Arc, Barrier, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::boot::{self, EntryPoint};
use crate::arch::layout::*;
use crate::arch::{mptable, regs, BootMode};
use crate::control::{ControlConn, ControlRequest};
use crate::devices::bus::{Bus, BusDevice};
use crate::devices::legacy::{BootTimer, SerialDevice, SerialSink, I8042};
use crate::devices::virtio::mmio::REG_QUEUE_NOTIFY;
use crate::devices::virtio::{MmioTransport, VirtioDevice};
use crate::error::{Error, Result};
use crate::memory::{create_guest_memory_with, MemoryBacking};
use crate::seccomp;
use crate::state::{ExitReason, VmmShared};
use crate::vstate::{self, VcpuRunner};

/// How long a graceful shutdown (Ctrl+Alt+Del) may take before the VM is
/// forced down.
pub const DEFAULT_GRACEFUL_TIMEOUT: Duration = Duration::from_secs(3);

pub struct MicroVm {
    // Declared first so it is joined before the VmFd closes on drop.
    mem_registration: vstate::MemRegistration,
    kvm: Kvm,
    vm: VmFd,
    mem: GuestMemoryMmap,
    mem_size: u64,
    nr_vcpus: u8,
    shared: Arc<VmmShared>,
    pio: Bus,
    mmio: Bus,
    i8042: Arc<Mutex<I8042>>,
    reset_evt: EventFd,
    virtio: Vec<Arc<Mutex<MmioTransport>>>,
    cmdline_devices: Vec<String>,
    entry: Option<EntryPoint>,
    seccomp: bool,
    control: Option<UnixListener>,
    graceful_timeout: Duration,
    cpu_features: crate::config::CpuFeatures,
}

/// A running VM: join it to get the exit reason.
pub struct RunningVm {
    pub shared: Arc<VmmShared>,
    loop_thread: JoinHandle<Result<()>>,
}

impl RunningVm {
    pub fn wait(self) -> Result<ExitReason> {
        self.loop_thread
            .join()
            .map_err(|_| Error::Boot("device loop thread panicked".into()))??;
        Ok(self
            .shared
            .exit_reason()
            .unwrap_or(ExitReason::VcpuError("no exit reason recorded".into())))
    }
}

impl MicroVm {
    /// Creates guest memory, the KVM VM (irqchip, PIT) and the legacy devices.
    /// `start` is when the process (or the test) started, for boot timing.
    pub fn new(nr_vcpus: u8, mem_mib: u64, serial_out: SerialSink, start: Instant) -> Result<Self> {
        Self::with_memory(
            nr_vcpus,
            mem_mib,
            MemoryBacking::Anonymous,
            serial_out,
            start,
        )
    }

    /// As [`MicroVm::new`], with guest RAM backed as `backing` says
    /// (shared memfd for vhost-user devices).
    pub fn with_memory(
        nr_vcpus: u8,
        mem_mib: u64,
        backing: MemoryBacking,
        serial_out: SerialSink,
        start: Instant,
    ) -> Result<Self> {
        if nr_vcpus == 0 || nr_vcpus > mptable::MAX_SUPPORTED_CPUS {
            return Err(Error::Config(format!(
                "vcpus must be 1..={}, got {nr_vcpus}",
                mptable::MAX_SUPPORTED_CPUS
            )));
        }
        let mem = create_guest_memory_with(mem_mib, backing)?;
        let shared = Arc::new(VmmShared::new(start).map_err(Error::io("eventfd"))?);
        let (kvm, vm, mem_registration) = vstate::create_vm(&mem, &shared)?;
        tracing::debug!("startup: VM created at {} us", shared.elapsed_us());
        let irqfd = |gsi: u32| -> Result<EventFd> {
            let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::io("eventfd"))?;
            vm.register_irqfd(&evt, gsi)
                .map_err(Error::kvm("KVM_IRQFD"))?;
            Ok(evt)
        };
        let mut pio = Bus::new();
        let mut mmio = Bus::new();
        let serial = Arc::new(Mutex::new(SerialDevice::new(
            irqfd(SERIAL_IRQ)?,
            serial_out,
        )));
        pio.insert(serial, u64::from(SERIAL_PORT), 8)
            .map_err(Error::Boot)?;
        let reset_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::io("eventfd"))?;
        let i8042 = Arc::new(Mutex::new(I8042::new(
            reset_evt.try_clone().map_err(Error::io("eventfd"))?,
            irqfd(I8042_IRQ)?,
        )));
        pio.insert(i8042.clone(), u64::from(I8042_PORT), 5)
            .map_err(Error::Boot)?;
        mmio.insert(
            Arc::new(Mutex::new(BootTimer::new(shared.clone()))),
            BOOT_TIMER_ADDR,
            BOOT_TIMER_SIZE,
        )
        .map_err(Error::Boot)?;
        Ok(Self {
            mem_registration,
            kvm,
            vm,
            mem,
            mem_size: mem_mib << 20,
            nr_vcpus,
            shared,
            pio,
            mmio,
            i8042,
            reset_evt,
            virtio: Vec::new(),
            cmdline_devices: Vec::new(),
            entry: None,
            seccomp: true,
            control: None,
            graceful_timeout: DEFAULT_GRACEFUL_TIMEOUT,
            cpu_features: Default::default(),
        })
    }

    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    pub fn shared(&self) -> Arc<VmmShared> {
        self.shared.clone()
    }

    /// Seccomp filters are on by default; tests of the filters themselves
    /// need them, tests that poke at internals may not.
    pub fn set_seccomp(&mut self, enabled: bool) {
        self.seccomp = enabled;
    }

    pub fn set_control_socket(&mut self, listener: UnixListener) {
        self.control = Some(listener);
    }

    pub fn set_cpu_features(&mut self, features: crate::config::CpuFeatures) {
        self.cpu_features = features;
    }

    pub fn set_graceful_timeout(&mut self, t: Duration) {
        self.graceful_timeout = t;
    }

    /// Attaches a virtio device on the next MMIO slot and GSI, with an
    /// irqfd for its interrupt and ioeventfds for its queue notifications.
    /// Returns the transport (base address, GSI) and the handle.
    pub fn add_virtio_device(
        &mut self,
        dev: Box<dyn VirtioDevice>,
    ) -> Result<(u64, u32, Arc<Mutex<MmioTransport>>)> {
        let idx = self.virtio.len() as u64;
        let gsi = VIRTIO_IRQ_BASE + idx as u32;
        if gsi > IRQ_MAX {
            return Err(Error::Config("too many virtio devices".into()));
        }
        let base = VIRTIO_MMIO_BASE + idx * VIRTIO_MMIO_SIZE;
        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::io("eventfd"))?;
        self.vm
            .register_irqfd(&irq, gsi)
            .map_err(Error::kvm("KVM_IRQFD"))?;
        let transport = MmioTransport::new(dev, self.mem.clone(), irq)
            .map_err(Error::io("virtio transport"))?;
        for (q, evt) in transport.queue_evts().iter().enumerate() {
            self.vm
                .register_ioevent(
                    evt,
                    &IoEventAddress::Mmio(base + REG_QUEUE_NOTIFY),
                    q as u32,
                )
                .map_err(Error::kvm("KVM_IOEVENTFD"))?;
        }
        let transport = Arc::new(Mutex::new(transport));
        self.mmio
            .insert(transport.clone(), base, VIRTIO_MMIO_SIZE)
            .map_err(Error::Boot)?;
        self.cmdline_devices
            .push(format!("virtio_mmio.device=4K@{base:#x}:{gsi}"));
        self.virtio.push(transport.clone());
        Ok((base, gsi, transport))
    }

    /// The `virtio_mmio.device=` arguments for the attached devices.
    pub fn cmdline_devices(&self) -> String {
        self.cmdline_devices.join(" ")
    }

    /// Loads a Linux kernel (ELF or bzImage), initrd and command line (to
    /// which the virtio device announcements are appended).
    pub fn load_linux(
        &mut self,
        kernel: &Path,
        initrd: Option<&Path>,
        cmdline: &str,
    ) -> Result<EntryPoint> {
        let kpath = kernel.display().to_string();
        let mut kf = File::open(kernel).map_err(|e| Error::Kernel {
            path: kpath.clone(),
            reason: e.to_string(),
        })?;
        let ksize = kf.metadata().map(|m| m.len()).unwrap_or(0);
        let mem_size = self.mem_size;
        let loaded = boot::load_kernel(&self.mem, &mut kf, &kpath).map_err(|e| match e {
            // A load failure with an image bigger than RAM is a memory problem.
            Error::Kernel { path, reason } if ksize > mem_size.saturating_sub(HIMEM_START) => {
                Error::Memory(format!(
                "{} MiB of guest memory is too small for kernel {path} ({ksize} bytes): {reason}",
                mem_size >> 20
            ))
            }
            e => e,
        })?;
        let initrd = match initrd {
            Some(p) => {
                let ipath = p.display().to_string();
                let mut f = File::open(p).map_err(|e| Error::Initrd {
                    path: ipath.clone(),
                    reason: e.to_string(),
                })?;
                Some(boot::load_initrd(
                    &self.mem,
                    self.mem_size,
                    loaded.result.kernel_end,
                    &mut f,
                    &ipath,
                )?)
            }
            None => None,
        };
        let mut full = cmdline.trim().to_string();
        if !self.cmdline_devices.is_empty() {
            full.push(' ');
            full.push_str(&self.cmdline_devices());
        }
        boot::configure_system(&self.mem, self.mem_size, &loaded, &full, initrd)?;
        mptable::setup_mptable(&self.mem, self.nr_vcpus)?;
        self.entry = Some(loaded.entry);
        Ok(loaded.entry)
    }

    /// Loads raw machine code at `addr` and enters it in `mode` (tiny test
    /// guests; the VMM still sets up GDT/page tables for the mode).
    pub fn load_raw(&mut self, code: &[u8], addr: u64, mode: BootMode) -> Result<()> {
        self.mem
            .write_slice(code, GuestAddress(addr))
            .map_err(|e| Error::Memory(format!("raw image at {addr:#x}: {e}")))?;
        mptable::setup_mptable(&self.mem, self.nr_vcpus)?;
        self.entry = Some(EntryPoint { mode, addr });
        Ok(())
    }

    /// Sets up the vCPUs and starts the vCPU and device-loop threads.
    pub fn start(mut self) -> Result<RunningVm> {
        let entry = self
            .entry
            .ok_or_else(|| Error::Config("no kernel or raw image loaded".into()))?;
        let mut runners = Vec::new();
        let base_cpuid = vstate::supported_cpuid(&self.kvm)?;
        for id in 0..self.nr_vcpus {
            let fd =
                vstate::create_vcpu(&base_cpuid, &self.vm, id, self.nr_vcpus, self.cpu_features)?;
            if id == 0 {
                regs::setup_vcpu_regs(&fd, &self.mem, entry.mode, entry.addr)?;
            }
            runners.push(VcpuRunner {
                id,
                fd,
                pio: self.pio.clone(),
                mmio: self.mmio.clone(),
                shared: self.shared.clone(),
            });
        }
        tracing::debug!(
            "startup: vCPUs configured at {} us",
            self.shared.elapsed_us()
        );
        self.mem_registration.wait()?;
        tracing::debug!(
            "startup: guest RAM registered at {} us",
            self.shared.elapsed_us()
        );
        let vcpu_filter = if self.seccomp {
            Some(seccomp::vcpu_filter()?)
        } else {
            None
        };
        let loop_filter = if self.seccomp {
            Some(seccomp::device_loop_filter()?)
        } else {
            None
        };
        seccomp::install_kick_handler();
        // Everyone installs their filter, then the guest starts.
        let barrier = Arc::new(Barrier::new(runners.len() + 1));
        let shared = self.shared.clone();
        let loop_thread = std::thread::Builder::new()
            .name("vmm-devices".into())
            .spawn(move || -> Result<()> {
                let mut vcpu_threads = Vec::new();
                for mut r in runners {
                    let b = barrier.clone();
                    let f = vcpu_filter.clone();
                    let s = r.shared.clone();
                    let h = std::thread::Builder::new()
                        .name(format!("vcpu{}", r.id))
                        .spawn(move || {
                            if let Some(f) = f {
                                if let Err(e) = seccompiler::apply_filter(&f) {
                                    s.request_exit(ExitReason::VcpuError(format!("seccomp: {e}")));
                                }
                            }
                            b.wait();
                            r.run();
                        })
                        .map_err(Error::io("spawn vcpu thread"))?;
                    vcpu_threads.push(h);
                }
                let mut ctx = LoopCtx {
                    shared: self.shared.clone(),
                    i8042: self.i8042,
                    reset_evt: self.reset_evt,
                    virtio: self.virtio,
                    control: self.control,
                    conns: Vec::new(),
                    shutdown_deadline: None,
                    graceful_timeout: self.graceful_timeout,
                };
                // The epoll set is built before the filter forbids epoll_create.
                let ep = ctx.setup();
                if let Some(f) = loop_filter {
                    seccompiler::apply_filter(&f).map_err(|e| Error::Seccomp(e.to_string()))?;
                }
                barrier.wait();
                tracing::debug!(
                    "startup: threads released at {} us",
                    self.shared.elapsed_us()
                );
                let res = ep.and_then(|ep| ctx.run(&ep));
                if let Err(e) = &res {
                    self.shared
                        .request_exit(ExitReason::VcpuError(format!("device loop: {e}")));
                }
                stop_vcpus(vcpu_threads);
                // Keep the VM and its memory alive until the vCPUs are gone.
                drop(self.vm);
                drop(self.mem);
                res
            })
            .map_err(Error::io("spawn device thread"))?;
        Ok(RunningVm {
            shared,
            loop_thread,
        })
    }

    /// Builds, starts and waits.
    pub fn run(self) -> Result<ExitReason> {
        self.start()?.wait()
    }
}

fn stop_vcpus(threads: Vec<JoinHandle<()>>) {
    use std::os::unix::thread::JoinHandleExt;
    // A vCPU blocked in KVM_RUN only returns on a signal; kick until it is out.
    for h in threads {
        while !h.is_finished() {
            // SAFETY: the thread is alive (not finished), so its pthread_t is valid.
            unsafe { libc::pthread_kill(h.as_pthread_t(), seccomp::kick_signal()) };
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = h.join();
    }
}

const TOK_EXIT: u64 = 1;
const TOK_RESET: u64 = 2;
const TOK_CONTROL: u64 = 3;
const TOK_QUEUE: u64 = 1 << 32;
const TOK_BACKEND: u64 = 2 << 32;
const TOK_CONN: u64 = 3 << 32;

struct LoopCtx {
    shared: Arc<VmmShared>,
    i8042: Arc<Mutex<I8042>>,
    reset_evt: EventFd,
    virtio: Vec<Arc<Mutex<MmioTransport>>>,
    control: Option<UnixListener>,
    conns: Vec<Option<ControlConn>>,
    shutdown_deadline: Option<Instant>,
    graceful_timeout: Duration,
}

impl LoopCtx {
    fn setup(&mut self) -> Result<vmm_sys_util::epoll::Epoll> {
        use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
        let ep = Epoll::new().map_err(Error::io("epoll_create"))?;
        let add = |fd: i32, tok: u64, ev: EventSet| {
            ep.ctl(ControlOperation::Add, fd, EpollEvent::new(ev, tok))
                .map_err(Error::io("epoll_ctl"))
        };
        add(self.shared.exit_evt.as_raw_fd(), TOK_EXIT, EventSet::IN)?;
        add(self.reset_evt.as_raw_fd(), TOK_RESET, EventSet::IN)?;
        if let Some(l) = &self.control {
            l.set_nonblocking(true)
                .map_err(Error::io("control socket"))?;
            add(l.as_raw_fd(), TOK_CONTROL, EventSet::IN)?;
        }
        for (d, t) in self.virtio.iter().enumerate() {
            let t = t.lock().unwrap();
            // vhost-user devices: the backend reads the kicks itself.
            let kicks = if t.polls_queue_evts() {
                t.queue_evts()
            } else {
                &[]
            };
            for (q, evt) in kicks.iter().enumerate() {
                add(
                    evt.as_raw_fd(),
                    TOK_QUEUE | ((d as u64) << 16) | q as u64,
                    EventSet::IN,
                )?;
            }
            if let Some(fd) = t.backend_fd() {
                let mut ev = EventSet::IN;
                if t.backend_edge_triggered() {
                    ev |= EventSet::EDGE_TRIGGERED;
                }
                add(fd, TOK_BACKEND | d as u64, ev)?;
            }
        }
        Ok(ep)
    }

    fn run(&mut self, ep: &vmm_sys_util::epoll::Epoll) -> Result<()> {
        use vmm_sys_util::epoll::EpollEvent;
        let mut events = vec![EpollEvent::default(); 64];
        loop {
            if self.shared.stopping() {
                return Ok(());
            }
            let timeout = match self.shutdown_deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        tracing::warn!("guest did not shut down gracefully in time; forcing");
                        self.shared.request_exit(ExitReason::Forced);
                        continue;
                    }
                    (d - now).as_millis() as i32 + 1
                }
                None => -1,
            };
            let n = match ep.wait(timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("epoll_wait")(e)),
            };
            for ev in &events[..n] {
                let tok = ev.data();
                match tok {
                    TOK_EXIT => {
                        let _ = self.shared.exit_evt.read();
                    }
                    TOK_RESET => {
                        let _ = self.reset_evt.read();
                        self.shared.request_exit(ExitReason::Reset);
                    }
                    TOK_CONTROL => self.accept_control(ep)?,
                    _ if tok & (0xffff << 32) == TOK_QUEUE => {
                        let d = ((tok >> 16) & 0xffff) as usize;
                        let q = (tok & 0xffff) as usize;
                        if let Some(t) = self.virtio.get(d) {
                            let mut t = t.lock().unwrap();
                            let _ = t.queue_evts()[q].read();
                            t.notify_queue(q);
                        }
                    }
                    _ if tok & (0xffff << 32) == TOK_BACKEND => {
                        if let Some(t) = self.virtio.get((tok & 0xffff) as usize) {
                            t.lock().unwrap().process_backend();
                        }
                    }
                    _ if tok & (0xffff << 32) == TOK_CONN => {
                        let i = (tok & 0xffff_ffff) as usize;
                        self.handle_conn(ep, i);
                    }
                    _ => {}
                }
            }
        }
    }

    fn accept_control(&mut self, ep: &vmm_sys_util::epoll::Epoll) -> Result<()> {
        use vmm_sys_util::epoll::{ControlOperation, EpollEvent, EventSet};
        let Some(l) = &self.control else {
            return Ok(());
        };
        while let Ok((s, _)) = l.accept() {
            let _ = s.set_nonblocking(true);
            let slot = self
                .conns
                .iter()
                .position(Option::is_none)
                .unwrap_or_else(|| {
                    self.conns.push(None);
                    self.conns.len() - 1
                });
            ep.ctl(
                ControlOperation::Add,
                s.as_raw_fd(),
                EpollEvent::new(EventSet::IN, TOK_CONN | slot as u64),
            )
            .map_err(Error::io("epoll_ctl"))?;
            self.conns[slot] = Some(ControlConn::new(s));
        }
        Ok(())
    }

    fn handle_conn(&mut self, ep: &vmm_sys_util::epoll::Epoll, i: usize) {
        let Some(Some(conn)) = self.conns.get_mut(i) else {
            return;
        };
        let (reqs, open) = conn.read_requests();
        for req in reqs {
            let resp = match req {
                Ok(ControlRequest::Status)
                | Ok(ControlRequest::BootTime)
                | Ok(ControlRequest::ExitReason) => crate::control::status_response(&self.shared),
                Ok(ControlRequest::Shutdown { force }) => {
                    if force {
                        self.shared.request_exit(ExitReason::Forced);
                    } else {
                        let sent = self.i8042.lock().unwrap().trigger_ctrl_alt_del();
                        tracing::info!("graceful shutdown requested (Ctrl+Alt+Del queued: {sent})");
                        self.shutdown_deadline = Some(Instant::now() + self.graceful_timeout);
                    }
                    crate::control::status_response(&self.shared)
                }
                Err(e) => crate::control::error_response(&e),
            };
            conn.send(&resp);
        }
        if !open {
            if let Some(c) = self.conns[i].take() {
                let _ = ep.ctl(
                    vmm_sys_util::epoll::ControlOperation::Delete,
                    c.fd(),
                    vmm_sys_util::epoll::EpollEvent::default(),
                );
            }
        }
    }
}

/// Lets tests and the control path read devices through the bus interface.
pub fn bus_read32(dev: &Arc<Mutex<MmioTransport>>, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    dev.lock().unwrap().read(offset, &mut b);
    u32::from_le_bytes(b)
}
