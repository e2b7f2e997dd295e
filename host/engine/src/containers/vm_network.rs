//! The networks of a microVM container: the NICs its VM boots with, and `docker network
//! connect/disconnect` while it runs. The VM cannot get new devices (virtio-mmio has no
//! hotplug), so it boots with spare NICs (`networks/vm_nics.rs`); connect joins a new
//! endpoint to a spare's TAP and asks the guest agent to configure the NIC, disconnect
//! asks the agent to make it a spare again and removes the endpoint.

use std::path::PathBuf;
use std::sync::Arc;

use berth_agent_protocol::NicConfig;
use bollard_stubs::models::EndpointSettings;

use super::lifecycle::agent_err;
use super::record::ContainerRecord;
use super::{Container, Containers};
use crate::isolation::{GuestNetwork, GuestNic, GuestSpareNic};
use crate::networks::model::{Attachment, EndpointRecord, NetworkRecord};
use crate::{Error, Result};

/// Why an endpoint setting cannot be honoured on a running VM, if one cannot.
fn unsupported_setting(att: &Attachment, es: Option<&EndpointSettings>) -> Option<&'static str> {
    if att.mac.is_some() {
        return Some(
            "--mac-address: the NIC a running microVM joins a network with is one of its spare NICs, whose MAC is fixed at boot",
        );
    }
    if es
        .and_then(|e| e.driver_opts.as_ref())
        .is_some_and(|o| !o.is_empty())
    {
        return Some("--driver-opt: endpoint driver options are not supported");
    }
    None
}

impl Containers {
    /// The NICs a VM needs for the sandbox just set up: one per endpoint, on its TAP, then
    /// the spares.
    pub(super) fn guest_network(
        &self,
        rec: &ContainerRecord,
        netns: PathBuf,
    ) -> Result<GuestNetwork> {
        let nets = self.networks()?;
        let eps = nets.container_endpoints(&rec.id);
        let mut guest = GuestNetwork {
            netns: Some(netns),
            ..Default::default()
        };
        for nic in nets.vm_nics(&rec.id) {
            let ep = nic
                .endpoint_id
                .as_ref()
                .and_then(|id| eps.iter().find(|e| &e.id == id));
            match ep {
                Some(ep) => guest.nics.push(GuestNic {
                    tap: nic.tap,
                    mtu: nets.get(&ep.network_id)?.mtu,
                    ifname: ep.ifname.clone(),
                    mac: ep.mac.clone(),
                    address: ep.ip,
                    prefix: ep.prefix,
                    gateway: ep.gateway,
                    address6: ep.ip6,
                    prefix6: ep.prefix6,
                    gateway6: ep.gateway6,
                }),
                None => guest.spares.push(GuestSpareNic {
                    tap: nic.tap,
                    mac: nic.mac,
                    spare_name: nic.spare_name,
                }),
            }
        }
        Ok(guest)
    }

    /// `network connect` of a running microVM container: a new endpoint on a spare NIC,
    /// configured by the guest agent. Returns the endpoint.
    pub(super) async fn connect_running_vm(
        &self,
        c: &Arc<Container>,
        rec: &ContainerRecord,
        net: &NetworkRecord,
        att: &Attachment,
        es: Option<&EndpointSettings>,
    ) -> Result<EndpointRecord> {
        if let Some(why) = unsupported_setting(att, es) {
            return Err(Error::invalid(format!(
                "cannot connect running microVM container {} to network {}: {why}",
                rec.name.trim_start_matches('/'),
                net.name
            )));
        }
        let agent = c.live_agent()?;
        let nets = self.networks()?;
        let mut req = self.sandbox_request(rec);
        req.attachments = vec![att.clone()];
        let ep = nets.connect_running_vm(&req, att).await?;
        let nic = NicConfig {
            mac: ep.mac.clone(),
            name: ep.ifname.clone(),
            address: ep.ip,
            prefix: ep.prefix,
            gateway: ep.gateway,
            mtu: net.mtu,
            address6: ep.ip6,
            prefix6: ep.prefix6,
            gateway6: ep.gateway6,
        };
        let resolv = self.resolv_conf_after_connect(rec, net, &req);
        if let Err(e) = agent.configure_nic(nic, resolv).await {
            // Back to where it was: the guest NIC and the TAP spares again, no endpoint.
            if let Some(spare) = nets.vm_nic_of(&ep.id) {
                let _ = agent.deconfigure_nic(&spare.mac, &spare.spare_name).await;
            }
            if let Err(e) = nets.disconnect_running(&rec.id, &net.id).await {
                tracing::warn!(container = %rec.id, "backing out of network connect: {e}");
            }
            let e = agent_err(e);
            return Err(Error::internal(format!(
                "the microVM's guest agent could not configure its NIC for network {}: {e}",
                net.name
            )));
        }
        Ok(ep)
    }

    /// `network disconnect` of a running microVM container: the guest NIC becomes a spare
    /// (down, no address, no routes), then the endpoint goes and its TAP with it.
    pub(super) async fn disconnect_running_vm(
        &self,
        c: &Arc<Container>,
        rec: &ContainerRecord,
        net: &NetworkRecord,
    ) -> Result<()> {
        let nets = self.networks()?;
        let agent = c.live_agent()?;
        for ep in nets
            .container_endpoints(&rec.id)
            .into_iter()
            .filter(|e| e.network_id == net.id)
        {
            // A VM booted by a berthd without spare NICs has no NIC on record: its guest
            // cannot be told, so the endpoint stays until the container stops.
            let nic = nets.vm_nic_of(&ep.id).ok_or_else(|| {
                Error::invalid(format!(
                    "container {} runs in a microVM started without reconfigurable NICs: restart it to disconnect it from {}",
                    rec.name.trim_start_matches('/'),
                    net.name
                ))
            })?;
            agent
                .deconfigure_nic(&nic.mac, &nic.spare_name)
                .await
                .map_err(|e| {
                    Error::internal(format!(
                        "the microVM's guest agent could not take down its NIC for network {}: {}",
                        net.name,
                        agent_err(e)
                    ))
                })?;
        }
        nets.disconnect_running(&rec.id, &net.id).await
    }
}
