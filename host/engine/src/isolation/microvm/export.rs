//! A microVM container's files for the host: the guest agent tars them, or runs the
//! archive child of `docker cp`/`export`, on its export channel. A running VM answers
//! itself; for a stopped container a VM is booted with only its image and writable disks
//! (plus, for `docker cp`, its block volumes; never shares or NICs), asked, and stopped
//! again.

use std::path::Path;

use berth_agent_protocol::client::open_export;
use berth_agent_protocol::export::ExportRequest;

use super::{host_cgroup, MicrovmIsolation, BOOT_TIMEOUT, GUEST_RW_DIR};
use crate::containers::record::ContainerRecord;
use crate::isolation::files::{FilesExport, FilesStream, Hold};
use crate::isolation::GuestNetwork;
use crate::{Error, Result};

impl MicrovmIsolation {
    pub(super) async fn export_files_from_guest(
        &self,
        rec: &ContainerRecord,
        what: FilesExport,
        hold: Hold,
    ) -> Result<FilesStream> {
        let upper = Path::new(GUEST_RW_DIR).join("upper");
        let (req, block_volumes) = match what {
            FilesExport::Changes => (ExportRequest::Changes { upper }, false),
            FilesExport::Archive {
                args,
                block_volumes,
            } => (ExportRequest::Archive { args }, block_volumes),
        };
        let live = self
            .vms
            .lock()
            .unwrap()
            .get(&rec.id)
            .map(|vm| vm.state.agent_uds.clone());
        if let Some(uds) = live {
            let s = open_export(&uds, &req).await.map_err(export_error)?;
            return Ok(FilesStream::new(s, async move { drop(hold) }));
        }
        let t0 = std::time::Instant::now();
        let state = self.boot_for_export(rec, block_volumes).await?;
        let cleanup = {
            let hv = self.hypervisor.clone();
            let state = state.clone();
            let state_path = self.state_path(&rec.id);
            let run_dir = self.vm_run_dir(&rec.id);
            let id = rec.id.clone();
            async move {
                hv.stop_vm(&state, true).await;
                let _ = std::fs::remove_file(state_path);
                let _ = std::fs::remove_dir_all(run_dir);
                host_cgroup::remove(&id).await;
                drop(hold);
            }
        };
        let deadline = tokio::time::Instant::now() + BOOT_TIMEOUT;
        let opened = match self.wait_listening(&rec.id, &state, deadline).await {
            Ok(()) => open_export(&state.agent_uds, &req)
                .await
                .map_err(export_error),
            Err(e) => Err(e),
        };
        match opened {
            Ok(s) => {
                tracing::info!(id = %rec.id, boot_ms = t0.elapsed().as_millis() as u64, "export VM up");
                Ok(FilesStream::new(s, cleanup))
            }
            Err(e) => {
                cleanup.await;
                Err(e)
            }
        }
    }

    /// Boots the container's VM with only its disks (and its block volumes when asked).
    /// Its state file is written as for a run, so a VM left behind by a daemon crash is
    /// stopped by the next start or `rm`.
    async fn boot_for_export(
        &self,
        rec: &ContainerRecord,
        block_volumes: bool,
    ) -> Result<super::VmState> {
        use crate::isolation::IsolationBackend;
        if let Some(why) = self.unavailable_reason() {
            return Err(Error::invalid(format!(
                "the container's files are on a microVM disk, and microvm isolation is unavailable on this host: {why}"
            )));
        }
        // Leftovers of an earlier export that the daemon did not see end.
        self.release(rec).await;
        let initrd = self.initramfs_path().await?;
        let image = self.image_disk(rec).await?;
        let mut bare = rec.clone();
        if !block_volumes {
            bare.mounts.clear();
        }
        // No virtiofsd for an export: binds and directory volumes are served from the
        // host directory, never through the guest.
        let shares = super::Shares::BlockVolumesOnly;
        let cfg = self.vm_config(
            &bare,
            initrd,
            image,
            &GuestNetwork::default(),
            false,
            shares,
        )?;
        Self::make_run_dir(&cfg.run_dir, cfg.identity)?;
        std::fs::write(&cfg.serial_log, b"")?;
        let state = self.hypervisor.start_vm(&cfg).await?;
        let bytes = serde_json::to_vec_pretty(&state).map_err(Error::internal)?;
        if let Err(e) = crate::fsutil::write_atomic(&self.state_path(&rec.id), &bytes) {
            self.hypervisor.stop_vm(&state, true).await;
            return Err(e.into());
        }
        Ok(state)
    }
}

fn export_error(e: berth_agent_protocol::ProtocolError) -> Error {
    Error::internal(format!(
        "reading the container's files from its microVM: {e}"
    ))
}
