//! `--userns-remap` per container: which containers run in the daemon's user namespace
//! maps, and dockerd 20.10's create-time rules for the options that conflict with it.
use berth_agent_protocol::UserNamespace;
use bollard_stubs::models::HostConfig;

use super::record::ContainerRecord;
use super::Containers;
use crate::{Error, Result};

/// `HostConfig.UsernsMode`: empty (the daemon's choice) or `host` (no user namespace).
fn host_userns(hc: &HostConfig) -> Result<bool> {
    match hc.userns_mode.as_deref().unwrap_or("") {
        "" => Ok(false),
        "host" => Ok(true),
        other => Err(Error::invalid(format!(
            "invalid --userns: {other:?} (only \"host\" is supported)"
        ))),
    }
}

impl Containers {
    /// Refuses, with dockerd's words, what cannot run in a remapped container (in
    /// either isolation: a microVM's guest agent applies the same user namespace).
    pub(crate) fn validate_userns(&self, hc: &HostConfig) -> Result<()> {
        let host = host_userns(hc)?;
        if self.paths.userns.is_none() || host {
            return Ok(());
        }
        if hc.privileged.unwrap_or(false) {
            return Err(Error::invalid(
                "privileged mode is incompatible with user namespaces.  You must run the container in the host namespace when running privileged mode",
            ));
        }
        if hc.network_mode.as_deref() == Some("host") {
            return Err(Error::invalid(
                "cannot share the host's network namespace when user namespaces are enabled",
            ));
        }
        if hc.pid_mode.as_deref() == Some("host") {
            return Err(Error::invalid(
                "cannot share the host PID namespace when user namespaces are enabled",
            ));
        }
        Ok(())
    }

    /// The maps of a remapped container as the tar writers take them (host ids back
    /// to the container's in `commit`, `export`, `cp` out).
    pub(crate) fn owner_map(
        &self,
        rec: &ContainerRecord,
    ) -> Option<berth_layer::owner_map::OwnerMap> {
        let ns = self.userns_for(rec)?;
        let ranges = |m: &[berth_agent_protocol::IdMap]| {
            m.iter()
                .map(|r| (r.container_id, r.host_id, r.size))
                .collect()
        };
        Some(berth_layer::owner_map::OwnerMap {
            uids: ranges(&ns.uid_map),
            gids: ranges(&ns.gid_map),
        })
    }

    /// [`Self::owner_map`] as the archive child's arguments.
    pub(crate) fn owner_map_args(&self, rec: &ContainerRecord) -> Vec<String> {
        use berth_layer::owner_map::OwnerMap;
        match self.owner_map(rec) {
            Some(m) => vec![
                "--uid-map".into(),
                OwnerMap::format_ranges(&m.uids),
                "--gid-map".into(),
                OwnerMap::format_ranges(&m.gids),
            ],
            None => Vec::new(),
        }
    }

    /// The maps of the container's user namespace; `None`: it shares the agent's.
    pub(crate) fn userns_for(&self, rec: &ContainerRecord) -> Option<UserNamespace> {
        let remap = self.paths.userns.as_ref()?;
        let host = host_userns(&rec.host_config).unwrap_or(true);
        (!host).then(|| remap.maps.clone())
    }
}
