//! Hostile network plugin for berthd's tests. `docker network create -d
//! hostile-network -o hostile=MODE` picks what `create-network` (and `join`) answer:
//!
//! * `remove-link:NAME`, `add-address:LINK`, `remove-address:LINK/A.B.C.D/N`,
//!   `bridge:LINK`: intents on links and addresses the network does not own;
//! * `join-escape`: an endpoint moved into PID 1's network namespace;
//! * `loop` (never returns), `trap` (unreachable), `huge` (a reply far past the
//!   memory cap), `many` (100 000 intents);
//! * anything else: the bridge driver's answer, so the network works.
//!
//! Its IPAM (`--ipam-driver hostile-network`) answers a pool that overlaps every
//! other one and addresses outside the subnet.

wit_bindgen::generate!({
    path: "../../wit/0.2.0",
    world: "network-plugin",
});

use berth::driver::network_types::{
    BridgeSpec, Endpoint, EndpointSpec, Intent, LinkAddress, Network,
};
use berth::driver::types::{DriverError, IpAddress, IpCidr, Options};
use exports::berth::driver::ipam_driver::{self, Pool};
use exports::berth::driver::{lifecycle, network_driver};

struct Plugin;

fn mode(net: &Network) -> String {
    net.options
        .iter()
        .find(|(k, _)| k == "hostile")
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

fn cidr(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> IpCidr {
    IpCidr {
        addr: IpAddress::V4((a, b, c, d)),
        prefix,
    }
}

fn parse_cidr(s: &str) -> IpCidr {
    let (a, p) = s.split_once('/').unwrap_or((s, "32"));
    let o: Vec<u8> = a.split('.').map(|x| x.parse().unwrap_or(0)).collect();
    let g = |i: usize| o.get(i).copied().unwrap_or(0);
    cidr(g(0), g(1), g(2), g(3), p.parse().unwrap_or(32))
}

#[allow(clippy::empty_loop)]
fn spin() -> ! {
    let mut x: u64 = 1;
    loop {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        std::hint::black_box(x);
    }
}

fn bridge(net: &Network) -> Vec<Intent> {
    match (&net.subnet, &net.gateway) {
        (Some(s), Some(gw)) => vec![Intent::Bridge(BridgeSpec {
            link: net.bridge.clone(),
            address: IpCidr {
                addr: *gw,
                prefix: s.prefix,
            },
            mtu: net.mtu,
        })],
        _ => Vec::new(),
    }
}

impl lifecycle::Guest for Plugin {
    fn init(_config: Options) -> Result<(), DriverError> {
        Ok(())
    }
}

impl network_driver::Guest for Plugin {
    fn create_network(net: Network) -> Result<Vec<Intent>, DriverError> {
        let m = mode(&net);
        let (verb, arg) = m.split_once(':').unwrap_or((m.as_str(), ""));
        Ok(match verb {
            "remove-link" => vec![Intent::RemoveLink(arg.into())],
            "bridge" => vec![Intent::Bridge(BridgeSpec {
                link: arg.into(),
                address: cidr(10, 99, 0, 1, 24),
                mtu: 1500,
            })],
            "add-address" => vec![Intent::AddAddress(LinkAddress {
                link: arg.into(),
                address: cidr(10, 99, 0, 1, 24),
            })],
            "remove-address" => {
                let (link, a) = arg.split_once('/').unwrap_or((arg, ""));
                vec![Intent::RemoveAddress(LinkAddress {
                    link: link.into(),
                    address: parse_cidr(a),
                })]
            }
            "loop" => spin(),
            "trap" => unreachable!("hostile-network trap"),
            "huge" => {
                // Far past any sane memory cap: the host's store limit stops it.
                let mut v = Vec::new();
                loop {
                    v.push(Intent::RemoveLink("x".repeat(1 << 20)));
                }
            }
            "many" => (0..100_000)
                .map(|i| Intent::RemoveLink(format!("l{i}")))
                .collect(),
            _ => bridge(&net),
        })
    }

    fn delete_network(net: Network) -> Result<Vec<Intent>, DriverError> {
        Ok(vec![Intent::RemoveLink(net.bridge)])
    }

    fn join(net: Network, ep: Endpoint) -> Result<Vec<Intent>, DriverError> {
        let sandbox = if mode(&net) == "join-escape" {
            "/proc/1/ns/net".to_string()
        } else {
            ep.sandbox
        };
        Ok(vec![Intent::Endpoint(EndpointSpec {
            bridge: net.bridge,
            host_if: ep.host_if,
            sandbox,
            ifname: ep.ifname,
            address: ep.address,
            gateway: ep.gateway,
            mac: ep.mac,
            mtu: net.mtu,
        })])
    }

    fn leave(_net: Network, ep: Endpoint) -> Result<Vec<Intent>, DriverError> {
        Ok(vec![Intent::RemoveLink(ep.host_if)])
    }
}

impl ipam_driver::Guest for Plugin {
    fn request_pool(
        _requested: Option<IpCidr>,
        _pools: Vec<Pool>,
        _used: Vec<IpCidr>,
    ) -> Result<IpCidr, DriverError> {
        Ok(cidr(0, 0, 0, 0, 0))
    }

    fn request_address(
        _subnet: IpCidr,
        _range: Option<IpCidr>,
        _preferred: Option<IpAddress>,
        _used: Vec<IpAddress>,
    ) -> Result<IpAddress, DriverError> {
        Ok(IpAddress::V4((8, 8, 8, 8)))
    }
}

export!(Plugin);
