//! Network plugins: the default `bridge` plugin's IPAM and driver answers
//! (`berth:driver@0.3.0`, IPv4 and IPv6), and the hostile one's replies refused by the
//! host (bad replies, timeouts, traps, memory), with the plugin restarted afterwards.
//! The hostile plugin stays on 0.2.0: it proves a 0.2.0 network plugin still loads and
//! is served IPv4 networks, and that IPv6 is refused to it before it is called.

mod common;

use std::net::{Ipv4Addr, Ipv6Addr};

use berth_plugin_host::{EndpointSpec, NetIntent, NetworkSpec, PluginError};
use common::host_with;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn ip6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

fn net(mode: &str) -> NetworkSpec {
    NetworkSpec {
        id: "n1".into(),
        name: "n1".into(),
        bridge: "br-n1".into(),
        subnet: Some((ip("10.40.0.0"), 24)),
        gateway: Some(ip("10.40.0.1")),
        subnet6: None,
        gateway6: None,
        mtu: 1500,
        internal: false,
        options: vec![("hostile".into(), mode.into())],
    }
}

#[test]
fn bridge_plugin_allocates_and_decides() {
    let t = host_with(&["bridge"], |_| {});
    let d = t.host.network_driver("bridge").expect("loaded");
    let pools = [((ip("10.50.0.0"), 16), 24)];
    let used = [(ip("10.50.0.0"), 24), (ip("10.50.1.0"), 25)];
    assert_eq!(
        d.request_pool(None, &pools, &used).unwrap(),
        (ip("10.50.2.0"), 24)
    );
    assert_eq!(
        d.request_pool(Some((ip("10.50.1.128"), 25)), &pools, &used)
            .unwrap(),
        (ip("10.50.1.128"), 25)
    );
    let e = d
        .request_pool(Some((ip("10.50.1.0"), 24)), &pools, &used)
        .unwrap_err();
    assert!(matches!(e, PluginError::Denied(_)), "{e:?}");
    let sub = (ip("10.40.0.0"), 24);
    let used = [ip("10.40.0.1"), ip("10.40.0.2")];
    assert_eq!(
        d.request_address(sub, None, None, &used).unwrap(),
        ip("10.40.0.3")
    );
    let range = Some((ip("10.40.0.128"), 25));
    assert_eq!(
        d.request_address(sub, range, None, &used).unwrap(),
        ip("10.40.0.128")
    );
    let e = d
        .request_address(sub, None, Some(ip("10.40.0.2")), &used)
        .unwrap_err();
    assert!(matches!(e, PluginError::Denied(_)), "{e:?}");
    let e = d
        .request_address(sub, None, Some(ip("10.41.0.2")), &used)
        .unwrap_err();
    assert!(matches!(e, PluginError::Invalid(_)), "{e:?}");

    let n = net("");
    assert_eq!(
        d.create_network(&n).unwrap(),
        vec![NetIntent::Bridge {
            link: "br-n1".into(),
            address: (ip("10.40.0.1"), 24),
            address6: None,
            mtu: 1500
        }]
    );
    let ep = EndpointSpec {
        id: "e1".into(),
        network_id: "n1".into(),
        host_if: "vethe1".into(),
        ifname: "eth0".into(),
        address: (ip("10.40.0.3"), 24),
        gateway: Some(ip("10.40.0.1")),
        address6: None,
        gateway6: None,
        mac: [2, 0x42, 10, 40, 0, 3],
        sandbox: "/run/berth/netns/c1".into(),
    };
    match &d.join(&n, &ep).unwrap()[..] {
        [NetIntent::Endpoint {
            sandbox,
            host_if,
            bridge,
            ..
        }] => {
            assert_eq!(
                (sandbox.as_str(), host_if.as_str(), bridge.as_str()),
                ("/run/berth/netns/c1", "vethe1", "br-n1")
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        d.leave(&n, &ep).unwrap(),
        vec![NetIntent::RemoveLink("vethe1".into())]
    );
}

#[test]
fn hostile_network_replies_are_refused_and_the_plugin_restarts() {
    let t = host_with(&["hostile-network"], |_| {});
    let d = t.host.network_driver("hostile-network").expect("loaded");
    let retry = |mode: &str| {
        for _ in 0..100 {
            match d.create_network(&net(mode)) {
                Err(PluginError::Unavailable { .. }) => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                r => return r,
            }
        }
        panic!("{mode}: plugin never came back");
    };
    let e = retry("many").unwrap_err();
    assert!(matches!(e, PluginError::BadReply { .. }), "{e:?}");
    let e = retry("loop").unwrap_err();
    assert!(matches!(e, PluginError::Timeout { .. }), "{e:?}");
    let e = retry("trap").unwrap_err();
    assert!(matches!(e, PluginError::Trapped { .. }), "{e:?}");
    let e = retry("huge").unwrap_err();
    assert!(matches!(e, PluginError::Trapped { .. }), "{e:?}");
    // Shape checks pass what the ledger must judge (a link it does not own).
    assert_eq!(
        retry("remove-link:lo").unwrap(),
        vec![NetIntent::RemoveLink("lo".into())]
    );
    let stats = t.host.stats("hostile-network").unwrap();
    assert!(
        stats.timeouts >= 1 && stats.traps >= 2 && stats.bad_replies >= 1,
        "{stats:?}"
    );
}

/// 0.3.0 (the `bridge` plugin): IPv6 subnets and addresses from its IPAM, the IPv6
/// gateway on the bridge and the IPv6 address and route on the endpoint.
#[test]
fn bridge_plugin_serves_ipv6() {
    let t = host_with(&["bridge"], |_| {});
    let d = t.host.network_driver("bridge").expect("loaded");
    let sub6 = (ip6("fd00:30::"), 64);
    assert_eq!(d.request_pool6(sub6, &[]).unwrap(), sub6);
    let e = d
        .request_pool6((ip6("fd00:30::"), 48), &[sub6])
        .unwrap_err();
    assert!(matches!(e, PluginError::Denied(_)), "{e:?}");
    let used = [ip6("fd00:30::1"), ip6("fd00:30::2")];
    assert_eq!(
        d.request_address6(sub6, None, None, &used).unwrap(),
        ip6("fd00:30::3")
    );
    let range = Some((ip6("fd00:30::100"), 120));
    assert_eq!(
        d.request_address6(sub6, range, None, &used).unwrap(),
        ip6("fd00:30::100")
    );
    assert_eq!(
        d.request_address6(sub6, None, Some(ip6("fd00:30::10")), &used)
            .unwrap(),
        ip6("fd00:30::10")
    );
    let e = d
        .request_address6(sub6, None, Some(ip6("fd00:30::2")), &used)
        .unwrap_err();
    assert!(matches!(e, PluginError::Denied(_)), "{e:?}");
    let e = d
        .request_address6(sub6, None, Some(ip6("fd00:31::2")), &used)
        .unwrap_err();
    assert!(matches!(e, PluginError::Invalid(_)), "{e:?}");

    let mut n = net("");
    n.subnet6 = Some(sub6);
    n.gateway6 = Some(ip6("fd00:30::1"));
    assert_eq!(
        d.create_network(&n).unwrap(),
        vec![NetIntent::Bridge {
            link: "br-n1".into(),
            address: (ip("10.40.0.1"), 24),
            address6: Some((ip6("fd00:30::1"), 64)),
            mtu: 1500
        }]
    );
    let ep = EndpointSpec {
        id: "e1".into(),
        network_id: "n1".into(),
        host_if: "vethe1".into(),
        ifname: "eth0".into(),
        address: (ip("10.40.0.3"), 24),
        gateway: Some(ip("10.40.0.1")),
        address6: Some((ip6("fd00:30::3"), 64)),
        gateway6: Some(ip6("fd00:30::1")),
        mac: [2, 0x42, 10, 40, 0, 3],
        sandbox: "/run/berth/netns/c1".into(),
    };
    match &d.join(&n, &ep).unwrap()[..] {
        [NetIntent::Endpoint {
            address6, gateway6, ..
        }] => {
            assert_eq!(*address6, Some((ip6("fd00:30::3"), 64)));
            assert_eq!(*gateway6, Some(ip6("fd00:30::1")));
        }
        other => panic!("{other:?}"),
    }
}

/// A 0.2.0 network plugin still loads and serves IPv4 networks; an IPv6 network, subnet
/// or address is refused to it (501) before it is called.
#[test]
fn a_0_2_0_network_plugin_loads_and_gets_no_ipv6() {
    let t = host_with(&["hostile-network"], |_| {});
    let info = t
        .host
        .list()
        .into_iter()
        .find(|p| p.name == "hostile-network")
        .expect("listed");
    assert_eq!(info.interface_version, "0.2.0", "{info:?}");
    let d = t.host.network_driver("hostile-network").expect("loaded");
    // `remove-link:lo` answers one intent: the call went through to the plugin.
    assert_eq!(
        d.create_network(&net("remove-link:lo")).unwrap(),
        vec![NetIntent::RemoveLink("lo".into())]
    );
    let mut n = net("remove-link:lo");
    n.subnet6 = Some((ip6("fd00:30::"), 64));
    n.gateway6 = Some(ip6("fd00:30::1"));
    let e = d.create_network(&n).unwrap_err();
    assert!(matches!(e, PluginError::Unsupported(_)), "{e:?}");
    assert!(e.to_string().contains("berth:driver@0.3.0"), "{e}");
    let e = d.request_pool6((ip6("fd00:30::"), 64), &[]).unwrap_err();
    assert!(matches!(e, PluginError::Unsupported(_)), "{e:?}");
    let e = d
        .request_address6((ip6("fd00:30::"), 64), None, None, &[])
        .unwrap_err();
    assert!(matches!(e, PluginError::Unsupported(_)), "{e:?}");
}
