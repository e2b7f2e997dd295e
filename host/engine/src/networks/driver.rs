//! The driver seam. A network driver decides *what* a network and an endpoint look like on
//! the host and says so as [`Intent`]s; the [`Executor`](super::executor::Executor) is the
//! only code that touches the kernel, and only for resources its ledger says the
//! network owns. Drivers are WASM `network-plugin`s (the default `bridge` one is
//! `plugins/drivers/bridge`); [`super::plugin`] adapts them to this trait.
//!
//! MicroVM isolation adds one intent of the sandbox's own, whatever the driver:
//! [`Intent::Tap`], a TAP joined to an endpoint's sandbox side (Kata's tcfilter model), and
//! the spare TAPs that let a running VM join networks ([`Intent::SpareTap`],
//! [`Intent::JoinTap`], [`Intent::ReleaseTap`]).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use super::ipam::{IpNet, Ipv4Net, Ipv6Net};
use super::model::{EndpointRecord, NetworkRecord};
use crate::Result;

/// One change on the host, as a driver asks for it.
#[derive(Debug, Clone, PartialEq)]
pub enum Intent {
    /// A Linux bridge with `address` (gateway/prefix) on it, up; on a dual-stack
    /// network `address6` (the IPv6 gateway) too.
    Bridge {
        link: String,
        address: Ipv4Net,
        address6: Option<Ipv6Net>,
        mtu: u32,
    },
    /// Remove a link the network owns.
    RemoveLink { link: String },
    /// One more address (either family) on a link the network owns.
    AddAddress { link: String, address: IpNet },
    /// Remove an address the network owns.
    RemoveAddress { link: String, address: IpNet },
    /// A veth pair: `host_if` on `bridge`, the peer moved into the sandbox `netns` as
    /// `ifname` with `address`, `mac`, `mtu`, and a default route via `gateway`; on an
    /// IPv6 network `address6` and a default IPv6 route via `gateway6` too.
    Endpoint {
        bridge: String,
        host_if: String,
        netns: PathBuf,
        ifname: String,
        address: Ipv4Net,
        gateway: Option<Ipv4Addr>,
        address6: Option<Ipv6Net>,
        gateway6: Option<Ipv6Addr>,
        mac: [u8; 6],
        mtu: u32,
    },
    /// A TAP `tap` in the sandbox `netns`, joined both ways to the endpoint's sandbox
    /// side `ifname` by tc ingress qdiscs with mirred redirects: every frame the veth
    /// receives leaves through the TAP (to a VM's virtio-net) and back, so the VM's NIC
    /// *is* the endpoint (its MAC and address) without any bridge or NAT in the sandbox.
    Tap {
        netns: PathBuf,
        ifname: String,
        tap: String,
        mtu: u32,
    },
    /// A TAP `tap` in the sandbox `netns` for one of a VM's spare NICs: joined to nothing
    /// until `docker network connect` on the running VM ([`Intent::JoinTap`]).
    SpareTap { netns: PathBuf, tap: String },
    /// Join an existing TAP to the endpoint's sandbox side `ifname`, as [`Intent::Tap`].
    JoinTap {
        netns: PathBuf,
        ifname: String,
        tap: String,
        mtu: u32,
    },
    /// Undo [`Intent::JoinTap`] on the TAP's side: it becomes a spare again.
    ReleaseTap { netns: PathBuf, tap: String },
}

/// A network driver: pure decisions, no side effects. Implemented by WASM
/// `network-plugin`s ([`super::plugin::WasmDriver`]): the default `bridge` driver and
/// any third-party one chosen with `docker network create -d NAME`.
pub trait NetworkDriver: Send + Sync {
    fn name(&self) -> &str;
    /// Intents that bring the network up on the host (idempotent: re-run at daemon start).
    fn create_network(&self, net: &NetworkRecord) -> Result<Vec<Intent>>;
    fn delete_network(&self, net: &NetworkRecord) -> Result<Vec<Intent>>;
    /// Intents that join an endpoint to the sandbox at `netns`.
    fn join(
        &self,
        net: &NetworkRecord,
        ep: &EndpointRecord,
        netns: PathBuf,
        mac: [u8; 6],
    ) -> Result<Vec<Intent>>;
    fn leave(&self, net: &NetworkRecord, ep: &EndpointRecord) -> Result<Vec<Intent>>;
}
