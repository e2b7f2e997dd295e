//! The WIT side of network plugins, one module per served `berth:driver` version: the
//! host's [`NetworkSpec`]/[`EndpointSpec`] as each version's records, each version's
//! replies as [`NetIntent`]s (shape-checked: link names, address families, prefix
//! lengths). 0.2.0 has no IPv6 fields, so an IPv6 network or endpoint is refused
//! before the plugin is called ([`UNSUPPORTED_V6`]); 0.3.0 carries both families.
//! Each binding has its own copy of the shared WIT types, so the conversions that are
//! the same in every version are written once, in [`common!`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::error::PluginError;
use crate::network::{check_link, check_sandbox, AnyCidr, EndpointSpec, NetIntent, NetworkSpec};

/// What a plugin call answers: the driver's own error (outer), or a value whose shape
/// the host refused (inner `Err`, counted as a bad reply).
pub(crate) type Answer<T> = Result<Result<T, String>, PluginError>;

/// Why a 0.2.0 plugin never sees IPv6.
pub(crate) fn unsupported_v6(what: &str) -> PluginError {
    PluginError::Unsupported(format!("{UNSUPPORTED_V6} ({what})"))
}

pub(crate) const UNSUPPORTED_V6: &str =
    "this network plugin implements berth:driver@0.2.0, which has no IPv6: an IPv6 network needs a plugin on berth:driver@0.3.0";

fn v4_only(c: AnyCidr) -> Result<(Ipv4Addr, u8), String> {
    match c.0 {
        IpAddr::V4(a) => Ok((a, c.1)),
        IpAddr::V6(_) => Err("an IPv6 address where IPv4 is required".into()),
    }
}

fn v6_only(c: AnyCidr) -> Result<(Ipv6Addr, u8), String> {
    match c.0 {
        IpAddr::V6(a) => Ok((a, c.1)),
        IpAddr::V4(_) => Err("an IPv4 address where IPv6 is required".into()),
    }
}

/// The conversions every version shares, over `root` (the version's binding module).
macro_rules! common {
    () => {
        pub(crate) use root::berth::driver::network_types as wit;
        pub(crate) use root::berth::driver::types::{DriverError, IpAddress, IpCidr};
        pub(crate) use root::exports::berth::driver::ipam_driver::Pool;
        use wasmtime::Store;

        use super::*;
        use crate::store::StoreState;

        impl From<DriverError> for PluginError {
            fn from(e: DriverError) -> Self {
                let cut = |s: String| crate::validate::truncate(s, 4096);
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

        pub(crate) fn addr(ip: IpAddr) -> IpAddress {
            match ip {
                IpAddr::V4(a) => {
                    let [a, b, c, d] = a.octets();
                    IpAddress::V4((a, b, c, d))
                }
                IpAddr::V6(a) => {
                    let s = a.segments();
                    IpAddress::V6((s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]))
                }
            }
        }

        pub(crate) fn cidr((ip, prefix): AnyCidr) -> IpCidr {
            IpCidr {
                addr: addr(ip),
                prefix,
            }
        }

        fn ip(a: &IpAddress) -> IpAddr {
            match *a {
                IpAddress::V4((a, b, c, d)) => IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
                IpAddress::V6((a, b, c, d, e, f, g, h)) => {
                    IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h))
                }
            }
        }

        /// A prefix length the family allows.
        fn any_cidr(c: &IpCidr) -> Result<AnyCidr, String> {
            let a = ip(&c.addr);
            let max = if a.is_ipv4() { 32 } else { 128 };
            if c.prefix > max {
                return Err(format!("prefix /{} is out of range for {a}", c.prefix));
            }
            Ok((a, c.prefix))
        }

        fn v4(a: &IpAddress) -> Result<Ipv4Addr, String> {
            match ip(a) {
                IpAddr::V4(a) => Ok(a),
                IpAddr::V6(_) => Err("an IPv6 address where IPv4 is required".into()),
            }
        }

        #[allow(dead_code)] // 0.2.0 has no IPv6 field to read
        fn v6(a: &IpAddress) -> Result<Ipv6Addr, String> {
            match ip(a) {
                IpAddr::V6(a) => Ok(a),
                IpAddr::V4(_) => Err("an IPv4 address where IPv6 is required".into()),
            }
        }

        fn link_address(a: wit::LinkAddress) -> Result<(String, AnyCidr), String> {
            check_link(&a.link)?;
            Ok((a.link, any_cidr(&a.address)?))
        }

        fn v4_addr(ip: Ipv4Addr) -> IpAddress {
            addr(IpAddr::V4(ip))
        }

        fn v4_cidr((a, p): (Ipv4Addr, u8)) -> IpCidr {
            cidr((IpAddr::V4(a), p))
        }

        fn mac(m: [u8; 6]) -> (u8, u8, u8, u8, u8, u8) {
            (m[0], m[1], m[2], m[3], m[4], m[5])
        }

        fn mac_bytes(m: (u8, u8, u8, u8, u8, u8)) -> [u8; 6] {
            [m.0, m.1, m.2, m.3, m.4, m.5]
        }

        /// IPAM: a subnet, `requested` or carved from `pools`.
        pub(crate) fn request_pool(
            p: &NetworkPlugin,
            s: &mut Store<StoreState>,
            requested: Option<AnyCidr>,
            pools: &[(AnyCidr, u8)],
            used: &[AnyCidr],
        ) -> wasmtime::Result<Answer<AnyCidr>> {
            if !V6 && requested.iter().chain(used).any(|c| c.0.is_ipv6()) {
                return Ok(Err(unsupported_v6("an IPv6 subnet")));
            }
            let req = requested.map(cidr);
            let pools: Vec<Pool> = pools
                .iter()
                .map(|(b, size)| Pool {
                    base: cidr(*b),
                    size: *size,
                })
                .collect();
            let used: Vec<IpCidr> = used.iter().copied().map(cidr).collect();
            let reply = p
                .berth_driver_ipam_driver()
                .call_request_pool(s, req, &pools, &used)?;
            Ok(reply.map_err(PluginError::from).map(|c| any_cidr(&c)))
        }

        /// IPAM: an address of `subnet`.
        pub(crate) fn request_address(
            p: &NetworkPlugin,
            s: &mut Store<StoreState>,
            subnet: AnyCidr,
            range: Option<AnyCidr>,
            preferred: Option<IpAddr>,
            used: &[IpAddr],
        ) -> wasmtime::Result<Answer<IpAddr>> {
            if !V6 && subnet.0.is_ipv6() {
                return Ok(Err(unsupported_v6("an IPv6 address")));
            }
            let (sub, range, pref) = (cidr(subnet), range.map(cidr), preferred.map(addr));
            let used: Vec<IpAddress> = used.iter().copied().map(addr).collect();
            let reply = p
                .berth_driver_ipam_driver()
                .call_request_address(s, sub, range, pref, &used)?;
            Ok(reply.map_err(PluginError::from).map(|a| Ok(ip(&a))))
        }
    };
}

/// `berth:driver@0.2.0`: IPv4 only.
pub(crate) mod v2 {
    use crate::bindings::v0_2_0::network as root;
    pub(crate) use root::NetworkPlugin;
    const V6: bool = false;
    common!();

    /// The network as 0.2.0 sees it (its IPv6 fields cannot be said).
    pub(crate) fn network(n: &NetworkSpec) -> wit::Network {
        wit::Network {
            id: n.id.clone(),
            name: n.name.clone(),
            bridge: n.bridge.clone(),
            subnet: n.subnet.map(v4_cidr),
            gateway: n.gateway.map(v4_addr),
            mtu: n.mtu,
            internal: n.internal,
            options: n.options.clone(),
        }
    }

    pub(crate) fn endpoint(e: &EndpointSpec) -> wit::Endpoint {
        wit::Endpoint {
            id: e.id.clone(),
            network_id: e.network_id.clone(),
            host_if: e.host_if.clone(),
            ifname: e.ifname.clone(),
            address: v4_cidr(e.address),
            gateway: e.gateway.map(v4_addr),
            mac: mac(e.mac),
            sandbox: e.sandbox.clone(),
        }
    }

    /// A 0.2.0 plugin must not be asked about an IPv6 network: it would answer for the
    /// IPv4 half only, and the host would bring up half a network.
    pub(crate) fn refuse_v6(n: &NetworkSpec, e: Option<&EndpointSpec>) -> Result<(), PluginError> {
        if n.subnet6.is_some() || e.is_some_and(|e| e.address6.is_some()) {
            return Err(unsupported_v6("an IPv6 network"));
        }
        Ok(())
    }

    pub(crate) fn intent(i: wit::Intent) -> Result<NetIntent, String> {
        Ok(match i {
            wit::Intent::Bridge(b) => {
                check_link(&b.link)?;
                NetIntent::Bridge {
                    address: v4_only(any_cidr(&b.address)?)?,
                    address6: None,
                    link: b.link,
                    mtu: b.mtu,
                }
            }
            wit::Intent::Endpoint(e) => {
                check_link(&e.bridge)?;
                check_link(&e.host_if)?;
                check_link(&e.ifname)?;
                check_sandbox(&e.sandbox)?;
                NetIntent::Endpoint {
                    address: v4_only(any_cidr(&e.address)?)?,
                    gateway: e.gateway.as_ref().map(v4).transpose()?,
                    address6: None,
                    gateway6: None,
                    mac: mac_bytes(e.mac),
                    bridge: e.bridge,
                    host_if: e.host_if,
                    sandbox: e.sandbox,
                    ifname: e.ifname,
                    mtu: e.mtu,
                }
            }
            wit::Intent::AddAddress(a) => {
                let (link, address) = link_address(a)?;
                // 0.2.0 was IPv4 only, and stays so.
                v4_only(address)?;
                NetIntent::AddAddress { link, address }
            }
            wit::Intent::RemoveAddress(a) => {
                let (link, address) = link_address(a)?;
                v4_only(address)?;
                NetIntent::RemoveAddress { link, address }
            }
            wit::Intent::RemoveLink(l) => {
                check_link(&l)?;
                NetIntent::RemoveLink(l)
            }
        })
    }
}

/// `berth:driver@0.3.0`: dual-stack records.
pub(crate) mod v3 {
    use crate::bindings::v0_3_0::network as root;
    pub(crate) use root::NetworkPlugin;
    const V6: bool = true;
    common!();

    fn v6_cidr((a, p): (Ipv6Addr, u8)) -> IpCidr {
        cidr((IpAddr::V6(a), p))
    }

    pub(crate) fn network(n: &NetworkSpec) -> wit::Network {
        wit::Network {
            id: n.id.clone(),
            name: n.name.clone(),
            bridge: n.bridge.clone(),
            subnet: n.subnet.map(v4_cidr),
            gateway: n.gateway.map(v4_addr),
            subnet6: n.subnet6.map(v6_cidr),
            gateway6: n.gateway6.map(|g| addr(IpAddr::V6(g))),
            mtu: n.mtu,
            internal: n.internal,
            options: n.options.clone(),
        }
    }

    pub(crate) fn endpoint(e: &EndpointSpec) -> wit::Endpoint {
        wit::Endpoint {
            id: e.id.clone(),
            network_id: e.network_id.clone(),
            host_if: e.host_if.clone(),
            ifname: e.ifname.clone(),
            address: v4_cidr(e.address),
            gateway: e.gateway.map(v4_addr),
            address6: e.address6.map(v6_cidr),
            gateway6: e.gateway6.map(|g| addr(IpAddr::V6(g))),
            mac: mac(e.mac),
            sandbox: e.sandbox.clone(),
        }
    }

    pub(crate) fn intent(i: wit::Intent) -> Result<NetIntent, String> {
        let cidr6 = |c: &Option<IpCidr>| -> Result<Option<(Ipv6Addr, u8)>, String> {
            c.as_ref().map(|c| v6_only(any_cidr(c)?)).transpose()
        };
        Ok(match i {
            wit::Intent::Bridge(b) => {
                check_link(&b.link)?;
                NetIntent::Bridge {
                    address: v4_only(any_cidr(&b.address)?)?,
                    address6: cidr6(&b.address6)?,
                    link: b.link,
                    mtu: b.mtu,
                }
            }
            wit::Intent::Endpoint(e) => {
                check_link(&e.bridge)?;
                check_link(&e.host_if)?;
                check_link(&e.ifname)?;
                check_sandbox(&e.sandbox)?;
                NetIntent::Endpoint {
                    address: v4_only(any_cidr(&e.address)?)?,
                    gateway: e.gateway.as_ref().map(v4).transpose()?,
                    address6: cidr6(&e.address6)?,
                    gateway6: e.gateway6.as_ref().map(v6).transpose()?,
                    mac: mac_bytes(e.mac),
                    bridge: e.bridge,
                    host_if: e.host_if,
                    sandbox: e.sandbox,
                    ifname: e.ifname,
                    mtu: e.mtu,
                }
            }
            wit::Intent::AddAddress(a) => {
                let (link, address) = link_address(a)?;
                NetIntent::AddAddress { link, address }
            }
            wit::Intent::RemoveAddress(a) => {
                let (link, address) = link_address(a)?;
                NetIntent::RemoveAddress { link, address }
            }
            wit::Intent::RemoveLink(l) => {
                check_link(&l)?;
                NetIntent::RemoveLink(l)
            }
        })
    }
}
