//! containerd's snapshotter mounts (`CreateTaskRequest.rootfs`) as the agent's [`Rootfs`].
//!
//! The agent mounts the rootfs in the container's private mount namespace, so the shim
//! never mounts anything on the host and has nothing to unmount: an overlay mount becomes
//! [`Rootfs::Overlay`], a bind mount (native snapshotter, single-layer views) a
//! [`Rootfs::Dir`], and no mount at all means the bundle's own `rootfs` directory.

use std::path::{Path, PathBuf};

use berth_agent_protocol::Rootfs;

/// One mount as containerd sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotMount {
    pub typ: String,
    pub source: String,
    pub options: Vec<String>,
}

pub fn from_mounts(mounts: &[SnapshotMount], bundle: &Path) -> anyhow::Result<Rootfs> {
    match mounts {
        [] => Ok(Rootfs::Dir {
            path: bundle.join("rootfs"),
        }),
        [m] if m.typ == "overlay" => overlay(m),
        [m] if m.typ == "bind" || m.options.iter().any(|o| o == "bind" || o == "rbind") => {
            Ok(Rootfs::Dir {
                path: PathBuf::from(&m.source),
            })
        }
        [m] => anyhow::bail!(
            "rootfs mount type {:?} is not supported (use the overlayfs or native snapshotter)",
            m.typ
        ),
        _ => anyhow::bail!("a rootfs of {} mounts is not supported", mounts.len()),
    }
}

fn overlay(m: &SnapshotMount) -> anyhow::Result<Rootfs> {
    let opt = |key: &str| {
        m.options
            .iter()
            .find_map(|o| o.strip_prefix(key)?.strip_prefix('='))
    };
    // overlayfs lists lowerdir top-first; the agent wants image layer order (bottom first).
    let mut lower: Vec<PathBuf> = opt("lowerdir")
        .ok_or_else(|| anyhow::anyhow!("overlay rootfs without lowerdir"))?
        .split(':')
        .map(PathBuf::from)
        .collect();
    lower.reverse();
    match (opt("upperdir"), opt("workdir")) {
        (Some(upper), Some(work)) => Ok(Rootfs::Overlay {
            lower,
            upper: upper.into(),
            work: work.into(),
        }),
        // A read-only view (`ctr run --rootfs`-less read-only snapshot): no upper layer.
        _ => anyhow::bail!("a read-only overlay rootfs (no upperdir) is not supported"),
    }
}

/// The merged rootfs on the host, for building a microVM's image disk from it: the
/// snapshot mounted at the bundle's `rootfs` (unmounted again by [`MergedView::unmount`]),
/// or the directory itself when there is nothing to mount.
pub struct MergedView {
    path: PathBuf,
    mounted: bool,
}

impl MergedView {
    pub async fn mount(
        mounts: &[SnapshotMount],
        bundle: &Path,
        target: &Path,
    ) -> anyhow::Result<MergedView> {
        match from_mounts(mounts, bundle)? {
            Rootfs::Dir { path } => Ok(MergedView {
                path,
                mounted: false,
            }),
            _ => {
                let m = mounts[0].clone();
                let target = target.to_path_buf();
                std::fs::create_dir_all(&target)?;
                let t = target.clone();
                tokio::task::spawn_blocking(move || {
                    containerd_shim::mount::mount_rootfs(
                        Some(&m.typ),
                        Some(&m.source),
                        &m.options,
                        &t,
                    )
                })
                .await??;
                Ok(MergedView {
                    path: target,
                    mounted: true,
                })
            }
        }
    }

    /// The merged rootfs mounted at `target` whatever the snapshot is: a directory rootfs
    /// is bind-mounted there. For a pod member's rootfs under its pod VM's share.
    pub async fn mount_at(
        mounts: &[SnapshotMount],
        bundle: &Path,
        target: &Path,
    ) -> anyhow::Result<MergedView> {
        let view = Self::mount(mounts, bundle, target).await?;
        if view.mounted {
            return Ok(view);
        }
        std::fs::create_dir_all(target)?;
        nix::mount::mount(
            Some(view.path.as_path()),
            target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND | nix::mount::MsFlags::MS_REC,
            None::<&str>,
        )?;
        Ok(MergedView {
            path: target.to_path_buf(),
            mounted: true,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn unmount(self) {
        if self.mounted {
            if let Err(e) = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH) {
                tracing::warn!(path = %self.path.display(), "unmounting the rootfs: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(typ: &str, source: &str, options: &[&str]) -> SnapshotMount {
        SnapshotMount {
            typ: typ.into(),
            source: source.into(),
            options: options.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn overlay_layers_bottom_first() {
        let r = from_mounts(
            &[m(
                "overlay",
                "overlay",
                &[
                    "index=off",
                    "workdir=/s/3/work",
                    "upperdir=/s/3/fs",
                    "lowerdir=/s/2/fs:/s/1/fs",
                ],
            )],
            Path::new("/b"),
        )
        .unwrap();
        assert_eq!(
            r,
            Rootfs::Overlay {
                lower: vec!["/s/1/fs".into(), "/s/2/fs".into()],
                upper: "/s/3/fs".into(),
                work: "/s/3/work".into()
            }
        );
    }

    #[test]
    fn bind_and_bundle_rootfs() {
        assert_eq!(
            from_mounts(&[m("bind", "/s/1/fs", &["rbind", "rw"])], Path::new("/b")).unwrap(),
            Rootfs::Dir {
                path: "/s/1/fs".into()
            }
        );
        assert_eq!(
            from_mounts(&[], Path::new("/b")).unwrap(),
            Rootfs::Dir {
                path: "/b/rootfs".into()
            }
        );
        assert!(from_mounts(&[m("ext4", "/dev/vdb", &[])], Path::new("/b")).is_err());
    }
}
