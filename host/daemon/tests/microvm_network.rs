//! Networking of microVM containers (qemu; TCG here) through the real docker CLI, against a
//! real berthd in a network namespace made for each test (as in network.rs): each VM's
//! NIC sits on a TAP in the container's sandbox, joined to the veth by tc mirred. Every
//! packet stays inside the test's namespace (containers, bridges, and `ext0` at
//! 10.239.0.2 standing for the host's address).

mod common;

use std::time::Duration;

use common::images::import_busybox;
use common::microvm::{leftover_processes, skip_without_microvm};
use common::{netns_get_until, stdout, web_server, TestDaemon};

const IMG: &str = "bb:local";
const HOST_IP: &str = "10.239.0.2";
const VM: &str = "--isolation=microvm";

fn daemon(n: u8) -> TestDaemon {
    let bip = format!("10.231.{n}.1/24");
    let pool = format!("base=10.{}.0.0/16,size=24", 240 + n);
    let d = TestDaemon::start_in_netns(&[
        "--bip",
        &bip,
        "--default-address-pool",
        &pool,
        "--vmm",
        "qemu",
    ]);
    import_busybox(&d, IMG);
    d
}

/// A shell command that GETs `url`, retrying for a few seconds (the server may still be
/// starting), in a subshell so several can follow each other; the loop keeps ash from
/// exec'ing `timeout` as PID 1 (see network.rs).
fn fetch(url: &str) -> String {
    format!(
        "(for i in 1 2 3 4 5 6 7 8 9 10; do timeout 5 wget -qO- {url} && exit 0; sleep 0.5; done; exit 1)"
    )
}

fn veth_count(d: &TestDaemon) -> usize {
    stdout(&d.in_netns(&["ip", "-o", "link"]))
        .matches("veth")
        .count()
}

fn ledger_count(d: &TestDaemon, kind: &str) -> usize {
    let b = std::fs::read(d.data_root.join("network/ledger.json")).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
    v["entries"]
        .as_array()
        .map(|a| a.iter().filter(|e| e["kind"] == kind).count())
        .unwrap_or(0)
}

fn netns_files(d: &TestDaemon) -> usize {
    std::fs::read_dir(d.exec_root.join("netns"))
        .map(|r| r.count())
        .unwrap_or(0)
}

/// `tc` inside a container's sandbox (the netns berthd pinned for it).
fn sandbox_tc(d: &TestDaemon, id: &str, args: &[&str]) -> String {
    let ns = d.exec_root.join("netns").join(&id[..16]);
    let mut a = vec!["nsenter".to_string(), format!("--net={}", ns.display())];
    a.push("tc".into());
    a.extend(args.iter().map(|s| s.to_string()));
    let a: Vec<&str> = a.iter().map(|s| s.as_str()).collect();
    let o = d.in_netns(&a);
    assert!(o.status.success(), "tc {args:?}: {}", common::stderr(&o));
    stdout(&o)
}

/// The guest's view of `n2`'s interface, routes and names, from inside the VM.
fn guest_net(d: &TestDaemon, name: &str) -> String {
    d.docker_ok(&[
        "exec",
        name,
        "sh",
        "-c",
        "ip -o -4 addr; ip route; ip -o link",
    ])
}

fn assert_nothing_left(d: &TestDaemon) {
    assert_eq!(veth_count(d), 0, "veths left");
    assert_eq!(ledger_count(d, "netns"), 0, "netns ledger entries left");
    assert_eq!(netns_files(d), 0, "pinned netns left");
    let procs = leftover_processes(d.dir.path());
    assert!(procs.is_empty(), "VMM processes left: {procs:?}");
}

#[test]
fn microvm_user_network_ports_dns_and_mixed_isolation() {
    if skip_without_microvm() {
        return;
    }
    let d = daemon(11);
    d.docker_ok(&["network", "create", "n1"]);
    let vweb = web_server(
        &d,
        IMG,
        "vweb",
        &[
            VM,
            "--network",
            "n1",
            "--network-alias",
            "vwww",
            "-p",
            "8090:80",
        ],
    );
    // The sandbox: a TAP joined both ways to the veth by ingress qdiscs + mirred.
    for dev in ["eth0", "tap0"] {
        let q = sandbox_tc(&d, &vweb, &["qdisc", "show", "dev", dev]);
        assert!(q.contains("ingress"), "{dev}: {q}");
        let f = sandbox_tc(&d, &vweb, &["filter", "show", "dev", dev, "ingress"]);
        let other = if dev == "eth0" { "tap0" } else { "eth0" };
        assert!(
            f.contains("protocol all") && f.contains(&format!("Redirect to device {other}")),
            "{dev}: {f}"
        );
    }
    // The guest's NIC carries the endpoint's MAC and address.
    let mac = d
        .docker_ok(&[
            "inspect",
            "-f",
            "{{.NetworkSettings.Networks.n1.MacAddress}} {{.NetworkSettings.Networks.n1.IPAddress}}",
            "vweb",
        ])
        .trim()
        .to_string();
    let (mac, ip) = mac.split_once(' ').unwrap();
    let guest = d.docker_ok(&[
        "exec",
        "vweb",
        "sh",
        "-c",
        "cat /sys/class/net/eth0/address; ip -o -4 addr show eth0; cat /etc/hosts /etc/resolv.conf; hostname",
    ]);
    assert!(guest.contains(mac), "{guest}");
    assert!(guest.contains(&format!("inet {ip}/24")), "{guest}");
    assert!(guest.contains(&format!("{ip}\t")), "/etc/hosts: {guest}");
    assert!(guest.contains("nameserver 10."), "resolv.conf: {guest}");
    assert!(guest.contains(&vweb[..12]), "hostname: {guest}");
    // Published port, from the host's address and from 127.0.0.1.
    netns_get_until(
        &d,
        &format!("http://{HOST_IP}:8090/"),
        "hello from vweb",
        20,
    );
    netns_get_until(&d, "http://127.0.0.1:8090/", "hello from vweb", 20);
    // A process container reaches the VM by name and by alias ...
    let got = d.docker_ok(&[
        "run",
        "--rm",
        "--network",
        "n1",
        IMG,
        "sh",
        "-c",
        &format!("{}; {}", fetch("http://vweb/"), fetch("http://vwww/")),
    ]);
    assert_eq!(got.matches("hello from vweb").count(), 2, "{got}");
    // ... and a VM reaches a process container (and a VM) by name, and the host.
    web_server(&d, IMG, "pweb", &["--network", "n1"]);
    let got = d.docker_ok(&[
        "run",
        "--rm",
        VM,
        "--network",
        "n1",
        IMG,
        "sh",
        "-c",
        &format!(
            "{}; {}; ping -c1 -W2 {HOST_IP} >/dev/null && echo ping-ok",
            fetch("http://pweb/"),
            fetch("http://vwww/")
        ),
    ]);
    assert!(got.contains("hello from pweb"), "{got}");
    assert!(got.contains("hello from vweb"), "{got}");
    assert!(got.contains("ping-ok"), "{got}");
    // On the default bridge: out through the host's NAT.
    let got = d.docker_ok(&[
        "run",
        "--rm",
        VM,
        IMG,
        "sh",
        "-c",
        &format!(
            "ping -c1 -W2 {HOST_IP} >/dev/null && echo ping-ok; {}",
            fetch(&format!("http://{HOST_IP}:8090/"))
        ),
    ]);
    assert!(got.contains("ping-ok"), "{got}");
    assert!(got.contains("hello from vweb"), "hairpin: {got}");
    // Stopped, it joins n2; the next boot has two NICs, each on its own TAP, and is
    // reachable on both networks (and still on its published port).
    d.docker_ok(&["network", "create", "n2"]);
    d.docker_ok(&["stop", "-t", "1", "vweb"]);
    d.docker_ok(&["network", "connect", "n2", "vweb"]);
    d.docker_ok(&["start", "vweb"]);
    let addrs = d.docker_ok(&["exec", "vweb", "ip", "-o", "-4", "addr"]);
    assert!(
        addrs.contains(" eth0 ") && addrs.contains(" eth1 "),
        "{addrs}"
    );
    let q = sandbox_tc(&d, &vweb, &["filter", "show", "dev", "eth1", "ingress"]);
    assert!(q.contains("Redirect to device tap1"), "{q}");
    let got = d.docker_ok(&[
        "run",
        "--rm",
        "--network",
        "n2",
        IMG,
        "sh",
        "-c",
        &fetch("http://vweb/"),
    ]);
    assert!(got.contains("hello from vweb"), "via n2: {got}");
    netns_get_until(&d, "http://127.0.0.1:8090/", "hello from vweb", 20);
    d.docker_ok(&["rm", "-f", "vweb", "pweb"]);
    assert_nothing_left(&d);
}

#[test]
fn microvm_network_cleanup_after_kill9_restart() {
    if skip_without_microvm() {
        return;
    }
    let mut d = daemon(12);
    d.docker_ok(&["network", "create", "n1"]);
    let keep = web_server(&d, IMG, "keep", &[VM, "--network", "n1", "-p", "8091:80"]);
    web_server(&d, IMG, "gone", &[VM, "--network", "n1", "-p", "8092:80"]);
    netns_get_until(&d, "http://127.0.0.1:8091/", "hello from keep", 20);
    netns_get_until(&d, "http://127.0.0.1:8092/", "hello from gone", 20);
    let gone_vmm = d.docker_ok(&["inspect", "-f", "{{.State.Pid}}", "gone"]);
    assert_eq!(ledger_count(&d, "netns"), 2);
    // kill -9 berthd; one VM keeps running, the other's VMM dies while berthd is down.
    d.kill();
    let _ = std::process::Command::new("kill")
        .args(["-9", gone_vmm.trim()])
        .status();
    std::thread::sleep(Duration::from_secs(2));
    d.restart();
    // The surviving VM is re-adopted with its network; the dead one's sandbox is gone.
    netns_get_until(&d, "http://127.0.0.1:8091/", "hello from keep", 20);
    assert_eq!(veth_count(&d), 1);
    assert_eq!(ledger_count(&d, "netns"), 1);
    assert_eq!(netns_files(&d), 1);
    let f = sandbox_tc(&d, &keep, &["filter", "show", "dev", "tap0", "ingress"]);
    assert!(f.contains("Redirect to device eth0"), "{f}");
    let o = d.in_netns(&[
        "timeout",
        "3",
        "/bin/busybox",
        "wget",
        "-qO-",
        "http://127.0.0.1:8092/",
    ]);
    assert!(!o.status.success(), "port 8092 still answers");
    d.docker_ok(&["rm", "-f", "keep", "gone"]);
    d.docker_ok(&["network", "rm", "n1"]);
    assert_nothing_left(&d);
}

/// `network connect/disconnect` on a running microVM: the VM boots with spare NICs; a
/// connect joins a new endpoint to one (the endpoint takes the spare's MAC) and the guest
/// agent configures it; disconnect makes it a spare again. Names, routes, the spare
/// limit, a berthd `kill -9` in between, and nothing left after `rm`.
#[test]
fn microvm_connect_disconnect_while_running() {
    if skip_without_microvm() {
        return;
    }
    let mut d = daemon(13);
    for n in ["n2", "n3", "n4"] {
        d.docker_ok(&["network", "create", n]);
    }
    web_server(&d, IMG, "pweb", &["--network", "n2"]);
    // On the default bridge (no embedded DNS): connecting a user network switches the
    // guest's resolv.conf to that network's DNS, as for a process container.
    let vm = d
        .docker_ok(&["run", "-d", "--name", "vm", VM, IMG, "sleep", "1000"])
        .trim()
        .to_string();
    // Two spare TAPs besides eth0's, joined to nothing.
    for tap in ["tap1", "tap2"] {
        let q = sandbox_tc(&d, &vm, &["qdisc", "show", "dev", tap]);
        assert!(!q.contains("ingress"), "{tap}: {q}");
    }
    let o = d.docker(&["exec", "vm", "sh", "-c", "timeout 3 wget -qO- http://pweb/"]);
    assert!(!o.status.success(), "pweb reachable before connect");
    // Endpoint settings a spare NIC cannot honour: a 400 saying why.
    let err = d.docker_err(&["network", "connect", "--driver-opt", "a=b", "n2", "vm"]);
    assert!(err.contains("driver options"), "{err}");
    d.docker_ok(&["network", "connect", "--alias", "vmalias", "n2", "vm"]);
    let mac = d
        .docker_ok(&[
            "inspect",
            "-f",
            "{{.NetworkSettings.Networks.n2.MacAddress}} {{.NetworkSettings.Networks.n2.IPAddress}}",
            "vm",
        ])
        .trim()
        .to_string();
    let (mac, ip) = mac.split_once(' ').unwrap();
    assert!(mac.starts_with("06:"), "not a spare's MAC: {mac}");
    let g = guest_net(&d, "vm");
    assert!(
        g.contains(" eth1 ") && g.contains(&format!("inet {ip}/24")),
        "{g}"
    );
    assert!(g.contains(mac), "{g}");
    let f = sandbox_tc(&d, &vm, &["filter", "show", "dev", "tap1", "ingress"]);
    assert!(f.contains("Redirect to device eth1"), "{f}");
    // The VM reaches the process container by name, and it reaches the VM by alias.
    let got = d.docker_ok(&[
        "exec",
        "vm",
        "sh",
        "-c",
        &format!(
            "{}; ping -c1 -W2 pweb >/dev/null && echo ping-ok",
            fetch("http://pweb/")
        ),
    ]);
    assert!(
        got.contains("hello from pweb") && got.contains("ping-ok"),
        "{got}"
    );
    let got = d.docker_ok(&[
        "exec",
        "pweb",
        "sh",
        "-c",
        "ping -c1 -W2 vmalias >/dev/null && echo ping-ok",
    ]);
    assert!(got.contains("ping-ok"), "{got}");
    // berthd dies and comes back: it still knows which spare carries n2.
    d.kill();
    std::thread::sleep(Duration::from_secs(1));
    d.restart();
    // Disconnect: the guest NIC is a spare again (no address, no route), the name is gone.
    d.docker_ok(&["network", "disconnect", "n2", "vm"]);
    let g = guest_net(&d, "vm");
    assert!(
        !g.contains(&format!("inet {ip}/")) && !g.contains(" eth1:"),
        "{g}"
    );
    let subnet = ip.rsplit_once('.').unwrap().0;
    assert!(!g.contains(subnet), "route left: {g}");
    let f = sandbox_tc(&d, &vm, &["qdisc", "show", "dev", "tap1"]);
    assert!(!f.contains("ingress"), "{f}");
    let o = d.docker(&[
        "exec",
        "pweb",
        "sh",
        "-c",
        "ping -c1 -W2 vmalias >/dev/null && echo ping-ok",
    ]);
    assert!(!stdout(&o).contains("ping-ok"), "vmalias still resolves");
    assert_eq!(veth_count(&d), 2, "the VM's eth0 and pweb's veths only");
    // Connect again works; the two spares are the limit.
    d.docker_ok(&["network", "connect", "n2", "vm"]);
    let got = d.docker_ok(&["exec", "vm", "sh", "-c", &fetch("http://pweb/")]);
    assert!(got.contains("hello from pweb"), "{got}");
    d.docker_ok(&["network", "connect", "n3", "vm"]);
    let err = d.docker_err(&["network", "connect", "n4", "vm"]);
    assert!(
        err.contains("no spare network interface left") && err.contains("2 per VM"),
        "{err}"
    );
    assert_eq!(veth_count(&d), 4);
    d.docker_ok(&["rm", "-f", "vm", "pweb"]);
    assert_nothing_left(&d);
    for n in ["n2", "n3", "n4"] {
        d.docker_ok(&["network", "rm", n]);
    }
}
