//! Network drivers and IPAM served by WASM `network-plugin`s (`berth:driver@0.2.0`,
//! IPv4 only, and `0.3.0`, dual-stack: the plugin host refuses IPv6 to a 0.2.0 one).
//! The default `bridge` driver and Docker's `default` IPAM are the `bridge` plugin;
//! `docker network create -d NAME` (and `--ipam-driver NAME`) pick any other loaded
//! network plugin. What a plugin answers is checked here against the records it was
//! asked about (an endpoint goes only into the sandbox and onto the bridge the host
//! named, an address only inside the subnet) and then by the executor's ledger: the
//! plugin decides, the executor is still the only code that touches the kernel.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::Arc;

use berth_plugin_host::{EndpointSpec, NetIntent, NetworkDriverHandle, NetworkSpec};

use super::driver::{Intent, NetworkDriver};
use super::ipam::{IpNet, IpamDriver, Ipv4Net, Ipv6Net, Pool};
use super::model::{EndpointRecord, NetworkRecord, DRIVER_BRIDGE, DRIVER_HOST, DRIVER_NULL};
use super::Networks;
use crate::plugins::plugin_err;
use crate::{Error, Result};

/// The plugin that serves the `bridge` driver and the `default` IPAM.
pub const DEFAULT_PLUGIN: &str = DRIVER_BRIDGE;

/// Run a blocking plugin call from async code without stalling the runtime's other
/// tasks (the call itself runs on the plugin's thread; this thread only waits).
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

fn net4(c: (Ipv4Addr, u8)) -> Ipv4Net {
    Ipv4Net::new(c.0, c.1)
}

fn net6(c: (Ipv6Addr, u8)) -> Ipv6Net {
    Ipv6Net::new(c.0, c.1)
}

fn any_net(c: (IpAddr, u8)) -> IpNet {
    IpNet {
        addr: c.0,
        prefix: c.1,
    }
}

fn spec(net: &NetworkRecord) -> NetworkSpec {
    let mut options: Vec<(String, String)> = net
        .options
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    options.sort();
    NetworkSpec {
        id: net.id.clone(),
        name: net.name.clone(),
        bridge: net.bridge.clone(),
        subnet: net.subnet.map(|s| (s.addr, s.prefix)),
        gateway: net.gateway,
        subnet6: net.ipv6().map(|(s, _)| (s.addr, s.prefix)),
        gateway6: net.ipv6().map(|(_, g)| g),
        mtu: net.mtu,
        internal: net.internal,
        options,
    }
}

fn endpoint(ep: &EndpointRecord, sandbox: &str, mac: [u8; 6]) -> EndpointSpec {
    EndpointSpec {
        id: ep.id.clone(),
        network_id: ep.network_id.clone(),
        host_if: ep.host_if.clone(),
        ifname: ep.ifname.clone(),
        address: (ep.ip, ep.prefix),
        gateway: ep.gateway,
        address6: ep.ip6.map(|a| (a, ep.prefix6)),
        gateway6: ep.gateway6,
        mac,
        sandbox: sandbox.to_string(),
    }
}

/// A network plugin as the engine's [`NetworkDriver`].
pub struct WasmDriver {
    handle: NetworkDriverHandle,
}

impl WasmDriver {
    /// Plugin intents as executor intents. An endpoint must be exactly the one the
    /// host asked for (its sandbox, bridge, veth, name, address and MAC): a plugin that
    /// tries to move a veth into another namespace or onto another bridge is refused.
    fn intents(
        &self,
        list: Vec<NetIntent>,
        net: &NetworkRecord,
        want: Option<(&EndpointRecord, &str, [u8; 6])>,
    ) -> Result<Vec<Intent>> {
        let refuse = |m: String| {
            Error::Forbidden(format!(
                "network driver {} asked for {m}; refused",
                self.handle.name()
            ))
        };
        list.into_iter()
            .map(|i| {
                Ok(match i {
                    NetIntent::Bridge {
                        link,
                        address,
                        address6,
                        mtu,
                    } => {
                        // The bridge's IPv6 address is the network's gateway or nothing.
                        let want6 = net.ipv6().map(|(s, g)| (g, s.prefix));
                        if address6.is_some() && address6 != want6 {
                            return Err(refuse(format!(
                                "the IPv6 bridge address {:?} (the network's is {want6:?})",
                                address6
                            )));
                        }
                        Intent::Bridge {
                            link,
                            address: net4(address),
                            address6: address6.map(net6),
                            mtu,
                        }
                    }
                    NetIntent::RemoveLink(link) => Intent::RemoveLink { link },
                    NetIntent::AddAddress { link, address } => Intent::AddAddress {
                        link,
                        address: any_net(address),
                    },
                    NetIntent::RemoveAddress { link, address } => Intent::RemoveAddress {
                        link,
                        address: any_net(address),
                    },
                    NetIntent::Endpoint {
                        bridge,
                        host_if,
                        sandbox,
                        ifname,
                        address,
                        gateway,
                        address6,
                        gateway6,
                        mac,
                        mtu,
                    } => {
                        let Some((ep, ns, m)) = want else {
                            return Err(refuse(format!(
                                "an endpoint ({host_if}) outside a join"
                            )));
                        };
                        if sandbox != ns {
                            return Err(refuse(format!("an endpoint in the namespace {sandbox:?}")));
                        }
                        if bridge != net.bridge
                            || host_if != ep.host_if
                            || ifname != ep.ifname
                            || address != (ep.ip, ep.prefix)
                            || address6 != ep.ip6.map(|a| (a, ep.prefix6))
                            || gateway6.is_some_and(|g| Some(g) != ep.gateway6)
                            || mac != m
                        {
                            return Err(refuse(format!(
                                "an endpoint other than the one it was given ({host_if} on {bridge})"
                            )));
                        }
                        Intent::Endpoint {
                            bridge,
                            host_if,
                            netns: PathBuf::from(sandbox),
                            ifname,
                            address: net4(address),
                            gateway,
                            address6: address6.map(net6),
                            gateway6,
                            mac,
                            mtu,
                        }
                    }
                })
            })
            .collect()
    }
}

impl NetworkDriver for WasmDriver {
    fn name(&self) -> &str {
        self.handle.name()
    }

    fn create_network(&self, net: &NetworkRecord) -> Result<Vec<Intent>> {
        let list = blocking(|| self.handle.create_network(&spec(net))).map_err(plugin_err)?;
        self.intents(list, net, None)
    }

    fn delete_network(&self, net: &NetworkRecord) -> Result<Vec<Intent>> {
        let list = blocking(|| self.handle.delete_network(&spec(net))).map_err(plugin_err)?;
        self.intents(list, net, None)
    }

    fn join(
        &self,
        net: &NetworkRecord,
        ep: &EndpointRecord,
        netns: PathBuf,
        mac: [u8; 6],
    ) -> Result<Vec<Intent>> {
        let ns = netns.display().to_string();
        let list = blocking(|| self.handle.join(&spec(net), &endpoint(ep, &ns, mac)))
            .map_err(plugin_err)?;
        self.intents(list, net, Some((ep, &ns, mac)))
    }

    fn leave(&self, net: &NetworkRecord, ep: &EndpointRecord) -> Result<Vec<Intent>> {
        let mac = super::ipam::parse_mac(&ep.mac).unwrap_or_default();
        let list = blocking(|| self.handle.leave(&spec(net), &endpoint(ep, "", mac)))
            .map_err(plugin_err)?;
        self.intents(list, net, None)
    }
}

/// A network plugin's IPAM as the engine's [`IpamDriver`], over the daemon's pools.
pub struct WasmIpam {
    handle: NetworkDriverHandle,
    pools: Vec<Pool>,
}

impl WasmIpam {
    /// The host keeps IPAM honest: an answered address must be `inside` its subnet (and
    /// range), free, and the one asked for when one was.
    fn checked_address<A: Copy + Eq + std::hash::Hash + std::fmt::Display>(
        &self,
        ip: A,
        inside: bool,
        subnet: impl std::fmt::Display,
        used: &HashSet<A>,
        preferred: Option<A>,
    ) -> Result<A> {
        if !inside || used.contains(&ip) || preferred.is_some_and(|p| p != ip) {
            return Err(Error::Forbidden(format!(
                "IPAM driver {} answered {ip}, which is outside {subnet}, in use or not the address asked for",
                self.handle.name()
            )));
        }
        Ok(ip)
    }
}

impl IpamDriver for WasmIpam {
    fn request_pool(&self, requested: Option<Ipv4Net>, used: &[Ipv4Net]) -> Result<Ipv4Net> {
        let pools: Vec<_> = self
            .pools
            .iter()
            .map(|p| ((p.base.addr, p.base.prefix), p.size))
            .collect();
        let u: Vec<_> = used.iter().map(|n| (n.addr, n.prefix)).collect();
        let got = blocking(|| {
            self.handle
                .request_pool(requested.map(|r| (r.addr, r.prefix)), &pools, &u)
        })
        .map_err(plugin_err)?;
        let got = net4(got).network();
        // The host keeps IPAM honest: a pool must be what was asked for, or not overlap
        // anything in use, and be small enough to be a network.
        let ok = match requested {
            Some(r) => got == r.network(),
            None => !used.iter().any(|u| u.overlaps(&got)) && (8..=30).contains(&got.prefix),
        };
        if !ok {
            return Err(Error::Forbidden(format!(
                "IPAM driver {} answered the pool {got}, which overlaps a pool in use or is not the one requested",
                self.handle.name()
            )));
        }
        Ok(got)
    }

    fn request_address(
        &self,
        subnet: Ipv4Net,
        range: Option<Ipv4Net>,
        preferred: Option<Ipv4Addr>,
        used: &HashSet<Ipv4Addr>,
    ) -> Result<Ipv4Addr> {
        let u: Vec<Ipv4Addr> = used.iter().copied().collect();
        let ip = blocking(|| {
            self.handle.request_address(
                (subnet.addr, subnet.prefix),
                range.map(|r| (r.addr, r.prefix)),
                preferred,
                &u,
            )
        })
        .map_err(plugin_err)?;
        let inside = subnet.contains(ip)
            && ip != subnet.network().addr
            && ip != subnet.broadcast()
            && range.is_none_or(|r| r.contains(ip) || Some(ip) == preferred);
        self.checked_address(ip, inside, subnet, used, preferred)
    }

    fn request_pool6(&self, requested: Ipv6Net, used: &[Ipv6Net]) -> Result<Ipv6Net> {
        let u: Vec<_> = used.iter().map(|n| (n.addr, n.prefix)).collect();
        let got = blocking(|| {
            self.handle
                .request_pool6((requested.addr, requested.prefix), &u)
        })
        .map_err(plugin_err)?;
        let got = net6(got).network();
        if got != requested.network() {
            return Err(Error::Forbidden(format!(
                "IPAM driver {} answered the pool {got}, which is not the one requested",
                self.handle.name()
            )));
        }
        Ok(got)
    }

    fn request_address6(
        &self,
        subnet: Ipv6Net,
        range: Option<Ipv6Net>,
        preferred: Option<Ipv6Addr>,
        used: &HashSet<Ipv6Addr>,
    ) -> Result<Ipv6Addr> {
        let u: Vec<Ipv6Addr> = used.iter().copied().collect();
        let ip = blocking(|| {
            self.handle.request_address6(
                (subnet.addr, subnet.prefix),
                range.map(|r| (r.addr, r.prefix)),
                preferred,
                &u,
            )
        })
        .map_err(plugin_err)?;
        let inside = subnet.contains(ip)
            && ip != subnet.network().addr
            && range.is_none_or(|r| r.contains(ip) || Some(ip) == preferred);
        self.checked_address(ip, inside, subnet, used, preferred)
    }
}

impl Networks {
    fn plugin(&self, name: &str) -> Result<NetworkDriverHandle> {
        self.plugins
            .as_ref()
            .and_then(|p| p.network_driver(name))
            .ok_or_else(|| Error::not_found(format!("plugin \"{name}\" not found")))
    }

    /// The driver of `net` (its `Driver`: `bridge` or a network plugin's name).
    pub(crate) fn driver_for(&self, net: &NetworkRecord) -> Result<Arc<dyn NetworkDriver>> {
        Ok(Arc::new(WasmDriver {
            handle: self.plugin(&net.driver)?,
        }))
    }

    /// The IPAM driver called `name` (`default` is the `bridge` plugin's).
    pub(crate) fn ipam_for(&self, name: &str) -> Result<Arc<dyn IpamDriver>> {
        let plugin = if name == "default" {
            DEFAULT_PLUGIN
        } else {
            name
        };
        Ok(Arc::new(WasmIpam {
            handle: self.plugin(plugin)?,
            pools: self.pools.clone(),
        }))
    }

    /// `docker info` Plugins.Network: the loaded network plugins, `host` and `null`.
    pub fn driver_names(&self) -> Vec<String> {
        let mut names = self
            .plugins
            .as_ref()
            .map(|p| p.names(berth_plugin_host::PluginKind::Network))
            .unwrap_or_default();
        names.extend([DRIVER_HOST.to_string(), DRIVER_NULL.to_string()]);
        names.sort();
        names
    }

    /// Whether `name` is a loaded network plugin (`docker network create -d NAME`).
    pub(crate) fn has_driver(&self, name: &str) -> bool {
        self.plugin(name).is_ok()
    }
}
