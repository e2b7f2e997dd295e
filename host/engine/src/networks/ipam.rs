//! IPv4 and IPv6 address management: subnets, pools (`--default-address-pool`, IPv4
//! only: like dockerd 20.10, berth has no default IPv6 pool) and per-network address
//! allocation. Pure functions over the recorded state, so a crash can never leave an
//! allocation that the state file does not show.

use std::collections::HashSet;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// An IPv4 prefix. `addr` keeps the address as written (a gateway in `--bip 10.0.0.1/24`);
/// [`Ipv4Net::network`] gives the masked form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Net {
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Self {
        Ipv4Net { addr, prefix }
    }

    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix as u32)
        }
    }

    /// The masked prefix (`10.0.0.0/24` for `10.0.0.1/24`).
    pub fn network(&self) -> Ipv4Net {
        Ipv4Net::new(
            Ipv4Addr::from(u32::from(self.addr) & self.mask()),
            self.prefix,
        )
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr) & self.mask()
    }

    pub fn overlaps(&self, other: &Ipv4Net) -> bool {
        self.contains(other.network().addr) || other.contains(self.network().addr)
    }

    /// Addresses in the prefix (2^(32-prefix)).
    pub fn size(&self) -> u64 {
        1u64 << (32 - self.prefix as u32)
    }

    /// The `n`th address of the prefix (0 = the network address).
    pub fn nth(&self, n: u64) -> Option<Ipv4Addr> {
        (n < self.size()).then(|| Ipv4Addr::from(u32::from(self.network().addr) + n as u32))
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network().addr) | !self.mask())
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv4Net {
    type Err = Error;
    /// `a.b.c.d/n`; Docker's message for anything else.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::invalid(format!("invalid CIDR address: {s}"));
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        if prefix > 32 {
            return Err(bad());
        }
        Ok(Ipv4Net { addr, prefix })
    }
}

/// An IPv6 prefix, as [`Ipv4Net`]: `addr` as written, [`Ipv6Net::network`] masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ipv6Net {
    pub addr: Ipv6Addr,
    pub prefix: u8,
}

impl Ipv6Net {
    pub fn new(addr: Ipv6Addr, prefix: u8) -> Self {
        Ipv6Net { addr, prefix }
    }

    fn mask(&self) -> u128 {
        if self.prefix == 0 {
            0
        } else {
            u128::MAX << (128 - self.prefix as u32)
        }
    }

    pub fn network(&self) -> Ipv6Net {
        Ipv6Net::new(
            Ipv6Addr::from(u128::from(self.addr) & self.mask()),
            self.prefix,
        )
    }

    pub fn contains(&self, ip: Ipv6Addr) -> bool {
        u128::from(ip) & self.mask() == u128::from(self.addr) & self.mask()
    }

    pub fn overlaps(&self, other: &Ipv6Net) -> bool {
        self.contains(other.network().addr) || other.contains(self.network().addr)
    }

    /// The `n`th address of the prefix (0 = the subnet-router anycast address).
    pub fn nth(&self, n: u128) -> Option<Ipv6Addr> {
        let size = 1u128.checked_shl(128 - self.prefix as u32).unwrap_or(0);
        (size == 0 || n < size).then(|| Ipv6Addr::from(u128::from(self.network().addr) + n))
    }
}

impl fmt::Display for Ipv6Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv6Net {
    type Err = Error;
    /// `addr/n`; Docker's message for anything else.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::invalid(format!("invalid CIDR address: {s}"));
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv6Addr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        if prefix > 128 {
            return Err(bad());
        }
        Ok(Ipv6Net { addr, prefix })
    }
}

/// An address of either family with its prefix length (an address on a link).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

impl From<Ipv4Net> for IpNet {
    fn from(n: Ipv4Net) -> Self {
        IpNet {
            addr: n.addr.into(),
            prefix: n.prefix,
        }
    }
}

impl From<Ipv6Net> for IpNet {
    fn from(n: Ipv6Net) -> Self {
        IpNet {
            addr: n.addr.into(),
            prefix: n.prefix,
        }
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// One `--default-address-pool base=10.10.0.0/16,size=24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    pub base: Ipv4Net,
    pub size: u8,
}

impl FromStr for Pool {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let mut base = None;
        let mut size = None;
        for kv in s.split(',') {
            match kv.split_once('=') {
                Some(("base", v)) => base = Some(v.parse::<Ipv4Net>()?.network()),
                Some(("size", v)) => {
                    size =
                        Some(v.parse::<u8>().map_err(|_| {
                            Error::invalid(format!("invalid address pool size: {v}"))
                        })?)
                }
                _ => {
                    return Err(Error::invalid(format!(
                        "invalid address pool {s:?}: want base=CIDR,size=N"
                    )))
                }
            }
        }
        let (Some(base), Some(size)) = (base, size) else {
            return Err(Error::invalid(format!(
                "invalid address pool {s:?}: want base=CIDR,size=N"
            )));
        };
        if size < base.prefix || size > 30 {
            return Err(Error::invalid(format!(
                "invalid address pool {s:?}: size must be between the base's prefix and 30"
            )));
        }
        Ok(Pool { base, size })
    }
}

/// Docker's default local pools (`172.17.0.0/16`…`172.31.0.0/16` as /16s, then
/// `192.168.0.0/16` as /20s).
pub fn default_pools() -> Vec<Pool> {
    vec![
        Pool {
            base: "172.17.0.0/12".parse().expect("constant"),
            size: 16,
        },
        Pool {
            base: "192.168.0.0/16".parse().expect("constant"),
            size: 20,
        },
    ]
}

/// The IPAM seam (Docker's `IpamDriver`): which subnet a network gets and which address
/// an endpoint gets. Implemented by a WASM `network-plugin`'s IPAM
/// ([`super::plugin::WasmIpam`]; Docker's `default` IPAM is the `bridge` plugin's). Pure
/// decisions over what the caller says is in use: the state file stays the only record
/// of allocations.
pub trait IpamDriver: Send + Sync {
    /// A subnet for a new network: `requested` (checked against `used`) or one from the
    /// driver's pools.
    fn request_pool(&self, requested: Option<Ipv4Net>, used: &[Ipv4Net]) -> Result<Ipv4Net>;
    /// An address of `subnet` (inside `range` when set): `preferred` (`--ip`) or the
    /// first free one.
    fn request_address(
        &self,
        subnet: Ipv4Net,
        range: Option<Ipv4Net>,
        preferred: Option<Ipv4Addr>,
        used: &HashSet<Ipv4Addr>,
    ) -> Result<Ipv4Addr>;
    /// The IPv6 subnet `requested` (`--ipv6 --subnet V6`), checked against `used`.
    fn request_pool6(&self, requested: Ipv6Net, used: &[Ipv6Net]) -> Result<Ipv6Net>;
    /// An IPv6 address of `subnet`, as [`IpamDriver::request_address`] (`--ip6`).
    fn request_address6(
        &self,
        subnet: Ipv6Net,
        range: Option<Ipv6Net>,
        preferred: Option<Ipv6Addr>,
        used: &HashSet<Ipv6Addr>,
    ) -> Result<Ipv6Addr>;
}

/// Docker's MAC for an address: `02:42` followed by the four address bytes.
pub fn mac_for(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

/// `aa:bb:cc:dd:ee:ff` → bytes.
pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let bad = || Error::invalid(format!("invalid MAC address: {s}"));
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut out = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        out[i] = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_and_addresses() {
        let n: Ipv4Net = "10.1.2.1/24".parse().unwrap();
        assert_eq!(n.network().to_string(), "10.1.2.0/24");
        assert!(n.contains("10.1.2.200".parse().unwrap()));
        assert!(!n.contains("10.1.3.1".parse().unwrap()));
        assert_eq!(n.broadcast().to_string(), "10.1.2.255");
        assert!("10.1.0.0/16".parse::<Ipv4Net>().unwrap().overlaps(&n));
        assert!("10.1/16".parse::<Ipv4Net>().is_err());
        let pool = "base=10.232.0.0/16,size=24".parse::<Pool>().unwrap();
        assert_eq!(
            (pool.base.to_string(), pool.size),
            ("10.232.0.0/16".into(), 24)
        );
        assert!("base=10.232.0.0/16,size=8".parse::<Pool>().is_err());
        assert_eq!(mac_for("172.17.0.2".parse().unwrap()), "02:42:ac:11:00:02");
        assert_eq!(parse_mac("02:42:ac:11:00:02").unwrap()[2], 0xac);
        let six: Ipv6Net = "fd00:30::1/64".parse().unwrap();
        assert_eq!(six.network().to_string(), "fd00:30::/64");
        assert!(six.contains("fd00:30::ffff".parse().unwrap()));
        assert!(!six.contains("fd00:31::1".parse().unwrap()));
        assert_eq!(six.nth(1).unwrap().to_string(), "fd00:30::1");
        assert!("fd00::/16".parse::<Ipv6Net>().unwrap().overlaps(&six));
        assert!(!"fd00::/48".parse::<Ipv6Net>().unwrap().overlaps(&six));
        assert!("fd00::/129".parse::<Ipv6Net>().is_err());
        assert!("10.0.0.0/8".parse::<Ipv6Net>().is_err());
    }
}
