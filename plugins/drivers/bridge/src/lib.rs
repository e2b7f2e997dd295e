//! berth's default network driver and IPAM. Both are pure decisions: the driver
//! answers with intents (a bridge per network, a veth per endpoint) and the IPAM picks
//! subnets and addresses from what the host says is in use. The host applies the
//! intents under its ownership ledger, so this plugin never touches the kernel.
//! `berth:driver@0.3.0`: a dual-stack network's bridge also carries the IPv6 gateway,
//! and its endpoints an IPv6 address and default route.

wit_bindgen::generate!({
    path: "../../wit/0.3.0",
    world: "network-plugin",
});

mod ipam;

use berth::driver::network_types::{
    BridgeSpec, Endpoint, EndpointSpec, Intent, IpAddress, IpCidr, Network,
};
use berth::driver::types::{DriverError, Options};
use exports::berth::driver::lifecycle;
use exports::berth::driver::network_driver;

struct Plugin;

impl lifecycle::Guest for Plugin {
    fn init(_config: Options) -> Result<(), DriverError> {
        Ok(())
    }
}

impl network_driver::Guest for Plugin {
    fn create_network(net: Network) -> Result<Vec<Intent>, DriverError> {
        // A network without IPv4 configuration has nothing on the host to set up.
        Ok(match (net.subnet, net.gateway) {
            (Some(subnet), Some(gw)) => vec![Intent::Bridge(BridgeSpec {
                link: net.bridge,
                address: IpCidr {
                    addr: gw,
                    prefix: subnet.prefix,
                },
                address6: net.subnet6.zip(net.gateway6).map(|(s, g)| IpCidr {
                    addr: g,
                    prefix: s.prefix,
                }),
                mtu: net.mtu,
            })],
            _ => Vec::new(),
        })
    }

    fn delete_network(net: Network) -> Result<Vec<Intent>, DriverError> {
        Ok(vec![Intent::RemoveLink(net.bridge)])
    }

    fn join(net: Network, ep: Endpoint) -> Result<Vec<Intent>, DriverError> {
        if let IpAddress::V6(_) = ep.address.addr {
            return Err(DriverError::Invalid(
                "an endpoint's first address is its IPv4 one".into(),
            ));
        }
        Ok(vec![Intent::Endpoint(EndpointSpec {
            bridge: net.bridge,
            host_if: ep.host_if,
            sandbox: ep.sandbox,
            ifname: ep.ifname,
            address: ep.address,
            gateway: ep.gateway,
            address6: ep.address6,
            gateway6: ep.gateway6,
            mac: ep.mac,
            mtu: net.mtu,
        })])
    }

    fn leave(_net: Network, ep: Endpoint) -> Result<Vec<Intent>, DriverError> {
        // Deleting the host end takes the peer (inside the sandbox) with it.
        Ok(vec![Intent::RemoveLink(ep.host_if)])
    }
}

export!(Plugin);
