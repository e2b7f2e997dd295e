//! `--pid container:<id>` and `--ipc container:<id>`: the donor's namespaces, resolved at
//! start (as dockerd does), so the donor must be running then, not when the joiner was made.

use berth_agent_protocol::JoinNamespaces;

use super::record::ContainerRecord;
use super::Containers;
use crate::{Error, Result};

impl Containers {
    /// The namespace files the container joins, after dockerd's checks on each donor.
    pub(super) fn join_namespaces(&self, rec: &ContainerRecord) -> Result<JoinNamespaces> {
        let hc = &rec.host_config;
        let donor_of = |mode: &Option<String>| {
            mode.as_deref()
                .and_then(|m| m.strip_prefix("container:"))
                .map(str::to_owned)
        };
        let mut join = JoinNamespaces::default();
        if let Some(id) = donor_of(&hc.pid_mode) {
            let pid = self.donor_pid(rec, &id, "PID", |e| {
                format!("cannot join PID of a non running container: {id}: {e}")
            })?;
            join.pid = Some(format!("/proc/{pid}/ns/pid").into());
        }
        if let Some(id) = donor_of(&hc.ipc_mode) {
            let pid = self.donor_pid(rec, &id, "IPC", |e| {
                format!("can't join IPC of container {id}: {e}")
            })?;
            let donor = self.get(&id)?.record();
            // dockerd shares only an IPC namespace its owner made shareable (its default
            // mode, `private`, is not).
            let mode = donor.host_config.ipc_mode.as_deref().unwrap_or("");
            if !matches!(mode, "shareable" | "host") {
                return Err(Error::conflict(format!(
                    "can't join IPC of container {id}: non-shareable IPC (hint: use IpcMode:shareable for the donor container)"
                )));
            }
            join.ipc = Some(format!("/proc/{pid}/ns/ipc").into());
        }
        Ok(join)
    }

    /// The host pid of the running donor `id`, whose `kind` namespace `rec` joins.
    fn donor_pid(
        &self,
        rec: &ContainerRecord,
        id: &str,
        kind: &str,
        missing: impl Fn(&Error) -> String,
    ) -> Result<u32> {
        let donor = self.get(id).map_err(|e| Error::not_found(missing(&e)))?;
        let drec = donor.record();
        // A microVM's namespaces live in its own guest kernel: neither a VM nor a host
        // process can enter another VM's (several containers per VM are pods, issue 14).
        if !self.backend(rec).capabilities().host_namespaces
            || !self.backend(&drec).capabilities().host_namespaces
        {
            return Err(Error::invalid(format!(
                "--{} container:{id} is not supported with microvm isolation: each microVM container has its own guest kernel, whose namespaces another container cannot join",
                kind.to_lowercase()
            )));
        }
        if !drec.state.status.is_running() || drec.state.pid == 0 {
            return Err(Error::conflict(format!(
                "cannot join {kind} of a non running container: {id}"
            )));
        }
        Ok(drec.state.pid)
    }
}
