//! `IsolationBackend` for microVMs: what the container manager calls, in terms of the
//! VM helpers in `mod.rs` (disks, VM config, tracking, agent connection).

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use berth_agent_protocol::client::AgentClient;
use berth_agent_protocol::Rootfs;

use super::hypervisor::VmState;
use super::{disks, host_cgroup, pod, sizing, ImageFs, MicrovmIsolation};
use super::{guest_share, GuestShare};
use super::{AGENT_PORT, GUEST_IMAGE_DIR, GUEST_RW_DIR};
use crate::containers::record::{ContainerRecord, Isolation, MountRecord};
use crate::isolation::{Capabilities, GuestNetwork, IsolationBackend, Sandbox};
use crate::{Error, Result};

#[async_trait]
impl IsolationBackend for MicrovmIsolation {
    fn mode(&self) -> Isolation {
        Isolation::Microvm
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            // The container's files live on a guest disk: no host path reaches them safely.
            host_file_access: false,
            block_volumes: true,
            host_namespaces: false,
            guest_nics: true,
            cgroup_v2: true,
        }
    }

    fn check_config(
        &self,
        hc: &bollard_stubs::models::HostConfig,
        mounts: &[MountRecord],
    ) -> Result<()> {
        if hc.devices.as_ref().is_some_and(|d| !d.is_empty()) {
            return Err(Error::invalid(
                "--device is not supported with microvm isolation: host devices are not passed into the VM",
            ));
        }
        if mounts.iter().any(|m| m.kind == "bind") {
            if let Err(why) = self.hypervisor.capabilities().shared_fs {
                return Err(Error::invalid(why));
            }
        }
        Ok(())
    }

    fn mount_source(&self, index: usize, m: &MountRecord) -> PathBuf {
        match guest_share(index, m) {
            GuestShare::None => PathBuf::from(&m.source),
            GuestShare::Fs { target, .. } => target,
            // The host cannot look inside the disk: the subpath is joined in the guest, where
            // the agent resolves the bind source (it must exist there).
            GuestShare::Disk { target } => target.join(&m.subpath),
        }
    }

    fn unavailable_reason(&self) -> Option<String> {
        if let Some(why) = self.hypervisor.unavailable_reason() {
            return Some(format!("{} backend: {why}", self.hypervisor.name()));
        }
        match &self.kernel {
            None => Some(
                "no guest kernel: build it with guest-kernel/build.sh, or pass --guest-kernel / set $BERTH_GUEST_KERNEL"
                    .into(),
            ),
            Some(k) if !k.is_file() => Some(format!("guest kernel {} not found", k.display())),
            Some(_) => None,
        }
    }

    fn describe(&self) -> String {
        let state = match self.unavailable_reason() {
            Some(why) => format!("unavailable: {why}"),
            None => "available".into(),
        };
        format!(
            "microvm: {state}; backend {} ({}); image disks {}; kernel {}; other backends: {}",
            self.hypervisor.describe(),
            self.choice,
            self.image_fs.as_str(),
            self.kernel
                .as_ref()
                .map(|k| k.display().to_string())
                .unwrap_or_else(|| "none".into()),
            self.others.join("; ")
        )
    }

    fn map_resources(&self, res: &mut berth_agent_protocol::Resources) {
        // Host CPU/memory-node numbers mean nothing in the guest: the VM has exactly as many
        // vCPUs as the set, and its host cgroup pins them.
        res.cpuset_cpus = None;
        res.cpuset_mems = None;
    }

    fn spare_nic_room(&self, rec: &ContainerRecord, nics: usize) -> usize {
        // The image and writable disks, vsock, and a device per share or block volume.
        let shares = rec
            .mounts
            .iter()
            .enumerate()
            .filter(|(i, m)| !matches!(guest_share(*i, m), GuestShare::None))
            .count();
        self.hypervisor
            .capabilities()
            .max_devices
            .saturating_sub(3 + shares + nics)
    }

    fn inspect(&self, rec: &ContainerRecord) -> Option<serde_json::Value> {
        Some(serde_json::json!({
            "Hypervisor": self.hypervisor.name(),
            "Accelerator": if self.hypervisor.capabilities().hardware_accel { "kvm" } else { "tcg" },
            "GuestKernel": self.kernel_version,
            "GuestKernelPath": self.kernel,
            "VCPUs": sizing::vcpus(rec),
            "MemoryMiB": sizing::mem_mib(rec),
            "VmmPid": (rec.state.agent_pid > 0).then_some(rec.state.agent_pid),
        }))
    }

    fn storage_name(&self) -> &'static str {
        match self.image_fs {
            ImageFs::Erofs => "microvm-erofs",
            ImageFs::Ext4 => "microvm-ext4",
        }
    }

    async fn prepare_storage(&self, rec: &ContainerRecord) -> Result<()> {
        // Build the image disk now, so `docker run` pays for it once per image at create.
        self.image_disk(rec).await?;
        let dir = self.vm_dir(&rec.id);
        std::fs::create_dir_all(&dir)?;
        let disk = dir.join("rw.ext4");
        tokio::task::spawn_blocking(move || disks::create_rw_disk(&disk, disks::RW_DISK_BYTES))
            .await
            .map_err(Error::internal)?
    }

    fn rootfs(&self, _rec: &ContainerRecord) -> Result<Rootfs> {
        Ok(Rootfs::Overlay {
            lower: vec![PathBuf::from(GUEST_IMAGE_DIR)],
            upper: Path::new(GUEST_RW_DIR).join("upper"),
            work: Path::new(GUEST_RW_DIR).join("work"),
        })
    }

    async fn start(&self, rec: &ContainerRecord, net: &GuestNetwork) -> Result<Sandbox> {
        self.boot(rec, net, false).await
    }

    async fn reconnect(&self, rec: &ContainerRecord) -> Option<Sandbox> {
        let bytes = std::fs::read(self.state_path(&rec.id)).ok()?;
        let state: VmState = serde_json::from_slice(&bytes).ok()?;
        if !state.vmm.alive() {
            return None;
        }
        let agent = match tokio::time::timeout(
            Duration::from_secs(5),
            AgentClient::connect_hybrid_vsock(&state.agent_uds, AGENT_PORT),
        )
        .await
        {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                tracing::warn!(id = %rec.id, "microVM agent reconnect failed: {e}");
                return None;
            }
            Err(_) => return None,
        };
        self.track(&rec.id, state.clone());
        Some(Sandbox {
            agent,
            agent_pid: state.vmm.pid,
            host_pid_override: Some(state.vmm.pid),
        })
    }

    async fn failure_reason(&self, rec: &ContainerRecord) -> Option<String> {
        let mut ended = self.vms.lock().unwrap().get(&rec.id)?.ended.clone();
        // The agent connection can close a moment before the VMM's exit is seen.
        let r = tokio::time::timeout(Duration::from_secs(3), ended.wait_for(|e| e.is_some()))
            .await
            .ok()?
            .ok()?
            .clone();
        r.filter(|s| !s.is_empty())
    }

    async fn export_files(
        &self,
        rec: &ContainerRecord,
        what: crate::isolation::files::FilesExport,
        hold: crate::isolation::files::Hold,
    ) -> Result<crate::isolation::files::FilesStream> {
        self.export_files_from_guest(rec, what, hold).await
    }

    async fn release(&self, rec: &ContainerRecord) {
        if let Some((state, releasing)) = self.take_vm(&rec.id) {
            if let Some(r) = releasing {
                r.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            // After the agent's Shutdown the guest powers itself off: give it a moment.
            let _ =
                tokio::time::timeout(Duration::from_secs(5), self.hypervisor.wait_vm(&state)).await;
            self.hypervisor.stop_vm(&state, true).await;
        }
        // A pod VM's members' root filesystems are mounted under its pod dir: off before
        // anything removes the container's dirs.
        pod::detach_pod_dir(&self.dirs, &rec.id);
        let _ = std::fs::remove_file(self.state_path(&rec.id));
        let _ = std::fs::remove_dir_all(self.vm_run_dir(&rec.id));
        host_cgroup::remove(&rec.id).await;
    }
}

impl MicrovmIsolation {
    /// Boots the container's VM and connects to its agent; `pod` shares the pod dir into
    /// it (the sandbox of a pod, see `pod.rs`).
    pub(super) async fn boot(
        &self,
        rec: &ContainerRecord,
        net: &GuestNetwork,
        pod: bool,
    ) -> Result<Sandbox> {
        if let Some(why) = self.unavailable_reason() {
            return Err(Error::invalid(format!(
                "microvm isolation is unavailable on this host: {why}"
            )));
        }
        // A previous run's VM must be gone before its disk is used again.
        self.release(rec).await;
        let initrd = self.initramfs_path().await?;
        let image = self.image_disk(rec).await?;
        let cfg = self.vm_config(rec, initrd, image, net, pod, super::Shares::All)?;
        if pod {
            pod::make_share_point(&pod::pod_dir(&self.dirs, &rec.id))?;
        }
        Self::make_run_dir(&cfg.run_dir, cfg.identity)?;
        // A fresh console log per run.
        std::fs::write(&cfg.serial_log, b"")?;
        let t0 = std::time::Instant::now();
        let state = match self.hypervisor.start_vm(&cfg).await {
            Ok(s) => s,
            Err(e) => {
                pod::detach_pod_dir(&self.dirs, &rec.id);
                return Err(e);
            }
        };
        let bytes = serde_json::to_vec_pretty(&state).map_err(Error::internal)?;
        if let Err(e) = crate::fsutil::write_atomic(&self.state_path(&rec.id), &bytes) {
            self.hypervisor.stop_vm(&state, true).await;
            pod::detach_pod_dir(&self.dirs, &rec.id);
            return Err(e.into());
        }
        self.track(&rec.id, state.clone());
        match self.connect(&rec.id, &state).await {
            Ok(agent) => {
                tracing::info!(
                    id = %rec.id,
                    hypervisor = self.hypervisor.name(),
                    vmm_pid = state.vmm.pid,
                    boot_ms = t0.elapsed().as_millis() as u64,
                    "microVM agent connected"
                );
                Ok(Sandbox {
                    agent,
                    agent_pid: state.vmm.pid,
                    host_pid_override: Some(state.vmm.pid),
                })
            }
            Err(e) => {
                self.release(rec).await;
                Err(e)
            }
        }
    }
}
