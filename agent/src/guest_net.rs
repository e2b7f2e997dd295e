//! Guest mode: the VM's NICs, from `berth.net=` (and `berth.net6=` for an IPv6
//! network's address) and `berth.spare=` on the kernel command line, and later from the
//! host's `ConfigureNic`/`DeconfigureNic` requests.
//!
//! The host joins each virtio-net NIC to one of the container's bridge endpoints (a TAP
//! mirrored onto the veth in the container's netns, Kata's tcfilter model), so the guest
//! interface must carry exactly that endpoint's MAC, address and route. At boot the kernel
//! command line is enough, and the interfaces are configured before the agent listens, so
//! no container process ever sees a half-configured network. The microvm machine has no
//! hotplug, so the VM also boots with spare NICs (renamed `spareN`, left down) that
//! `docker network connect` configures on the running VM and `disconnect` turns back into
//! spares.

use std::fs;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use tracing::{info, warn};

/// One `berth.net=<ifname>,<mac>,<ip>/<prefix>,<gateway|->,<mtu>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    ifname: String,
    mac: String,
    ip: Ipv4Addr,
    prefix: u8,
    gateway: Option<Ipv4Addr>,
    mtu: u32,
    /// The IPv6 half of a dual-stack network's endpoint.
    v6: Option<Nic6>,
}

/// One `berth.net6=<mac>,<ip6>/<prefix>,<gateway6|->`: the IPv6 address and default route
/// of the NIC with that MAC (a separate argument, so an agent from before IPv6 ignores it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nic6 {
    ip: Ipv6Addr,
    prefix: u8,
    gateway: Option<Ipv6Addr>,
}

fn parse_nic6(v: &str) -> Option<(String, Nic6)> {
    let f: Vec<&str> = v.split(',').collect();
    let [mac, cidr, gw] = f[..] else {
        return None;
    };
    if !valid_mac(mac) {
        return None;
    }
    let (ip, prefix) = cidr.split_once('/')?;
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 128)?;
    let gateway = match gw {
        "-" => None,
        g => Some(g.parse().ok()?),
    };
    Some((
        mac.to_ascii_lowercase(),
        Nic6 {
            ip: ip.parse().ok()?,
            prefix,
            gateway,
        },
    ))
}

fn valid_ifname(name: &str) -> bool {
    // IFNAMSIZ is 16 with the NUL.
    !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(&c))
}

fn valid_mac(mac: &str) -> bool {
    mac.len() == 17
        && mac
            .split(':')
            .all(|b| b.len() == 2 && b.bytes().all(|c| c.is_ascii_hexdigit()))
}

fn parse_nic(v: &str) -> Option<Nic> {
    let f: Vec<&str> = v.split(',').collect();
    let [ifname, mac, cidr, gw, mtu] = f[..] else {
        return None;
    };
    if !valid_ifname(ifname) || !valid_mac(mac) {
        return None;
    }
    let (ip, prefix) = cidr.split_once('/')?;
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
    let gateway = match gw {
        "-" => None,
        g => Some(g.parse().ok()?),
    };
    Some(Nic {
        ifname: ifname.to_string(),
        mac: mac.to_ascii_lowercase(),
        ip: ip.parse().ok()?,
        prefix,
        gateway,
        mtu: mtu.parse().ok().filter(|m| (68..=65535).contains(m))?,
        v6: None,
    })
}

/// The kernel's name for the interface with `mac`.
fn name_by_mac(mac: &str) -> Option<String> {
    fs::read_dir("/sys/class/net")
        .ok()?
        .flatten()
        .find_map(|e| {
            let a = fs::read_to_string(e.path().join("address")).ok()?;
            (a.trim().eq_ignore_ascii_case(mac))
                .then(|| e.file_name().to_string_lossy().into_owned())
        })
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in name.bytes().take(libc::IFNAMSIZ - 1).enumerate() {
        ifr.ifr_name[i] = b as libc::c_char;
    }
    ifr
}

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; the kernel reads it by family.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn check(what: &str, rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

fn configure(sock: &OwnedFd, nic: &Nic) -> io::Result<()> {
    let fd = sock.as_raw_fd();
    let current = name_by_mac(&nic.mac)
        .ok_or_else(|| io::Error::other(format!("no interface with MAC {}", nic.mac)))?;
    // SAFETY (all ioctls below): socket ioctls on a local, initialised ifreq/rtentry that
    // outlive the call.
    unsafe {
        if current != nic.ifname {
            let mut ifr = ifreq(&current);
            for (i, b) in nic.ifname.bytes().enumerate() {
                ifr.ifr_ifru.ifru_newname[i] = b as libc::c_char;
            }
            check("rename", libc::ioctl(fd, libc::SIOCSIFNAME, &ifr))?;
        }
        let mut ifr = ifreq(&nic.ifname);
        ifr.ifr_ifru.ifru_mtu = nic.mtu as libc::c_int;
        check("set MTU", libc::ioctl(fd, libc::SIOCSIFMTU, &ifr))?;
        let mut ifr = ifreq(&nic.ifname);
        ifr.ifr_ifru.ifru_addr = sockaddr(nic.ip);
        check("set address", libc::ioctl(fd, libc::SIOCSIFADDR, &ifr))?;
        let mask = if nic.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - nic.prefix as u32)
        };
        let mut ifr = ifreq(&nic.ifname);
        ifr.ifr_ifru.ifru_netmask = sockaddr(Ipv4Addr::from(mask));
        check("set netmask", libc::ioctl(fd, libc::SIOCSIFNETMASK, &ifr))?;
        let mut ifr = ifreq(&nic.ifname);
        check("get flags", libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr))?;
        ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        check("up", libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr))?;
        if let Some(gw) = nic.gateway {
            let dev = std::ffi::CString::new(nic.ifname.as_str()).map_err(io::Error::other)?;
            let mut rt: libc::rtentry = std::mem::zeroed();
            rt.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
            rt.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
            rt.rt_gateway = sockaddr(gw);
            rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
            rt.rt_dev = dev.as_ptr() as *mut libc::c_char;
            match libc::ioctl(fd, libc::SIOCADDRT, &rt) {
                // A second network's NIC: the first one's default route stays (as on the
                // host side).
                rc if rc < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EEXIST) => {
                }
                rc => check("default route", rc)?,
            }
        }
    }
    if let Some(v6) = nic.v6 {
        configure6(&nic.ifname, &v6)?;
    }
    Ok(())
}

/// Route entry for `SIOCADDRT` on an `AF_INET6` socket (`struct in6_rtmsg`; libc's has
/// private fields).
#[repr(C)]
struct In6Rtmsg {
    dst: libc::in6_addr,
    src: libc::in6_addr,
    gateway: libc::in6_addr,
    kind: u32,
    dst_len: u16,
    src_len: u16,
    metric: u32,
    info: libc::c_ulong,
    flags: u32,
    ifindex: libc::c_int,
}

fn in6(ip: Ipv6Addr) -> libc::in6_addr {
    libc::in6_addr {
        s6_addr: ip.octets(),
    }
}

/// The IPv6 half: IPv6 on for the NIC, no duplicate address detection (the host's IPAM
/// gave the address; a tentative one would be unusable for the container's first second,
/// as libnetwork's IFA_F_NODAD avoids), the address, and a default route via the gateway.
fn configure6(ifname: &str, v6: &Nic6) -> io::Result<()> {
    for (key, value) in [("disable_ipv6", "0"), ("accept_dad", "0")] {
        let path = format!("/proc/sys/net/ipv6/conf/{ifname}/{key}");
        fs::write(&path, value).map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))?;
    }
    let sock = socket(libc::AF_INET6)?;
    let fd = sock.as_raw_fd();
    let name = std::ffi::CString::new(ifname).map_err(io::Error::other)?;
    // SAFETY: a NUL-terminated name that outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::other(format!("no interface {ifname}")));
    }
    let req = libc::in6_ifreq {
        ifr6_addr: in6(v6.ip),
        ifr6_prefixlen: v6.prefix as u32,
        ifr6_ifindex: index as libc::c_int,
    };
    // SAFETY (both ioctls): socket ioctls on local, initialised structs that outlive the
    // call.
    unsafe {
        match libc::ioctl(fd, libc::SIOCSIFADDR, &req) {
            rc if rc < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EEXIST) => {}
            rc => check("set IPv6 address", rc)?,
        }
        if let Some(gw) = v6.gateway {
            let rt = In6Rtmsg {
                dst: in6(Ipv6Addr::UNSPECIFIED),
                src: in6(Ipv6Addr::UNSPECIFIED),
                gateway: in6(gw),
                kind: 0,
                dst_len: 0,
                src_len: 0,
                metric: 1,
                info: 0,
                flags: (libc::RTF_UP | libc::RTF_GATEWAY) as u32,
                ifindex: index as libc::c_int,
            };
            match libc::ioctl(fd, libc::SIOCADDRT, &rt) {
                rc if rc < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EEXIST) => {
                }
                rc => check("default IPv6 route", rc)?,
            }
        }
    }
    Ok(())
}

/// One `berth.spare=<name>,<mac>`.
fn parse_spare(v: &str) -> Option<(String, String)> {
    let (name, mac) = v.split_once(',')?;
    (valid_ifname(name) && valid_mac(mac)).then(|| (name.to_string(), mac.to_ascii_lowercase()))
}

fn inet_socket() -> io::Result<OwnedFd> {
    socket(libc::AF_INET)
}

fn socket(family: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the fd is owned right away.
    let raw = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd from socket(2).
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// The NIC with `mac`, down and without its address (so without its routes), renamed
/// `spare_name`: a spare again.
fn make_spare(sock: &OwnedFd, mac: &str, spare_name: &str) -> io::Result<()> {
    let fd = sock.as_raw_fd();
    let current =
        name_by_mac(mac).ok_or_else(|| io::Error::other(format!("no interface with MAC {mac}")))?;
    // SAFETY (all ioctls below): socket ioctls on a local, initialised ifreq that outlives
    // the call.
    unsafe {
        // Address 0.0.0.0 deletes the interface's address, and with it the routes through
        // it (the kernel's `ifconfig IF 0.0.0.0`).
        let mut ifr = ifreq(&current);
        ifr.ifr_ifru.ifru_addr = sockaddr(Ipv4Addr::UNSPECIFIED);
        check("remove address", libc::ioctl(fd, libc::SIOCSIFADDR, &ifr))?;
        let mut ifr = ifreq(&current);
        check("get flags", libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr))?;
        ifr.ifr_ifru.ifru_flags &= !((libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short);
        check("down", libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr))?;
        if current != spare_name {
            // A down interface can be renamed; the spare's name frees `ethN` for the next
            // network.
            let mut ifr = ifreq(&current);
            for (i, b) in spare_name.bytes().enumerate() {
                ifr.ifr_ifru.ifru_newname[i] = b as libc::c_char;
            }
            check("rename", libc::ioctl(fd, libc::SIOCSIFNAME, &ifr))?;
        }
    }
    Ok(())
}

/// `ConfigureNic`: a spare NIC joins the network the host connected the VM to.
pub fn configure_nic(c: &berth_agent_protocol::NicConfig) -> io::Result<()> {
    if !valid_ifname(&c.name) || !valid_mac(&c.mac) || c.prefix > 32 || c.prefix6 > 128 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid NIC configuration {} ({})", c.name, c.mac),
        ));
    }
    let nic = Nic {
        ifname: c.name.clone(),
        mac: c.mac.to_ascii_lowercase(),
        ip: c.address,
        prefix: c.prefix,
        gateway: c.gateway,
        mtu: c.mtu,
        v6: c.address6.map(|ip| Nic6 {
            ip,
            prefix: c.prefix6,
            gateway: c.gateway6,
        }),
    };
    configure(&inet_socket()?, &nic)?;
    info!(ifname = %nic.ifname, ip = %nic.ip, prefix = nic.prefix, "guest network interface configured");
    Ok(())
}

/// `DeconfigureNic`: the NIC with `mac` becomes the spare `spare_name` again.
pub fn deconfigure_nic(mac: &str, spare_name: &str) -> io::Result<()> {
    if !valid_ifname(spare_name) || !valid_mac(mac) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid spare NIC {spare_name} ({mac})"),
        ));
    }
    make_spare(&inet_socket()?, mac, spare_name)?;
    info!(mac, spare_name, "guest network interface is a spare again");
    Ok(())
}

/// Brings up loopback and every NIC named by `berth.net=`, after renaming the spares of
/// `berth.spare=` out of the way (the kernel may have given one an `ethN` a network NIC
/// needs). Failures are logged on the console; the container then runs without that
/// network.
pub fn configure_from_cmdline() {
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if let Err(e) = crate::namespaces::loopback_up() {
        warn!("loopback up: {e}");
    }
    let spares: Vec<(String, String)> = cmdline
        .split_whitespace()
        .filter_map(|a| a.strip_prefix("berth.spare="))
        .filter_map(|v| {
            let s = parse_spare(v);
            if s.is_none() {
                warn!("ignoring malformed berth.spare={v}");
            }
            s
        })
        .collect();
    let v6: Vec<(String, Nic6)> = cmdline
        .split_whitespace()
        .filter_map(|a| a.strip_prefix("berth.net6="))
        .filter_map(|v| {
            let n = parse_nic6(v);
            if n.is_none() {
                warn!("ignoring malformed berth.net6={v}");
            }
            n
        })
        .collect();
    let nics: Vec<Nic> = cmdline
        .split_whitespace()
        .filter_map(|a| a.strip_prefix("berth.net="))
        .filter_map(|v| {
            let n = parse_nic(v);
            if n.is_none() {
                warn!("ignoring malformed berth.net={v}");
            }
            n
        })
        .map(|mut n| {
            n.v6 = v6.iter().find(|(mac, _)| *mac == n.mac).map(|(_, a)| *a);
            n
        })
        .collect();
    if nics.is_empty() && spares.is_empty() {
        return;
    }
    let sock = match inet_socket() {
        Ok(s) => s,
        Err(e) => {
            warn!("network set-up: socket: {e}");
            return;
        }
    };
    for (name, mac) in &spares {
        if let Err(e) = make_spare(&sock, mac, name) {
            warn!("spare NIC {name} ({mac}): {e}");
        }
    }
    for nic in &nics {
        match configure(&sock, nic) {
            Ok(()) => info!(
                ifname = %nic.ifname, ip = %nic.ip, prefix = nic.prefix,
                "guest network interface configured"
            ),
            Err(e) => warn!("configuring {} ({}): {e}", nic.ifname, nic.mac),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nic_args() {
        assert_eq!(
            parse_nic("eth0,02:42:0A:E9:00:02,10.233.0.2/24,10.233.0.1,1500"),
            Some(Nic {
                ifname: "eth0".into(),
                mac: "02:42:0a:e9:00:02".into(),
                ip: Ipv4Addr::new(10, 233, 0, 2),
                prefix: 24,
                gateway: Some(Ipv4Addr::new(10, 233, 0, 1)),
                mtu: 1500,
                v6: None,
            })
        );
        assert_eq!(
            parse_nic6("02:42:0A:E9:00:02,fd00:30::2/64,fd00:30::1"),
            Some((
                "02:42:0a:e9:00:02".into(),
                Nic6 {
                    ip: "fd00:30::2".parse().unwrap(),
                    prefix: 64,
                    gateway: Some("fd00:30::1".parse().unwrap()),
                }
            ))
        );
        assert_eq!(
            parse_nic6("02:42:0a:e9:00:02,fd00:30::2/64,-").map(|n| n.1.gateway),
            Some(None)
        );
        for bad in [
            "02:42:0a:e9:00:02,fd00:30::2/129,-",
            "02:42:0a:e9:00:02,10.0.0.2/24,-",
            "02:42:0a:e9:00:02,fd00:30::2/64",
        ] {
            assert!(parse_nic6(bad).is_none(), "{bad}");
        }
        assert_eq!(
            parse_nic("eth1,02:42:0a:e9:00:02,10.1.0.2/16,-,9000").map(|n| n.gateway),
            Some(None)
        );
        for bad in [
            "eth0,02:42:0a:e9:00:02,10.233.0.2/24,10.233.0.1",
            "eth0,zz:42:0a:e9:00:02,10.233.0.2/24,-,1500",
            "eth0,02:42:0a:e9:00:02,10.233.0.2/33,-,1500",
            "eth0,02:42:0a:e9:00:02,10.233.0.2,-,1500",
            "eth0,02:42:0a:e9:00:02,10.233.0.2/24,gw,1500",
            "eth0,02:42:0a:e9:00:02,10.233.0.2/24,-,10",
            ",02:42:0a:e9:00:02,10.233.0.2/24,-,1500",
            "averyveryverylongname,02:42:0a:e9:00:02,10.233.0.2/24,-,1500",
        ] {
            assert!(parse_nic(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn spare_args() {
        assert_eq!(
            parse_spare("spare2,06:AB:cd:00:11:22"),
            Some(("spare2".into(), "06:ab:cd:00:11:22".into()))
        );
        for bad in [
            "spare2",
            "spa/re,06:ab:cd:00:11:22",
            "spare2,06:ab:cd:00:11",
        ] {
            assert!(parse_spare(bad).is_none(), "{bad}");
        }
    }
}
