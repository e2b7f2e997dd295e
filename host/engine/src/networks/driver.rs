//! The driver seam. A network driver decides *what* a network and an endpoint look like on
//! the host and says so as [`Intent`]s; the [`Executor`](super::executor::Executor) is the
//! only code that touches the kernel, and only for resources its ledger says the
//! network owns. The built-in bridge driver below is written against this trait so that a
//! WASM `network-plugin` can take its place later without changes to the executor.
//!
//! MicroVM isolation will need one more intent (a TAP in the sandbox netns joined to the
//! veth with tc mirred); the sandbox side of [`Intent::Endpoint`] is where it goes.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use super::ipam::Ipv4Net;
use super::model::{EndpointRecord, NetworkRecord};

/// One change on the host, as a driver asks for it.
#[derive(Debug, Clone, PartialEq)]
pub enum Intent {
    /// A Linux bridge with `address` (gateway/prefix) on it, up.
    Bridge {
        link: String,
        address: Ipv4Net,
        mtu: u32,
    },
    /// Remove a link the network owns.
    RemoveLink { link: String },
    /// A veth pair: `host_if` on `bridge`, the peer moved into the sandbox `netns` as
    /// `ifname` with `address`, `mac`, `mtu`, and a default route via `gateway`.
    Endpoint {
        bridge: String,
        host_if: String,
        netns: PathBuf,
        ifname: String,
        address: Ipv4Net,
        gateway: Option<Ipv4Addr>,
        mac: [u8; 6],
        mtu: u32,
    },
}

/// A network driver: pure decisions, no side effects.
pub trait NetworkDriver: Send + Sync {
    fn name(&self) -> &str;
    /// Intents that bring the network up on the host (idempotent: re-run at daemon start).
    fn create_network(&self, net: &NetworkRecord) -> Vec<Intent>;
    fn delete_network(&self, net: &NetworkRecord) -> Vec<Intent>;
    /// Intents that join an endpoint to the sandbox at `netns`.
    fn join(
        &self,
        net: &NetworkRecord,
        ep: &EndpointRecord,
        netns: PathBuf,
        mac: [u8; 6],
    ) -> Vec<Intent>;
    fn leave(&self, net: &NetworkRecord, ep: &EndpointRecord) -> Vec<Intent>;
}

/// Docker's `bridge` driver: a bridge per network, a veth per endpoint.
pub struct BridgeDriver;

impl NetworkDriver for BridgeDriver {
    fn name(&self) -> &str {
        super::model::DRIVER_BRIDGE
    }

    fn create_network(&self, net: &NetworkRecord) -> Vec<Intent> {
        match (net.subnet, net.gateway) {
            (Some(subnet), Some(gw)) => vec![Intent::Bridge {
                link: net.bridge.clone(),
                address: Ipv4Net::new(gw, subnet.prefix),
                mtu: net.mtu,
            }],
            _ => Vec::new(),
        }
    }

    fn delete_network(&self, net: &NetworkRecord) -> Vec<Intent> {
        vec![Intent::RemoveLink {
            link: net.bridge.clone(),
        }]
    }

    fn join(
        &self,
        net: &NetworkRecord,
        ep: &EndpointRecord,
        netns: PathBuf,
        mac: [u8; 6],
    ) -> Vec<Intent> {
        vec![Intent::Endpoint {
            bridge: net.bridge.clone(),
            host_if: ep.host_if.clone(),
            netns,
            ifname: ep.ifname.clone(),
            address: Ipv4Net::new(ep.ip, ep.prefix),
            gateway: ep.gateway,
            mac,
            mtu: net.mtu,
        }]
    }

    fn leave(&self, _net: &NetworkRecord, ep: &EndpointRecord) -> Vec<Intent> {
        // Deleting the host end takes the peer (inside the sandbox) with it.
        vec![Intent::RemoveLink {
            link: ep.host_if.clone(),
        }]
    }
}
