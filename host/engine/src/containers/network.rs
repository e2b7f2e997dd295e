//! Containers ↔ networks: which networks a new container joins (`NetworkMode` and
//! `EndpointsConfig`), its sandbox at start, `docker network connect/disconnect`.

use std::net::IpAddr;
use std::sync::Arc;

use berth_agent_protocol::{ContainerSpec, Mount, MountKind, NetworkSpec};
use bollard_stubs::models::{EndpointSettings, HostConfig, NetworkingConfig};

use super::record::ContainerRecord;
use super::{Container, Containers};
use crate::isolation::GuestNetwork;
use crate::networks::model::{Attachment, NetworkRecord};
use crate::networks::sandbox::SandboxRequest;
use crate::networks::{etc, Networks};
use crate::{Error, Result};

/// `NetworkMode` as berth runs it.
enum Mode<'a> {
    Host,
    None,
    Container(&'a str),
    /// The default bridge or a user network (the attachments say which).
    Networks,
}

fn mode(rec: &ContainerRecord) -> Mode<'_> {
    match rec.host_config.network_mode.as_deref().unwrap_or("default") {
        "host" => Mode::Host,
        "none" => Mode::None,
        m if m.starts_with("container:") => Mode::Container(&m["container:".len()..]),
        _ => Mode::Networks,
    }
}

fn attachment(
    net: &crate::networks::model::NetworkRecord,
    es: Option<&EndpointSettings>,
) -> Result<Attachment> {
    let es = es.cloned().unwrap_or_default();
    let aliases = es.aliases.unwrap_or_default();
    let ipv6: Option<std::net::Ipv6Addr> = es
        .ipam_config
        .as_ref()
        .and_then(|c| c.ipv6_address.clone())
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|_| Error::invalid(format!("invalid IPv6 address: {s}")))
        })
        .transpose()?;
    let ipv4 = es
        .ipam_config
        .and_then(|c| c.ipv4_address)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|_| Error::invalid(format!("invalid IPv4 address: {s}")))
        })
        .transpose()?;
    if net.is_default_bridge() {
        if !aliases.is_empty() {
            return Err(Error::invalid(
                "network-scoped alias is supported only for containers in user defined networks",
            ));
        }
        if ipv4.is_some() || ipv6.is_some() {
            return Err(Error::invalid(
                "user specified IP address is supported on user defined networks only",
            ));
        }
    }
    if let Some(ip) = ipv6 {
        // dockerd's words for `--ip6` on a network without an IPv6 subnet, and for one
        // outside it.
        match net.subnet6.filter(|_| net.enable_ipv6) {
            None => {
                return Err(Error::invalid(
                    "user specified IP address is supported only when connecting to networks with user configured subnets",
                ))
            }
            Some(s) if !s.contains(ip) => {
                return Err(Error::invalid(format!(
                    "Invalid address {ip}: It does not belong to any of this network's subnets"
                )))
            }
            Some(_) => {}
        }
    }
    if let Some(m) = es.mac_address.as_deref().filter(|m| !m.is_empty()) {
        crate::networks::ipam::parse_mac(m)?;
    }
    Ok(Attachment {
        network_id: net.id.clone(),
        network_name: net.name.clone(),
        aliases,
        ipv4,
        ipv6,
        mac: es.mac_address.filter(|m| !m.is_empty()),
    })
}

impl Containers {
    pub(crate) fn set_networks(&self, n: Arc<Networks>) {
        let _ = self.networks.set(n);
    }

    pub(crate) fn networks(&self) -> Result<&Arc<Networks>> {
        self.networks
            .get()
            .ok_or_else(|| Error::internal("networks are not initialized"))
    }

    /// The networks a new container joins.
    pub(crate) fn plan_networks(
        &self,
        hc: &HostConfig,
        nc: Option<&NetworkingConfig>,
    ) -> Result<Vec<Attachment>> {
        let nets = self.networks()?;
        let eps = nc
            .and_then(|n| n.endpoints_config.clone())
            .unwrap_or_default();
        let m = hc.network_mode.clone().unwrap_or_default();
        if m == "host" || m == "none" {
            return Ok(Vec::new());
        }
        if let Some(other) = m.strip_prefix("container:") {
            self.get(other)?;
            return Ok(Vec::new());
        }
        let primary = if m == "default" || m == "bridge" || m.is_empty() {
            if !nets.default_bridge_enabled() {
                // `--bridge none`: loopback only, as before networking existed.
                return Ok(Vec::new());
            }
            "bridge".to_string()
        } else {
            m.clone()
        };
        // A 404 would make the docker CLI try to pull the image (it pulls on any 404 from
        // create), so an unknown network is a 400 here, with Docker's words.
        let lookup = |name: &str| {
            nets.get(name).map_err(|e| match e {
                Error::NotFound(m) => Error::invalid(m),
                other => other,
            })
        };
        let net = lookup(&primary)?;
        if !net.is_bridge() {
            return Err(Error::invalid(format!(
                "container cannot be connected to network {} with --network {m}",
                net.name
            )));
        }
        let es = eps
            .get(&m)
            .or_else(|| eps.get(&net.name))
            .or_else(|| eps.get("default"));
        let mut out = vec![attachment(&net, es)?];
        for (k, v) in &eps {
            if k == &m || k == "default" || k == &net.name || k == &net.id {
                continue;
            }
            let other = lookup(k)?;
            if !out.iter().any(|a| a.network_id == other.id) {
                out.push(attachment(&other, Some(v))?);
            }
        }
        Ok(out)
    }

    pub(super) fn sandbox_request(&self, rec: &ContainerRecord) -> SandboxRequest {
        let hc = &rec.host_config;
        SandboxRequest {
            container_id: rec.id.clone(),
            container_name: rec.name.clone(),
            hostname: rec.config.hostname.clone().unwrap_or_default(),
            attachments: rec.networks.clone(),
            port_bindings: hc.port_bindings.clone().unwrap_or_default(),
            publish_all: hc.publish_all_ports.unwrap_or(false),
            exposed: rec.config.exposed_ports.clone().unwrap_or_default(),
            extra_hosts: hc.extra_hosts.clone().unwrap_or_default(),
            dns: hc.dns.clone().unwrap_or_default(),
            dns_search: hc.dns_search.clone().unwrap_or_default(),
            dns_options: hc.dns_options.clone().unwrap_or_default(),
            vm_taps: self.backend(rec).capabilities().guest_nics,
            vm_spare_nics: self
                .networks()
                .map(|n| n.spare_nics())
                .unwrap_or(0)
                .min(self.backend(rec).spare_nic_room(rec, rec.networks.len())),
        }
    }

    /// Prepare the run's network and put it into `spec`: the namespace to join (or
    /// not), and the /etc files. Returns the NICs a VM backend must give its guest.
    pub(crate) async fn network_sandbox(
        &self,
        rec: &ContainerRecord,
        spec: &mut ContainerSpec,
    ) -> Result<GuestNetwork> {
        let mut guest = GuestNetwork::default();
        let mut req = self.sandbox_request(rec);
        if matches!(mode(rec), Mode::Networks) {
            let mut link_env = Vec::new();
            for linked in self.resolve_links(rec)? {
                req.extra_hosts.push(linked.hosts_entry());
                link_env.extend(linked.env);
            }
            // Before the container's own variables, which win (dockerd's order).
            let own = &spec.process.env;
            link_env.retain(|kv| {
                let key = kv.split('=').next().unwrap_or_default();
                !own.iter().any(|o| o.split('=').next() == Some(key))
            });
            link_env.append(&mut spec.process.env);
            spec.process.env = link_env;
        }
        let default_files = || {
            let extra = etc::parse_extra_hosts(&req.extra_hosts, None).unwrap_or_default();
            (
                etc::hosts_file(&req.hostname, &[], &extra),
                etc::resolv_conf(&req.dns, &req.dns_search, &req.dns_options, None),
            )
        };
        let (hosts, resolv) = match mode(rec) {
            Mode::Host if self.backend(rec).capabilities().host_namespaces => {
                spec.network = NetworkSpec::Host;
                (
                    std::fs::read_to_string("/etc/hosts").unwrap_or_default(),
                    std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
                )
            }
            // A microVM's "host" network is the guest's own.
            Mode::Host => {
                spec.network = NetworkSpec::Host;
                default_files()
            }
            Mode::None => {
                spec.network = NetworkSpec::Isolated;
                default_files()
            }
            Mode::Container(other) => {
                let o = self.get(other)?;
                let orec = o.record();
                // A VM's network lives in its guest: the host-side sandbox of a microVM
                // only carries frames to its TAP, and a guest cannot join a host netns.
                if self.backend(rec).capabilities().guest_nics
                    || self.backend(&orec).capabilities().guest_nics
                {
                    return Err(Error::invalid(
                        "--network container: is not supported with microvm isolation: a microVM's network is inside its guest",
                    ));
                }
                if !orec.state.status.is_running() || orec.state.pid == 0 {
                    return Err(Error::conflict(format!(
                        "cannot join network of a non running container: {}",
                        o.id
                    )));
                }
                spec.network = NetworkSpec::Join {
                    path: format!("/proc/{}/ns/net", orec.state.pid).into(),
                };
                let dir = self.container_dir(&o.id);
                let read = |n: &str| std::fs::read_to_string(dir.join(n)).ok();
                match (read("hosts"), read("resolv.conf")) {
                    (Some(h), Some(r)) => (h, r),
                    _ => default_files(),
                }
            }
            Mode::Networks if rec.networks.is_empty() => {
                spec.network = NetworkSpec::Isolated;
                default_files()
            }
            Mode::Networks if self.backend(rec).capabilities().guest_nics => {
                // The sandbox's endpoints come with TAPs; the VMM runs in the sandbox and
                // the guest's NICs are the endpoints, so the container uses the guest's
                // own namespace.
                let info = self.networks()?.setup(&req).await?;
                guest = self.guest_network(rec, info.netns)?;
                spec.network = NetworkSpec::Host;
                (info.hosts, info.resolv_conf)
            }
            Mode::Networks => {
                let info = self.networks()?.setup(&req).await?;
                spec.network = NetworkSpec::Join { path: info.netns };
                (info.hosts, info.resolv_conf)
            }
        };
        self.place_etc_files(rec, spec, hosts, resolv)?;
        Ok(guest)
    }

    /// Engine-owned /etc files: written in the container's dir and bind-mounted where the
    /// backend can mount host files, else handed to the agent as contents.
    fn place_etc_files(
        &self,
        rec: &ContainerRecord,
        spec: &mut ContainerSpec,
        hosts: String,
        resolv: String,
    ) -> Result<()> {
        let hostname = format!("{}\n", rec.config.hostname.clone().unwrap_or_default());
        if !self.backend(rec).capabilities().host_namespaces {
            // The host's copy of what the guest holds, which `network connect` and a
            // linked container's restart edit (see `edit_etc_hosts`).
            let p = self.container_dir(&rec.id).join("hosts");
            let _ = std::fs::remove_file(&p);
            std::fs::write(&p, hosts.as_bytes())?;
            spec.etc_hosts = Some(hosts);
            spec.etc_resolv_conf = Some(resolv);
            spec.etc_hostname = Some(hostname);
            return Ok(());
        }
        let dir = self.container_dir(&rec.id);
        let mut binds = Vec::new();
        for (name, content, dest) in [
            ("hosts", hosts, "/etc/hosts"),
            ("resolv.conf", resolv, "/etc/resolv.conf"),
            ("hostname", hostname, "/etc/hostname"),
        ] {
            // Rewritten at every start and never read back by berth, so a plain write is
            // enough (an atomic write costs two fsyncs per file on every `run`). A
            // previous run's file is replaced (not truncated): a still-mounted old copy
            // must not change under anyone.
            let p = dir.join(name);
            let _ = std::fs::remove_file(&p);
            std::fs::write(&p, content.as_bytes())?;
            // dockerd's way under `--userns-remap`: the remapped root owns them, so it
            // may rewrite them as a root without a user namespace may.
            if let Some(ns) = &spec.userns {
                let (uid, gid) = ns.root();
                std::os::unix::fs::chown(&p, Some(uid), Some(gid))?;
            }
            binds.push(Mount {
                kind: MountKind::Bind { source: p },
                destination: dest.into(),
                readonly: false,
                propagation: String::new(),
                volume: false,
            });
        }
        spec.etc_hosts = None;
        spec.etc_resolv_conf = None;
        spec.etc_hostname = None;
        // First, so the user's own mounts of these paths win.
        binds.append(&mut spec.mounts);
        spec.mounts = binds;
        Ok(())
    }

    /// Release the run's sandbox (no-op when it had none).
    pub(crate) async fn release_network(&self, rec: &ContainerRecord) {
        if let Ok(n) = self.networks() {
            n.teardown(&rec.id).await;
        }
    }

    /// `POST /networks/{id}/connect`.
    pub async fn connect_network(
        &self,
        c: &Arc<Container>,
        network: &str,
        es: Option<EndpointSettings>,
    ) -> Result<()> {
        let nets = self.networks()?;
        let net = nets.get(network)?;
        let _g = c.op.lock().await;
        let rec = c.record();
        match mode(&rec) {
            Mode::Host | Mode::None | Mode::Container(_) => {
                return Err(Error::Forbidden(
                    "container sharing network namespace with another container or host cannot be connected to any other network".into(),
                ))
            }
            Mode::Networks => {}
        }
        if !net.is_bridge() {
            return Err(Error::Forbidden(format!(
                "container cannot be disconnected from host network or connected to host network ({})",
                net.name
            )));
        }
        if rec.networks.iter().any(|a| a.network_id == net.id) {
            return Err(Error::Forbidden(format!(
                "endpoint with name {} already exists in network {}",
                rec.name, net.name
            )));
        }
        let att = attachment(&net, es.as_ref())?;
        let running = rec.state.status.is_running();
        let mut endpoint = None;
        if running && self.backend(&rec).capabilities().guest_nics {
            endpoint = Some(
                self.connect_running_vm(c, &rec, &net, &att, es.as_ref())
                    .await?,
            );
        } else if running && self.backend(&rec).capabilities().host_namespaces {
            let mut req = self.sandbox_request(&rec);
            req.attachments = vec![att.clone()];
            endpoint = Some(nets.connect_running(&req, &att).await?);
            // The file is bind-mounted: rewrite it in place (a rename would leave the
            // container looking at the old inode).
            if let Some(resolv) = self.resolv_conf_after_connect(&rec, &net, &req) {
                let p = self.container_dir(&rec.id).join("resolv.conf");
                if p.exists() {
                    std::fs::write(&p, resolv)?;
                }
            }
        }
        c.update(|r| r.networks.push(att));
        self.save(c)?;
        if let Some(ep) = endpoint {
            let hostname = rec.config.hostname.clone().unwrap_or_default();
            let edit = |hosts: &str| {
                let h = etc::hosts_with_address(hosts, &ep.ip, &hostname);
                Some(match ep.ip6 {
                    Some(ip6) => etc::hosts_with_address(&h, &ip6, &hostname),
                    None => h,
                })
            };
            self.edit_etc_hosts(c, &rec, edit).await?;
        }
        Ok(())
    }

    /// Applies `edit` to a running container's engine-owned /etc/hosts: rewritten in
    /// place on the host (process isolation bind-mounts it, so the container sees the
    /// same inode change), and sent to the guest agent for a microVM (the host's file is
    /// the record of what the guest holds). `edit` answers `None` for no change.
    pub(super) async fn edit_etc_hosts(
        &self,
        c: &Arc<Container>,
        rec: &ContainerRecord,
        edit: impl FnOnce(&str) -> Option<String>,
    ) -> Result<()> {
        let p = self.container_dir(&rec.id).join("hosts");
        let Ok(current) = std::fs::read_to_string(&p) else {
            return Ok(());
        };
        let Some(hosts) = edit(&current) else {
            return Ok(());
        };
        std::fs::write(&p, &hosts)?;
        if !self.backend(rec).capabilities().host_namespaces {
            c.live_agent()?
                .rewrite_etc_hosts(hosts)
                .await
                .map_err(super::lifecycle::agent_err)?;
        }
        Ok(())
    }

    /// Docker turns the embedded DNS on when a container from the default bridge joins a
    /// user network: the container's new /etc/resolv.conf then.
    pub(super) fn resolv_conf_after_connect(
        &self,
        rec: &ContainerRecord,
        net: &NetworkRecord,
        req: &SandboxRequest,
    ) -> Option<String> {
        let nets = self.networks().ok()?;
        let had_embedded = rec
            .networks
            .first()
            .and_then(|a| nets.get(&a.network_id).ok())
            .is_some_and(|n| !n.is_default_bridge());
        (!net.is_default_bridge() && !had_embedded)
            .then(|| etc::resolv_conf(&req.dns, &req.dns_search, &req.dns_options, net.gateway))
    }

    /// `POST /networks/{id}/disconnect`.
    pub async fn disconnect_network(&self, c: &Arc<Container>, network: &str) -> Result<()> {
        let nets = self.networks()?;
        let net = nets.get(network)?;
        let _g = c.op.lock().await;
        let rec = c.record();
        if !rec.networks.iter().any(|a| a.network_id == net.id) {
            if matches!(mode(&rec), Mode::Host) && net.name == "host" {
                return Err(Error::Forbidden(
                    "container cannot be disconnected from host network or connected to host network".into(),
                ));
            }
            return Err(Error::Forbidden(format!(
                "container {} is not connected to network {}",
                c.id, net.name
            )));
        }
        let running = rec.state.status.is_running();
        let lost: Vec<_> = nets
            .container_endpoints(&c.id)
            .into_iter()
            .filter(|e| running && e.network_id == net.id)
            .flat_map(|e| [Some(IpAddr::V4(e.ip)), e.ip6.map(IpAddr::V6)])
            .flatten()
            .collect();
        if running {
            if self.backend(&rec).capabilities().guest_nics {
                self.disconnect_running_vm(c, &rec, &net).await?;
            } else {
                nets.disconnect_running(&c.id, &net.id).await?;
            }
        }
        c.update(|r| r.networks.retain(|a| a.network_id != net.id));
        self.save(c)?;
        if !lost.is_empty() {
            let edit = |hosts: &str| {
                let kept = lost.iter().fold(hosts.to_string(), |h, ip| {
                    etc::hosts_without_address(&h, ip)
                });
                (kept != hosts).then_some(kept)
            };
            self.edit_etc_hosts(c, &rec, edit).await?;
        }
        Ok(())
    }

    /// Container ids (with names) attached to a network by their records, running or not.
    pub fn network_users(&self, network_id: &str) -> Vec<(String, String)> {
        self.all()
            .iter()
            .map(|c| c.record())
            .filter(|r| r.networks.iter().any(|a| a.network_id == network_id))
            .map(|r| (r.id, r.name))
            .collect()
    }
}
