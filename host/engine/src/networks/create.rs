//! `POST /networks/create`: a network's record from Docker's request (driver, IPAM
//! configs of both families, options), then its host side. IPv6 (`--ipv6` with an
//! IPv6 `--subnet`) is a second IPAM config: berth, like dockerd 20.10, has no default
//! IPv6 pool, so an IPv6 network names its subnet.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use bollard_stubs::models::{IpamConfig, NetworkCreateRequest};

use super::ipam::{IpamDriver, Ipv4Net, Ipv6Net};
use super::model::{NetState, NetworkRecord, DRIVER_BRIDGE, DRIVER_HOST, DRIVER_NULL};
use super::Networks;
use crate::{Error, Result};

/// Whether an IPAM config is an IPv6 one (its subnet is IPv6).
fn is_v6_config(c: &IpamConfig) -> bool {
    c.subnet
        .as_deref()
        .is_some_and(|s| s.split('/').next().unwrap_or("").contains(':'))
}

/// The IPv6 half of a network.
#[derive(Clone, Copy)]
struct V6 {
    subnet: Ipv6Net,
    gateway: Ipv6Addr,
    range: Option<Ipv6Net>,
    explicit_gateway: bool,
}

/// The IPv6 config of a new network, with dockerd's answers: `--ipv6` without an IPv6
/// subnet finds no default pool (404), two IPv6 subnets are refused (403), a gateway
/// outside the subnet cannot be allocated (500). A subnet without `--ipv6` is recorded
/// (and shown) but gives no endpoint an IPv6 address, as dockerd.
fn ipv6_config(
    ipam: &dyn IpamDriver,
    st: &NetState,
    configs: &[IpamConfig],
    enabled: bool,
) -> Result<Option<V6>> {
    if configs.len() > 1 {
        return Err(Error::Forbidden(
            "bridge driver doesn't support multiple subnets".into(),
        ));
    }
    let Some(c) = configs.first() else {
        if enabled {
            return Err(Error::not_found(
                "could not find an available, non-overlapping IPv6 address pool among the defaults to assign to the network",
            ));
        }
        return Ok(None);
    };
    let text = c.subnet.as_deref().unwrap_or_default();
    let subnet: Ipv6Net = text
        .parse()
        .map_err(|e| Error::invalid(format!("Invalid subnet {text} : {e}")))?;
    let subnet = subnet.network();
    if !(1..=127).contains(&subnet.prefix) {
        return Err(Error::invalid(format!(
            "invalid subnet {subnet}: berth takes IPv6 prefixes from /1 to /127"
        )));
    }
    let used: Vec<Ipv6Net> = st.networks.iter().filter_map(|n| n.subnet6).collect();
    // Checked by the IPAM only while IPv6 is on: a 0.2.0 IPAM plugin cannot check it, and
    // a recorded-only subnet is not allocated (dockerd does allocate it; berth never
    // hands out its addresses).
    let subnet = if enabled {
        ipam.request_pool6(subnet, &used)?
    } else {
        subnet
    };
    let (gateway, explicit_gateway) = match c.gateway.as_deref().filter(|g| !g.is_empty()) {
        Some(g) => {
            let ip: Ipv6Addr = g
                .parse()
                .map_err(|_| Error::invalid(format!("invalid gateway address {g}")))?;
            if !subnet.contains(ip) {
                return Err(Error::internal(format!(
                    "failed to allocate gateway ({ip}): Requested address is out of range"
                )));
            }
            (ip, true)
        }
        None => (
            subnet
                .nth(1)
                .ok_or_else(|| Error::invalid(format!("subnet {subnet} is too small")))?,
            false,
        ),
    };
    let range = match c.ip_range.as_deref().filter(|r| !r.is_empty()) {
        Some(r) => {
            let r: Ipv6Net = r.parse()?;
            if !subnet.contains(r.network().addr) || r.prefix < subnet.prefix {
                return Err(Error::invalid(format!("no matching subnet for range {r}")));
            }
            Some(r.network())
        }
        None => None,
    };
    Ok(Some(V6 {
        subnet,
        gateway,
        range,
        explicit_gateway,
    }))
}

impl Networks {
    /// `POST /networks/create`.
    pub async fn create(&self, req: NetworkCreateRequest) -> Result<(String, String)> {
        let name = req.name.trim().to_string();
        if name.is_empty() {
            return Err(Error::invalid("network name must not be empty"));
        }
        let driver = req
            .driver
            .clone()
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| DRIVER_BRIDGE.into());
        if driver == DRIVER_HOST || driver == DRIVER_NULL {
            return Err(Error::Forbidden(format!(
                "only one instance of \"{driver}\" network is allowed"
            )));
        }
        // `bridge` is a network plugin too (the default one); anything else must be a
        // loaded network plugin of that name, as Docker looks up `-d NAME`.
        if !self.has_driver(&driver) {
            return Err(Error::not_found(format!("plugin \"{driver}\" not found")));
        }
        let ipam_name = req
            .ipam
            .as_ref()
            .and_then(|i| i.driver.clone())
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| "default".into());
        let ipam_driver = self.ipam_for(&ipam_name)?;
        let _op = self.op.lock().await;
        let mut rec = {
            let st = self.state.lock().unwrap();
            if matches!(name.as_str(), "bridge" | "host" | "none" | "default") {
                // dockerd's words, trailing space included.
                return Err(Error::Forbidden(format!(
                    "operation is not permitted on predefined {name} network "
                )));
            }
            if st.networks.iter().any(|n| n.name == name) {
                return Err(Error::conflict(format!(
                    "network with name {name} already exists"
                )));
            }
            let ipam = req.ipam.clone().unwrap_or_default();
            let configs = ipam.config.clone().unwrap_or_default();
            // IPv6 configs (their subnet says so) go to the IPv6 half; the rest is the
            // IPv4 one.
            let (v6_configs, configs): (Vec<IpamConfig>, Vec<IpamConfig>) =
                configs.into_iter().partition(is_v6_config);
            if configs.len() > 1 {
                return Err(Error::invalid(
                    "berth supports one IPv4 IPAM config per network",
                ));
            }
            let enable_ipv6 = req.enable_ipv6.unwrap_or(false);
            let v6 = ipv6_config(&*ipam_driver, &st, &v6_configs, enable_ipv6)?;
            let used: Vec<Ipv4Net> = st.networks.iter().filter_map(|n| n.subnet).collect();
            let (subnet, gateway, ip_range, aux) = match configs.first() {
                Some(c) if c.subnet.as_deref().is_some_and(|s| !s.is_empty()) => {
                    let text = c.subnet.as_deref().unwrap_or_default();
                    let subnet: Ipv4Net = text
                        .parse()
                        .map_err(|e| Error::invalid(format!("Invalid subnet {text} : {e}")))?;
                    let subnet = subnet.network();
                    if !(8..=30).contains(&subnet.prefix) {
                        return Err(Error::invalid(format!(
                            "invalid subnet {subnet}: berth takes prefixes from /8 to /30"
                        )));
                    }
                    let subnet = ipam_driver.request_pool(Some(subnet), &used)?;
                    let gateway = match c.gateway.as_deref().filter(|g| !g.is_empty()) {
                        Some(g) => {
                            let g: Ipv4Addr = g.parse().map_err(|_| {
                                Error::invalid(format!("invalid gateway address {g}"))
                            })?;
                            if !subnet.contains(g) {
                                return Err(Error::invalid(format!(
                                    "no matching subnet for gateway {g}"
                                )));
                            }
                            g
                        }
                        None => subnet.nth(1).ok_or_else(|| {
                            Error::invalid(format!("subnet {subnet} is too small"))
                        })?,
                    };
                    let range = match c.ip_range.as_deref().filter(|r| !r.is_empty()) {
                        Some(r) => {
                            let r: Ipv4Net = r.parse()?;
                            if !subnet.contains(r.network().addr) || r.prefix < subnet.prefix {
                                return Err(Error::invalid(format!(
                                    "no matching subnet for range {r}"
                                )));
                            }
                            Some(r.network())
                        }
                        None => None,
                    };
                    let mut aux = HashMap::new();
                    for (k, v) in c.auxiliary_addresses.clone().unwrap_or_default() {
                        let ip: Ipv4Addr = v.parse().map_err(|_| {
                            Error::invalid(format!("invalid auxiliary address {k}={v}"))
                        })?;
                        if !subnet.contains(ip) {
                            return Err(Error::invalid(format!(
                                "no matching subnet for aux-address {ip}"
                            )));
                        }
                        aux.insert(k, ip);
                    }
                    (subnet, gateway, range, aux)
                }
                Some(c) if c.gateway.is_some() || c.ip_range.is_some() => {
                    return Err(Error::invalid(
                        "gateway and ip-range need a subnet (--subnet)",
                    ))
                }
                _ => {
                    let s = ipam_driver.request_pool(None, &used)?;
                    (s, s.nth(1).expect("subnet has hosts"), None, HashMap::new())
                }
            };
            let id = crate::fsutil::new_id();
            let options = req.options.clone().unwrap_or_default();
            let bridge = options
                .get("com.docker.network.bridge.name")
                .cloned()
                .unwrap_or_else(|| format!("br-{}", &id[..12]));
            let name_ok = |c: char| c.is_ascii_alphanumeric() || "_.-".contains(c);
            if bridge.len() > 15 || bridge.is_empty() || !bridge.chars().all(name_ok) {
                return Err(Error::invalid(format!("invalid bridge name {bridge:?}")));
            }
            let mtu = match options.get("com.docker.network.driver.mtu") {
                Some(m) => m
                    .parse::<u32>()
                    .ok()
                    .filter(|m| (68..=65535).contains(m))
                    .ok_or_else(|| Error::invalid(format!("invalid MTU {m}")))?,
                None => 1500,
            };
            NetworkRecord {
                id,
                name: name.clone(),
                driver,
                created: crate::fsutil::now_rfc3339(),
                internal: req.internal.unwrap_or(false),
                attachable: req.attachable.unwrap_or(false),
                labels: req.labels.clone().unwrap_or_default(),
                options,
                ipam_driver: ipam
                    .driver
                    .filter(|d| !d.is_empty())
                    .unwrap_or_else(|| "default".into()),
                ipam_options: ipam.options.unwrap_or_default(),
                subnet: Some(subnet),
                gateway: Some(gateway),
                ip_range,
                enable_ipv6,
                subnet6: v6.map(|v| v.subnet),
                gateway6: v6.map(|v| v.gateway),
                ip_range6: v6.and_then(|v| v.range),
                gateway6_explicit: v6.is_some_and(|v| v.explicit_gateway),
                aux_addresses: aux,
                bridge,
                mtu,
                predefined: false,
            }
        };
        rec.options.retain(|k, _| !k.is_empty());
        {
            let mut st = self.state.lock().unwrap();
            st.networks.push(rec.clone());
            st.save(&self.dir)?;
        }
        if let Err(e) = self.bring_up_network(&rec).await {
            let _ = self.take_down_network(&rec).await;
            let mut st = self.state.lock().unwrap();
            st.networks.retain(|n| n.id != rec.id);
            let _ = st.save(&self.dir);
            return Err(e);
        }
        self.apply_nat().await?;
        self.publish(&rec, "create", None);
        Ok((rec.id, String::new()))
    }
}
