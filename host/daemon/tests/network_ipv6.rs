//! IPv6 on user networks (`docker network create --ipv6 --subnet V4 --subnet V6`,
//! `docker run --ip6`), through the real docker CLI against a real berthd in a network
//! namespace made for the test (as network.rs). Also run with
//! `BERTH_TEST_ISOLATION=microvm` (the guest agent configures the IPv6 half of each NIC).
//! The IPv6 subnets are ULAs (`fd00:…`) that exist only inside the test's namespace.

mod common;

use std::time::Duration;

use common::images::import_busybox;
use common::{eventually, netns_get_until, stdout, web_server, TestDaemon};

const IMG: &str = "bb:local";

fn daemon() -> TestDaemon {
    let d = TestDaemon::start_in_netns(&[
        "--bip",
        "10.231.30.1/24",
        "--default-address-pool",
        "base=10.250.0.0/16,size=24",
    ]);
    import_busybox(&d, IMG);
    d
}

fn inspect(d: &TestDaemon, what: &str, format: &str) -> String {
    d.docker_ok(&["inspect", "-f", format, what])
        .trim()
        .to_string()
}

/// `sh -c SCRIPT` in container `c`, retried for a few seconds (a server may still be
/// starting); its output.
fn exec_until(d: &TestDaemon, c: &str, script: &str, want: &str) -> String {
    let mut last = String::new();
    eventually(&format!("{c}: {script}"), 20, || {
        let o = d.docker(&["exec", c, "sh", "-c", script]);
        last = format!(
            "{}{}",
            stdout(&o),
            String::from_utf8_lossy(&o.stderr).into_owned()
        );
        if o.status.success() && last.contains(want) {
            Ok(())
        } else {
            Err(last.clone())
        }
    });
    last
}

fn addrs6(d: &TestDaemon) -> String {
    stdout(&d.in_netns(&["ip", "-6", "-o", "addr"]))
}

fn ledger(d: &TestDaemon) -> String {
    std::fs::read_to_string(d.data_root.join("network/ledger.json")).unwrap_or_default()
}

#[test]
fn dual_stack_networks_addresses_dns_and_cleanup() {
    let mut d = daemon();

    // dockerd 20.10's answers: no default IPv6 pool, --ip6 needs an IPv6 subnet and an
    // address inside it.
    let e = d.docker_err(&["network", "create", "--ipv6", "nopool"]);
    assert!(
        e.contains("could not find an available, non-overlapping IPv6 address pool"),
        "{e}"
    );
    let (status, _) = d.api(
        "POST",
        "/networks/create",
        Some(r#"{"Name":"gw6","EnableIPv6":true,"IPAM":{"Config":[{"Subnet":"fd00:31::/64","Gateway":"fd00:32::1"}]}}"#),
    );
    assert_eq!(status, 500);
    let (status, body) = d.api(
        "POST",
        "/networks/create",
        Some(r#"{"Name":"two6","EnableIPv6":true,"IPAM":{"Config":[{"Subnet":"fd00:33::/64"},{"Subnet":"fd00:34::/64"}]}}"#),
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("doesn't support multiple subnets"), "{body}");

    let net6 = d
        .docker_ok(&[
            "network",
            "create",
            "--ipv6",
            "--subnet",
            "10.251.0.0/24",
            "--subnet",
            "fd00:30::/64",
            "net6",
        ])
        .trim()
        .to_string();
    d.docker_ok(&["network", "create", "--subnet", "10.251.1.0/24", "net4"]);
    let (_, body) = d.api("GET", "/networks/net6", None);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["EnableIPv6"], true, "{v}");
    let cfg = v["IPAM"]["Config"].as_array().cloned().unwrap_or_default();
    assert_eq!(cfg.len(), 2, "{v}");
    assert_eq!(cfg[0]["Subnet"], "10.251.0.0/24", "{v}");
    assert_eq!(cfg[1]["Subnet"], "fd00:30::/64", "{v}");
    assert_eq!(
        inspect(&d, "net4", "{{.EnableIPv6}}"),
        "false",
        "a network without --ipv6"
    );
    // The bridge carries the IPv6 gateway, recorded in the ownership ledger.
    let bridge = format!("br-{}", &net6[..12]);
    let a = stdout(&d.in_netns(&["ip", "-6", "-o", "addr", "show", "dev", &bridge]));
    assert!(a.contains("fd00:30::1/64"), "{a}");
    assert!(ledger(&d).contains("fd00:30::1/64"), "{}", ledger(&d));

    let e = d.docker_err(&[
        "run",
        "--rm",
        "--network",
        "net4",
        "--ip6",
        "fd00:30::10",
        IMG,
        "true",
    ]);
    assert!(
        e.contains("user specified IP address is supported only when connecting to networks with user configured subnets"),
        "{e}"
    );
    let e = d.docker_err(&[
        "run",
        "--rm",
        "--network",
        "net6",
        "--ip6",
        "fd00:39::10",
        IMG,
        "true",
    ]);
    assert!(
        e.contains("It does not belong to any of this network's subnets"),
        "{e}"
    );

    // A pinned address and an allocated one (the first after the gateway).
    web_server(
        &d,
        IMG,
        "s6",
        &[
            "--network",
            "net6",
            "--ip6",
            "fd00:30::10",
            "--network-alias",
            "web6",
        ],
    );
    d.docker_ok(&[
        "run",
        "-d",
        "--name",
        "c6",
        "--network",
        "net6",
        IMG,
        "sleep",
        "600",
    ]);
    let n = "{{(index .NetworkSettings.Networks \"net6\")";
    assert_eq!(
        inspect(&d, "s6", &format!("{n}.GlobalIPv6Address}}}}")),
        "fd00:30::10"
    );
    assert_eq!(
        inspect(&d, "s6", &format!("{n}.GlobalIPv6PrefixLen}}}}")),
        "64"
    );
    assert_eq!(
        inspect(&d, "s6", &format!("{n}.IPv6Gateway}}}}")),
        "fd00:30::1"
    );
    assert_eq!(
        inspect(&d, "s6", &format!("{n}.IPAMConfig.IPv6Address}}}}")),
        "fd00:30::10"
    );
    assert_eq!(
        inspect(&d, "c6", &format!("{n}.GlobalIPv6Address}}}}")),
        "fd00:30::2"
    );
    let (_, body) = d.api("GET", "/networks/net6", None);
    assert!(body.contains("fd00:30::10/64"), "{body}");

    // Inside: the address, the default route, IPv6 on, the /etc/hosts line.
    let ip = exec_until(&d, "s6", "ip -6 addr show dev eth0", "fd00:30::10/64");
    // No duplicate address detection on the container's address (usable at once).
    let line = ip
        .lines()
        .find(|l| l.contains("fd00:30::10/64"))
        .unwrap_or("");
    assert!(!line.contains("tentative"), "{ip}");
    exec_until(&d, "s6", "ip -6 route", "default via fd00:30::1");
    exec_until(
        &d,
        "s6",
        "cat /proc/sys/net/ipv6/conf/eth0/disable_ipv6",
        "0",
    );
    let hosts = exec_until(&d, "s6", "cat /etc/hosts", "fd00:30::10\t");
    assert!(hosts.contains("10.251.0."), "{hosts}");

    // Containers reach each other over IPv6, by address and by name (AAAA records).
    exec_until(
        &d,
        "c6",
        "ping -6 -c 1 -W 5 fd00:30::10",
        "1 packets received",
    );
    exec_until(
        &d,
        "c6",
        "timeout 5 wget -qO- 'http://[fd00:30::10]/'; exit $?",
        "hello from s6",
    );
    exec_until(
        &d,
        "c6",
        "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | timeout 5 nc fd00:30::10 80; exit $?",
        "hello from s6",
    );
    for name in ["s6", "web6"] {
        exec_until(
            &d,
            "c6",
            &format!("nslookup -type=AAAA {name}"),
            "fd00:30::10",
        );
    }
    exec_until(&d, "c6", "ping -6 -c 1 -W 5 s6", "1 packets received");
    // The host (berthd's namespace) reaches them through the bridge.
    eventually("GET over IPv6 from the host", 20, || {
        let o = d.in_netns(&[
            "timeout",
            "5",
            "/bin/busybox",
            "wget",
            "-qO-",
            "http://[fd00:30::10]/",
        ]);
        let out = stdout(&o);
        if out.contains("hello from s6") {
            Ok(())
        } else {
            Err(out)
        }
    });

    // Another IPv6 network is isolated from this one (table ip6 berth), and an internal
    // one has no default IPv6 route.
    d.docker_ok(&[
        "network",
        "create",
        "--ipv6",
        "--subnet",
        "fd00:35::/64",
        "other6",
    ]);
    d.docker_ok(&[
        "network",
        "create",
        "--ipv6",
        "--internal",
        "--subnet",
        "fd00:36::/64",
        "int6",
    ]);
    let t6 = stdout(&d.in_netns(&["nft", "list", "table", "ip6", "berth"]));
    assert!(t6.contains("drop"), "{t6}");
    d.docker_ok(&[
        "run",
        "-d",
        "--name",
        "o6",
        "--network",
        "other6",
        IMG,
        "sleep",
        "600",
    ]);
    d.docker_ok(&[
        "run",
        "-d",
        "--name",
        "i6",
        "--network",
        "int6",
        IMG,
        "sleep",
        "600",
    ]);
    exec_until(&d, "o6", "ip -6 addr show dev eth0", "fd00:35::2/64");
    let o = d.docker(&[
        "exec",
        "o6",
        "ping",
        "-6",
        "-c",
        "1",
        "-W",
        "2",
        "fd00:30::10",
    ]);
    assert!(!o.status.success(), "other6 reached net6: {}", stdout(&o));
    exec_until(&d, "i6", "ip -6 addr show dev eth0", "fd00:36::2/64");
    let r = d.docker_ok(&["exec", "i6", "ip", "-6", "route"]);
    assert!(!r.contains("default"), "{r}");
    d.docker_ok(&["rm", "-f", "o6", "i6"]);
    d.docker_ok(&["network", "rm", "other6", "int6"]);

    // On a network without IPv6, AAAA is an empty answer, not an error.
    d.docker_ok(&[
        "run",
        "-d",
        "--name",
        "c4",
        "--network",
        "net4",
        IMG,
        "sleep",
        "600",
    ]);
    let aaaa = exec_until(&d, "c4", "nslookup -type=AAAA c4; echo rc=$?", "rc=0");
    assert!(
        !aaaa.contains("NXDOMAIN") && !aaaa.contains("SERVFAIL") && !aaaa.contains("fd00"),
        "{aaaa}"
    );
    assert_eq!(
        inspect(
            &d,
            "c4",
            "{{.NetworkSettings.Networks.net4.GlobalIPv6Address}}"
        ),
        ""
    );

    // `network connect` of the running container (in a microVM: a spare NIC that the
    // guest agent configures, IPv6 half included) and `disconnect`.
    d.docker_ok(&["network", "connect", "--ip6", "fd00:30::30", "net6", "c4"]);
    exec_until(&d, "c4", "ip -6 addr", "fd00:30::30/64");
    exec_until(
        &d,
        "c4",
        "ping -6 -c 1 -W 5 fd00:30::10",
        "1 packets received",
    );
    d.docker_ok(&["network", "disconnect", "net6", "c4"]);
    let o = d.docker_ok(&["exec", "c4", "ip", "-6", "addr"]);
    assert!(!o.contains("fd00:30::30"), "{o}");
    if std::env::var("BERTH_TEST_ISOLATION").is_ok_and(|v| v == "microvm") {
        // The VM was booted with its NIC's IPv6 half on the kernel command line.
        exec_until(&d, "s6", "cat /proc/cmdline", "berth.net6=");
    }

    // Published ports answer on the host's IPv6 addresses too ([::], as dockerd 20.10's
    // docker-proxy), for a container of an IPv4-only network; IPv4 is unchanged.
    web_server(&d, IMG, "p4", &["-p", "8090:80"]);
    netns_get_until(&d, "http://127.0.0.1:8090/", "hello from p4", 20);
    netns_get_until(&d, "http://[::1]:8090/", "hello from p4", 20);
    d.docker_ok(&["rm", "-f", "p4"]);
    eventually("[::1]:8090 closed after rm", 10, || {
        let o = d.in_netns(&[
            "timeout",
            "5",
            "/bin/busybox",
            "wget",
            "-qO-",
            "http://[::1]:8090/",
        ]);
        if o.status.success() {
            Err(stdout(&o))
        } else {
            Ok(())
        }
    });

    // rm: no IPv6 address of a container is left on any link.
    d.docker_ok(&["rm", "-f", "s6", "c6", "c4"]);
    let a = addrs6(&d);
    assert!(
        !a.contains("fd00:30::10") && !a.contains("fd00:30::2/"),
        "{a}"
    );
    assert!(!stdout(&d.in_netns(&["ip", "-o", "link"])).contains("veth"));

    // kill -9 and restart: the running container keeps its IPv6 address, the bridge its
    // gateway (once), and everything goes with rm and network rm.
    web_server(
        &d,
        IMG,
        "k6",
        &["--network", "net6", "--ip6", "fd00:30::20", "-p", "8091:80"],
    );
    exec_until(&d, "k6", "ip -6 addr show dev eth0", "fd00:30::20/64");
    d.kill();
    std::thread::sleep(Duration::from_millis(500));
    d.restart();
    assert_eq!(
        inspect(&d, "k6", &format!("{n}.GlobalIPv6Address}}}}")),
        "fd00:30::20"
    );
    let a = addrs6(&d);
    assert_eq!(a.matches("fd00:30::1/64").count(), 1, "{a}");
    eventually("GET over IPv6 after the restart", 20, || {
        let o = d.in_netns(&[
            "timeout",
            "5",
            "/bin/busybox",
            "wget",
            "-qO-",
            "http://[fd00:30::20]/",
        ]);
        let out = stdout(&o);
        if out.contains("hello from k6") {
            Ok(())
        } else {
            Err(out)
        }
    });
    netns_get_until(&d, "http://[::1]:8091/", "hello from k6", 20);
    d.docker_ok(&["rm", "-f", "k6"]);
    d.docker_ok(&["network", "rm", "net6", "net4"]);
    let a = addrs6(&d);
    assert!(!a.contains("fd00:30:"), "{a}");
    assert!(!ledger(&d).contains("fd00:"), "{}", ledger(&d));
    // The last IPv6 network took the ip6 table with it.
    assert!(!d
        .in_netns(&["nft", "list", "table", "ip6", "berth"])
        .status
        .success());
    assert!(!ledger(&d).contains("ip6 berth"), "{}", ledger(&d));
}

/// `berthd --ipv6 --fixed-cidr-v6`: the default bridge is dual-stack, and inspect fills
/// the legacy top-level IPv6 fields.
#[test]
fn default_bridge_ipv6() {
    let d = TestDaemon::start_in_netns(&[
        "--bip",
        "10.231.31.1/24",
        "--default-address-pool",
        "base=10.249.0.0/16,size=24",
        "--ipv6",
        "--fixed-cidr-v6",
        "fd00:40::/64",
    ]);
    import_busybox(&d, IMG);
    assert_eq!(inspect(&d, "bridge", "{{.EnableIPv6}}"), "true");
    web_server(&d, IMG, "b6", &[]);
    assert_eq!(
        inspect(&d, "b6", "{{.NetworkSettings.GlobalIPv6Address}}"),
        "fd00:40::2"
    );
    assert_eq!(
        inspect(&d, "b6", "{{.NetworkSettings.GlobalIPv6PrefixLen}}"),
        "64"
    );
    assert_eq!(
        inspect(&d, "b6", "{{.NetworkSettings.IPv6Gateway}}"),
        "fd00:40::1"
    );
    exec_until(&d, "b6", "ip -6 route", "default via fd00:40::1");
    exec_until(
        &d,
        "b6",
        "ping -6 -c 1 -W 5 fd00:40::1",
        "1 packets received",
    );
    netns_get_until(&d, "http://[fd00:40::2]/", "hello from b6", 20);
}
