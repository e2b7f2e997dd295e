//! A container's network sandbox: the netns berth prepares before the container's process
//! starts, its endpoints (one per network), published ports and /etc files. Torn down
//! when the run ends; reconciled against the ledger at daemon start.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use bollard_stubs::models::PortBinding;

use super::ledger::Kind;
use super::model::{Attachment, EndpointRecord, NetworkRecord, PortMapping, VmNic};
use super::{etc, ipam, netns, ports, Networks};
use crate::{Error, Result};

/// What a container asks of the network when it starts.
pub struct SandboxRequest {
    pub container_id: String,
    pub container_name: String,
    pub hostname: String,
    pub attachments: Vec<Attachment>,
    pub port_bindings: HashMap<String, Option<Vec<PortBinding>>>,
    pub publish_all: bool,
    pub exposed: Vec<String>,
    pub extra_hosts: Vec<String>,
    pub dns: Vec<String>,
    pub dns_search: Vec<String>,
    pub dns_options: Vec<String>,
    /// The container runs in a VM: each endpoint also gets a TAP ([`tap_name`]) for the
    /// VM's NIC, joined to it by [`Intent::Tap`](super::driver::Intent::Tap), and the
    /// sandbox gets spare TAPs for networks connected while it runs (see `vm_nics.rs`).
    pub vm_taps: bool,
    /// How many spare NICs the VM boots with (`--microvm-spare-nics`, fewer when its
    /// other devices leave no room).
    pub vm_spare_nics: usize,
}

/// The TAP that carries endpoint `ifname` (`eth0` → `tap0`) into a VM.
pub fn tap_name(ifname: &str) -> String {
    format!("tap{}", ifname.strip_prefix("eth").unwrap_or(ifname))
}

/// A prepared sandbox: the netns to join and the /etc contents.
pub struct SandboxInfo {
    pub netns: PathBuf,
    pub hosts: String,
    pub resolv_conf: String,
}

impl Networks {
    /// Prepare the container's sandbox. On failure nothing is left behind.
    pub async fn setup(&self, req: &SandboxRequest) -> Result<SandboxInfo> {
        let _op = self.op.lock().await;
        let res = self.setup_locked(req).await;
        if res.is_err() {
            self.teardown_locked(&req.container_id).await;
        }
        res
    }

    async fn setup_locked(&self, req: &SandboxRequest) -> Result<SandboxInfo> {
        let cid = &req.container_id;
        let path = self.netns_path(cid);
        let path_s = path.display().to_string();
        self.exec.claim_other(cid, Kind::Netns, &path_s)?;
        {
            let p = path.clone();
            tokio::task::spawn_blocking(move || netns::create(&p))
                .await
                .map_err(Error::internal)?
                .map_err(|e| Error::internal(format!("creating the network namespace: {e}")))?;
        }
        self.exec.loopback_up(&path).await?;
        let mut eps = Vec::new();
        for (i, att) in req.attachments.iter().enumerate() {
            eps.push(self.join_locked(req, att, &format!("eth{i}"), None).await?);
        }
        if req.vm_taps {
            self.boot_vm_nics_locked(cid, &eps, req.vm_spare_nics)
                .await?;
        }
        if let Some(first) = eps.first() {
            let net = self.get(&first.network_id)?;
            let reqs = ports::requests(&req.port_bindings, req.publish_all, &req.exposed)?;
            // The nft table depends on networks and ports only: a container without
            // published ports costs no `nft` run.
            if !net.internal && !reqs.is_empty() {
                {
                    let mut st = self.state.lock().unwrap();
                    let maps = ports::allocate(&reqs, &st.ports, cid, first.ip).map_err(|e| {
                        Error::internal(format!(
                            "driver failed programming external connectivity on endpoint {} ({}): {e}",
                            req.container_name, first.id
                        ))
                    })?;
                    st.ports.extend(maps);
                    st.save(&self.dir)?;
                }
                self.apply_nat().await?;
            }
        }
        Ok(self.etc_files(req, &eps))
    }

    /// One endpoint of `req`'s container on `att`'s network, named `ifname` inside. A
    /// running VM's endpoint goes onto the spare NIC `spare` (its MAC, its TAP).
    pub(super) async fn join_locked(
        &self,
        req: &SandboxRequest,
        att: &Attachment,
        ifname: &str,
        spare: Option<&VmNic>,
    ) -> Result<EndpointRecord> {
        let cid = &req.container_id;
        let net = self.get(&att.network_id)?;
        let (Some(subnet), true) = (net.subnet, net.is_bridge()) else {
            return Err(Error::invalid(format!(
                "network {} cannot take endpoints",
                net.name
            )));
        };
        let ep = {
            let mut st = self.state.lock().unwrap();
            let mut used: HashSet<Ipv4Addr> = st.endpoints_of(&net.id).map(|e| e.ip).collect();
            used.extend(net.gateway);
            used.extend(net.aux_addresses.values().copied());
            let ip = self
                .ipam_for(&net.ipam_driver)?
                .request_address(subnet, net.ip_range, att.ipv4, &used)
                .map_err(|e| match e {
                    Error::Forbidden(m) if att.ipv4.is_none() => {
                        Error::Forbidden(format!("{m}: {} ({})", net.name, net.id))
                    }
                    other => other,
                })?;
            // The IPv6 address of a dual-stack network (`--ip6` or the first free one).
            let v6 = match net.ipv6() {
                Some((subnet6, gw6)) => {
                    let mut used6: HashSet<Ipv6Addr> =
                        st.endpoints_of(&net.id).filter_map(|e| e.ip6).collect();
                    used6.insert(gw6);
                    let ip6 = self
                        .ipam_for(&net.ipam_driver)?
                        .request_address6(subnet6, net.ip_range6, att.ipv6, &used6)
                        .map_err(|e| match e {
                            Error::Forbidden(m) if att.ipv6.is_none() => {
                                Error::Forbidden(format!("{m}: {} ({})", net.name, net.id))
                            }
                            other => other,
                        })?;
                    Some((ip6, subnet6.prefix, gw6))
                }
                None => None,
            };
            let id = crate::fsutil::new_id();
            let ep = EndpointRecord {
                host_if: format!("veth{}", &id[..7]),
                id,
                network_id: net.id.clone(),
                container_id: cid.clone(),
                container_name: req.container_name.clone(),
                ip,
                prefix: subnet.prefix,
                // An internal network has no way out: no default route (as Docker).
                gateway: net.gateway.filter(|_| !net.internal),
                ip6: v6.map(|v| v.0),
                prefix6: v6.map(|v| v.1).unwrap_or(0),
                gateway6: v6.map(|v| v.2).filter(|_| !net.internal),
                mac: match spare {
                    Some(nic) => nic.mac.clone(),
                    None => att
                        .mac
                        .clone()
                        .filter(|m| !m.is_empty())
                        .unwrap_or_else(|| ipam::mac_for(ip)),
                },
                aliases: att.aliases.clone(),
                ifname: ifname.to_string(),
            };
            // Recorded before the kernel is touched: a crash leaves an entry that
            // reconciliation will clean, never an unrecorded veth.
            st.endpoints.push(ep.clone());
            st.save(&self.dir)?;
            ep
        };
        let mac = ipam::parse_mac(&ep.mac)?;
        let path = self.netns_path(cid);
        for intent in self.driver_for(&net)?.join(&net, &ep, path.clone(), mac)? {
            self.exec.apply(&ep.id, &intent).await?;
        }
        // The sandbox's own intents (not the driver's), owned by the container that
        // owns the netns.
        let tap = match spare {
            Some(nic) => Some(super::driver::Intent::JoinTap {
                netns: path,
                ifname: ep.ifname.clone(),
                tap: nic.tap.clone(),
                mtu: net.mtu,
            }),
            None if req.vm_taps => Some(super::driver::Intent::Tap {
                netns: path,
                ifname: ep.ifname.clone(),
                tap: tap_name(&ep.ifname),
                mtu: net.mtu,
            }),
            None => None,
        };
        if let Some(tap) = tap {
            self.exec.apply(cid, &tap).await?;
        }
        self.publish_endpoint(&net, "connect", cid);
        Ok(ep)
    }

    fn etc_files(&self, req: &SandboxRequest, eps: &[EndpointRecord]) -> SandboxInfo {
        let own: Vec<(IpAddr, Vec<String>)> = eps
            .iter()
            .flat_map(|e| std::iter::once(IpAddr::V4(e.ip)).chain(e.ip6.map(IpAddr::V6)))
            .map(|ip| (ip, Vec::new()))
            .collect();
        let first_net = eps.first().and_then(|e| self.get(&e.network_id).ok());
        let host_gateway = first_net.as_ref().and_then(|n| n.gateway).or_else(|| {
            self.list()
                .iter()
                .find(|n| n.is_default_bridge())
                .and_then(|n| n.gateway)
        });
        let extra = etc::parse_extra_hosts(&req.extra_hosts, host_gateway).unwrap_or_default();
        let embedded = first_net
            .filter(|n| !n.is_default_bridge())
            .and_then(|n| n.gateway);
        SandboxInfo {
            netns: self.netns_path(&req.container_id),
            hosts: etc::hosts_file(&req.hostname, &own, &extra),
            resolv_conf: etc::resolv_conf(&req.dns, &req.dns_search, &req.dns_options, embedded),
        }
    }

    /// Connect a running container's sandbox to one more network.
    pub async fn connect_running(
        &self,
        req: &SandboxRequest,
        att: &Attachment,
    ) -> Result<EndpointRecord> {
        let _op = self.op.lock().await;
        let ifname = self.free_ifname(&req.container_id);
        self.join_locked(req, att, &ifname, None).await
    }

    /// The first `ethN` none of the container's endpoints uses.
    pub(super) fn free_ifname(&self, container_id: &str) -> String {
        let used: HashSet<String> = self
            .container_endpoints(container_id)
            .into_iter()
            .map(|e| e.ifname)
            .collect();
        (0..)
            .map(|i| format!("eth{i}"))
            .find(|n| !used.contains(n))
            .expect("unbounded")
    }

    /// Disconnect a running container from one network.
    pub async fn disconnect_running(&self, container_id: &str, network_id: &str) -> Result<()> {
        let _op = self.op.lock().await;
        let eps: Vec<EndpointRecord> = self
            .container_endpoints(container_id)
            .into_iter()
            .filter(|e| e.network_id == network_id)
            .collect();
        let had_ports = !self.container_ports(container_id).is_empty();
        for ep in eps {
            // A VM's NIC: its TAP becomes a spare again (before the veth it mirrors goes).
            self.release_vm_nic_locked(&ep).await?;
            self.leave_locked(&ep).await;
        }
        if had_ports && self.container_ports(container_id).is_empty() {
            self.apply_nat().await?;
        }
        Ok(())
    }

    pub(super) async fn leave_locked(&self, ep: &EndpointRecord) {
        let net = self.get(&ep.network_id).ok();
        if let Some(net) = &net {
            let intents = self
                .driver_for(net)
                .and_then(|d| d.leave(net, ep))
                .unwrap_or_else(|e| {
                    tracing::warn!(endpoint = %ep.id, "network driver: {e}");
                    Vec::new()
                });
            for intent in intents {
                if let Err(e) = self.exec.apply(&ep.id, &intent).await {
                    tracing::warn!(endpoint = %ep.id, "leaving the network: {e}");
                }
            }
            // Whatever the driver said, nothing the endpoint owns may outlive it.
            self.remove_owned(&ep.id).await;
        } else {
            self.remove_owned(&ep.id).await;
        }
        {
            let mut st = self.state.lock().unwrap();
            st.endpoints.retain(|e| e.id != ep.id);
            if !st
                .endpoints
                .iter()
                .any(|e| e.container_id == ep.container_id)
            {
                st.ports.retain(|p| p.container_id != ep.container_id);
            }
            let _ = st.save(&self.dir);
        }
        if let Some(net) = &net {
            self.publish_endpoint(net, "disconnect", &ep.container_id);
        }
    }

    /// Release everything the container's run held: endpoints, ports, the netns.
    /// Idempotent; safe for containers that never had a sandbox.
    pub async fn teardown(&self, container_id: &str) {
        let _op = self.op.lock().await;
        self.teardown_locked(container_id).await;
    }

    async fn teardown_locked(&self, cid: &str) {
        let eps = self.container_endpoints(cid);
        let had_ports = self
            .state
            .lock()
            .unwrap()
            .ports
            .iter()
            .any(|p| p.container_id == cid);
        for ep in &eps {
            self.leave_locked(ep).await;
        }
        if had_ports {
            let mut st = self.state.lock().unwrap();
            st.ports.retain(|p| p.container_id != cid);
            let _ = st.save(&self.dir);
        }
        if had_ports {
            if let Err(e) = self.apply_nat().await {
                tracing::warn!(container = %cid, "nftables: {e}");
            }
        }
        self.remove_owned(cid).await;
        // The TAPs went with the netns.
        self.forget_vm_nics(cid);
    }

    /// Remove whatever the ledger records for `owner` (a container's netns, an
    /// endpoint's veth, a deleted network's bridge).
    pub(super) async fn remove_owned(&self, owner: &str) {
        let entries = self.exec.ledger.lock().unwrap().owned_by(owner);
        for e in entries {
            let res = match e.kind {
                Kind::Link => {
                    self.exec
                        .apply(
                            owner,
                            &super::driver::Intent::RemoveLink {
                                link: e.name.clone(),
                            },
                        )
                        .await
                }
                Kind::Netns => {
                    let p = PathBuf::from(&e.name);
                    match tokio::task::spawn_blocking(move || netns::remove(&p)).await {
                        Ok(Ok(())) => self.exec.release_other(owner, Kind::Netns, &e.name),
                        Ok(Err(err)) => Err(err.into()),
                        Err(err) => Err(Error::internal(err)),
                    }
                }
                Kind::Address => self.exec.release_other(owner, Kind::Address, &e.name),
                Kind::NftTable => Ok(()),
            };
            if let Err(err) = res {
                tracing::warn!(owner, name = %e.name, "cannot remove: {err}");
            }
        }
    }

    pub fn container_endpoints(&self, container_id: &str) -> Vec<EndpointRecord> {
        self.state
            .lock()
            .unwrap()
            .endpoints
            .iter()
            .filter(|e| e.container_id == container_id)
            .cloned()
            .collect()
    }

    pub fn container_ports(&self, container_id: &str) -> Vec<PortMapping> {
        self.state
            .lock()
            .unwrap()
            .ports
            .iter()
            .filter(|p| p.container_id == container_id)
            .cloned()
            .collect()
    }

    /// After the containers were restored: drop the sandboxes of containers that are not
    /// running any more, and whatever the ledger records for owners that no longer exist
    /// (a crash between a ledger write and the state write).
    pub async fn reconcile(&self, running: &HashSet<String>) {
        let _op = self.op.lock().await;
        let stale: HashSet<String> = self
            .state
            .lock()
            .unwrap()
            .endpoints
            .iter()
            .filter(|e| !running.contains(&e.container_id))
            .map(|e| e.container_id.clone())
            .collect();
        // A VM whose networks were all disconnected has spare NICs and no endpoint.
        let stale: HashSet<String> = stale
            .into_iter()
            .chain(self.vm_nic_owners())
            .filter(|cid| !running.contains(cid))
            .collect();
        for cid in &stale {
            tracing::info!(container = %cid, "removing the network sandbox of a stopped container");
            self.teardown_locked(cid).await;
        }
        let (endpoints, networks): (HashSet<String>, HashSet<String>) = {
            let st = self.state.lock().unwrap();
            (
                st.endpoints.iter().map(|e| e.id.clone()).collect(),
                st.networks.iter().map(|n| n.id.clone()).collect(),
            )
        };
        let owners = self.exec.ledger.lock().unwrap().owners();
        for owner in owners {
            if owner == "berth"
                || endpoints.contains(&owner)
                || networks.contains(&owner)
                || running.contains(&owner)
            {
                continue;
            }
            tracing::info!(owner, "removing leftovers recorded in the network ledger");
            self.remove_owned(&owner).await;
        }
        if let Err(e) = self.apply_nat().await {
            tracing::warn!("nftables: {e}");
        }
    }

    /// Docker's `NetworkSettings.Networks` and `Ports` for a container.
    pub fn view(
        &self,
        container_id: &str,
    ) -> (Vec<(NetworkRecord, EndpointRecord)>, Vec<PortMapping>) {
        let st = self.state.lock().unwrap();
        let eps = st
            .endpoints
            .iter()
            .filter(|e| e.container_id == container_id)
            .filter_map(|e| st.network(&e.network_id).map(|n| (n.clone(), e.clone())))
            .collect();
        let ports = st
            .ports
            .iter()
            .filter(|p| p.container_id == container_id)
            .cloned()
            .collect();
        (eps, ports)
    }
}
