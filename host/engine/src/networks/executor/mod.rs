//! The executor: applies driver [`Intent`]s with netlink (`rtnetlink`), guarded by the
//! ownership [`Ledger`]. Nothing else in berth creates or deletes links or addresses.
//! The TAPs of microVM sandboxes are in [`tap`].

use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Mutex;

use futures::TryStreamExt;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::driver::Intent;
use super::ipam::{IpNet, Ipv4Net, Ipv6Net};
use super::ledger::{Kind, Ledger};
use super::netns;
use crate::{Error, Result};

mod tap;

/// One endpoint's veth as [`Intent::Endpoint`] describes it.
#[derive(Clone, Copy)]
struct EndpointLink<'a> {
    bridge: &'a str,
    host_if: &'a str,
    ns: &'a Path,
    ifname: &'a str,
    address: Ipv4Net,
    gateway: Option<Ipv4Addr>,
    address6: Option<Ipv6Net>,
    gateway6: Option<Ipv6Addr>,
    mac: [u8; 6],
    mtu: u32,
}

pub struct Executor {
    pub(crate) ledger: Mutex<Ledger>,
    /// berthd's own netlink connection, opened on first use: a daemon whose containers
    /// never leave `none`/`host` never talks netlink at all.
    handle: tokio::sync::OnceCell<Handle>,
}

fn nl(e: rtnetlink::Error) -> Error {
    Error::internal(format!("netlink: {e}"))
}

fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -errno)
}

async fn link_index(h: &Handle, name: &str) -> Result<Option<u32>> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(l)) => Ok(Some(l.header.index)),
        Ok(None) => Ok(None),
        Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
        Err(e) => Err(nl(e)),
    }
}

async fn set_up(h: &Handle, index: u32) -> Result<()> {
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(nl)
}

/// A default route; a second network's endpoint leaves the first one's in place.
async fn add_default_route(
    h: &Handle,
    route: rtnetlink::packet_route::route::RouteMessage,
) -> Result<()> {
    match h.route().add(route).execute().await {
        Err(e) if is_errno(&e, libc::EEXIST) => Ok(()),
        r => r.map_err(nl),
    }
}

async fn add_address(h: &Handle, index: u32, addr: impl Into<IpNet>) -> Result<()> {
    let addr: IpNet = addr.into();
    let mut req = h.address().add(index, addr.addr, addr.prefix);
    if addr.addr.is_ipv6() {
        // No duplicate address detection, as libnetwork: the address is berth's to give
        // (IPAM says no one else on the bridge has it), and a tentative address could
        // not be used for the first second of the container's life.
        use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
        req.message_mut()
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    match req.execute().await {
        Err(e) if is_errno(&e, libc::EEXIST) => Ok(()),
        r => r.map_err(nl),
    }
}

/// Write a sysctl of berthd's network namespace (never called from a container's).
fn sysctl(path: &str, value: &str) {
    if let Err(e) = std::fs::write(path, value) {
        tracing::warn!(path, "cannot set sysctl: {e}");
    }
}

impl Executor {
    pub fn open(dir: &Path) -> Result<Executor> {
        Ok(Executor {
            ledger: Mutex::new(Ledger::open(dir)?),
            handle: tokio::sync::OnceCell::new(),
        })
    }

    async fn handle(&self) -> Result<&Handle> {
        self.handle
            .get_or_try_init(|| async {
                let (conn, handle, _) = rtnetlink::new_connection()?;
                tokio::spawn(conn);
                Ok::<_, std::io::Error>(handle)
            })
            .await
            .map_err(|e| Error::internal(format!("netlink: {e}")))
    }

    fn claim(&self, owner: &str, kind: Kind, name: &str) -> Result<()> {
        self.ledger.lock().unwrap().claim(owner, kind, name)
    }

    fn release(&self, owner: &str, kind: Kind, name: &str) -> Result<()> {
        self.ledger.lock().unwrap().release(owner, kind, name)
    }

    /// Record a daemon-side resource made outside netlink (a netns, the nft table).
    pub fn claim_other(&self, owner: &str, kind: Kind, name: &str) -> Result<()> {
        self.claim(owner, kind, name)
    }

    pub fn release_other(&self, owner: &str, kind: Kind, name: &str) -> Result<()> {
        self.release(owner, kind, name)
    }

    pub fn owns(&self, owner: &str, kind: Kind, name: &str) -> bool {
        self.ledger.lock().unwrap().owns(owner, kind, name)
    }

    /// Apply one intent on behalf of `owner` (a network or endpoint id).
    pub async fn apply(&self, owner: &str, intent: &Intent) -> Result<()> {
        match intent {
            Intent::Bridge {
                link,
                address,
                address6,
                mtu,
            } => self.bridge(owner, link, *address, *address6, *mtu).await,
            Intent::RemoveLink { link } => self.remove_link(owner, link).await,
            Intent::AddAddress { link, address } => {
                self.link_address(owner, link, *address, true).await
            }
            Intent::RemoveAddress { link, address } => {
                self.link_address(owner, link, *address, false).await
            }
            Intent::Endpoint {
                bridge,
                host_if,
                netns,
                ifname,
                address,
                gateway,
                address6,
                gateway6,
                mac,
                mtu,
            } => {
                let ep = EndpointLink {
                    bridge,
                    host_if,
                    ns: netns,
                    ifname,
                    address: *address,
                    gateway: *gateway,
                    address6: *address6,
                    gateway6: *gateway6,
                    mac: *mac,
                    mtu: *mtu,
                };
                self.endpoint(owner, &ep).await
            }
            Intent::Tap {
                netns,
                ifname,
                tap,
                mtu,
            } => self.tap(owner, netns, ifname, tap, *mtu).await,
            Intent::SpareTap { netns, tap } => self.spare_tap(owner, netns, tap).await,
            Intent::JoinTap {
                netns,
                ifname,
                tap,
                mtu,
            } => self.join_tap(owner, netns, ifname, tap, *mtu).await,
            Intent::ReleaseTap { netns, tap } => self.release_tap(owner, netns, tap).await,
        }
    }

    async fn bridge(
        &self,
        owner: &str,
        link: &str,
        address: Ipv4Net,
        address6: Option<Ipv6Net>,
        mtu: u32,
    ) -> Result<()> {
        let h = self.handle().await?;
        let ours = self.owns(owner, Kind::Link, link);
        let existing = link_index(h, link).await?;
        if existing.is_some() && !ours {
            // Someone else's interface (`eth0`, another daemon's bridge...): berth must
            // never take it over, or `network rm` would later delete it.
            return Err(Error::Forbidden(format!(
                "link {link} already exists and was not created by berth"
            )));
        }
        self.claim(owner, Kind::Link, link)?;
        let index = match existing {
            Some(i) => i,
            None => {
                match h
                    .link()
                    .add(LinkBridge::new(link).mtu(mtu).build())
                    .execute()
                    .await
                {
                    Err(e) if is_errno(&e, libc::EEXIST) => {}
                    r => r.map_err(nl)?,
                }
                link_index(h, link)
                    .await?
                    .ok_or_else(|| Error::internal(format!("bridge {link} vanished")))?
            }
        };
        self.claim(owner, Kind::Address, &format!("{link}/{address}"))?;
        add_address(h, index, address).await?;
        if let Some(a6) = address6 {
            // The IPv6 gateway is recorded like the IPv4 one: `network rm` (or the
            // reconciliation after a crash) removes it with the bridge.
            self.claim(owner, Kind::Address, &format!("{link}/{a6}"))?;
            sysctl(&format!("/proc/sys/net/ipv6/conf/{link}/disable_ipv6"), "0");
            add_address(h, index, a6).await?;
            // dockerd turns IPv6 forwarding on for a network with IPv6 (its bridge
            // driver's setupIPv6Forwarding): the gateway routes the network's traffic.
            sysctl("/proc/sys/net/ipv6/conf/all/forwarding", "1");
        }
        set_up(h, index).await?;
        // Containers reach the host and the outside through berthd's routing, and
        // published ports on 127.0.0.1 are DNATed onto the bridge (Docker's
        // userland-proxy=false set-up needs route_localnet for that).
        sysctl("/proc/sys/net/ipv4/ip_forward", "1");
        sysctl(
            &format!("/proc/sys/net/ipv4/conf/{link}/route_localnet"),
            "1",
        );
        Ok(())
    }

    async fn remove_link(&self, owner: &str, link: &str) -> Result<()> {
        if !self.owns(owner, Kind::Link, link) {
            return Err(Error::Forbidden(format!(
                "refusing to remove link {link}: the ledger does not record it as owned by {owner}"
            )));
        }
        let h = self.handle().await?;
        if let Some(index) = link_index(h, link).await? {
            match h.link().del(index).execute().await {
                Err(e) if is_errno(&e, libc::ENODEV) => {}
                r => r.map_err(nl)?,
            }
        }
        let addrs: Vec<String> = self
            .ledger
            .lock()
            .unwrap()
            .owned_by(owner)
            .into_iter()
            .filter(|e| e.kind == Kind::Address && e.name.starts_with(&format!("{link}/")))
            .map(|e| e.name)
            .collect();
        for a in addrs {
            self.release(owner, Kind::Address, &a)?;
        }
        self.release(owner, Kind::Link, link)
    }

    /// Add or remove one address on a link `owner` owns; a removal also needs the
    /// ledger to record that address as `owner`'s.
    async fn link_address(&self, owner: &str, link: &str, addr: IpNet, add: bool) -> Result<()> {
        let name = format!("{link}/{addr}");
        if !self.owns(owner, Kind::Link, link) || (!add && !self.owns(owner, Kind::Address, &name))
        {
            return Err(Error::Forbidden(format!(
                "refusing to {} address {addr} on link {link}: the ledger does not record it as owned by {owner}",
                if add { "add" } else { "remove" }
            )));
        }
        let h = self.handle().await?;
        let index = link_index(h, link)
            .await?
            .ok_or_else(|| Error::internal(format!("link {link} is missing")))?;
        if add {
            self.claim(owner, Kind::Address, &name)?;
            return add_address(h, index, addr).await;
        }
        let mut addrs = h
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(addr.addr)
            .execute();
        while let Some(msg) = addrs.try_next().await.map_err(nl)? {
            if msg.header.prefix_len == addr.prefix {
                h.address().del(msg).execute().await.map_err(nl)?;
            }
        }
        self.release(owner, Kind::Address, &name)
    }

    async fn endpoint(&self, owner: &str, ep: &EndpointLink<'_>) -> Result<()> {
        let EndpointLink {
            bridge,
            host_if,
            ns,
            ifname,
            address,
            gateway,
            address6,
            gateway6,
            mac,
            mtu,
        } = *ep;
        // A veth goes only onto a bridge berth made and into a sandbox berth made:
        // never into another process's namespace (`/proc/1/ns/net`) or onto a host link.
        {
            let l = self.ledger.lock().unwrap();
            if !l.recorded(Kind::Link, bridge)
                || !l.recorded(Kind::Netns, &ns.display().to_string())
            {
                return Err(Error::Forbidden(format!(
                    "refusing endpoint {host_if}: bridge {bridge} or sandbox {} is not one berth created",
                    ns.display()
                )));
            }
        }
        let h = self.handle().await?;
        let bridge_index = link_index(h, bridge)
            .await?
            .ok_or_else(|| Error::internal(format!("bridge {bridge} is missing")))?;
        // The peer gets a temporary name unique to the endpoint: `eth0` may exist in
        // berthd's namespace.
        let peer = format!("p{}", &host_if[host_if.len().saturating_sub(12)..]);
        if !self.owns(owner, Kind::Link, host_if) && link_index(h, host_if).await?.is_some() {
            return Err(Error::Forbidden(format!(
                "link {host_if} already exists and was not created by berth"
            )));
        }
        self.claim(owner, Kind::Link, host_if)?;
        h.link()
            .add(LinkVeth::new(host_if, &peer).mtu(mtu).build())
            .execute()
            .await
            .map_err(nl)?;
        let host_index = link_index(h, host_if)
            .await?
            .ok_or_else(|| Error::internal(format!("veth {host_if} vanished")))?;
        h.link()
            .set(
                LinkUnspec::new_with_index(host_index)
                    .controller(bridge_index)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(nl)?;
        let peer_index = link_index(h, &peer)
            .await?
            .ok_or_else(|| Error::internal(format!("veth peer {peer} vanished")))?;
        let ns_file = std::fs::File::open(ns)?;
        h.link()
            .set(
                LinkUnspec::new_with_index(peer_index)
                    .setns_by_fd(ns_file.as_raw_fd())
                    .build(),
            )
            .execute()
            .await
            .map_err(nl)?;
        // Inside the sandbox.
        let inner = netns::netlink_in(ns)?;
        let idx = link_index(&inner, &peer)
            .await?
            .ok_or_else(|| Error::internal(format!("veth peer {peer} not in the sandbox")))?;
        inner
            .link()
            .set(
                LinkUnspec::new_with_index(idx)
                    .name(ifname.to_string())
                    .address(mac.to_vec())
                    .mtu(mtu)
                    .build(),
            )
            .execute()
            .await
            .map_err(nl)?;
        set_up(&inner, idx).await?;
        if let Some(lo) = link_index(&inner, "lo").await? {
            set_up(&inner, lo).await?;
        }
        add_address(&inner, idx, address).await?;
        if let Some(gw) = gateway {
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(gw)
                .output_interface(idx)
                .build();
            add_default_route(&inner, route).await?;
        }
        if let Some(a6) = address6 {
            add_address(&inner, idx, a6).await?;
            if let Some(gw) = gateway6 {
                let route = RouteMessageBuilder::<Ipv6Addr>::new()
                    .gateway(gw)
                    .output_interface(idx)
                    .build();
                add_default_route(&inner, route).await?;
            }
        }
        Ok(())
    }

    /// Bring up loopback in a sandbox with no endpoint (`--network none` joins nothing,
    /// but a prepared sandbox may lose its last endpoint on disconnect).
    pub async fn loopback_up(&self, ns: &Path) -> Result<()> {
        let inner = netns::netlink_in(ns)?;
        if let Some(lo) = link_index(&inner, "lo").await? {
            set_up(&inner, lo).await?;
        }
        Ok(())
    }

    /// Does a link of that name exist in berthd's namespace? (For reconciliation and
    /// tests; read-only.)
    pub async fn link_exists(&self, name: &str) -> Result<bool> {
        let h = self.handle().await?;
        Ok(link_index(h, name).await?.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ledger check comes before any netlink call: a driver (or plugin) that asks to
    /// delete a link it does not own is refused without touching the kernel.
    #[tokio::test]
    async fn refuses_links_it_does_not_own() {
        let dir = tempfile::tempdir().unwrap();
        let exec = Executor::open(dir.path()).unwrap();
        for link in ["lo", "eth0", "berth0"] {
            let err = exec
                .apply(
                    "some-network",
                    &Intent::RemoveLink {
                        link: link.to_string(),
                    },
                )
                .await
                .unwrap_err();
            assert!(matches!(err, Error::Forbidden(_)), "{err}");
        }
        exec.claim_other("net-a", Kind::Link, "br-a").unwrap();
        let err = exec
            .apply(
                "net-b",
                &Intent::RemoveLink {
                    link: "br-a".into(),
                },
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Forbidden(_)), "{err}");
    }

    /// A TAP goes only into a sandbox the ledger records as the asker's.
    #[tokio::test]
    async fn refuses_taps_in_namespaces_it_does_not_own() {
        let dir = tempfile::tempdir().unwrap();
        let exec = Executor::open(dir.path()).unwrap();
        exec.claim_other("container-a", Kind::Netns, "/run/berth/netns/a")
            .unwrap();
        for (owner, ns) in [
            ("container-b", "/run/berth/netns/a"),
            ("container-a", "/proc/1/ns/net"),
        ] {
            let err = exec
                .apply(
                    owner,
                    &Intent::Tap {
                        netns: ns.into(),
                        ifname: "eth0".into(),
                        tap: "tap0".into(),
                        mtu: 1500,
                    },
                )
                .await
                .unwrap_err();
            assert!(matches!(err, Error::Forbidden(_)), "{err}");
        }
    }
}
