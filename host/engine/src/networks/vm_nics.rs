//! The NICs of microVM sandboxes. A VM's virtio-mmio devices are fixed at boot (no
//! hotplug), so every VM boots with a few spare NICs besides its networks' ones, each on a
//! TAP of its own in the sandbox, joined to nothing. `docker network connect` on the
//! running VM joins a new endpoint's veth to a spare's TAP (the endpoint takes the spare's
//! MAC); `disconnect` releases the TAP, which becomes a spare again. The guest side (the
//! NIC's address, up or down) is the container manager's business, over the agent.
//!
//! Every NIC is recorded in the network state ([`VmNic`]) before its TAP exists; the TAPs
//! live in the sandbox netns, so they go with it whatever happens to berthd.

use super::driver::Intent;
use super::model::{Attachment, EndpointRecord, VmNic};
use super::sandbox::{tap_name, SandboxRequest};
use super::Networks;
use crate::{Error, Result};

/// Spare NICs per microVM unless `--microvm-spare-nics` says otherwise.
pub const DEFAULT_SPARE_NICS: u8 = 2;
/// Each NIC costs the VM a virtio-mmio slot and the host a TAP.
pub const MAX_SPARE_NICS: u8 = 8;

/// A locally administered unicast MAC for a spare NIC, random so that two VMs' spares
/// never share one (`06:` keeps them apart from Docker's `02:42:` addresses).
fn spare_mac() -> String {
    let id = crate::fsutil::new_id();
    format!(
        "06:{}:{}:{}:{}:{}",
        &id[0..2],
        &id[2..4],
        &id[4..6],
        &id[6..8],
        &id[8..10]
    )
}

impl Networks {
    /// How many spare NICs a microVM boots with.
    pub fn spare_nics(&self) -> usize {
        self.spare_nics as usize
    }

    /// At a VM's boot, after its endpoints (each on TAP [`tap_name`]): record those NICs
    /// and add the spares (`tapN` after the endpoints' ones).
    pub(super) async fn boot_vm_nics_locked(
        &self,
        cid: &str,
        eps: &[EndpointRecord],
        spares: usize,
    ) -> Result<()> {
        let mut nics: Vec<VmNic> = eps
            .iter()
            .map(|ep| VmNic {
                container_id: cid.to_string(),
                tap: tap_name(&ep.ifname),
                mac: ep.mac.clone(),
                spare_name: format!("spare{}", tap_name(&ep.ifname).trim_start_matches("tap")),
                endpoint_id: Some(ep.id.clone()),
            })
            .collect();
        let spares: Vec<VmNic> = (eps.len()..eps.len() + spares)
            .map(|k| VmNic {
                container_id: cid.to_string(),
                tap: format!("tap{k}"),
                mac: spare_mac(),
                spare_name: format!("spare{k}"),
                endpoint_id: None,
            })
            .collect();
        nics.extend(spares.iter().cloned());
        {
            let mut st = self.state.lock().unwrap();
            st.vm_nics.retain(|n| n.container_id != cid);
            st.vm_nics.extend(nics);
            st.save(&self.dir)?;
        }
        let netns = self.netns_path(cid);
        for nic in spares {
            let intent = Intent::SpareTap {
                netns: netns.clone(),
                tap: nic.tap,
            };
            self.exec.apply(cid, &intent).await?;
        }
        Ok(())
    }

    /// A running VM's NICs, in TAP order (as they were given to the VMM).
    pub fn vm_nics(&self, container_id: &str) -> Vec<VmNic> {
        let mut nics: Vec<VmNic> = self
            .state
            .lock()
            .unwrap()
            .vm_nics
            .iter()
            .filter(|n| n.container_id == container_id)
            .cloned()
            .collect();
        nics.sort_by_key(|n| {
            n.tap
                .trim_start_matches("tap")
                .parse::<u32>()
                .unwrap_or(u32::MAX)
        });
        nics
    }

    /// The NIC `endpoint_id` is joined to, if it is a VM's.
    pub fn vm_nic_of(&self, endpoint_id: &str) -> Option<VmNic> {
        self.state
            .lock()
            .unwrap()
            .vm_nics
            .iter()
            .find(|n| n.endpoint_id.as_deref() == Some(endpoint_id))
            .cloned()
    }

    /// Connect a running VM to one more network, on one of its spare NICs. Returns the
    /// endpoint (with the spare's MAC) for the guest to configure.
    pub async fn connect_running_vm(
        &self,
        req: &SandboxRequest,
        att: &Attachment,
    ) -> Result<EndpointRecord> {
        let _op = self.op.lock().await;
        let cid = &req.container_id;
        let nics = self.vm_nics(cid);
        let Some(spare) = nics.iter().find(|n| n.endpoint_id.is_none()).cloned() else {
            return Err(Error::conflict(format!(
                "container {} has no spare network interface left: its microVM booted with {} NICs and all of them carry networks (a running microVM joins networks on the spare NICs it boots with: {} per VM, berthd --microvm-spare-nics, fewer when its disks and shares leave no room for more devices); stop it to connect it to more networks",
                req.container_name.trim_start_matches('/'),
                nics.len(),
                self.spare_nics(),
            )));
        };
        let ifname = self.free_ifname(cid);
        let ep = match self.join_locked(req, att, &ifname, Some(&spare)).await {
            Ok(ep) => ep,
            Err(e) => {
                // Whatever part of the endpoint exists goes; the TAP stays a spare.
                if let Some(ep) = self
                    .container_endpoints(cid)
                    .into_iter()
                    .find(|e| e.network_id == att.network_id)
                {
                    self.leave_locked(&ep).await;
                }
                self.release_tap(cid, &spare.tap).await;
                return Err(e);
            }
        };
        {
            let mut st = self.state.lock().unwrap();
            if let Some(n) = st
                .vm_nics
                .iter_mut()
                .find(|n| n.container_id == *cid && n.tap == spare.tap)
            {
                n.endpoint_id = Some(ep.id.clone());
            }
            st.save(&self.dir)?;
        }
        Ok(ep)
    }

    /// Before endpoint `ep` leaves: if a VM's TAP is joined to it, the TAP becomes a
    /// spare again.
    pub(super) async fn release_vm_nic_locked(&self, ep: &EndpointRecord) -> Result<()> {
        let Some(nic) = self.vm_nic_of(&ep.id) else {
            return Ok(());
        };
        let intent = Intent::ReleaseTap {
            netns: self.netns_path(&ep.container_id),
            tap: nic.tap.clone(),
        };
        self.exec.apply(&ep.container_id, &intent).await?;
        let mut st = self.state.lock().unwrap();
        for n in st.vm_nics.iter_mut() {
            if n.endpoint_id.as_deref() == Some(ep.id.as_str()) {
                n.endpoint_id = None;
            }
        }
        st.save(&self.dir)
    }

    async fn release_tap(&self, cid: &str, tap: &str) {
        let intent = Intent::ReleaseTap {
            netns: self.netns_path(cid),
            tap: tap.to_string(),
        };
        if let Err(e) = self.exec.apply(cid, &intent).await {
            tracing::warn!(container = %cid, tap, "releasing a spare TAP: {e}");
        }
    }

    /// The container's sandbox (and its TAPs) is gone.
    pub(super) fn forget_vm_nics(&self, cid: &str) {
        let mut st = self.state.lock().unwrap();
        let before = st.vm_nics.len();
        st.vm_nics.retain(|n| n.container_id != cid);
        if st.vm_nics.len() != before {
            let _ = st.save(&self.dir);
        }
    }

    /// Containers with VM NICs on record.
    pub(super) fn vm_nic_owners(&self) -> Vec<String> {
        let mut o: Vec<String> = self
            .state
            .lock()
            .unwrap()
            .vm_nics
            .iter()
            .map(|n| n.container_id.clone())
            .collect();
        o.dedup();
        o
    }
}
