//! Network drivers (`berth:driver@0.2.0` `network-plugin`): a network driver and its
//! IPAM as pure decisions. The plugin has no host imports and no WASI grants (no
//! preopen, no sockets); its only effect is its reply, which is re-validated here
//! (counts, link names, IPv4 only) before the daemon's executor checks every intent
//! against its ownership ledger. Calls are blocking because the engine's driver seam
//! is synchronous; each one runs on the plugin's own thread under the epoch deadline.

use std::net::Ipv4Addr;
use std::sync::mpsc::SyncSender;
use std::sync::Arc;

use crate::bindings::v0_2_0::network::berth::driver::network_types as wit;
use crate::bindings::v0_2_0::network::berth::driver::types::{DriverError, IpAddress, IpCidr};
use crate::bindings::v0_2_0::network::exports::berth::driver::ipam_driver::Pool as WitPool;
use crate::error::PluginError;
use crate::plugin::{request_blocking, Job, Runner};
use crate::shared::Shared;
use crate::validate::{check_options, truncate};

/// Most intents one reply may carry: a driver needs a handful per call.
pub const MAX_INTENTS: usize = 64;
/// Most addresses/subnets the host passes in one call.
const MAX_USED: usize = 1 << 20;

/// Which endpoint call of the driver to make.
#[derive(Clone, Copy)]
enum EndpointCall {
    Join,
    Leave,
}

/// An IPv4 address with its prefix length.
pub type Cidr = (Ipv4Addr, u8);

/// A network as the driver sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkSpec {
    pub id: String,
    pub name: String,
    pub bridge: String,
    pub subnet: Option<Cidr>,
    pub gateway: Option<Ipv4Addr>,
    pub mtu: u32,
    pub internal: bool,
    pub options: Vec<(String, String)>,
}

/// An endpoint as the driver sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    pub id: String,
    pub network_id: String,
    pub host_if: String,
    pub ifname: String,
    pub address: Cidr,
    pub gateway: Option<Ipv4Addr>,
    pub mac: [u8; 6],
    pub sandbox: String,
}

/// One change a plugin asks for, validated in shape (not yet in ownership).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetIntent {
    Bridge {
        link: String,
        address: Cidr,
        mtu: u32,
    },
    Endpoint {
        bridge: String,
        host_if: String,
        sandbox: String,
        ifname: String,
        address: Cidr,
        gateway: Option<Ipv4Addr>,
        mac: [u8; 6],
        mtu: u32,
    },
    AddAddress {
        link: String,
        address: Cidr,
    },
    RemoveAddress {
        link: String,
        address: Cidr,
    },
    RemoveLink(String),
}

/// Handle to a loaded network plugin. Cheap to clone.
#[derive(Clone)]
pub struct NetworkDriverHandle {
    pub(crate) shared: Arc<Shared>,
    pub(crate) tx: SyncSender<Job>,
}

impl From<DriverError> for PluginError {
    fn from(e: DriverError) -> Self {
        let cut = |s: String| truncate(s, 4096);
        match e {
            DriverError::NotFound(m) => PluginError::NotFound(cut(m)),
            DriverError::AlreadyExists(m) => PluginError::AlreadyExists(cut(m)),
            DriverError::Invalid(m) => PluginError::Invalid(cut(m)),
            DriverError::Denied(m) => PluginError::Denied(cut(m)),
            DriverError::Unsupported(m) => PluginError::Unsupported(cut(m)),
            DriverError::Busy(m) => PluginError::Busy(cut(m)),
            DriverError::Failed(m) => PluginError::Failed(cut(m)),
        }
    }
}

fn addr(ip: Ipv4Addr) -> IpAddress {
    let [a, b, c, d] = ip.octets();
    IpAddress::V4((a, b, c, d))
}

fn cidr((ip, prefix): Cidr) -> IpCidr {
    IpCidr {
        addr: addr(ip),
        prefix,
    }
}

pub(crate) fn wit_network(n: &NetworkSpec) -> wit::Network {
    wit::Network {
        id: n.id.clone(),
        name: n.name.clone(),
        bridge: n.bridge.clone(),
        subnet: n.subnet.map(cidr),
        gateway: n.gateway.map(addr),
        mtu: n.mtu,
        internal: n.internal,
        options: n.options.clone(),
    }
}

fn wit_endpoint(e: &EndpointSpec) -> wit::Endpoint {
    let m = e.mac;
    wit::Endpoint {
        id: e.id.clone(),
        network_id: e.network_id.clone(),
        host_if: e.host_if.clone(),
        ifname: e.ifname.clone(),
        address: cidr(e.address),
        gateway: e.gateway.map(addr),
        mac: (m[0], m[1], m[2], m[3], m[4], m[5]),
        sandbox: e.sandbox.clone(),
    }
}

/// A link name the kernel could accept (IFNAMSIZ, no `/`, no whitespace).
fn check_link(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(format!("invalid link name {:?}", truncate(name.into(), 64)));
    }
    Ok(())
}

fn v4(a: &IpAddress) -> Result<Ipv4Addr, String> {
    match a {
        IpAddress::V4((a, b, c, d)) => Ok(Ipv4Addr::new(*a, *b, *c, *d)),
        IpAddress::V6(_) => Err("IPv6 is not supported by this berthd".into()),
    }
}

fn v4_cidr(c: &IpCidr) -> Result<Cidr, String> {
    if c.prefix > 32 {
        return Err(format!("IPv4 prefix /{} is out of range", c.prefix));
    }
    Ok((v4(&c.addr)?, c.prefix))
}

fn intent(i: wit::Intent) -> Result<NetIntent, String> {
    Ok(match i {
        wit::Intent::Bridge(b) => {
            check_link(&b.link)?;
            NetIntent::Bridge {
                address: v4_cidr(&b.address)?,
                link: b.link,
                mtu: b.mtu,
            }
        }
        wit::Intent::Endpoint(e) => {
            check_link(&e.bridge)?;
            check_link(&e.host_if)?;
            check_link(&e.ifname)?;
            if e.sandbox.len() > 4096 || e.sandbox.contains('\0') {
                return Err("invalid sandbox path".into());
            }
            let m = e.mac;
            NetIntent::Endpoint {
                address: v4_cidr(&e.address)?,
                gateway: e.gateway.as_ref().map(v4).transpose()?,
                mac: [m.0, m.1, m.2, m.3, m.4, m.5],
                bridge: e.bridge,
                host_if: e.host_if,
                sandbox: e.sandbox,
                ifname: e.ifname,
                mtu: e.mtu,
            }
        }
        wit::Intent::AddAddress(a) => {
            check_link(&a.link)?;
            NetIntent::AddAddress {
                address: v4_cidr(&a.address)?,
                link: a.link,
            }
        }
        wit::Intent::RemoveAddress(a) => {
            check_link(&a.link)?;
            NetIntent::RemoveAddress {
                address: v4_cidr(&a.address)?,
                link: a.link,
            }
        }
        wit::Intent::RemoveLink(l) => {
            check_link(&l)?;
            NetIntent::RemoveLink(l)
        }
    })
}

impl Runner {
    fn intents(
        &self,
        reply: Result<Vec<wit::Intent>, DriverError>,
    ) -> Result<Vec<NetIntent>, PluginError> {
        let list = reply.map_err(PluginError::from)?;
        let bad = |m: String| {
            self.shared
                .stats
                .bad_replies
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(plugin = self.name(), "rejected reply: {m}");
            PluginError::bad_reply(self.name(), m)
        };
        if list.len() > MAX_INTENTS {
            return Err(bad(format!(
                "{} intents in one reply (max {MAX_INTENTS})",
                list.len()
            )));
        }
        list.into_iter().map(|i| intent(i).map_err(bad)).collect()
    }
}

fn check_spec(n: &NetworkSpec) -> Result<(), PluginError> {
    check_options(&n.options).map_err(PluginError::Invalid)
}

impl NetworkDriverHandle {
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Intents that bring `net` up on the host.
    pub fn create_network(&self, net: &NetworkSpec) -> Result<Vec<NetIntent>, PluginError> {
        check_spec(net)?;
        let n = wit_network(net);
        request_blocking(&self.shared, &self.tx, move |r| {
            let reply = r.call(|s, i| {
                i.network()
                    .berth_driver_network_driver()
                    .call_create_network(s, &n)
            })?;
            r.intents(reply)
        })
    }

    pub fn delete_network(&self, net: &NetworkSpec) -> Result<Vec<NetIntent>, PluginError> {
        check_spec(net)?;
        let n = wit_network(net);
        request_blocking(&self.shared, &self.tx, move |r| {
            let reply = r.call(|s, i| {
                i.network()
                    .berth_driver_network_driver()
                    .call_delete_network(s, &n)
            })?;
            r.intents(reply)
        })
    }

    pub fn join(
        &self,
        net: &NetworkSpec,
        ep: &EndpointSpec,
    ) -> Result<Vec<NetIntent>, PluginError> {
        self.endpoint_intents(net, ep, EndpointCall::Join)
    }

    pub fn leave(
        &self,
        net: &NetworkSpec,
        ep: &EndpointSpec,
    ) -> Result<Vec<NetIntent>, PluginError> {
        self.endpoint_intents(net, ep, EndpointCall::Leave)
    }

    /// `join` and `leave` take the same arguments and answer the same way.
    fn endpoint_intents(
        &self,
        net: &NetworkSpec,
        ep: &EndpointSpec,
        call: EndpointCall,
    ) -> Result<Vec<NetIntent>, PluginError> {
        check_spec(net)?;
        let (n, e) = (wit_network(net), wit_endpoint(ep));
        request_blocking(&self.shared, &self.tx, move |r| {
            let reply = r.call(|s, i| {
                let driver = i.network().berth_driver_network_driver();
                match call {
                    EndpointCall::Join => driver.call_join(s, &n, &e),
                    EndpointCall::Leave => driver.call_leave(s, &n, &e),
                }
            })?;
            r.intents(reply)
        })
    }

    /// IPAM: a subnet (`requested`, or one carved from `pools`: (base, size)).
    pub fn request_pool(
        &self,
        requested: Option<Cidr>,
        pools: &[(Cidr, u8)],
        used: &[Cidr],
    ) -> Result<Cidr, PluginError> {
        if used.len() > MAX_USED || pools.len() > MAX_USED {
            return Err(PluginError::Invalid("too many subnets in use".into()));
        }
        let req = requested.map(cidr);
        let pools: Vec<WitPool> = pools
            .iter()
            .map(|(b, size)| WitPool {
                base: cidr(*b),
                size: *size,
            })
            .collect();
        let used: Vec<IpCidr> = used.iter().copied().map(cidr).collect();
        request_blocking(&self.shared, &self.tx, move |r| {
            let reply = r.call(|s, i| {
                i.network()
                    .berth_driver_ipam_driver()
                    .call_request_pool(s, req, &pools, &used)
            })?;
            let c = reply.map_err(PluginError::from)?;
            v4_cidr(&c).map_err(|m| PluginError::bad_reply(r.name(), m))
        })
    }

    /// IPAM: an address of `subnet` (inside `range`): `preferred` or a free one.
    pub fn request_address(
        &self,
        subnet: Cidr,
        range: Option<Cidr>,
        preferred: Option<Ipv4Addr>,
        used: &[Ipv4Addr],
    ) -> Result<Ipv4Addr, PluginError> {
        if used.len() > MAX_USED {
            return Err(PluginError::Invalid("too many addresses in use".into()));
        }
        let (sub, range, pref) = (cidr(subnet), range.map(cidr), preferred.map(addr));
        let used: Vec<IpAddress> = used.iter().copied().map(addr).collect();
        request_blocking(&self.shared, &self.tx, move |r| {
            let reply = r.call(|s, i| {
                i.network()
                    .berth_driver_ipam_driver()
                    .call_request_address(s, sub, range, pref, &used)
            })?;
            let a = reply.map_err(PluginError::from)?;
            v4(&a).map_err(|m| PluginError::bad_reply(r.name(), m))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names_are_checked() {
        for ok in ["berth0", "br-0123456789ab", "veth1234567"] {
            assert!(check_link(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/b", "x".repeat(16).as_str(), "a b", "..", "eth0:1"] {
            assert!(check_link(bad).is_err(), "{bad:?}");
        }
        let six = IpAddress::V6((0, 0, 0, 0, 0, 0, 0, 1));
        assert!(intent(wit::Intent::RemoveLink("lo".into())).is_ok());
        assert!(intent(wit::Intent::AddAddress(wit::LinkAddress {
            link: "br0".into(),
            address: IpCidr {
                addr: six,
                prefix: 64
            }
        }))
        .is_err());
    }
}
