//! Network drivers (`berth:driver@0.2.0` and `0.3.0` `network-plugin`): a network
//! driver and its IPAM as pure decisions. The plugin has no host imports and no WASI
//! grants (no preopen, no sockets); its only effect is its reply, which is re-validated
//! here (counts, link names, address families) before the daemon's executor checks
//! every intent against its ownership ledger. Calls are blocking because the engine's
//! driver seam is synchronous; each one runs on the plugin's own thread under the epoch
//! deadline. The per-version records are in [`crate::network_wit`]: 0.2.0 plugins serve
//! IPv4-only networks, 0.3.0 ones dual-stack networks too.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;

use crate::error::PluginError;
use crate::network_wit::{v2, v3, Answer};
use crate::plugin::{request_blocking, Inst, Job, Runner};
use crate::shared::Shared;
use crate::validate::{check_options, truncate};

/// Most intents one reply may carry: a driver needs a handful per call.
pub const MAX_INTENTS: usize = 64;
/// Most addresses/subnets the host passes in one call.
const MAX_USED: usize = 1 << 20;

/// Which call of the driver to make.
#[derive(Clone, Copy)]
enum DriverCall {
    Create,
    Delete,
    Join,
    Leave,
}

/// An IPv4 address with its prefix length.
pub type Cidr = (Ipv4Addr, u8);
/// An IPv6 address with its prefix length.
pub type Cidr6 = (Ipv6Addr, u8);
/// Either family (an address added to or removed from a link).
pub type AnyCidr = (IpAddr, u8);

/// A network as the driver sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkSpec {
    pub id: String,
    pub name: String,
    pub bridge: String,
    pub subnet: Option<Cidr>,
    pub gateway: Option<Ipv4Addr>,
    /// The IPv6 half of a dual-stack network (`None` while IPv6 is off). A 0.2.0 plugin
    /// is never asked about a network with one.
    pub subnet6: Option<Cidr6>,
    pub gateway6: Option<Ipv6Addr>,
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
    pub address6: Option<Cidr6>,
    pub gateway6: Option<Ipv6Addr>,
    pub mac: [u8; 6],
    pub sandbox: String,
}

/// One change a plugin asks for, validated in shape (not yet in ownership).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetIntent {
    Bridge {
        link: String,
        address: Cidr,
        /// The bridge's IPv6 gateway address (0.3.0).
        address6: Option<Cidr6>,
        mtu: u32,
    },
    Endpoint {
        bridge: String,
        host_if: String,
        sandbox: String,
        ifname: String,
        address: Cidr,
        gateway: Option<Ipv4Addr>,
        address6: Option<Cidr6>,
        gateway6: Option<Ipv6Addr>,
        mac: [u8; 6],
        mtu: u32,
    },
    AddAddress {
        link: String,
        address: AnyCidr,
    },
    RemoveAddress {
        link: String,
        address: AnyCidr,
    },
    RemoveLink(String),
}

/// Handle to a loaded network plugin. Cheap to clone.
#[derive(Clone)]
pub struct NetworkDriverHandle {
    pub(crate) shared: Arc<Shared>,
    pub(crate) tx: SyncSender<Job>,
}

/// A link name the kernel could accept (IFNAMSIZ, no `/`, no whitespace).
pub(crate) fn check_link(name: &str) -> Result<(), String> {
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

pub(crate) fn check_sandbox(path: &str) -> Result<(), String> {
    if path.len() > 4096 || path.contains('\0') {
        return Err("invalid sandbox path".into());
    }
    Ok(())
}

impl Runner {
    /// A driver reply: the driver's error, or its intents (at most [`MAX_INTENTS`],
    /// each of a valid shape; a bad one fails the whole reply and is counted).
    fn intents(
        &self,
        reply: Answer<Vec<Result<NetIntent, String>>>,
    ) -> Result<Vec<NetIntent>, PluginError> {
        let list = reply?.map_err(|m| self.bad(m))?;
        if list.len() > MAX_INTENTS {
            return Err(self.bad(format!(
                "{} intents in one reply (max {MAX_INTENTS})",
                list.len()
            )));
        }
        list.into_iter()
            .map(|i| i.map_err(|m| self.bad(m)))
            .collect()
    }

    fn bad(&self, m: String) -> PluginError {
        self.shared
            .stats
            .bad_replies
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(plugin = self.name(), "rejected reply: {m}");
        PluginError::bad_reply(self.name(), m)
    }

    /// An IPAM answer of the family that was asked for.
    fn answer<T>(&self, reply: Answer<T>) -> Result<T, PluginError> {
        reply?.map_err(|m| self.bad(m))
    }
}

fn check_spec(n: &NetworkSpec) -> Result<(), PluginError> {
    check_options(&n.options).map_err(PluginError::Invalid)
}

/// One driver call on whichever version the plugin implements.
fn driver_call(
    s: &mut wasmtime::Store<crate::store::StoreState>,
    inst: &Inst,
    call: DriverCall,
    n: &NetworkSpec,
    e: Option<&EndpointSpec>,
) -> wasmtime::Result<Answer<Vec<Result<NetIntent, String>>>> {
    macro_rules! call {
        ($m:ident, $p:expr) => {{
            let d = $p.berth_driver_network_driver();
            let net = $m::network(n);
            let ep = e.map($m::endpoint);
            let reply = match (call, ep.as_ref()) {
                (DriverCall::Create, _) => d.call_create_network(s, &net)?,
                (DriverCall::Delete, _) => d.call_delete_network(s, &net)?,
                (DriverCall::Join, Some(ep)) => d.call_join(s, &net, ep)?,
                (DriverCall::Leave, Some(ep)) => d.call_leave(s, &net, ep)?,
                (_, None) => unreachable!("endpoint call without an endpoint"),
            };
            Ok(reply
                .map_err(PluginError::from)
                .map(|l| Ok(l.into_iter().map($m::intent).collect())))
        }};
    }
    match inst {
        Inst::Network(p) => {
            if let Err(err) = v2::refuse_v6(n, e) {
                return Ok(Err(err));
            }
            call!(v2, p)
        }
        Inst::Network3(p) => call!(v3, p),
        _ => unreachable!("network call on another kind of plugin"),
    }
}

impl NetworkDriverHandle {
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    fn driver(
        &self,
        call: DriverCall,
        net: &NetworkSpec,
        ep: Option<&EndpointSpec>,
    ) -> Result<Vec<NetIntent>, PluginError> {
        check_spec(net)?;
        let (n, e) = (net.clone(), ep.cloned());
        request_blocking(&self.shared, &self.tx, move |r| {
            let reply = r.call(|s, i| driver_call(s, i, call, &n, e.as_ref()))?;
            r.intents(reply)
        })
    }

    /// Intents that bring `net` up on the host.
    pub fn create_network(&self, net: &NetworkSpec) -> Result<Vec<NetIntent>, PluginError> {
        self.driver(DriverCall::Create, net, None)
    }

    pub fn delete_network(&self, net: &NetworkSpec) -> Result<Vec<NetIntent>, PluginError> {
        self.driver(DriverCall::Delete, net, None)
    }

    pub fn join(
        &self,
        net: &NetworkSpec,
        ep: &EndpointSpec,
    ) -> Result<Vec<NetIntent>, PluginError> {
        self.driver(DriverCall::Join, net, Some(ep))
    }

    pub fn leave(
        &self,
        net: &NetworkSpec,
        ep: &EndpointSpec,
    ) -> Result<Vec<NetIntent>, PluginError> {
        self.driver(DriverCall::Leave, net, Some(ep))
    }

    /// IPAM in either family.
    fn pool(
        &self,
        requested: Option<AnyCidr>,
        pools: Vec<(AnyCidr, u8)>,
        used: Vec<AnyCidr>,
    ) -> Result<AnyCidr, PluginError> {
        if used.len() > MAX_USED || pools.len() > MAX_USED {
            return Err(PluginError::Invalid("too many subnets in use".into()));
        }
        request_blocking(&self.shared, &self.tx, move |r| {
            let reply = r.call(|s, i| match i {
                Inst::Network(p) => v2::request_pool(p, s, requested, &pools, &used),
                Inst::Network3(p) => v3::request_pool(p, s, requested, &pools, &used),
                _ => unreachable!("network call on another kind of plugin"),
            })?;
            r.answer(reply)
        })
    }

    fn address(
        &self,
        subnet: AnyCidr,
        range: Option<AnyCidr>,
        preferred: Option<IpAddr>,
        used: Vec<IpAddr>,
    ) -> Result<IpAddr, PluginError> {
        if used.len() > MAX_USED {
            return Err(PluginError::Invalid("too many addresses in use".into()));
        }
        request_blocking(&self.shared, &self.tx, move |r| {
            let reply = r.call(|s, i| match i {
                Inst::Network(p) => v2::request_address(p, s, subnet, range, preferred, &used),
                Inst::Network3(p) => v3::request_address(p, s, subnet, range, preferred, &used),
                _ => unreachable!("network call on another kind of plugin"),
            })?;
            r.answer(reply)
        })
    }

    fn wrong_family(&self, what: IpAddr) -> PluginError {
        PluginError::bad_reply(
            self.name(),
            format!("answered {what}, which is not of the family asked for"),
        )
    }

    /// IPAM: an IPv4 subnet (`requested`, or one carved from `pools`: (base, size)).
    pub fn request_pool(
        &self,
        requested: Option<Cidr>,
        pools: &[(Cidr, u8)],
        used: &[Cidr],
    ) -> Result<Cidr, PluginError> {
        let v4 = |(a, p): Cidr| (IpAddr::V4(a), p);
        let got = self.pool(
            requested.map(v4),
            pools.iter().map(|(b, s)| (v4(*b), *s)).collect(),
            used.iter().copied().map(v4).collect(),
        )?;
        match got.0 {
            IpAddr::V4(a) => Ok((a, got.1)),
            other => Err(self.wrong_family(other)),
        }
    }

    /// IPAM: the IPv6 subnet `requested` (checked against `used`). berth has no
    /// default IPv6 pools, as dockerd 20.10 has none: an IPv6 network names its subnet.
    /// A 0.2.0 plugin answers [`PluginError::Unsupported`].
    pub fn request_pool6(&self, requested: Cidr6, used: &[Cidr6]) -> Result<Cidr6, PluginError> {
        let v6 = |(a, p): Cidr6| (IpAddr::V6(a), p);
        let got = self.pool(
            Some(v6(requested)),
            Vec::new(),
            used.iter().copied().map(v6).collect(),
        )?;
        match got.0 {
            IpAddr::V6(a) => Ok((a, got.1)),
            other => Err(self.wrong_family(other)),
        }
    }

    /// IPAM: an IPv4 address of `subnet` (inside `range`): `preferred` or a free one.
    pub fn request_address(
        &self,
        subnet: Cidr,
        range: Option<Cidr>,
        preferred: Option<Ipv4Addr>,
        used: &[Ipv4Addr],
    ) -> Result<Ipv4Addr, PluginError> {
        let v4 = |(a, p): Cidr| (IpAddr::V4(a), p);
        let got = self.address(
            v4(subnet),
            range.map(v4),
            preferred.map(IpAddr::V4),
            used.iter().copied().map(IpAddr::V4).collect(),
        )?;
        match got {
            IpAddr::V4(a) => Ok(a),
            other => Err(self.wrong_family(other)),
        }
    }

    /// IPAM: an IPv6 address of `subnet` (inside `range`): `preferred` or a free one.
    pub fn request_address6(
        &self,
        subnet: Cidr6,
        range: Option<Cidr6>,
        preferred: Option<Ipv6Addr>,
        used: &[Ipv6Addr],
    ) -> Result<Ipv6Addr, PluginError> {
        let v6 = |(a, p): Cidr6| (IpAddr::V6(a), p);
        let got = self.address(
            v6(subnet),
            range.map(v6),
            preferred.map(IpAddr::V6),
            used.iter().copied().map(IpAddr::V6).collect(),
        )?;
        match got {
            IpAddr::V6(a) => Ok(a),
            other => Err(self.wrong_family(other)),
        }
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
    }

    /// 0.2.0 stays IPv4 only: an IPv6 address in its reply is refused; 0.3.0 takes one.
    #[test]
    fn address_families_follow_the_version() {
        use crate::bindings::v0_2_0::network::berth::driver as d2;
        use crate::bindings::v0_3_0::network::berth::driver as d3;
        assert!(v2::intent(d2::network_types::Intent::RemoveLink("lo".into())).is_ok());
        let six2 = d2::types::IpCidr {
            addr: d2::types::IpAddress::V6((0xfd00, 0, 0, 0, 0, 0, 0, 1)),
            prefix: 64,
        };
        assert!(v2::intent(d2::network_types::Intent::AddAddress(
            d2::network_types::LinkAddress {
                link: "br0".into(),
                address: six2,
            }
        ))
        .is_err());
        let six3 = |prefix| d3::types::IpCidr {
            addr: d3::types::IpAddress::V6((0xfd00, 0, 0, 0, 0, 0, 0, 1)),
            prefix,
        };
        let add = |prefix| {
            v3::intent(d3::network_types::Intent::AddAddress(
                d3::network_types::LinkAddress {
                    link: "br0".into(),
                    address: six3(prefix),
                },
            ))
        };
        assert_eq!(
            add(64).unwrap(),
            NetIntent::AddAddress {
                link: "br0".into(),
                address: ("fd00::1".parse().unwrap(), 64)
            }
        );
        assert!(add(129).is_err());
        // An IPv4 bridge address where IPv6 goes is refused.
        let four = || d3::types::IpCidr {
            addr: d3::types::IpAddress::V4((10, 0, 0, 1)),
            prefix: 24,
        };
        assert!(v3::intent(d3::network_types::Intent::Bridge(
            d3::network_types::BridgeSpec {
                link: "br0".into(),
                address: four(),
                address6: Some(four()),
                mtu: 1500,
            }
        ))
        .is_err());
    }
}
