//! Docker's `default` IPAM over the daemon's `--default-address-pool`s.

use std::net::Ipv4Addr;

use crate::berth::driver::types::{DriverError, IpAddress, IpCidr};
use crate::exports::berth::driver::ipam_driver::{self, Pool};

/// An IPv4 prefix as plain numbers.
#[derive(Clone, Copy)]
struct Net {
    addr: u32,
    prefix: u8,
}

impl Net {
    fn mask(self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix as u32)
        }
    }
    fn base(self) -> u32 {
        self.addr & self.mask()
    }
    fn size(self) -> u64 {
        1u64 << (32 - self.prefix as u32)
    }
    fn contains(self, ip: u32) -> bool {
        ip & self.mask() == self.base()
    }
    fn overlaps(self, other: Net) -> bool {
        self.contains(other.base()) || other.contains(self.base())
    }
    fn broadcast(self) -> u32 {
        self.base() | !self.mask()
    }
}

fn v4(a: &IpAddress) -> Result<u32, DriverError> {
    match a {
        IpAddress::V4((a, b, c, d)) => Ok(u32::from(Ipv4Addr::new(*a, *b, *c, *d))),
        IpAddress::V6(_) => Err(DriverError::Unsupported("IPv6 address management".into())),
    }
}

fn net(c: &IpCidr) -> Result<Net, DriverError> {
    if c.prefix > 32 {
        return Err(DriverError::Invalid(format!(
            "prefix /{} is not IPv4",
            c.prefix
        )));
    }
    Ok(Net {
        addr: v4(&c.addr)?,
        prefix: c.prefix,
    })
}

fn addr(ip: u32) -> IpAddress {
    let [a, b, c, d] = Ipv4Addr::from(ip).octets();
    IpAddress::V4((a, b, c, d))
}

fn cidr(n: Net) -> IpCidr {
    IpCidr {
        addr: addr(n.addr),
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
            if p.size < base.prefix || p.size > 32 {
                return Err(DriverError::Invalid(format!("bad pool size /{}", p.size)));
            }
            let step = 1u64 << (32 - p.size as u32);
            for i in 0..base.size() / step {
                let cand = Net {
                    addr: base.base() + (i * step) as u32,
                    prefix: p.size,
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
        let used = used
            .iter()
            .map(v4)
            .collect::<Result<std::collections::HashSet<_>, _>>()?;
        if let Some(p) = preferred {
            let ip = v4(&p)?;
            if !subnet.contains(ip) {
                return Err(DriverError::Invalid(format!(
                    "no configured subnet or ip-range contain the IP address {}",
                    Ipv4Addr::from(ip)
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
        let (first, bcast) = (subnet.base(), subnet.broadcast());
        (0..scope.size())
            .map(|n| scope.base().wrapping_add(n as u32))
            .find(|ip| *ip != first && *ip != bcast && subnet.contains(*ip) && !used.contains(ip))
            .map(addr)
            .ok_or_else(|| {
                DriverError::Denied(
                    "no available IPv4 addresses on this network's address pools".into(),
                )
            })
    }
}
