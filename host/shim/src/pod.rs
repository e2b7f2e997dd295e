//! A pod member's host-side mounts under its pod VM's share (the engine's
//! `isolation::microvm::pod`): its merged root filesystem, and the sources of its bind
//! mounts (CRI's `/etc/hosts`, `/etc/resolv.conf`, volumes), which the guest can only
//! reach through the share. All of them are undone when the member is deleted.

use std::path::{Path, PathBuf};

use berth_agent_protocol::{Mount, MountKind};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::rootfs::{MergedView, SnapshotMount};

pub struct MemberMounts {
    /// `<pod dir>/<member key>` on the host.
    dir: PathBuf,
    rootfs: Option<MergedView>,
    /// Bind mount points under `dir/mounts`, in mount order.
    binds: Vec<PathBuf>,
}

impl MemberMounts {
    /// Mounts the member's rootfs at `dir/rootfs`.
    pub async fn mount_rootfs(
        snapshot: &[SnapshotMount],
        bundle: &Path,
        dir: PathBuf,
    ) -> anyhow::Result<MemberMounts> {
        let rootfs = MergedView::mount_at(snapshot, bundle, &dir.join("rootfs")).await?;
        Ok(MemberMounts {
            dir,
            rootfs: Some(rootfs),
            binds: Vec::new(),
        })
    }

    /// Bind-mounts the source of every bind in `mounts` under the share and points the
    /// mount at the guest's path of it (`guest_dir` is this member's dir in the guest).
    /// A read-only bind is read-only on the host side too: virtiofsd cannot write it,
    /// whatever the guest does.
    pub fn share_binds(&mut self, guest_dir: &Path, mounts: &mut [Mount]) -> anyhow::Result<()> {
        for (i, m) in mounts.iter_mut().enumerate() {
            let MountKind::Bind { source } = &mut m.kind else {
                continue;
            };
            let point = self.dir.join("mounts").join(i.to_string());
            std::fs::create_dir_all(self.dir.join("mounts"))?;
            let meta = std::fs::metadata(&*source)
                .map_err(|e| anyhow::anyhow!("bind source {}: {e}", source.display()))?;
            if meta.is_dir() {
                std::fs::create_dir_all(&point)?;
            } else {
                std::fs::write(&point, b"")?;
            }
            mount(
                Some(source.as_path()),
                &point,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| anyhow::anyhow!("bind-mounting {}: {e}", source.display()))?;
            self.binds.push(point.clone());
            if m.readonly {
                mount(
                    None::<&str>,
                    &point,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                    None::<&str>,
                )
                .map_err(|e| anyhow::anyhow!("making {} read-only: {e}", source.display()))?;
            }
            *source = guest_dir.join("mounts").join(i.to_string());
        }
        Ok(())
    }

    /// Unmounts everything (binds first, then the rootfs) and removes the mount points.
    /// Never a recursive removal: whatever is still mounted keeps its files.
    pub fn unmount(mut self) {
        for point in self.binds.drain(..).rev() {
            if let Err(e) = umount2(&point, MntFlags::MNT_DETACH) {
                tracing::warn!(path = %point.display(), "unmounting a pod member's bind: {e}");
            }
            let _ = std::fs::remove_file(&point).or_else(|_| std::fs::remove_dir(&point));
        }
        let _ = std::fs::remove_dir(self.dir.join("mounts"));
        if let Some(rootfs) = self.rootfs.take() {
            let path = rootfs.path().to_path_buf();
            rootfs.unmount();
            let _ = std::fs::remove_dir(path);
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}
