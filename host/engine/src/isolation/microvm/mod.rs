//! MicroVM isolation: every run of a container boots its own VM whose PID 1 is the static
//! `berth-agent` (from a cached initramfs). The image is a read-only block device built once
//! per layer chain, the writable layer a per-container sparse ext4 disk; inside the guest the
//! agent mounts both (`berth.disk=` on the kernel command line) and runs the container
//! exactly as in process mode. The host reaches the agent over hybrid vsock.
//!
//! Everything a VM uses lives under the container's dirs: `<container>/vm/` (writable disk,
//! serial log, persisted VM state) and `<run-dir>/vm/` (sockets, helper logs; owned by the
//! VM's unprivileged uid). Both are released when the run ends or the container is removed.

mod backend;
pub mod berth_vmm;
pub mod disks;
mod export;
pub mod host_cgroup;
pub mod hypervisor;
pub mod pod;
pub mod probe;
pub mod procs;
pub mod qemu;
pub mod sizing;
pub mod virtiofs;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_agent_protocol::client::AgentClient;
use tokio::sync::watch;

use crate::containers::record::{ContainerDirs, ContainerRecord, MountRecord};
use crate::images::ImageStore;
use crate::{Error, Result};
use disks::ImageFs;
use hypervisor::{Device, Hypervisor, VmConfig, VmState};
use probe::Kvm;
use procs::VmIdentity;

/// The agent's vsock port (`berth.port=`).
const AGENT_PORT: u32 = 1024;
/// Every VM has its own vsock device (and backend), so all guests can use the same CID.
const GUEST_CID: u32 = 3;
/// Where the guest agent mounts the disks (see agent/src/guest.rs).
const GUEST_IMAGE_DIR: &str = "/run/vm/image";
const GUEST_RW_DIR: &str = "/run/vm/rw";
/// Where the guest agent mounts virtio-fs shares and block volumes, by mount index.
const GUEST_SHARE_DIR: &str = "/run/vm/fs";
const GUEST_VOLUME_DIR: &str = "/run/vm/vol";
/// What the guest agent prints on the console once its vsock listener is up
/// (agent/src/main.rs, at `RUST_LOG=info`).
const AGENT_LISTENING: &str = "guest agent listening on vsock";
/// Boot budget: a TCG boot takes ~1 s, but several at once on a loaded host take longer.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// Daemon settings for microVMs (`--vmm`, `--guest-kernel`).
#[derive(Debug, Clone, Default)]
pub struct MicrovmConfig {
    /// `berth` or `qemu`; probed when unset.
    pub vmm: Option<String>,
    /// The guest kernel (vmlinux); found in the guest-kernel cache when unset.
    pub kernel: Option<PathBuf>,
    /// `--vmm-on-pvm`: let berth-vmm run on PVM, where a Linux guest stops in early boot.
    /// Only for exercising the VMM's supervision (a VMM that fails mid-boot) on such hosts.
    pub vmm_on_pvm: bool,
}

/// A VM this daemon runs (or re-adopted).
struct LiveVm {
    state: VmState,
    /// Set once the VMM has exited: how it ended, if it was not asked to.
    ended: watch::Receiver<Option<String>>,
    /// The run is being released: an exit from here on is expected.
    releasing: Arc<std::sync::atomic::AtomicBool>,
}

pub struct MicrovmIsolation {
    dirs: ContainerDirs,
    agent_bin: PathBuf,
    /// `None` when the caller brings each container's rootfs (the containerd shim): the
    /// image disk is then built per container by [`MicrovmIsolation::prepare_from_dir`].
    images: Option<Arc<ImageStore>>,
    kernel: Option<PathBuf>,
    /// `Linux version ...` of the guest kernel, for `docker inspect`.
    kernel_version: Option<String>,
    hypervisor: Arc<dyn Hypervisor>,
    /// Why this backend was chosen (log, `docker info`).
    choice: String,
    /// The backends not chosen, with why they are unavailable (or just not selected).
    others: Vec<String>,
    image_fs: ImageFs,
    cache: PathBuf,
    /// One image-disk / initramfs build at a time.
    build_lock: tokio::sync::Mutex<()>,
    /// The initramfs for the current agent binary (keyed by path, size and mtime).
    initramfs: Mutex<Option<(String, PathBuf)>>,
    vms: Mutex<HashMap<String, LiveVm>>,
}

impl MicrovmIsolation {
    pub fn new(
        dirs: ContainerDirs,
        agent_bin: PathBuf,
        images: Arc<ImageStore>,
        cfg: &MicrovmConfig,
    ) -> Result<Self> {
        Self::build(dirs, agent_bin, Some(images), cfg)
    }

    /// A backend without an image store: each container's image disk is built from a
    /// directory the caller prepared ([`MicrovmIsolation::prepare_from_dir`]).
    pub fn for_prepared_rootfs(
        dirs: ContainerDirs,
        agent_bin: PathBuf,
        cfg: &MicrovmConfig,
    ) -> Result<Self> {
        Self::build(dirs, agent_bin, None, cfg)
    }

    fn build(
        dirs: ContainerDirs,
        agent_bin: PathBuf,
        images: Option<Arc<ImageStore>>,
        cfg: &MicrovmConfig,
    ) -> Result<Self> {
        let kvm = Kvm::probe();
        let berth: Arc<dyn Hypervisor> =
            Arc::new(berth_vmm::BerthVmm::probe(kvm.clone(), cfg.vmm_on_pvm));
        let qemu: Arc<dyn Hypervisor> = Arc::new(qemu::Qemu::probe(kvm.clone()));
        let (hypervisor, choice) = match cfg.vmm.as_deref() {
            Some("berth") | Some("berth-vmm") => (berth.clone(), "--vmm berth".to_string()),
            Some("qemu") => (qemu.clone(), "--vmm qemu".to_string()),
            Some(other) => {
                return Err(Error::invalid(format!(
                    "unknown --vmm {other:?}: use berth or qemu"
                )))
            }
            None if berth.unavailable_reason().is_none() => {
                (berth.clone(), "probed: hardware KVM, berth-vmm".to_string())
            }
            None => (
                qemu.clone(),
                "probed: berth-vmm is unavailable here".to_string(),
            ),
        };
        let others = [&berth, &qemu]
            .into_iter()
            .filter(|h| h.name() != hypervisor.name())
            .map(|h| match h.unavailable_reason() {
                Some(why) => format!("{}: unavailable: {why}", h.name()),
                None => format!("{}: available (not selected)", h.name()),
            })
            .collect();
        let kernel = cfg.kernel.clone().or_else(probe::find_guest_kernel);
        let kernel_version = kernel.as_deref().and_then(probe::kernel_version);
        Ok(MicrovmIsolation {
            kernel_version,
            cache: dirs.data_root.join("microvm"),
            dirs,
            agent_bin,
            images,
            kernel,
            hypervisor,
            choice,
            others,
            image_fs: ImageFs::probe(),
            build_lock: tokio::sync::Mutex::new(()),
            initramfs: Mutex::new(None),
            vms: Mutex::new(HashMap::new()),
        })
    }

    /// Drop cached image disks when images go away: at start-up, then after every `rmi`.
    pub fn collect_unused_image_disks(self: &Arc<Self>, events: &crate::events::EventBus) {
        let (_, mut rx) = events.subscribe();
        if self.images.is_none() {
            return;
        }
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(me) = this.upgrade() else { return };
                {
                    let _g = me.build_lock.lock().await;
                    if let Some(images) = me.images.clone() {
                        let cache = me.cache.join("images");
                        let _ = tokio::task::spawn_blocking(move || {
                            disks::gc_image_disks(&images, &cache)
                        })
                        .await;
                    }
                }
                drop(me);
                // Until the next image deletion.
                loop {
                    match rx.recv().await {
                        Ok(e) if e.typ == "image" && e.action == "delete" => break,
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                }
            }
        });
    }

    fn prepared_image_path(&self, id: &str) -> PathBuf {
        self.vm_dir(id)
            .join(format!("image.{}", self.image_fs.as_str()))
    }

    /// Without an image store: build container `id`'s image disk from the directory tree
    /// `root` (its merged rootfs) and create its writable disk.
    pub async fn prepare_from_dir(&self, id: &str, root: PathBuf) -> Result<()> {
        let dir = self.vm_dir(id);
        std::fs::create_dir_all(&dir)?;
        let image = self.prepared_image_path(id);
        let rw = dir.join("rw.ext4");
        let fs = self.image_fs;
        tokio::task::spawn_blocking(move || {
            let tmp = image.with_extension("tmp");
            // A build cut short (a full disk) must not leave its partial image behind.
            if let Err(e) = disks::disk_from_dir(&root, &tmp, fs) {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
            std::fs::rename(&tmp, &image)?;
            disks::create_rw_disk(&rw, disks::RW_DISK_BYTES)
        })
        .await
        .map_err(Error::internal)?
    }

    /// Persistent per-container VM dir (disk, serial log, VM state).
    fn vm_dir(&self, id: &str) -> PathBuf {
        self.dirs.container_dir(id).join("vm")
    }

    /// Runtime dir of the VM's processes (sockets, helper logs).
    fn vm_run_dir(&self, id: &str) -> PathBuf {
        self.dirs.run_dir(id).join("vm")
    }

    fn state_path(&self, id: &str) -> PathBuf {
        self.vm_dir(id).join("state.json")
    }

    /// A uid/gid of its own for each VM's processes, so a compromised VMM can reach neither
    /// the host's files nor the other VMs' processes. Only when berthd runs as root.
    fn identity(id: &str) -> Option<VmIdentity> {
        // SAFETY: getuid(2) has no preconditions.
        if unsafe { libc::getuid() } != 0 {
            return None;
        }
        // 2^30 + 24 bits of the container id: far above any system or login uid range.
        let n = u32::from_str_radix(id.get(..6)?, 16).ok()?;
        let uid = (1 << 30) + n;
        Some(VmIdentity { uid, gid: uid })
    }

    async fn initramfs_path(&self) -> Result<PathBuf> {
        let meta = std::fs::metadata(&self.agent_bin).map_err(|e| {
            Error::internal(format!("agent binary {}: {e}", self.agent_bin.display()))
        })?;
        let key = format!(
            "{}:{}:{:?}",
            self.agent_bin.display(),
            meta.len(),
            meta.modified().ok()
        );
        if let Some((k, p)) = self.initramfs.lock().unwrap().clone() {
            if k == key && p.exists() {
                return Ok(p);
            }
        }
        let _g = self.build_lock.lock().await;
        let agent = self.agent_bin.clone();
        let cache = self.cache.join("initramfs");
        let p = tokio::task::spawn_blocking(move || disks::initramfs(&agent, &cache))
            .await
            .map_err(Error::internal)??;
        *self.initramfs.lock().unwrap() = Some((key, p.clone()));
        Ok(p)
    }

    /// The container's read-only image disk: shared per layer chain, or the one
    /// `prepare_from_dir` built for this container.
    async fn image_disk(&self, rec: &ContainerRecord) -> Result<PathBuf> {
        let Some(images) = self.images.clone() else {
            let p = self.prepared_image_path(&rec.id);
            return match p.exists() {
                true => Ok(p),
                false => Err(Error::internal(format!(
                    "{}: the container's image disk was not prepared",
                    p.display()
                ))),
            };
        };
        let _g = self.build_lock.lock().await;
        let image_id = rec.image_id.clone();
        let cache = self.cache.join("images");
        let fs = self.image_fs;
        tokio::task::spawn_blocking(move || disks::image_disk(&images, &image_id, &cache, fs))
            .await
            .map_err(Error::internal)?
    }

    fn vm_config(
        &self,
        rec: &ContainerRecord,
        initrd: PathBuf,
        image: PathBuf,
        net: &crate::isolation::GuestNetwork,
        pod: bool,
        shares: Shares,
    ) -> Result<VmConfig> {
        let kernel = self
            .kernel
            .clone()
            .ok_or_else(|| Error::invalid("microvm isolation is unavailable: no guest kernel"))?;
        let run_dir = self.vm_run_dir(&rec.id);
        let rw_disk = self.vm_dir(&rec.id).join("rw.ext4");
        let rw_uuid = disks::ext4_uuid(&rw_disk)
            .ok_or_else(|| Error::internal(format!("{}: no ext4 filesystem", rw_disk.display())))?;
        let mut cmdline = format!(
            "berth.port={AGENT_PORT} berth.disk=ro,{},{GUEST_IMAGE_DIR} berth.disk=rw,ext4,{GUEST_RW_DIR},{rw_uuid} RUST_LOG=info",
            self.image_fs.as_str()
        );
        let mut devices = vec![
            Device::Block {
                path: image,
                read_only: true,
            },
            Device::Block {
                path: rw_disk,
                read_only: false,
            },
        ];
        for (i, m) in rec.mounts.iter().enumerate() {
            match guest_share(i, m) {
                GuestShare::None => {}
                GuestShare::Fs { .. } if shares == Shares::BlockVolumesOnly => {}
                GuestShare::Fs {
                    tag,
                    target,
                    read_only,
                } => {
                    cmdline.push_str(&format!(
                        " berth.fs={tag},{}{}",
                        target.display(),
                        if read_only { ",ro" } else { "" }
                    ));
                    devices.push(Device::Fs {
                        tag,
                        shared_dir: PathBuf::from(&m.source),
                        read_only,
                    });
                }
                GuestShare::Disk { target } => {
                    let uuid = disks::ext4_uuid(Path::new(&m.source)).ok_or_else(|| {
                        Error::invalid(format!(
                            "volume {}: its disk image has no ext4 filesystem to mount",
                            m.name
                        ))
                    })?;
                    cmdline.push_str(&format!(" berth.disk=rw,ext4,{},{uuid}", target.display()));
                    devices.push(Device::Block {
                        path: PathBuf::from(&m.source),
                        read_only: false,
                    });
                }
            }
        }
        if pod {
            // The members' root filesystems (setuid programs work in them, as under runc).
            cmdline.push_str(&format!(
                " berth.fs={},{},suid",
                pod::POD_TAG,
                pod::GUEST_POD_DIR
            ));
            devices.push(Device::Fs {
                tag: pod::POD_TAG.into(),
                shared_dir: pod::pod_dir(&self.dirs, &rec.id),
                read_only: false,
            });
        }
        for nic in &net.nics {
            // Read by agent/src/guest_net.rs before the agent listens.
            cmdline.push_str(&format!(
                " berth.net={},{},{}/{},{},{}",
                nic.ifname,
                nic.mac,
                nic.address,
                nic.prefix,
                nic.gateway
                    .map(|g| g.to_string())
                    .unwrap_or_else(|| "-".into()),
                nic.mtu
            ));
            if let Some(a6) = nic.address6 {
                // A separate argument: an agent from before IPv6 ignores it.
                cmdline.push_str(&format!(
                    " berth.net6={},{}/{},{}",
                    nic.mac,
                    a6,
                    nic.prefix6,
                    nic.gateway6
                        .map(|g| g.to_string())
                        .unwrap_or_else(|| "-".into()),
                ));
            }
            devices.push(Device::Net {
                tap: nic.tap.clone(),
                mac: nic.mac.clone(),
            });
        }
        for spare in &net.spares {
            // Renamed and left down by agent/src/guest_net.rs, for `network connect`.
            cmdline.push_str(&format!(" berth.spare={},{}", spare.spare_name, spare.mac));
            devices.push(Device::Net {
                tap: spare.tap.clone(),
                mac: spare.mac.clone(),
            });
        }
        devices.push(Device::Vsock {
            guest_cid: GUEST_CID,
            uds_path: run_dir.join("vsock.sock"),
        });
        Ok(VmConfig {
            name: rec.id[..12].to_string(),
            kernel,
            initrd,
            cmdline,
            vcpus: sizing::vcpus(rec),
            mem_mib: sizing::mem_mib(rec),
            devices,
            serial_log: self.vm_dir(&rec.id).join("console.log"),
            run_dir,
            identity: Self::identity(&rec.id),
            cgroups: host_cgroup::create(
                &rec.id,
                rec.host_config
                    .cpuset_cpus
                    .as_deref()
                    .filter(|s| !s.is_empty()),
            ),
            netns: net.netns.clone(),
        })
    }

    /// A fresh private run dir for the VM's processes, owned by its identity.
    fn make_run_dir(dir: &Path, identity: Option<VmIdentity>) -> Result<()> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        if let Some(id) = identity {
            std::os::unix::fs::chown(dir, Some(id.uid), Some(id.gid))?;
        }
        Ok(())
    }

    /// Watch the VMM: when it exits, record how (unless the run is being released) and
    /// stop the helpers, which also closes the host's agent connection.
    fn track(&self, id: &str, state: VmState) {
        let (tx, ended) = watch::channel(None);
        let releasing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let hv = self.hypervisor.clone();
        let st = state.clone();
        let rel = releasing.clone();
        let serial = self.vm_dir(id).join("console.log");
        tokio::spawn(async move {
            let how = hv.wait_vm(&st).await;
            let expected = rel.load(std::sync::atomic::Ordering::SeqCst);
            let reason = if expected {
                String::new()
            } else {
                format!(
                    "the microVM stopped unexpectedly: {}{}",
                    how.unwrap_or_else(|| format!("{} exited", st.vmm.role)),
                    serial_tail(&serial)
                )
            };
            let _ = tx.send(Some(reason));
            procs::kill_all(&st.helpers).await;
        });
        self.vms.lock().unwrap().insert(
            id.to_string(),
            LiveVm {
                state,
                ended,
                releasing,
            },
        );
    }

    /// Waits until the guest agent says on the console that it listens: a CONNECT that
    /// reaches vhost-device-vsock before the guest's vsock driver is up can leave every
    /// later connection hanging.
    async fn wait_listening(
        &self,
        id: &str,
        state: &VmState,
        deadline: tokio::time::Instant,
    ) -> Result<()> {
        let console = self.vm_dir(id).join("console.log");
        loop {
            let text = std::fs::read(&console).unwrap_or_default();
            if text
                .windows(AGENT_LISTENING.len())
                .any(|w| w == AGENT_LISTENING.as_bytes())
            {
                return Ok(());
            }
            if !state.vmm.alive() {
                return Err(self.died_booting(id, state));
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Error::internal(format!(
                    "the microVM's agent did not start within {}s{}",
                    BOOT_TIMEOUT.as_secs(),
                    serial_tail(&console)
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The VMM is gone before its agent answered: what it said, and the guest's console.
    fn died_booting(&self, id: &str, state: &VmState) -> Error {
        let how = match self.hypervisor.exit_detail(&self.vm_run_dir(id)) {
            Some(detail) => format!("{} exited: {detail}", state.vmm.role),
            None => format!("{} exited", state.vmm.role),
        };
        Error::internal(format!(
            "the microVM exited while booting ({how}){}",
            serial_tail(&self.vm_dir(id).join("console.log"))
        ))
    }

    async fn connect(&self, id: &str, state: &VmState) -> Result<AgentClient> {
        let deadline = tokio::time::Instant::now() + BOOT_TIMEOUT;
        self.wait_listening(id, state, deadline).await?;
        let mut last_err: String;
        loop {
            match tokio::time::timeout(
                Duration::from_secs(2),
                AgentClient::connect_hybrid_vsock(&state.agent_uds, AGENT_PORT),
            )
            .await
            {
                Ok(Ok(c)) => return Ok(c),
                Ok(Err(e)) => last_err = e.to_string(),
                Err(_) => last_err = "timed out".into(),
            }
            if !state.vmm.alive() {
                return Err(self.died_booting(id, state));
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Error::internal(format!(
                    "the microVM's agent did not answer within {}s ({last_err}){}",
                    BOOT_TIMEOUT.as_secs(),
                    serial_tail(&self.vm_dir(id).join("console.log"))
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn take_vm(&self, id: &str) -> Option<(VmState, Option<Arc<std::sync::atomic::AtomicBool>>)> {
        if let Some(vm) = self.vms.lock().unwrap().remove(id) {
            return Some((vm.state, Some(vm.releasing)));
        }
        let bytes = std::fs::read(self.state_path(id)).ok()?;
        serde_json::from_slice(&bytes).ok().map(|s| (s, None))
    }
}

/// Which of a container's mounts a VM gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shares {
    /// Every bind and volume (a run).
    All,
    /// Only block volumes (a VM booted to read or write a stopped container's files).
    BlockVolumesOnly,
}

/// How a resolved mount of a microVM container crosses the VM boundary.
enum GuestShare {
    /// Nothing to carry (tmpfs: made inside the guest).
    None,
    /// A host directory (bind mount, directory volume) over virtio-fs.
    Fs {
        tag: String,
        target: PathBuf,
        read_only: bool,
    },
    /// A volume's disk image as a virtio-blk device with an ext4 filesystem.
    Disk { target: PathBuf },
}

/// `rec.mounts[index]` as the VM sees it; the index names the device and guest path, so
/// the VM config and the container spec agree without sharing state.
fn guest_share(index: usize, m: &MountRecord) -> GuestShare {
    match m.kind.as_str() {
        "bind" | "volume" if m.block => GuestShare::Disk {
            target: Path::new(GUEST_VOLUME_DIR).join(index.to_string()),
        },
        "bind" | "volume" => GuestShare::Fs {
            tag: format!("fs{index}"),
            target: Path::new(GUEST_SHARE_DIR).join(index.to_string()),
            read_only: !m.rw,
        },
        _ => GuestShare::None,
    }
}

/// The last lines of the guest's console, for error messages.
fn serial_tail(path: &Path) -> String {
    // Lossy: an early console can carry bytes that are not UTF-8.
    let bytes = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .collect();
    if lines.is_empty() {
        return String::new();
    }
    let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
    format!("; guest console ({}): {tail}", path.display())
}
