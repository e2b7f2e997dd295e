//! `-p`/`-P`: Docker's `PortBindings` and `PublishAllPorts` → concrete host ports, with
//! Docker's conflict error. Allocation is checked against every running container's
//! recorded mappings, so a port is free again as soon as its container stops.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use bollard_stubs::models::PortBinding;

use super::model::PortMapping;
use crate::{Error, Result};

/// Docker's ephemeral range for `-P` and `-p 80` (when the kernel's cannot be read).
const EPHEMERAL: (u16, u16) = (49153, 60999);

#[derive(Debug, Clone, PartialEq)]
pub struct PortRequest {
    pub proto: String,
    pub container_port: u16,
    pub host_ip: Ipv4Addr,
    /// Inclusive range; `None` = any ephemeral port.
    pub host_ports: Option<(u16, u16)>,
}

/// `80/tcp` → (80, "tcp").
pub fn parse_port_key(key: &str) -> Result<(u16, String)> {
    let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
    let proto = proto.to_ascii_lowercase();
    if proto != "tcp" && proto != "udp" {
        return Err(Error::invalid(format!(
            "invalid proto: {proto} (berth publishes tcp and udp)"
        )));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| Error::invalid(format!("invalid port: {key}")))?;
    Ok((port, proto))
}

fn parse_host_ports(s: &str) -> Result<Option<(u16, u16)>> {
    if s.is_empty() || s == "0" {
        return Ok(None);
    }
    let bad = || Error::invalid(format!("invalid hostPort: {s}"));
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let a: u16 = a.parse().map_err(|_| bad())?;
    let b: u16 = b.parse().map_err(|_| bad())?;
    if a == 0 || b < a {
        return Err(bad());
    }
    Ok(Some((a, b)))
}

/// Everything a container asks to publish. IPv6 host addresses are skipped (berth's NAT is
/// IPv4 only), as dockerd skips them when IPv6 is off.
pub fn requests(
    bindings: &HashMap<String, Option<Vec<PortBinding>>>,
    publish_all: bool,
    exposed: &[String],
) -> Result<Vec<PortRequest>> {
    let mut out = Vec::new();
    let mut keys: Vec<&String> = bindings.keys().collect();
    keys.sort();
    for key in keys {
        let (port, proto) = parse_port_key(key)?;
        for b in bindings[key].clone().unwrap_or_default() {
            let ip = b.host_ip.unwrap_or_default();
            let host_ip = match ip.as_str() {
                "" => Ipv4Addr::UNSPECIFIED,
                s => match s.parse::<std::net::IpAddr>() {
                    Ok(std::net::IpAddr::V4(v4)) => v4,
                    Ok(std::net::IpAddr::V6(_)) => continue,
                    Err(_) => return Err(Error::invalid(format!("invalid IP address: {s}"))),
                },
            };
            out.push(PortRequest {
                proto: proto.clone(),
                container_port: port,
                host_ip,
                host_ports: parse_host_ports(&b.host_port.unwrap_or_default())?,
            });
        }
    }
    if publish_all {
        for key in exposed {
            if bindings.contains_key(key) {
                continue;
            }
            let (port, proto) = parse_port_key(key)?;
            out.push(PortRequest {
                proto,
                container_port: port,
                host_ip: Ipv4Addr::UNSPECIFIED,
                host_ports: None,
            });
        }
    }
    Ok(out)
}

fn clashes(taken: &[PortMapping], proto: &str, ip: Ipv4Addr, port: u16) -> bool {
    taken.iter().any(|m| {
        m.proto == proto
            && m.host_port == port
            && (m.host_ip == ip || m.host_ip.is_unspecified() || ip.is_unspecified())
    })
}

fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or(EPHEMERAL)
}

/// Pick host ports for `reqs` of `container_id` at `container_ip`, given the mappings
/// already `taken`. Docker's message on a conflict.
pub fn allocate(
    reqs: &[PortRequest],
    taken: &[PortMapping],
    container_id: &str,
    container_ip: Ipv4Addr,
) -> Result<Vec<PortMapping>> {
    let mut out: Vec<PortMapping> = Vec::new();
    for r in reqs {
        let all: Vec<PortMapping> = taken.iter().chain(out.iter()).cloned().collect();
        let (lo, hi) = r.host_ports.unwrap_or_else(ephemeral_range);
        let port = (lo..=hi).find(|p| !clashes(&all, &r.proto, r.host_ip, *p));
        let Some(port) = port else {
            return Err(Error::internal(if r.host_ports.is_some() && lo == hi {
                format!(
                    "Bind for {}:{lo} failed: port is already allocated",
                    r.host_ip
                )
            } else {
                format!(
                    "Bind for {}:{lo}-{hi} failed: port is already allocated",
                    r.host_ip
                )
            }));
        };
        out.push(PortMapping {
            container_id: container_id.to_string(),
            proto: r.proto.clone(),
            host_ip: r.host_ip,
            host_port: port,
            container_ip,
            container_port: r.container_port,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_allocate() {
        let mut b = HashMap::new();
        b.insert(
            "80/tcp".to_string(),
            Some(vec![PortBinding {
                host_ip: Some(String::new()),
                host_port: Some("8080".into()),
            }]),
        );
        let reqs = requests(&b, true, &["80/tcp".into(), "53/udp".into()]).unwrap();
        assert_eq!(reqs.len(), 2);
        let ip = "10.0.0.2".parse().unwrap();
        let first = allocate(&reqs, &[], "a", ip).unwrap();
        assert_eq!(first[0].host_port, 8080);
        let err = allocate(&reqs[..1], &first, "b", ip).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Bind for 0.0.0.0:8080 failed: port is already allocated"
        );
    }
}
