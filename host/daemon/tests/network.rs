//! Networking through the real docker CLI against a real berthd that runs inside a
//! network namespace made for each test (`TestDaemon::start_in_netns`): bridges, veths,
//! addresses and nftables rules never touch the machine's own namespace, and every packet
//! goes between addresses inside the test's namespace (containers, the bridges, and the
//! veth `ext0` at 10.239.0.2 standing for the host's address).

mod common;

use std::time::Duration;

use common::images::import_busybox;
use common::{eventually, netns_get_until, stdout, web_server, TestDaemon};

const IMG: &str = "bb:local";
const HOST_IP: &str = "10.239.0.2";

fn daemon(n: u8) -> TestDaemon {
    let bip = format!("10.231.{n}.1/24");
    let pool = format!("base=10.{}.0.0/16,size=24", 232 + n);
    let d = TestDaemon::start_in_netns(&["--bip", &bip, "--default-address-pool", &pool]);
    import_busybox(&d, IMG);
    d
}

/// A shell command that GETs `url` within 5 s. A container's PID 1 ignores the SIGTERM
/// of `timeout` (no handler), so `timeout` must not become PID 1: the trailing `exit`
/// keeps ash from exec'ing it.
fn fetch(url: impl std::fmt::Display) -> String {
    format!("timeout 5 wget -qO- {url}; exit $?")
}

fn links(d: &TestDaemon) -> String {
    stdout(&d.in_netns(&["ip", "-o", "link"]))
}

fn nft_table(d: &TestDaemon) -> String {
    stdout(&d.in_netns(&["nft", "list", "table", "ip", "berth"]))
}

fn ledger(d: &TestDaemon) -> serde_json::Value {
    let b = std::fs::read(d.data_root.join("network/ledger.json")).unwrap_or_default();
    serde_json::from_slice(&b).unwrap_or_default()
}

fn ledger_owner_count(d: &TestDaemon, kind: &str) -> usize {
    ledger(d)["entries"]
        .as_array()
        .map(|a| a.iter().filter(|e| e["kind"] == kind).count())
        .unwrap_or(0)
}

#[test]
fn user_networks_names_aliases_isolation_internal() {
    let d = daemon(1);
    d.docker_ok(&["network", "create", "n1"]);
    d.docker_ok(&["network", "create", "n2"]);
    d.docker_ok(&["network", "create", "--internal", "nint"]);
    web_server(
        &d,
        IMG,
        "web",
        &["--network", "n1", "--network-alias", "www"],
    );
    // By name and by alias, with wget, nc and ping.
    let got = d.docker_ok(&[
        "run", "--rm", "--network", "n1", IMG, "sh", "-c",
        "for i in 1 2 3 4 5 6 7 8 9 10; do timeout 5 wget -qO- http://web/ && break; sleep 0.3; done; \
         timeout 5 wget -qO- http://www/; \
         printf 'GET / HTTP/1.0\\r\\n\\r\\n' | timeout 5 nc www 80 | tail -1; \
         ping -c1 -W2 web >/dev/null && echo ping-ok",
    ]);
    assert_eq!(got.matches("hello from web").count(), 3, "{got}");
    assert!(got.contains("ping-ok"), "{got}");
    let web_ip = d
        .docker_ok(&[
            "inspect",
            "-f",
            "{{.NetworkSettings.Networks.n1.IPAddress}}",
            "web",
        ])
        .trim()
        .to_string();
    assert!(web_ip.starts_with("10.233."), "{web_ip}");
    // The embedded DNS answers over TCP too (RFC 7766; resolvers retry over TCP after a
    // truncated answer): a raw length-prefixed A query for `www`, read back as bytes.
    let tcp_query = concat!(
        r"ns=$(awk '/^nameserver/{print $2; exit}' /etc/resolv.conf); ",
        r"printf '\000\025\022\064\001\000\000\001\000\000\000\000\000\000",
        r"\003www\000\000\001\000\001' | timeout 5 nc -w 3 $ns 53 | od -An -tu1",
    );
    let reply: Vec<u8> = d
        .docker_ok(&["run", "--rm", "--network", "n1", IMG, "sh", "-c", tcp_query])
        .split_whitespace()
        .map(|b| b.parse().unwrap())
        .collect();
    assert!(reply.len() > 6, "{reply:?}");
    assert_eq!(
        usize::from(u16::from_be_bytes([reply[0], reply[1]])),
        reply.len() - 2,
        "{reply:?}"
    );
    assert_eq!(&reply[2..4], &[0x12, 0x34], "{reply:?}");
    let answer_ip = reply[reply.len() - 4..]
        .iter()
        .map(u8::to_string)
        .collect::<Vec<_>>()
        .join(".");
    assert_eq!(answer_ip, web_ip, "{reply:?}");
    // Another user network cannot reach it, not even by address.
    let o = d.docker(&[
        "run",
        "--rm",
        "--network",
        "n2",
        IMG,
        "sh",
        "-c",
        &fetch(format!("http://{web_ip}/")),
    ]);
    assert!(!o.status.success(), "n2 reached n1: {}", stdout(&o));
    // The default bridge has no name resolution (as in Docker).
    let o = d.docker(&["run", "--rm", IMG, "sh", "-c", &fetch("http://web/")]);
    assert!(!o.status.success());
    // An internal network has no route out (the host's address is outside it), while a
    // normal network does.
    let o = d.docker(&[
        "run",
        "--rm",
        "--network",
        "nint",
        IMG,
        "ping",
        "-c1",
        "-W1",
        HOST_IP,
    ]);
    assert!(!o.status.success(), "internal network got out");
    d.docker_ok(&[
        "run",
        "--rm",
        "--network",
        "n1",
        IMG,
        "ping",
        "-c1",
        "-W2",
        HOST_IP,
    ]);
    // Names on the internal network still resolve (the embedded DNS is on its gateway).
    web_server(&d, IMG, "iweb", &["--network", "nint"]);
    let got = d.docker_ok(&[
        "run", "--rm", "--network", "nint", IMG, "sh", "-c",
        "for i in 1 2 3 4 5 6 7 8 9 10; do timeout 5 wget -qO- http://iweb/ && break; sleep 0.3; done",
    ]);
    assert!(got.contains("hello from iweb"), "{got}");
}

#[test]
fn published_ports_tcp_udp_hairpin_and_port_command() {
    let d = daemon(2);
    web_server(&d, IMG, "web", &["-p", "8080:80"]);
    netns_get_until(&d, &format!("http://{HOST_IP}:8080/"), "hello from web", 10);
    netns_get_until(&d, "http://127.0.0.1:8080/", "hello from web", 10);
    // Hairpin: a container reaches the published port through the host's address.
    let got = d.docker_ok(&[
        "run",
        "--rm",
        IMG,
        "sh",
        "-c",
        &fetch(format!("http://{HOST_IP}:8080/")),
    ]);
    assert!(got.contains("hello from web"), "{got}");
    // Listed on IPv6 as well, as dockerd 20.10 does (berthd serves [::]:8080); this CLI
    // writes an IPv6 HostIp in brackets.
    assert_eq!(
        d.docker_ok(&["port", "web"]).trim(),
        "80/tcp -> 0.0.0.0:8080\n80/tcp -> [::]:8080"
    );
    let ps = d.docker_ok(&["ps"]);
    assert!(
        ps.contains("0.0.0.0:8080->80/tcp, [::]:8080->80/tcp"),
        "{ps}"
    );
    // And served there.
    netns_get_until(&d, "http://[::1]:8080/", "hello from web", 10);
    // Docker's conflict error; the port is free again once its container is gone.
    let err = d.docker_err(&[
        "run", "-d", "--name", "web2", "-p", "8080:80", IMG, "sleep", "100",
    ]);
    assert!(
        err.contains("Bind for 0.0.0.0:8080 failed: port is already allocated"),
        "{err}"
    );
    d.docker_ok(&["rm", "-f", "web", "web2"]);
    web_server(&d, IMG, "web3", &["-p", "8080:80"]);
    netns_get_until(&d, "http://127.0.0.1:8080/", "hello from web3", 10);
    // UDP, through 127.0.0.1 and the host's address. busybox's nc has no UDP, so both
    // ends are the host's python3 (mounted read-only into the container).
    let server = "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('',5353))\nwhile True:\n d,a=s.recvfrom(512)\n s.sendto(b'pong:'+d,a)\n";
    d.docker_ok(&[
        "run",
        "-d",
        "--name",
        "udp1",
        "-p",
        "5353:5353/udp",
        "-v",
        "/usr:/usr:ro",
        // The real directories (/lib and /lib64 are symlinks into /usr here), which a
        // microVM's virtio-fs can share.
        "-v",
        "/usr/lib:/lib:ro",
        "-v",
        "/usr/lib64:/lib64:ro",
        IMG,
        "/usr/bin/python3",
        "-c",
        server,
    ]);
    // ::1: berthd relays UDP on [::] too, as dockerd 20.10's docker-proxy does.
    for target in ["127.0.0.1", HOST_IP, "::1"] {
        let family = if target.contains(':') {
            "AF_INET6"
        } else {
            "AF_INET"
        };
        eventually(&format!("udp to {target}:5353"), 10, || {
            let client = format!(
                "import socket\ns=socket.socket(socket.{family},socket.SOCK_DGRAM)\ns.settimeout(1)\ns.sendto(b'ping',('{target}',5353))\nprint(s.recv(512).decode())"
            );
            let o = d.in_netns(&["/usr/bin/python3", "-c", &client]);
            let out = stdout(&o);
            if out.contains("pong:ping") {
                Ok(())
            } else {
                Err(common::stderr(&o))
            }
        });
    }
    assert_eq!(
        d.docker_ok(&["port", "udp1"]).trim(),
        "5353/udp -> 0.0.0.0:5353\n5353/udp -> [::]:5353"
    );
    // -P publishes EXPOSEd ports on ephemeral host ports.
    web_server(&d, IMG, "pub", &["-P", "--expose", "80"]);
    let line = d.docker_ok(&["port", "pub", "80/tcp"]);
    let port = line.trim().rsplit(':').next().unwrap().to_string();
    assert!(port.parse::<u16>().unwrap() >= 1024, "{line}");
    netns_get_until(
        &d,
        &format!("http://127.0.0.1:{port}/"),
        "hello from pub",
        10,
    );
}

#[test]
fn connect_disconnect_container_and_host_modes_and_etc_files() {
    let d = daemon(3);
    d.docker_ok(&["network", "create", "--subnet", "10.240.3.0/24", "n1"]);
    web_server(&d, IMG, "cb", &["--network", "n1"]);
    d.docker_ok(&["run", "-d", "--name", "ca", IMG, "sleep", "1000"]);
    let o = d.docker(&["exec", "ca", "sh", "-c", &fetch("http://cb/")]);
    assert!(!o.status.success());
    d.docker_ok(&["network", "connect", "--alias", "aa", "n1", "ca"]);
    let got = d.docker_ok(&[
        "exec",
        "ca",
        "sh",
        "-c",
        "for i in 1 2 3 4 5; do timeout 5 wget -qO- http://cb/ && break; sleep 0.3; done",
    ]);
    assert!(got.contains("hello from cb"), "{got}");
    let nets = d.docker_ok(&[
        "inspect",
        "-f",
        "{{range $k, $v := .NetworkSettings.Networks}}{{$k}}={{$v.IPAddress}} {{end}}",
        "ca",
    ]);
    assert!(
        nets.contains("bridge=10.231.3.") && nets.contains("n1=10.240.3."),
        "{nets}"
    );
    let on_n1 = d.docker_ok(&["ps", "--filter", "network=n1", "--format", "{{.Names}}"]);
    let mut on_n1: Vec<&str> = on_n1.lines().collect();
    on_n1.sort();
    assert_eq!(on_n1, ["ca", "cb"]);
    // dockerd appends the container's new address to its /etc/hosts on connect; the
    // line goes again on disconnect.
    let n1_ip = d
        .docker_ok(&[
            "inspect",
            "-f",
            "{{.NetworkSettings.Networks.n1.IPAddress}}",
            "ca",
        ])
        .trim()
        .to_string();
    let ca_host = d
        .docker_ok(&["inspect", "-f", "{{.Config.Hostname}}", "ca"])
        .trim()
        .to_string();
    let hosts = d.docker_ok(&["exec", "ca", "cat", "/etc/hosts"]);
    assert!(
        hosts.ends_with(&format!("\t{ca_host}\n{n1_ip}\t{ca_host}\n")),
        "{hosts}"
    );
    d.docker_ok(&["network", "disconnect", "n1", "ca"]);
    let hosts = d.docker_ok(&["exec", "ca", "cat", "/etc/hosts"]);
    assert!(
        !hosts.contains(&n1_ip) && hosts.contains(&format!("\t{ca_host}\n")),
        "{hosts}"
    );
    assert_eq!(
        d.docker_ok(&["ps", "--filter", "network=n1", "--format", "{{.Names}}"])
            .trim(),
        "cb"
    );
    let o = d.docker(&["exec", "ca", "sh", "-c", &fetch("http://cb/")]);
    assert!(!o.status.success());
    assert!(!d
        .docker_ok(&["exec", "ca", "ip", "-o", "link"])
        .contains("eth1"));
    if common::skip_in_microvm_suite(
        "the rest: --network container: is refused with microVMs and --network host is the guest's own network",
    ) {
        return;
    }
    // Another container's namespace, the host's, none.
    let got = d.docker_ok(&[
        "run",
        "--rm",
        "--network",
        "container:cb",
        IMG,
        "sh",
        "-c",
        &fetch("http://127.0.0.1/"),
    ]);
    assert!(got.contains("hello from cb"), "{got}");
    let got = d.docker_ok(&["run", "--rm", "--network", "host", IMG, "ip", "-o", "addr"]);
    assert!(got.contains(HOST_IP), "{got}");
    let got = d.docker_ok(&["run", "--rm", "--network", "none", IMG, "ip", "-o", "link"]);
    assert_eq!(got.lines().count(), 1, "{got}");
    // Per-container settings, and the engine-owned /etc files.
    let got = d.docker_ok(&[
        "run",
        "--rm",
        "--network",
        "n1",
        "--ip",
        "10.240.3.50",
        "--mac-address",
        "02:42:0a:f0:03:32",
        "--hostname",
        "hh",
        "--add-host",
        "foo:10.240.3.7",
        "--add-host",
        "gw:host-gateway",
        "--dns-search",
        "example.test",
        "--dns-option",
        "ndots:2",
        IMG,
        "sh",
        "-c",
        "ip addr show eth0; cat /etc/hosts /etc/resolv.conf; hostname; ip route",
    ]);
    for want in [
        "inet 10.240.3.50/24",
        "02:42:0a:f0:03:32",
        "10.240.3.50\thh",
        "10.240.3.7\tfoo",
        "10.240.3.1\tgw",
        "nameserver 10.240.3.1",
        "search example.test",
        "options ndots:2",
        "default via 10.240.3.1",
    ] {
        assert!(got.contains(want), "missing {want:?} in:\n{got}");
    }
    assert!(got.lines().any(|l| l.trim() == "hh"), "{got}");
    // The default bridge: legacy top-level fields, --dns as given.
    let ip = d.docker_ok(&["inspect", "-f", "{{.NetworkSettings.IPAddress}} {{.NetworkSettings.Gateway}} {{.NetworkSettings.MacAddress}}", "ca"]);
    assert!(
        ip.starts_with("10.231.3.") && ip.contains(" 10.231.3.1 02:42:0a:e7:03:"),
        "{ip}"
    );
    let got = d.docker_ok(&[
        "run",
        "--rm",
        "--dns",
        "10.239.0.53",
        IMG,
        "cat",
        "/etc/resolv.conf",
    ]);
    assert!(got.contains("nameserver 10.239.0.53"), "{got}");
    // Not in the image's layer: diff does not list them.
    assert!(!d.docker_ok(&["diff", "ca"]).contains("/etc/hosts"));
}

#[test]
fn nothing_left_after_rm_and_after_kill9_restart() {
    let mut d = daemon(4);
    d.docker_ok(&["network", "create", "n1"]);
    web_server(&d, IMG, "w1", &["--network", "n1", "-p", "8081:80"]);
    web_server(&d, IMG, "w2", &["-p", "8082:80"]);
    netns_get_until(&d, "http://127.0.0.1:8081/", "hello from w1", 10);
    assert_eq!(links(&d).matches("veth").count(), 2, "{}", links(&d));
    assert!(nft_table(&d).contains("dport 8081"));
    d.docker_ok(&["rm", "-f", "w1", "w2"]);
    assert_eq!(links(&d).matches("veth").count(), 0, "{}", links(&d));
    let t = nft_table(&d);
    assert!(
        !t.contains("dport 8081") && !t.contains("dport 8082"),
        "{t}"
    );
    assert_eq!(ledger_owner_count(&d, "netns"), 0, "{}", ledger(&d));
    assert!(
        std::fs::read_dir(d.exec_root.join("netns"))
            .map(|r| r.count())
            .unwrap_or(0)
            == 0
    );
    // kill -9 with one container that stays up and one that exits while berthd is down.
    web_server(&d, IMG, "keep", &["--network", "n1", "-p", "8083:80"]);
    d.docker_ok(&[
        "run",
        "-d",
        "--name",
        "brief",
        "--network",
        "n1",
        "-p",
        "8084:80",
        IMG,
        "sleep",
        "2",
    ]);
    // And one with a restart policy whose process dies while berthd is down: restarted at
    // daemon start with a fresh sandbox, the stale one gone.
    web_server(
        &d,
        IMG,
        "again",
        &["--network", "n1", "--restart", "always", "-p", "8085:80"],
    );
    netns_get_until(&d, "http://127.0.0.1:8085/", "hello from again", 10);
    let pid = d.docker_ok(&["inspect", "-f", "{{.State.Pid}}", "again"]);
    netns_get_until(&d, "http://127.0.0.1:8083/", "hello from keep", 10);
    d.kill();
    let _ = std::process::Command::new("kill")
        .args(["-9", pid.trim()])
        .status();
    std::thread::sleep(Duration::from_secs(3));
    d.restart();
    netns_get_until(&d, "http://127.0.0.1:8085/", "hello from again", 10);
    let t = nft_table(&d);
    assert!(t.contains("dport 8083") && !t.contains("dport 8084"), "{t}");
    assert_eq!(links(&d).matches("veth").count(), 2, "{}", links(&d));
    assert_eq!(ledger_owner_count(&d, "netns"), 2, "{}", ledger(&d));
    netns_get_until(&d, "http://127.0.0.1:8083/", "hello from keep", 10);
    d.docker_ok(&["rm", "-f", "keep", "brief", "again"]);
    d.docker_ok(&["network", "rm", "n1"]);
    assert_eq!(links(&d).matches("veth").count(), 0, "{}", links(&d));
    assert!(!links(&d).contains("br-"), "{}", links(&d));
    let l = ledger(&d);
    let entries = l["entries"].as_array().cloned().unwrap_or_default();
    // Only the default bridge (its link and address) and berth's nft table remain.
    assert!(
        entries
            .iter()
            .all(|e| e["name"].as_str().unwrap_or("").starts_with("berth")),
        "{l}"
    );
    let addrs = stdout(&d.in_netns(&["ip", "-o", "addr"]));
    assert!(!addrs.contains("10.236."), "{addrs}");
}

#[test]
fn network_api_errors_filters_prune_and_events() {
    let d = daemon(5);
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let ls = d.docker_ok(&["network", "ls", "--format", "{{.Name}} {{.Driver}}"]);
    for want in ["bridge bridge", "host host", "none null"] {
        assert!(ls.contains(want), "{ls}");
    }
    d.docker_ok(&["network", "create", "--label", "team=a", "n1"]);
    let err = d.docker_err(&["network", "create", "n1"]);
    assert!(err.contains("network with name n1 already exists"), "{err}");
    let err = d.docker_err(&["network", "rm", "bridge"]);
    assert!(
        err.contains("bridge is a pre-defined network and cannot be removed"),
        "{err}"
    );
    let err = d.docker_err(&["network", "inspect", "nope"]);
    assert!(err.contains("network nope not found"), "{err}");
    let subnet = d.docker_ok(&[
        "network",
        "inspect",
        "-f",
        "{{(index .IPAM.Config 0).Subnet}}",
        "n1",
    ]);
    assert_eq!(subnet.trim(), "10.237.0.0/24");
    let err = d.docker_err(&["network", "create", "--subnet", "10.237.0.0/16", "n2"]);
    assert!(
        err.contains("Pool overlaps with other one on this address space"),
        "{err}"
    );
    let err = d.docker_err(&[
        "network",
        "create",
        "--subnet",
        "10.99.0.0/24",
        "--gateway",
        "10.98.0.1",
        "n3",
    ]);
    assert!(
        err.contains("no matching subnet for gateway 10.98.0.1"),
        "{err}"
    );
    // A network may not take over an interface berth did not create (here the
    // namespace's own `ext0`): refused, and the interface is left alone.
    let err = d.docker_err(&[
        "network",
        "create",
        "-o",
        "com.docker.network.bridge.name=ext0",
        "evil",
    ]);
    assert!(
        err.contains("link ext0 already exists and was not created by berth"),
        "{err}"
    );
    assert!(d
        .docker_ok(&["network", "ls"])
        .lines()
        .all(|l| !l.contains("evil")));
    assert!(stdout(&d.in_netns(&["ip", "-o", "addr", "show", "ext0"])).contains(HOST_IP));
    let err = d.docker_err(&[
        "network",
        "create",
        "-o",
        "com.docker.network.driver.mtu=9",
        "tiny",
    ]);
    assert!(err.contains("invalid MTU 9"), "{err}");
    let err = d.docker_err(&["run", "--rm", "--network", "ghost", IMG, "true"]);
    assert!(err.contains("network ghost not found"), "{err}");
    d.docker_ok(&[
        "network",
        "create",
        "--subnet",
        "10.99.0.0/24",
        "--ip-range",
        "10.99.0.128/25",
        "--aux-address",
        "r=10.99.0.128",
        "n4",
    ]);
    d.docker_ok(&[
        "run",
        "-d",
        "--name",
        "cc",
        "--network",
        "n4",
        IMG,
        "sleep",
        "100",
    ]);
    let ip = d.docker_ok(&[
        "inspect",
        "-f",
        "{{.NetworkSettings.Networks.n4.IPAddress}}",
        "cc",
    ]);
    assert_eq!(ip.trim(), "10.99.0.129");
    let err = d.docker_err(&["network", "rm", "n4"]);
    assert!(err.contains("has active endpoints"), "{err}");
    let containers = d.docker_ok(&[
        "network",
        "inspect",
        "-f",
        "{{range .Containers}}{{.Name}} {{.IPv4Address}}{{end}}",
        "n4",
    ]);
    assert_eq!(containers.trim(), "cc 10.99.0.129/24");
    // Filters.
    let custom = d.docker_ok(&[
        "network",
        "ls",
        "-q",
        "--filter",
        "type=custom",
        "--format",
        "{{.Name}}",
    ]);
    let mut custom: Vec<&str> = custom.lines().collect();
    custom.sort();
    assert_eq!(custom, ["n1", "n4"]);
    assert_eq!(
        d.docker_ok(&[
            "network",
            "ls",
            "--filter",
            "label=team=a",
            "--format",
            "{{.Name}}"
        ])
        .trim(),
        "n1"
    );
    assert_eq!(
        d.docker_ok(&[
            "network",
            "ls",
            "--filter",
            "driver=null",
            "--format",
            "{{.Name}}"
        ])
        .trim(),
        "none"
    );
    assert_eq!(
        d.docker_ok(&[
            "network",
            "ls",
            "--filter",
            "dangling=true",
            "--format",
            "{{.Name}}"
        ])
        .trim(),
        "n1"
    );
    // Prune removes the unused one only.
    let pruned = d.docker_ok(&["network", "prune", "-f"]);
    assert!(pruned.contains("n1") && !pruned.contains("n4"), "{pruned}");
    d.docker_ok(&["rm", "-f", "cc"]);
    d.docker_ok(&["network", "rm", "n4"]);
    let end = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 1)
    .to_string();
    let ev = d.docker_ok(&[
        "events",
        "--since",
        &start,
        "--until",
        &end,
        "--filter",
        "type=network",
        "--format",
        "{{.Action}} {{.Actor.Attributes.name}}",
    ]);
    for want in [
        "create n1",
        "create n4",
        "connect n4",
        "disconnect n4",
        "destroy n1",
        "destroy n4",
    ] {
        assert!(ev.contains(want), "missing {want:?} in:\n{ev}");
    }
}

/// docker-py (the Python SDK compose and many tools use) drives the network API.
#[test]
fn docker_py_network_api() {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import docker"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "docker-py is missing: scripts/install-deps.sh installs it"
    );
    let d = daemon(6);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/network_api.py");
    let out = std::process::Command::new("python3")
        .args([script, IMG])
        .env("DOCKER_HOST", d.host())
        .output()
        .unwrap();
    let text = format!("{}{}", stdout(&out), common::stderr(&out));
    assert!(
        out.status.success() && text.contains("network API: ok"),
        "{text}"
    );
}
