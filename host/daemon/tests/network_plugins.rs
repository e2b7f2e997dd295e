//! Network drivers as WASM plugins, through the real docker CLI against a berthd in a
//! network namespace of its own (as in network.rs): the default `bridge` driver is the
//! `bridge` plugin, `docker network create -d NAME` picks a third-party network plugin
//! from the plugin directory, an unknown driver gets Docker's 404, and a hostile
//! plugin's intents on links and addresses it does not own are refused with nothing
//! changed in the namespace and berthd still serving.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::images::import_busybox;
use common::{stderr, stdout, TestDaemon};

const IMG: &str = "bb:local";
const PLUGIN: &str = "hostile-network";

/// The staged plugins next to berthd (`<target>/plugins`, from
/// scripts/build-plugins.sh), which is where berthd loads its default ones from.
fn staged(name: &str) -> PathBuf {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_berthd"));
    let dir = exe.parent().unwrap().join("../plugins").join(name);
    if !dir.join("plugin.wasm").exists() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
        let st = Command::new("bash")
            .arg(root.join("scripts/build-plugins.sh"))
            .arg("--out")
            .arg(exe.parent().unwrap().join("../plugins"))
            .status()
            .expect("run build-plugins.sh");
        assert!(st.success(), "building the plugins failed");
    }
    dir
}

fn install(d: &mut TestDaemon, name: &str) {
    let dst = d.data_root.join("plugins").join(name);
    std::fs::create_dir_all(&dst).unwrap();
    for f in ["manifest.toml", "plugin.wasm"] {
        std::fs::copy(staged(name).join(f), dst.join(f)).unwrap();
    }
    d.restart();
}

fn daemon(n: u8) -> TestDaemon {
    let bip = format!("10.231.{n}.1/24");
    let pool = format!("base=10.{}.0.0/16,size=24", 232 + n);
    let d = TestDaemon::start_in_netns(&["--bip", &bip, "--default-address-pool", &pool]);
    import_busybox(&d, IMG);
    d
}

/// Everything a plugin could try to change in the daemon's namespace: links (name,
/// MTU, MAC, master), addresses, routes and nftables. Carrier state is left out: it
/// flaps on its own when a container's veth goes away.
fn host_state(d: &TestDaemon) -> String {
    let mut s = String::new();
    for line in stdout(&d.in_netns(&["ip", "-o", "link"])).lines() {
        let keep: Vec<&str> = line
            .split_whitespace()
            .filter(|w| !w.starts_with('<') && !["UP", "DOWN", "UNKNOWN"].contains(w))
            .collect();
        s.push_str(&keep.join(" "));
        s.push('\n');
    }
    // IPv6 duplicate address detection marks link-local addresses for a while.
    s.push_str(&stdout(&d.in_netns(&["ip", "-o", "addr"])).replace(" tentative", ""));
    s.push_str(&stdout(&d.in_netns(&["ip", "route"])).replace(" linkdown", ""));
    s.push_str(&stdout(&d.in_netns(&["nft", "list", "ruleset"])));
    s
}

fn ledger_owners(data_root: &Path) -> Vec<String> {
    let b = std::fs::read(data_root.join("network/ledger.json")).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
    v["entries"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e["owner"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn bridge_is_a_plugin_and_create_d_picks_a_network_plugin() {
    let mut d = daemon(21);
    // The default bridge is served by the bridge plugin.
    let info = d.docker_ok(&["info", "--format", "{{json .Plugins.Network}}"]);
    assert_eq!(info.trim(), r#"["bridge","host","null"]"#);
    let e = d.docker_err(&["network", "create", "-d", "nope", "n0"]);
    assert!(e.contains("plugin \"nope\" not found"), "{e}");
    let (code, _) = d.api(
        "POST",
        "/networks/create",
        Some(r#"{"Name":"n0","Driver":"nope"}"#),
    );
    assert_eq!(code, 404);

    install(&mut d, PLUGIN);
    let info = d.docker_ok(&["info", "--format", "{{json .Plugins.Network}}"]);
    assert!(info.contains(PLUGIN), "{info}");
    d.docker_ok(&["network", "create", "-d", PLUGIN, "third"]);
    let drv = d.docker_ok(&["network", "inspect", "-f", "{{.Driver}}", "third"]);
    assert_eq!(drv.trim(), PLUGIN);
    let id = d.docker_ok(&["network", "inspect", "-f", "{{.Id}}", "third"]);
    let link = format!("br-{}", &id.trim()[..12]);
    let links = stdout(&d.in_netns(&["ip", "-o", "link"]));
    assert!(links.contains(&link), "{link} missing: {links}");
    // Containers on the plugin's network reach each other by name.
    d.docker_ok(&[
        "run",
        "-d",
        "--name",
        "srv",
        "--network",
        "third",
        IMG,
        "sh",
        "-c",
        "mkdir -p /w && echo hi-third > /w/i && exec httpd -f -p 80 -h /w",
    ]);
    let got = d.docker_ok(&[
        "run", "--rm", "--network", "third", IMG, "sh", "-c",
        "for i in 1 2 3 4 5 6 7 8 9 10; do timeout 5 wget -qO- http://srv/i && break; sleep 0.3; done",
    ]);
    assert!(got.contains("hi-third"), "{got}");
    // The plugin implements berth:driver@0.2.0 (IPv4 only): an IPv6 network with it as
    // the driver or as the IPAM is refused with 501, naming the version it would need,
    // and leaves nothing behind.
    for (driver, ipam) in [(PLUGIN, "default"), ("bridge", PLUGIN)] {
        let body = format!(
            r#"{{"Name":"six","Driver":"{driver}","EnableIPv6":true,"IPAM":{{"Driver":"{ipam}","Config":[{{"Subnet":"10.98.0.0/24"}},{{"Subnet":"fd00:98::/64"}}]}}}}"#
        );
        let (code, msg) = d.api("POST", "/networks/create", Some(&body));
        assert_eq!(code, 501, "{driver}/{ipam}: {msg}");
        assert!(msg.contains("berth:driver@0.3.0"), "{msg}");
        assert!(d
            .docker_err(&["network", "inspect", "six"])
            .contains("not found"));
    }
    d.docker_ok(&["rm", "-f", "srv"]);
    d.docker_ok(&["network", "rm", "third"]);
    let links = stdout(&d.in_netns(&["ip", "-o", "link"]));
    assert!(!links.contains(&link), "{link} left behind: {links}");
    assert!(
        !ledger_owners(&d.data_root).contains(&id.trim().to_string()),
        "ledger entries left for {id}"
    );
}

/// `docker network create -d PLUGIN -o OPT NAME`, retried while the plugin is being
/// re-created after a timeout or a trap (calls meanwhile fail fast as unavailable).
fn create_past_restarts(d: &TestDaemon, opt: &str, name: &str) -> Result<(), String> {
    let mut e = String::new();
    for _ in 0..50 {
        let o = d.docker(&["network", "create", "-d", PLUGIN, "-o", opt, name]);
        if o.status.success() {
            return Ok(());
        }
        e = stderr(&o);
        if !e.contains("unavailable: restarting after a crash") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Err(e)
}

#[test]
fn hostile_network_plugin_is_refused_and_changes_nothing() {
    let mut d = daemon(22);
    install(&mut d, PLUGIN);
    // A container on the default bridge first, so berth0 and its address exist.
    d.docker_ok(&["run", "--rm", IMG, "true"]);
    let before = host_state(&d);
    let owners_before = ledger_owners(&d.data_root);
    // (mode, what the refusal says). Ledger refusals first: they do not count as
    // plugin failures, so the crash cases below cannot open the circuit breaker early.
    let cases = [
        ("remove-link:lo", "refusing to remove link lo"),
        ("remove-link:ext0", "refusing to remove link ext0"),
        ("remove-link:berth0", "refusing to remove link berth0"),
        (
            "bridge:ext0",
            "ext0 already exists and was not created by berth",
        ),
        ("add-address:ext0", "refusing to add address"),
        ("add-address:berth0", "refusing to add address"),
        (
            "remove-address:berth0/10.231.22.1/24",
            "refusing to remove address",
        ),
        ("many", "intents in one reply"),
        ("loop", "timed out"),
        ("trap", "crashed"),
        ("huge", "crashed"),
    ];
    for (i, (mode, want)) in cases.iter().enumerate() {
        let name = format!("h{i}");
        let opt = format!("hostile={mode}");
        let e = match create_past_restarts(&d, &opt, &name) {
            Ok(()) => panic!("{mode}: the network was created"),
            Err(e) => e,
        };
        assert!(e.contains(want), "{mode}: {e}");
        let ls = d.docker_ok(&["network", "ls", "--format", "{{.Name}}"]);
        assert!(!ls.lines().any(|l| l == name), "{mode}: network kept: {ls}");
        assert_eq!(host_state(&d), before, "{mode} changed the namespace");
        d.docker_ok(&["version"]);
    }
    // An endpoint moved into PID 1's namespace instead of the container's.
    if let Err(e) = create_past_restarts(&d, "hostile=join-escape", "esc") {
        panic!("creating the join-escape network: {e}");
    }
    let links_before = stdout(&d.in_netns(&["ip", "-o", "link"]));
    let e = d.docker_err(&["run", "--rm", "--network", "esc", IMG, "true"]);
    assert!(
        e.contains("in the namespace \"/proc/1/ns/net\"; refused"),
        "{e}"
    );
    assert_eq!(stdout(&d.in_netns(&["ip", "-o", "link"])), links_before);
    d.docker_ok(&["network", "rm", "esc"]);
    assert_eq!(host_state(&d), before);
    assert_eq!(ledger_owners(&d.data_root), owners_before);
    // berthd still serves, and the default bridge still works.
    let out = d.docker_ok(&["run", "--rm", IMG, "sh", "-c", "ip -4 -o addr show eth0"]);
    assert!(out.contains("10.231.22."), "{out}");
}
