//! The container's `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf`, as dockerd writes
//! them. They are engine-owned files bind-mounted over the image's (process isolation) or
//! handed to the agent as contents (microVMs), never written into the rootfs, so `diff`
//! and `commit` do not see them.

use std::net::{IpAddr, Ipv4Addr};

use crate::{Error, Result};

/// `--add-host name:ip` entries; `host-gateway` becomes `gateway` (the address of the
/// container's first network on the host), as `--host-gateway-ip` defaults in Docker.
pub fn parse_extra_hosts(
    extra: &[String],
    gateway: Option<Ipv4Addr>,
) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for h in extra {
        let (name, ip) = h
            .split_once(':')
            .or_else(|| h.split_once('='))
            .ok_or_else(|| Error::invalid(format!("invalid extra host: {h}")))?;
        let ip = if ip == "host-gateway" {
            gateway
                .map(|g| g.to_string())
                .ok_or_else(|| Error::invalid("unable to derive the IP value for host-gateway"))?
        } else {
            ip.trim_start_matches('[').trim_end_matches(']').to_string()
        };
        out.push((name.to_string(), ip));
    }
    Ok(out)
}

/// `own` lists the container's addresses with the names it is known by there: IPv4
/// ones, and after each its IPv6 one on an IPv6 network (dockerd's order).
pub fn hosts_file(
    hostname: &str,
    own: &[(IpAddr, Vec<String>)],
    extra: &[(String, String)],
) -> String {
    let mut s = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    for (name, ip) in extra {
        s.push_str(&format!("{ip}\t{name}\n"));
    }
    if own.is_empty() {
        s.push_str(&format!("127.0.1.1\t{hostname}\n"));
    }
    for (ip, names) in own {
        s.push_str(&own_line(ip, hostname, names));
    }
    s
}

/// The container's line for one of its addresses: `IP\tHOSTNAME NAMES...`.
fn own_line(ip: &impl std::fmt::Display, hostname: &str, names: &[String]) -> String {
    let mut line = format!("{ip}\t{hostname}");
    for n in names {
        if n != hostname {
            line.push(' ');
            line.push_str(n);
        }
    }
    line.push('\n');
    line
}

/// After `network connect` of a running container: its new address appended, as dockerd
/// does (the lines already there, the user's edits included, stay).
pub fn hosts_with_address(current: &str, ip: &impl std::fmt::Display, hostname: &str) -> String {
    let mut s = current.to_string();
    if !s.is_empty() && !s.ends_with('\n') {
        s.push('\n');
    }
    s.push_str(&own_line(ip, hostname, &[]));
    s
}

/// After `network disconnect`: without the lines of the address the container lost.
pub fn hosts_without_address(current: &str, ip: &impl std::fmt::Display) -> String {
    let ip = ip.to_string();
    current
        .split_inclusive('\n')
        .filter(|l| l.split_whitespace().next() != Some(ip.as_str()))
        .collect()
}

/// A linked container restarted with a new address: the lines naming exactly `names`
/// (its link entry, `ALIAS HOSTNAME NAME`) point at `ip` now, as dockerd updates a
/// linker's hosts file when the target starts again. `None` when nothing changes.
pub fn hosts_with_link(current: &str, names: &str, ip: &impl std::fmt::Display) -> Option<String> {
    let want: Vec<&str> = names.split_whitespace().collect();
    let line = format!("{ip}\t{names}\n");
    let mut changed = false;
    let out = current
        .split_inclusive('\n')
        .map(|l| {
            let mut fields = l.split_whitespace();
            let _addr = fields.next();
            if fields.collect::<Vec<_>>() == want && l != line {
                changed = true;
                line.as_str()
            } else {
                l
            }
        })
        .collect();
    changed.then_some(out)
}

/// Nameservers from the host's resolv.conf, minus loopback ones (unreachable from a
/// container's own network namespace), as Docker does.
pub fn host_nameservers() -> Vec<String> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .map(|s| s.trim().to_string())
        .collect()
}

/// The container's resolv.conf. `embedded` is the embedded DNS server's address on a
/// user-defined network: it answers container names and forwards the rest.
pub fn resolv_conf(
    dns: &[String],
    search: &[String],
    options: &[String],
    embedded: Option<Ipv4Addr>,
) -> String {
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut out = String::new();
    if let Some(ip) = embedded {
        out.push_str(&format!("nameserver {ip}\n"));
        for l in host.lines() {
            let t = l.trim();
            if (t.starts_with("search") && search.is_empty())
                || (t.starts_with("options") && options.is_empty())
            {
                out.push_str(l);
                out.push('\n');
            }
        }
    } else if dns.is_empty() {
        for l in host.lines() {
            let t = l.trim();
            if t.starts_with("nameserver") && (t.contains(" 127.") || t.contains(" ::1")) {
                continue;
            }
            if !search.is_empty() && t.starts_with("search") {
                continue;
            }
            if !options.is_empty() && t.starts_with("options") {
                continue;
            }
            out.push_str(l);
            out.push('\n');
        }
    } else {
        for d in dns {
            out.push_str(&format!("nameserver {d}\n"));
        }
    }
    if !search.is_empty() {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_has_hostname_and_extras() {
        let extra = parse_extra_hosts(
            &["db:10.0.0.2".into(), "gw:host-gateway".into()],
            Some("10.0.0.1".parse().unwrap()),
        )
        .unwrap();
        let h = hosts_file("abc", &[], &extra);
        assert!(h.contains("10.0.0.2\tdb\n"));
        assert!(h.contains("10.0.0.1\tgw\n"));
        assert!(h.ends_with("127.0.1.1\tabc\n"));
        let h = hosts_file(
            "abc",
            &[
                ("10.0.0.5".parse().unwrap(), vec!["web".into()]),
                ("fd00:30::10".parse().unwrap(), vec!["web".into()]),
            ],
            &[],
        );
        assert!(h.ends_with("10.0.0.5\tabc web\nfd00:30::10\tabc web\n"));
        let ip: Ipv4Addr = "10.1.0.7".parse().unwrap();
        let connected = hosts_with_address(&h, &ip, "abc");
        assert!(connected.ends_with("fd00:30::10\tabc web\n10.1.0.7\tabc\n"));
        assert_eq!(hosts_without_address(&connected, &ip), h);
        // A prefix of another address is not that address.
        let other: Ipv4Addr = "10.0.0.50".parse().unwrap();
        assert_eq!(hosts_without_address(&h, &other), h);
        let linked = hosts_file("abc", &[], &[("db abc123 db1".into(), "10.0.0.2".into())]);
        let moved = hosts_with_link(&linked, "db abc123 db1", &"10.0.0.9").unwrap();
        assert!(moved.contains("10.0.0.9\tdb abc123 db1\n"));
        assert!(!moved.contains("10.0.0.2"));
        assert_eq!(hosts_with_link(&moved, "db abc123 db1", &"10.0.0.9"), None);
        assert_eq!(hosts_with_link(&moved, "db", &"10.0.0.3"), None);
        let r = resolv_conf(
            &[],
            &["x.test".into()],
            &[],
            Some("10.0.0.1".parse().unwrap()),
        );
        assert!(r.starts_with("nameserver 10.0.0.1\n"));
        assert!(r.contains("search x.test\n"));
    }
}
