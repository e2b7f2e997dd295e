//! The TAPs of microVM sandboxes (Kata's tcfilter model): a TAP in the container's
//! sandbox netns carries one guest NIC, and tc ingress qdiscs with mirred redirects join
//! it both ways to an endpoint's sandbox side. Every link here lives in a namespace the
//! ledger records as the asker's and goes away with it, so none is recorded on its own.

use std::path::Path;

use rtnetlink::packet_route::tc::TcHandle;
use rtnetlink::{Handle, LinkUnspec};

use super::{is_errno, link_index, nl, Executor};
use crate::networks::ledger::Kind;
use crate::networks::netns;
use crate::{Error, Result};

impl Executor {
    /// Only inside a sandbox the ledger records as `owner`'s.
    fn check_sandbox(&self, owner: &str, ns: &Path, tap: &str) -> Result<()> {
        if !self.owns(owner, Kind::Netns, &ns.display().to_string()) {
            return Err(Error::Forbidden(format!(
                "refusing to change {tap} in {}: the ledger does not record it as owned by {owner}",
                ns.display()
            )));
        }
        Ok(())
    }

    async fn create_tap(ns: &Path, tap: &str) -> Result<()> {
        let (p, t) = (ns.to_path_buf(), tap.to_string());
        tokio::task::spawn_blocking(move || netns::create_tap(&p, &t))
            .await
            .map_err(Error::internal)?
            .map_err(|e| Error::internal(format!("creating TAP {tap}: {e}")))
    }

    /// [`Intent::Tap`](crate::networks::driver::Intent::Tap): a new TAP joined to `ifname`.
    pub(super) async fn tap(
        &self,
        owner: &str,
        ns: &Path,
        ifname: &str,
        tap: &str,
        mtu: u32,
    ) -> Result<()> {
        self.check_sandbox(owner, ns, tap)?;
        Self::create_tap(ns, tap).await?;
        self.join_tap(owner, ns, ifname, tap, mtu).await
    }

    /// [`Intent::SpareTap`](crate::networks::driver::Intent::SpareTap): a TAP for a spare
    /// guest NIC, joined to nothing (and down) until a `network connect`.
    pub(super) async fn spare_tap(&self, owner: &str, ns: &Path, tap: &str) -> Result<()> {
        self.check_sandbox(owner, ns, tap)?;
        Self::create_tap(ns, tap).await
    }

    /// [`Intent::JoinTap`](crate::networks::driver::Intent::JoinTap): `tc qdisc add dev X
    /// ingress` + `tc filter add dev X parent ffff: protocol all u32 match u8 0 0 action
    /// mirred egress redirect dev Y`, both ways, with the TAP up at the endpoint's MTU.
    pub(super) async fn join_tap(
        &self,
        owner: &str,
        ns: &Path,
        ifname: &str,
        tap: &str,
        mtu: u32,
    ) -> Result<()> {
        self.check_sandbox(owner, ns, tap)?;
        let inner = netns::netlink_in(ns)?;
        let veth = link_index(&inner, ifname)
            .await?
            .ok_or_else(|| Error::internal(format!("{ifname} is not in the sandbox")))?;
        let tapi = tap_index(&inner, tap).await?;
        inner
            .link()
            .set(LinkUnspec::new_with_index(tapi).mtu(mtu).up().build())
            .execute()
            .await
            .map_err(nl)?;
        for (from, to) in [(veth, tapi), (tapi, veth)] {
            match inner.qdisc().add(from as i32).ingress().execute().await {
                Err(e) if is_errno(&e, libc::EEXIST) => {}
                r => r.map_err(nl)?,
            }
            inner
                .traffic_filter(from as i32)
                .add()
                .parent(0xffff_0000)
                // Network byte order, as iproute2 sends `protocol all`.
                .protocol((libc::ETH_P_ALL as u16).to_be())
                .redirect(to)
                .map_err(nl)?
                .execute()
                .await
                .map_err(nl)?;
        }
        Ok(())
    }

    /// [`Intent::ReleaseTap`](crate::networks::driver::Intent::ReleaseTap): the TAP's
    /// ingress qdisc goes (its redirect filter with it) and the TAP goes down, back to a
    /// spare. The veth's own qdisc goes with the veth. Idempotent.
    pub(super) async fn release_tap(&self, owner: &str, ns: &Path, tap: &str) -> Result<()> {
        self.check_sandbox(owner, ns, tap)?;
        let inner = netns::netlink_in(ns)?;
        let tapi = tap_index(&inner, tap).await?;
        let mut del = inner.qdisc().del(tapi as i32);
        del.message_mut().header.parent = TcHandle::INGRESS;
        del.message_mut().header.handle = TcHandle::from(0xffff_0000);
        match del.execute().await {
            // No ingress qdisc: never joined, or already released.
            Err(e) if is_errno(&e, libc::EINVAL) || is_errno(&e, libc::ENOENT) => {}
            r => r.map_err(nl)?,
        }
        inner
            .link()
            .set(LinkUnspec::new_with_index(tapi).down().build())
            .execute()
            .await
            .map_err(nl)
    }
}

async fn tap_index(inner: &Handle, tap: &str) -> Result<u32> {
    link_index(inner, tap)
        .await?
        .ok_or_else(|| Error::internal(format!("TAP {tap} is not in the sandbox")))
}
