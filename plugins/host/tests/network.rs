//! Network plugins (`berth:driver@0.2.0`): the default `bridge` plugin's IPAM and driver
//! answers, and the hostile one's replies refused by the host (bad replies, timeouts,
//! traps, memory), with the plugin restarted afterwards.

mod common;

use std::net::Ipv4Addr;

use berth_plugin_host::{EndpointSpec, NetIntent, NetworkSpec, PluginError};
use common::host_with;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn net(mode: &str) -> NetworkSpec {
    NetworkSpec {
        id: "n1".into(),
        name: "n1".into(),
        bridge: "br-n1".into(),
        subnet: Some((ip("10.40.0.0"), 24)),
        gateway: Some(ip("10.40.0.1")),
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
