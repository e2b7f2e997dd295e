//! Volume mounts of a container: named volumes are created on demand at create,
//! anonymous ones (`-v /path`, image `VOLUME`) get a fresh volume each; all are
//! mounted through their driver at start and unmounted when the run ends.

use std::sync::Arc;

use super::record::{ContainerRecord, MountRecord};
use super::Containers;
use crate::volumes::{VolumeSource, Volumes};
use crate::{Error, Result};

impl Containers {
    pub(crate) fn set_volumes(&self, v: Arc<Volumes>) {
        let _ = self.volumes.set(v);
    }

    pub(crate) fn volumes(&self) -> Result<&Arc<Volumes>> {
        self.volumes
            .get()
            .ok_or_else(|| Error::Unavailable("no volume driver is loaded".into()))
    }

    /// Containers that reference volume `name` (for `volume rm`).
    pub fn volume_users(&self, name: &str) -> Vec<String> {
        self.users_of_volume(name)
            .into_iter()
            .map(|c| c.id.clone())
            .collect()
    }

    fn users_of_volume(&self, name: &str) -> Vec<Arc<super::Container>> {
        self.all()
            .into_iter()
            .filter(|c| {
                c.rec
                    .lock()
                    .unwrap()
                    .mounts
                    .iter()
                    .any(|m| m.kind == "volume" && m.name == name)
            })
            .collect()
    }

    /// At create: give every volume mount a volume, and add anonymous volumes for
    /// the config's `Volumes` paths not otherwise mounted. With `block` (a microVM
    /// container), the volumes this creates with the `local` driver are ext4 disk images,
    /// so no host filesystem is shared with the guest.
    pub(crate) async fn prepare_volumes(
        &self,
        mounts: &mut Vec<MountRecord>,
        config_volumes: &[String],
        block: bool,
    ) -> Result<()> {
        for path in config_volumes {
            if !mounts.iter().any(|m| &m.destination == path) {
                mounts.push(MountRecord {
                    kind: "volume".into(),
                    name: String::new(),
                    source: String::new(),
                    destination: path.clone(),
                    driver: "local".into(),
                    rw: true,
                    options: String::new(),
                    anonymous: true,
                    block: false,
                    subpath: String::new(),
                    propagation: String::new(),
                });
            }
        }
        if !mounts.iter().any(|m| m.kind == "volume") {
            return Ok(());
        }
        let volumes = self.volumes()?;
        for m in mounts.iter_mut().filter(|m| m.kind == "volume") {
            let anonymous = m.name.is_empty();
            let name = (!anonymous).then(|| m.name.clone());
            // No driver named: an existing volume is used whatever its driver.
            let driver = Some(m.driver.clone())
                .filter(|d| !d.is_empty())
                .or_else(|| {
                    name.as_ref()
                        .and_then(|n| volumes.get_record(n))
                        .map(|r| r.driver)
                });
            let mut opts = std::collections::BTreeMap::new();
            let local = driver.as_deref().is_none_or(|d| d == "local");
            let exists = name
                .as_ref()
                .is_some_and(|n| volumes.get_record(n).is_some());
            if block && local && !exists {
                opts.insert("kind".to_string(), "disk".to_string());
            }
            let rec = volumes
                .create(name, driver, opts, Default::default(), anonymous)
                .await?;
            m.name = rec.name;
            m.driver = rec.driver;
            m.anonymous = anonymous;
        }
        Ok(())
    }

    /// At start: mount each volume through its driver and fill in the host source (a
    /// directory, or a disk image for a backend that attaches block devices). A disk image
    /// is attached to one running container at a time: ext4 mounted by two kernels at once
    /// is corrupted.
    pub(crate) async fn resolve_volume_mounts(&self, rec: &mut ContainerRecord) -> Result<()> {
        if !rec.mounts.iter().any(|m| m.kind == "volume") {
            return Ok(());
        }
        let volumes = self.volumes()?.clone();
        let block_ok = self.backend(rec).capabilities().block_volumes;
        let mut mounted: Vec<String> = Vec::new();
        let mut failure = None;
        for i in 0..rec.mounts.len() {
            if rec.mounts[i].kind != "volume" {
                continue;
            }
            let name = rec.mounts[i].name.clone();
            let source = match volumes.mount(&name, &rec.id).await {
                Ok(s) => s,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            mounted.push(name.clone());
            let (path, block) = match source {
                VolumeSource::Directory(p) => (p, false),
                VolumeSource::Disk(p) => (p, true),
            };
            if block {
                if !block_ok {
                    failure = Some(Error::invalid(format!(
                        "volume {name} is a disk image (kind=disk): only microvm containers can attach it; use a directory volume with {} isolation",
                        rec.isolation.as_str()
                    )));
                    break;
                }
                if let Some(other) = self.running_user_of(&name, &rec.id) {
                    failure = Some(Error::conflict(format!(
                        "volume {name} is a disk image attached to running container {}: a disk volume can be used by one running container at a time",
                        &other[..12.min(other.len())]
                    )));
                    break;
                }
            }
            // A subpath of a directory volume is resolved here, on the host; one of a
            // disk volume inside the guest (see the microVM backend's mount_source).
            let subpath = rec.mounts[i].subpath.clone();
            let path = if subpath.is_empty() || block {
                path
            } else {
                match resolve_subpath(&path, &subpath) {
                    Ok(p) => p,
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            };
            rec.mounts[i].source = path.display().to_string();
            rec.mounts[i].block = block;
        }
        if let Some(e) = failure {
            for n in mounted {
                volumes.unmount(&n, &rec.id).await;
            }
            return Err(e);
        }
        Ok(())
    }

    /// `--volumes-from ctr[:ro|:rw]`: the other container's volumes and binds at the same
    /// destinations (explicit mounts of the new container win). The volumes stay the other
    /// container's: `rm -v` of this one does not remove them.
    pub(crate) fn mounts_from(
        &self,
        specs: &[String],
        mounts: &mut Vec<MountRecord>,
    ) -> Result<()> {
        for spec in specs {
            let (name, mode) = match spec.rsplit_once(':') {
                Some((n, m)) if m == "ro" || m == "rw" => (n, Some(m == "rw")),
                Some((_, m)) => {
                    return Err(Error::invalid(format!(
                        "invalid mode for volumes-from: {m}"
                    )))
                }
                None => (spec.as_str(), None),
            };
            let other = self.get(name)?.record();
            for m in other.mounts.iter().filter(|m| m.kind != "tmpfs") {
                if mounts.iter().any(|x| x.destination == m.destination) {
                    continue;
                }
                let mut copy = m.clone();
                copy.rw = mode.unwrap_or(m.rw);
                copy.anonymous = false;
                copy.block = false;
                mounts.push(copy);
            }
        }
        Ok(())
    }

    /// Another container that is running (or paused) with volume `name` mounted.
    fn running_user_of(&self, name: &str, except: &str) -> Option<String> {
        use super::record::Status;
        self.users_of_volume(name)
            .into_iter()
            .find(|c| {
                c.id != except
                    && matches!(
                        c.status(),
                        Status::Running | Status::Paused | Status::Restarting
                    )
            })
            .map(|c| c.id.clone())
    }

    /// When a run ends: release the driver's mounts.
    pub(crate) async fn unmount_volumes(&self, rec: &ContainerRecord) {
        let Ok(volumes) = self.volumes() else { return };
        for m in rec.mounts.iter().filter(|m| m.kind == "volume") {
            volumes.unmount(&m.name, &rec.id).await;
        }
    }

    /// `rm -v` / AutoRemove: drop the container's anonymous volumes.
    pub(crate) async fn remove_anonymous_volumes(&self, rec: &ContainerRecord) {
        let Ok(volumes) = self.volumes() else { return };
        for m in rec
            .mounts
            .iter()
            .filter(|m| m.kind == "volume" && m.anonymous)
        {
            if let Err(e) = volumes.remove(&m.name, false).await {
                tracing::warn!(volume = %m.name, "removing anonymous volume: {e}");
            }
        }
    }
}

/// `dir/subpath`, which must exist and stay inside `dir` (symlinks resolved on the host).
fn resolve_subpath(dir: &std::path::Path, subpath: &str) -> Result<std::path::PathBuf> {
    let joined = dir.join(subpath);
    let real = std::fs::canonicalize(&joined)
        .map_err(|e| Error::invalid(format!("cannot access path {}: {e}", joined.display())))?;
    let root = std::fs::canonicalize(dir)?;
    if !real.starts_with(&root) {
        return Err(Error::invalid(format!(
            "volume subpath {subpath:?} resolves outside the volume"
        )));
    }
    Ok(real)
}
