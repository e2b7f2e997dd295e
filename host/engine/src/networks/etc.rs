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
        let mut line = format!("{ip}\t{hostname}");
        for n in names {
            if n != hostname {
                line.push(' ');
                line.push_str(n);
            }
        }
        s.push_str(&line);
        s.push('\n');
    }
    s
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
