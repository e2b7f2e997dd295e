//! Docker's `default` IPAM over the daemon's `--default-address-pool`s, for IPv4 and
//! IPv6 (both families as plain 128-bit numbers with the family's width).

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::berth::driver::types::{DriverError, IpAddress, IpCidr};
use crate::exports::berth::driver::ipam_driver::{self, Pool};

/// A prefix of either family as plain numbers.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Net {
    addr: u128,
    prefix: u8,
    /// 32 (IPv4) or 128 (IPv6).
    bits: u8,
}

impl Net {
    fn all(self) -> u128 {
        if self.bits == 128 {
            u128::MAX
        } else {
            (1u128 << self.bits) - 1
        }
    }
    fn mask(self) -> u128 {
        if self.prefix == 0 {
            0
        } else {
            (u128::MAX << (self.bits - self.prefix) as u32) & self.all()
        }
    }
    fn base(self) -> u128 {
        self.addr & self.mask()
    }
    /// Addresses in the prefix, saturated (an IPv6 /0 does not fit).
    fn size(self) -> u128 {
        1u128
            .checked_shl((self.bits - self.prefix) as u32)
            .unwrap_or(u128::MAX)
    }
    fn contains(self, ip: u128) -> bool {
        ip & self.mask() == self.base()
    }
    fn overlaps(self, other: Net) -> bool {
        self.bits == other.bits && (self.contains(other.base()) || other.contains(self.base()))
    }
    fn last(self) -> u128 {
        self.base() | (!self.mask() & self.all())
    }
}

/// (number, width) of an address.
fn num(a: &IpAddress) -> (u128, u8) {
    match *a {
        IpAddress::V4((a, b, c, d)) => (u32::from(Ipv4Addr::new(a, b, c, d)) as u128, 32),
        IpAddress::V6((a, b, c, d, e, f, g, h)) => {
            (u128::from(Ipv6Addr::new(a, b, c, d, e, f, g, h)), 128)
        }
    }
}

fn net(c: &IpCidr) -> Result<Net, DriverError> {
    let (addr, bits) = num(&c.addr);
    if c.prefix > bits {
        return Err(DriverError::Invalid(format!(
            "prefix /{} is out of range",
            c.prefix
        )));
    }
    Ok(Net {
        addr,
        prefix: c.prefix,
        bits,
    })
}

fn addr(ip: u128, bits: u8) -> IpAddress {
    if bits == 32 {
        let [a, b, c, d] = Ipv4Addr::from(ip as u32).octets();
        IpAddress::V4((a, b, c, d))
    } else {
        let s = Ipv6Addr::from(ip).segments();
        IpAddress::V6((s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]))
    }
}

fn show(ip: u128, bits: u8) -> String {
    if bits == 32 {
        Ipv4Addr::from(ip as u32).to_string()
    } else {
        Ipv6Addr::from(ip).to_string()
    }
}

fn cidr(n: Net) -> IpCidr {
    IpCidr {
        addr: addr(n.addr, n.bits),
        prefix: n.prefix,
    }
}

impl ipam_driver::Guest for crate::Plugin {
    fn request_pool(
        requested: Option<IpCidr>,
        pools: Vec<Pool>,
        used: Vec<IpCidr>,
    ) -> Result<IpCidr, DriverError> {
        let used = used.iter().map(net).collect::<Result<Vec<_>, _>>()?;
        if let Some(r) = requested {
            let r = net(&r)?;
            if used.iter().any(|u| u.overlaps(r)) {
                return Err(DriverError::Denied(
                    "invalid pool request: Pool overlaps with other one on this address space"
                        .into(),
                ));
            }
            return Ok(cidr(r));
        }
        for p in &pools {
            let base = net(&p.base)?;
            if p.size < base.prefix || p.size > base.bits {
                return Err(DriverError::Invalid(format!("bad pool size /{}", p.size)));
            }
            let step = 1u128 << (base.bits - p.size) as u32;
            // Bounded: a pool has at most 2^(size - prefix) subnets, and each overlap
            // test is against what is in use.
            let count = (base.size() / step).min(1 << 24);
            for i in 0..count {
                let cand = Net {
                    addr: base.base() + i * step,
                    prefix: p.size,
                    bits: base.bits,
                };
                if !used.iter().any(|u| u.overlaps(cand)) {
                    return Ok(cidr(cand));
                }
            }
        }
        Err(DriverError::Denied(
            "all predefined address pools have been fully subnetted".into(),
        ))
    }

    fn request_address(
        subnet: IpCidr,
        range: Option<IpCidr>,
        preferred: Option<IpAddress>,
        used: Vec<IpAddress>,
    ) -> Result<IpAddress, DriverError> {
        let subnet = net(&subnet)?;
        let bits = subnet.bits;
        let used: std::collections::HashSet<u128> = used
            .iter()
            .map(num)
            .filter(|(_, b)| *b == bits)
            .map(|(n, _)| n)
            .collect();
        if let Some(p) = preferred {
            let (ip, b) = num(&p);
            if b != bits || !subnet.contains(ip) {
                return Err(DriverError::Invalid(format!(
                    "no configured subnet or ip-range contain the IP address {}",
                    show(ip, b)
                )));
            }
            if used.contains(&ip) {
                return Err(DriverError::Denied("Address already in use".into()));
            }
            return Ok(p);
        }
        let scope = match range {
            Some(r) => net(&r)?,
            None => subnet,
        };
        // The network address is never handed out; in IPv4 neither is the broadcast
        // address (IPv6 has none). The first free address is at most `used.len() + 3`
        // steps in, so the scan is bounded by what the host passed.
        let first = subnet.base();
        let bcast = (bits == 32).then(|| subnet.last());
        let steps = (used.len() as u128 + 3).min(scope.size());
        (0..steps)
            .map(|n| scope.base().wrapping_add(n))
            .find(|ip| {
                *ip != first
                    && Some(*ip) != bcast
                    && subnet.contains(*ip)
                    && ip & !scope.all() == 0
                    && !used.contains(ip)
            })
            .map(|ip| addr(ip, bits))
            .ok_or_else(|| {
                DriverError::Denied(format!(
                    "no available IPv{} addresses on this network's address pools",
                    if bits == 32 { 4 } else { 6 }
                ))
            })
    }
}
