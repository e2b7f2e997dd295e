//! What berth records about networks: the networks themselves, the endpoints of running
//! containers and their published ports. One JSON file, written atomically after every
//! change, so `kill -9` leaves either the old or the new state.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ipam::{Ipv4Net, Ipv6Net};
use crate::Result;

/// Docker's network drivers that berth serves.
pub const DRIVER_BRIDGE: &str = "bridge";
pub const DRIVER_HOST: &str = "host";
pub const DRIVER_NULL: &str = "null";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub id: String,
    pub name: String,
    pub driver: String,
    /// RFC 3339.
    pub created: String,
    #[serde(default)]
    pub internal: bool,
    #[serde(default)]
    pub attachable: bool,
    #[serde(default)]
    pub labels: HashMap<String, String>,
    #[serde(default)]
    pub options: HashMap<String, String>,
    #[serde(default)]
    pub ipam_driver: String,
    #[serde(default)]
    pub ipam_options: HashMap<String, String>,
    /// The bridge driver's subnet, gateway (on the bridge) and allocation range.
    #[serde(default)]
    pub subnet: Option<Ipv4Net>,
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    #[serde(default)]
    pub ip_range: Option<Ipv4Net>,
    /// `EnableIPv6` (`--ipv6`): endpoints get an address of `subnet6` too.
    #[serde(default)]
    pub enable_ipv6: bool,
    /// The IPv6 IPAM config (subnet, gateway on the bridge, allocation range). Recorded
    /// (and shown) even without `--ipv6`, as dockerd does; used only with it.
    #[serde(default)]
    pub subnet6: Option<Ipv6Net>,
    #[serde(default)]
    pub gateway6: Option<Ipv6Addr>,
    #[serde(default)]
    pub ip_range6: Option<Ipv6Net>,
    /// Whether `Gateway` was given for the IPv6 subnet (dockerd shows it only then).
    #[serde(default)]
    pub gateway6_explicit: bool,
    /// `--aux-address name=ip`: reserved, never handed out.
    #[serde(default)]
    pub aux_addresses: HashMap<String, Ipv4Addr>,
    /// The Linux bridge (`berth0` for the default network, `br-<id12>` otherwise).
    #[serde(default)]
    pub bridge: String,
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    /// `bridge`, `host` and `none`: listed always, never removed.
    #[serde(default)]
    pub predefined: bool,
}

fn default_mtu() -> u32 {
    1500
}

impl NetworkRecord {
    /// A network with a host side served by a network plugin (`bridge` or a
    /// third-party driver): a subnet, a bridge link, endpoints, NAT.
    pub fn is_bridge(&self) -> bool {
        self.driver != DRIVER_HOST && self.driver != DRIVER_NULL
    }

    /// The IPv6 half of a dual-stack network: its subnet and gateway, when `--ipv6`.
    pub fn ipv6(&self) -> Option<(Ipv6Net, Ipv6Addr)> {
        self.subnet6.zip(self.gateway6).filter(|_| self.enable_ipv6)
    }

    /// The default `bridge` network: no embedded DNS, as in Docker.
    pub fn is_default_bridge(&self) -> bool {
        self.predefined && self.is_bridge()
    }
}

/// A container's attachment to a network, while the container runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EndpointRecord {
    pub id: String,
    pub network_id: String,
    pub container_id: String,
    pub container_name: String,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    /// The IPv6 address (prefix of the network's `subnet6`) and default route, on an
    /// IPv6 network.
    #[serde(default)]
    pub ip6: Option<Ipv6Addr>,
    #[serde(default)]
    pub prefix6: u8,
    #[serde(default)]
    pub gateway6: Option<Ipv6Addr>,
    pub mac: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    /// The host end of the veth pair (on the bridge).
    pub host_if: String,
    /// The name inside the container (`eth0`, `eth1`...).
    pub ifname: String,
}

/// One virtio-net NIC of a running microVM and the TAP that carries it in the sandbox.
/// Recorded for every NIC at boot, so that a restarted berthd still knows which spare is
/// free and which endpoint each TAP is joined to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VmNic {
    pub container_id: String,
    pub tap: String,
    /// The guest NIC's MAC, fixed at boot.
    pub mac: String,
    /// The guest's name for the NIC while it is a spare (down, no address).
    pub spare_name: String,
    /// The endpoint the TAP is joined to; `None`: a spare.
    #[serde(default)]
    pub endpoint_id: Option<String>,
}

/// One published port of a running container.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PortMapping {
    pub container_id: String,
    /// `tcp` or `udp`.
    pub proto: String,
    /// `0.0.0.0` = every host address.
    pub host_ip: Ipv4Addr,
    pub host_port: u16,
    pub container_ip: Ipv4Addr,
    pub container_port: u16,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NetState {
    pub networks: Vec<NetworkRecord>,
    #[serde(default)]
    pub endpoints: Vec<EndpointRecord>,
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    /// The NICs of running microVMs (one per TAP in their sandboxes).
    #[serde(default)]
    pub vm_nics: Vec<VmNic>,
}

impl NetState {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("networks.json")
    }

    pub fn load(dir: &Path) -> Result<NetState> {
        crate::fsutil::clean_temp_files(dir);
        match std::fs::read(Self::path(dir)) {
            Ok(b) => Ok(serde_json::from_slice(&b).map_err(crate::Error::internal)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(NetState::default()),
            Err(e) => Err(e.into()),
        }
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(crate::Error::internal)?;
        crate::fsutil::write_atomic(&Self::path(dir), &bytes)?;
        Ok(())
    }

    pub fn network(&self, id: &str) -> Option<&NetworkRecord> {
        self.networks.iter().find(|n| n.id == id)
    }

    pub fn endpoints_of<'a>(
        &'a self,
        network_id: &'a str,
    ) -> impl Iterator<Item = &'a EndpointRecord> + 'a {
        self.endpoints
            .iter()
            .filter(move |e| e.network_id == network_id)
    }
}

/// A container's wish to be on a network (recorded with the container; the endpoint
/// exists only while it runs).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Attachment {
    pub network_id: String,
    pub network_name: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    /// `--ip`.
    #[serde(default)]
    pub ipv4: Option<Ipv4Addr>,
    /// `--ip6`.
    #[serde(default)]
    pub ipv6: Option<Ipv6Addr>,
    /// `--mac-address`.
    #[serde(default)]
    pub mac: Option<String>,
}
