//! Volume mounts of a container: named volumes are created on demand at create,
//! anonymous ones (`-v /path`, image `VOLUME`) get a fresh volume each; all are
//! mounted through their driver at start and unmounted when the run ends.

use std::sync::Arc;

use super::record::{ContainerRecord, MountRecord};
use super::Containers;
use crate::volumes::Volumes;
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
            .map(|c| c.id.clone())
            .collect()
    }

    /// At create: give every volume mount a volume, and add anonymous volumes for
    /// the config's `Volumes` paths not otherwise mounted.
    pub(crate) async fn prepare_volumes(
        &self,
        mounts: &mut Vec<MountRecord>,
        config_volumes: &[String],
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
            let driver = Some(m.driver.clone()).filter(|d| !d.is_empty());
            let rec = volumes
                .create(
                    name,
                    driver,
                    Default::default(),
                    Default::default(),
                    anonymous,
                )
                .await?;
            m.name = rec.name;
            m.driver = rec.driver;
            m.anonymous = anonymous;
        }
        Ok(())
    }

    /// At start: mount each volume through its driver and fill in the host source.
    pub(crate) async fn resolve_volume_mounts(&self, rec: &mut ContainerRecord) -> Result<()> {
        if !rec.mounts.iter().any(|m| m.kind == "volume") {
            return Ok(());
        }
        let volumes = self.volumes()?.clone();
        let mut mounted: Vec<String> = Vec::new();
        for i in 0..rec.mounts.len() {
            if rec.mounts[i].kind != "volume" {
                continue;
            }
            let name = rec.mounts[i].name.clone();
            match volumes.mount(&name, &rec.id).await {
                Ok(p) => {
                    rec.mounts[i].source = p.display().to_string();
                    mounted.push(name);
                }
                Err(e) => {
                    for n in mounted {
                        volumes.unmount(&n, &rec.id).await;
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
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
