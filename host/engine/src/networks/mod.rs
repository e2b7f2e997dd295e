//! Docker's network model: the predefined `bridge`, `host` and `none` networks, user
//! networks with IPAM, endpoints of running containers and their published ports.
//!
//! Layers, one hop each: the API calls a verb here; [`ipam::IpamDriver`] picks subnets and
//! addresses; the [`driver`] decides what the host should look like, as intents; the
//! [`executor`] applies them with netlink under the ownership [`ledger`]; [`nat`] owns the
//! nftables table (rendered from the recorded networks and port mappings); [`dns`] answers
//! names on user networks. Container-side wiring (the sandbox netns, endpoints, ports) is
//! in [`sandbox`] (a microVM's NICs in [`vm_nics`]). Drivers and IPAM are WASM `network-plugin`s, adapted in [`plugin`].

mod create;
pub mod dns;
pub mod driver;
pub mod etc;
pub mod executor;
pub mod ipam;
pub mod ledger;
pub mod model;
pub mod nat;
pub mod netns;
pub mod plugin;
pub mod ports;
mod proxy6;
pub mod sandbox;
pub mod vm_nics;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::events::EventBus;
use crate::{Error, Result};
use berth_plugin_host::PluginHost;
use executor::Executor;
use ipam::{Ipv4Net, Pool};
use model::{NetState, NetworkRecord, DRIVER_BRIDGE, DRIVER_HOST, DRIVER_NULL};

/// Daemon flags for networking.
#[derive(Debug, Clone, Default)]
pub struct NetworkConfig {
    /// `--bridge none` turns the default bridge off: `bridge` is not listed and
    /// containers that do not ask for a network get loopback only.
    pub bridge_disabled: bool,
    /// `--bip`: the default bridge's gateway/prefix.
    pub bip: Option<String>,
    /// `--fixed-cidr`: where the default bridge hands out addresses.
    pub fixed_cidr: Option<String>,
    /// `--ipv6`: IPv6 on the default bridge, from `--fixed-cidr-v6`.
    pub ipv6: bool,
    pub fixed_cidr_v6: Option<String>,
    /// `--default-address-pool base=CIDR,size=N` (repeatable).
    pub default_address_pools: Vec<String>,
    /// `--mtu` of bridges and veths (1500 when unset).
    pub mtu: Option<u32>,
    /// `--microvm-spare-nics`: NICs a microVM boots with besides its networks', for
    /// `network connect` while it runs ([`vm_nics::DEFAULT_SPARE_NICS`] when unset).
    pub microvm_spare_nics: Option<u8>,
}

pub const DEFAULT_BRIDGE_LINK: &str = "berth0";

pub struct Networks {
    dir: PathBuf,
    netns_dir: PathBuf,
    /// Where network drivers come from (`bridge` and third-party network plugins).
    plugins: Option<Arc<PluginHost>>,
    /// `--default-address-pool`s, handed to the IPAM driver.
    pools: Vec<Pool>,
    pub(crate) state: Arc<Mutex<NetState>>,
    pub(crate) exec: Executor,
    /// Serializes changes that touch the kernel (create/remove/setup/teardown), so the
    /// nftables table is always rebuilt from a consistent state.
    pub(crate) op: tokio::sync::Mutex<()>,
    events: Arc<EventBus>,
    dns: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    /// Spare NICs per microVM (see [`vm_nics`]).
    spare_nics: u8,
    /// Published TCP ports on the host's IPv6 addresses (see [`proxy6`]).
    proxies: proxy6::Proxies,
}

fn predefined(id: String, name: &str, driver: &str) -> NetworkRecord {
    NetworkRecord {
        id,
        name: name.into(),
        driver: driver.into(),
        created: crate::fsutil::now_rfc3339(),
        internal: false,
        attachable: false,
        labels: HashMap::new(),
        options: HashMap::new(),
        ipam_driver: "default".into(),
        ipam_options: HashMap::new(),
        subnet: None,
        gateway: None,
        ip_range: None,
        enable_ipv6: false,
        subnet6: None,
        gateway6: None,
        ip_range6: None,
        gateway6_explicit: false,
        aux_addresses: HashMap::new(),
        bridge: String::new(),
        mtu: 1500,
        predefined: true,
    }
}

impl Networks {
    pub fn open(
        data_root: &std::path::Path,
        exec_root: &std::path::Path,
        config: &NetworkConfig,
        plugins: Option<Arc<PluginHost>>,
        events: Arc<EventBus>,
    ) -> Result<Arc<Networks>> {
        let dir = data_root.join("network");
        std::fs::create_dir_all(&dir)?;
        let mut state = NetState::load(&dir)?;
        let pools = if config.default_address_pools.is_empty() {
            ipam::default_pools()
        } else {
            config
                .default_address_pools
                .iter()
                .map(|p| p.parse())
                .collect::<Result<Vec<_>>>()?
        };
        for (name, driver) in [("host", DRIVER_HOST), ("none", DRIVER_NULL)] {
            if !state
                .networks
                .iter()
                .any(|n| n.name == name && n.predefined)
            {
                state
                    .networks
                    .push(predefined(crate::fsutil::new_id(), name, driver));
            }
        }
        if config.bridge_disabled {
            state
                .networks
                .retain(|n| !(n.name == "bridge" && n.predefined));
        }
        let exec = Executor::open(&dir)?;
        let nets = Networks {
            netns_dir: exec_root.join("netns"),
            dir,
            plugins,
            pools,
            state: Arc::new(Mutex::new(NetState::default())),
            exec,
            op: tokio::sync::Mutex::new(()),
            events,
            dns: Mutex::new(HashMap::new()),
            spare_nics: config
                .microvm_spare_nics
                .unwrap_or(vm_nics::DEFAULT_SPARE_NICS)
                .min(vm_nics::MAX_SPARE_NICS),
            proxies: Default::default(),
        };
        if !config.bridge_disabled {
            nets.default_bridge(&mut state, config)?;
        }
        state.save(&nets.dir)?;
        *nets.state.lock().unwrap() = state;
        Ok(Arc::new(nets))
    }

    /// The default bridge, following the flags of this run (`--bip`, `--fixed-cidr`,
    /// `--mtu`); its subnet comes from the IPAM plugin unless `--bip` says.
    fn default_bridge(&self, state: &mut NetState, config: &NetworkConfig) -> Result<()> {
        let mtu = config.mtu.unwrap_or(1500);
        let existing = state
            .networks
            .iter()
            .position(|n| n.name == "bridge" && n.predefined);
        let bip: Option<Ipv4Net> = config.bip.as_deref().map(str::parse).transpose()?;
        let fixed: Option<Ipv4Net> = config.fixed_cidr.as_deref().map(str::parse).transpose()?;
        let mut rec = match existing {
            Some(i) => state.networks.remove(i),
            None => predefined(crate::fsutil::new_id(), "bridge", DRIVER_BRIDGE),
        };
        let (subnet, gateway) = match bip {
            Some(b) => (b.network(), b.addr),
            None => match rec.subnet.zip(rec.gateway) {
                Some(sg) if config.default_address_pools.is_empty() => sg,
                _ => {
                    let used: Vec<Ipv4Net> =
                        state.networks.iter().filter_map(|n| n.subnet).collect();
                    let s = self
                        .ipam_for("default")
                        .map_err(|e| {
                            Error::internal(format!(
                                "the default bridge needs the bridge network plugin ({e}): \
                                 build it with scripts/build-plugins.sh, or start with --bridge none"
                            ))
                        })?
                        .request_pool(None, &used)?;
                    (s, s.nth(1).expect("subnet has hosts"))
                }
            },
        };
        if let Some(f) = fixed {
            if !subnet.contains(f.network().addr) {
                return Err(Error::invalid(format!(
                    "--fixed-cidr {f} is not inside the bridge subnet {subnet}"
                )));
            }
        }
        rec.subnet = Some(subnet);
        rec.gateway = Some(gateway);
        rec.ip_range = fixed;
        // `--ipv6 --fixed-cidr-v6`: the default bridge is dual-stack, its IPv6 gateway
        // the subnet's `::1` (berth has no default IPv6 pool to take one from).
        let v6 = match (config.ipv6, config.fixed_cidr_v6.as_deref()) {
            (false, _) => None,
            (true, None) => {
                return Err(Error::invalid(
                    "--ipv6 needs --fixed-cidr-v6 (the default bridge's IPv6 subnet)",
                ))
            }
            (true, Some(f)) => {
                let s6 = f.parse::<ipam::Ipv6Net>()?.network();
                let gw6 = s6
                    .nth(1)
                    .filter(|_| s6.prefix < 127)
                    .ok_or_else(|| Error::invalid(format!("--fixed-cidr-v6 {s6} is too small")))?;
                Some((s6, gw6))
            }
        };
        rec.enable_ipv6 = v6.is_some();
        rec.subnet6 = v6.map(|v| v.0);
        rec.gateway6 = v6.map(|v| v.1);
        rec.ip_range6 = None;
        rec.gateway6_explicit = false;
        rec.bridge = DEFAULT_BRIDGE_LINK.into();
        rec.mtu = mtu;
        rec.options = HashMap::from([
            (
                "com.docker.network.bridge.default_bridge".into(),
                "true".into(),
            ),
            (
                "com.docker.network.bridge.name".into(),
                DEFAULT_BRIDGE_LINK.into(),
            ),
            ("com.docker.network.driver.mtu".into(), mtu.to_string()),
        ]);
        state.networks.insert(0, rec);
        Ok(())
    }

    pub fn default_bridge_enabled(&self) -> bool {
        self.state
            .lock()
            .unwrap()
            .networks
            .iter()
            .any(|n| n.is_default_bridge())
    }

    /// Docker's lookup: full id, exact name, then unique id prefix.
    pub fn get(&self, name_or_id: &str) -> Result<NetworkRecord> {
        let st = self.state.lock().unwrap();
        if let Some(n) = st
            .networks
            .iter()
            .find(|n| n.id == name_or_id)
            .or_else(|| st.networks.iter().find(|n| n.name == name_or_id))
        {
            return Ok(n.clone());
        }
        if !name_or_id.is_empty() {
            let hits: Vec<_> = st
                .networks
                .iter()
                .filter(|n| n.id.starts_with(name_or_id))
                .collect();
            match hits.len() {
                1 => return Ok(hits[0].clone()),
                n if n > 1 => {
                    return Err(Error::invalid(format!(
                        "network {name_or_id} is ambiguous ({n} matches found based on ID prefix)"
                    )))
                }
                _ => {}
            }
        }
        Err(Error::not_found(format!("network {name_or_id} not found")))
    }

    pub fn list(&self) -> Vec<NetworkRecord> {
        self.state.lock().unwrap().networks.clone()
    }

    pub fn endpoints(&self, network_id: &str) -> Vec<model::EndpointRecord> {
        self.state
            .lock()
            .unwrap()
            .endpoints_of(network_id)
            .cloned()
            .collect()
    }

    pub(super) fn publish(&self, net: &NetworkRecord, action: &str, container: Option<&str>) {
        let mut attrs = vec![
            ("name".to_string(), net.name.clone()),
            ("type".to_string(), net.driver.clone()),
        ];
        if let Some(c) = container {
            attrs.push(("container".into(), c.to_string()));
        }
        self.events.publish("network", action, &net.id, attrs);
    }

    /// Host side of a bridge network (idempotent) and its DNS responder.
    pub(super) async fn bring_up_network(&self, net: &NetworkRecord) -> Result<()> {
        if !net.is_bridge() {
            return Ok(());
        }
        for intent in self.driver_for(net)?.create_network(net)? {
            self.exec.apply(&net.id, &intent).await?;
        }
        if !net.is_default_bridge() {
            self.start_dns(net);
        }
        Ok(())
    }

    pub(super) async fn take_down_network(&self, net: &NetworkRecord) -> Result<()> {
        if let Some(h) = self.dns.lock().unwrap().remove(&net.id) {
            h.abort();
        }
        if !net.is_bridge() || !self.exec.owns(&net.id, ledger::Kind::Link, &net.bridge) {
            return Ok(());
        }
        for intent in self.driver_for(net)?.delete_network(net)? {
            self.exec.apply(&net.id, &intent).await?;
        }
        // Whatever the driver said, nothing the network owns may outlive it.
        self.remove_owned(&net.id).await;
        Ok(())
    }

    /// Names on `network_id`: container name, aliases, full and short id.
    fn dns_lookup(&self, network_id: &str) -> dns::Lookup {
        let state = self.state.clone();
        let network_id = network_id.to_string();
        Arc::new(move |name: &str| {
            let st = state.lock().unwrap();
            st.endpoints_of(&network_id)
                .filter(|e| {
                    e.container_name.eq_ignore_ascii_case(name)
                        || e.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
                        || e.container_id == name
                        || (name.len() == 12 && e.container_id.starts_with(name))
                })
                .flat_map(|e| {
                    std::iter::once(std::net::IpAddr::V4(e.ip))
                        .chain(e.ip6.map(std::net::IpAddr::V6))
                })
                .collect()
        })
    }

    fn start_dns(&self, net: &NetworkRecord) {
        let Some(gw) = net.gateway else { return };
        let mut dns = self.dns.lock().unwrap();
        if dns.contains_key(&net.id) {
            return;
        }
        let lookup = self.dns_lookup(&net.id);
        let id = net.id.clone();
        let h = tokio::spawn(async move {
            if let Err(e) = dns::serve(gw, lookup, dns::upstreams()).await {
                tracing::warn!(network = %id, "embedded DNS stopped: {e}");
            }
        });
        dns.insert(net.id.clone(), h);
    }

    /// `DELETE /networks/{id}`.
    pub async fn remove(&self, name_or_id: &str) -> Result<()> {
        let _op = self.op.lock().await;
        let net = self.get(name_or_id)?;
        if net.predefined {
            return Err(Error::Forbidden(format!(
                "{} is a pre-defined network and cannot be removed",
                net.name
            )));
        }
        if let Some(ep) = self.endpoints(&net.id).first() {
            return Err(Error::Forbidden(format!(
                "error while removing network: network {} has active endpoints (name:{:?} id:{:?})",
                net.name,
                ep.container_name,
                &ep.container_id[..12]
            )));
        }
        self.take_down_network(&net).await?;
        {
            let mut st = self.state.lock().unwrap();
            st.networks.retain(|n| n.id != net.id);
            st.save(&self.dir)?;
        }
        self.apply_nat().await?;
        self.publish(&net, "destroy", None);
        Ok(())
    }

    /// `POST /networks/prune`: user networks without endpoints, unless `keep` says so.
    pub async fn prune(&self, keep: impl Fn(&NetworkRecord) -> bool) -> Vec<String> {
        let candidates: Vec<NetworkRecord> = self
            .list()
            .into_iter()
            .filter(|n| !n.predefined && !keep(n) && self.endpoints(&n.id).is_empty())
            .collect();
        let mut deleted = Vec::new();
        for n in candidates {
            match self.remove(&n.id).await {
                Ok(()) => deleted.push(n.name),
                Err(e) => tracing::warn!(network = %n.name, "prune: {e}"),
            }
        }
        deleted
    }

    /// Rebuild `table ip berth` (and `table ip6 berth`) from the state, and the published
    /// ports' IPv6 listeners ([`proxy6`]). Nothing is touched while no bridge network
    /// exists (e.g. `--bridge none` and no user networks).
    pub(crate) async fn apply_nat(&self) -> Result<()> {
        self.sync_v6_proxies();
        let doc = {
            let st = self.state.lock().unwrap();
            if !st.networks.iter().any(|n| n.is_bridge())
                && !self.exec.owns("berth", ledger::Kind::NftTable, nat::TABLE)
            {
                return Ok(());
            }
            nat::ruleset(&st)
        };
        self.exec
            .claim_other("berth", ledger::Kind::NftTable, nat::TABLE)?;
        tokio::task::spawn_blocking(move || nat::apply(&doc))
            .await
            .map_err(Error::internal)??;
        self.apply_nat6().await
    }

    /// `table ip6 berth` while some network has IPv6 (see [`nat::ruleset6`]); deleted,
    /// and forgotten by the ledger, when the last one goes.
    async fn apply_nat6(&self) -> Result<()> {
        let doc = nat::ruleset6(&self.state.lock().unwrap());
        let owned = self.exec.owns("berth", ledger::Kind::NftTable, nat::TABLE6);
        match doc {
            Some(doc) => {
                self.exec
                    .claim_other("berth", ledger::Kind::NftTable, nat::TABLE6)?;
                tokio::task::spawn_blocking(move || nat::apply(&doc))
                    .await
                    .map_err(Error::internal)?
            }
            None if owned => {
                tokio::task::spawn_blocking(nat::delete_table6)
                    .await
                    .map_err(Error::internal)??;
                self.exec
                    .release_other("berth", ledger::Kind::NftTable, nat::TABLE6)
            }
            None => Ok(()),
        }
    }

    /// At daemon start: bring every bridge network's host side up again (a reboot or a
    /// crash may have lost it), then the NAT table.
    pub async fn bring_up(&self) {
        let _op = self.op.lock().await;
        for net in self.list() {
            if let Err(e) = self.bring_up_network(&net).await {
                tracing::warn!(network = %net.name, "cannot bring the network up: {e}");
            }
        }
        if let Err(e) = self.apply_nat().await {
            tracing::warn!("nftables: {e}");
        }
    }

    /// `NetworkSettings.SandboxKey`.
    pub fn sandbox_key(&self, container_id: &str) -> String {
        self.netns_path(container_id).display().to_string()
    }

    pub(crate) fn netns_path(&self, container_id: &str) -> PathBuf {
        self.netns_dir
            .join(&container_id[..16.min(container_id.len())])
    }

    pub(crate) fn publish_endpoint(&self, net: &NetworkRecord, action: &str, container: &str) {
        self.publish(net, action, Some(container));
    }
}
