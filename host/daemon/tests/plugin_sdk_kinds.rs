//! `berth-plugin new --kind network` and `--kind authz`, from an empty directory to
//! a plugin berthd runs: the network template drives `docker network create -d NAME`
//! and gives a container its address; the authz template (allow-all plus its example
//! rule) lets ordinary requests through and refuses `docker run --privileged` with
//! its own message. One berthd, in a network namespace of its own.

mod common;

use std::path::{Path, PathBuf};

use common::images::import_busybox;
use common::plugin_sdk::run_tool;
use common::{stderr, stdout, TestDaemon};

const IMG: &str = "bb:local";

/// `berth-plugin new` + `build` + `check` in `parent`; returns the project's dist/.
fn new_built(parent: &Path, kind: &str, name: &str) -> PathBuf {
    let out = run_tool(parent, &["new", "--kind", kind, name]);
    assert!(out.contains("created"), "{out}");
    let project = parent.join(name);
    let want = format!("ok: {kind} plugin \"{name}\"");
    let out = run_tool(&project, &["build"]);
    assert!(out.contains(&want), "{out}");
    let out = run_tool(&project, &["check"]);
    assert!(
        out.contains(&format!("imports within the {kind} allowlist")),
        "{out}"
    );
    project.join("dist")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn sdk_network_and_authz_templates_run_in_berthd() {
    let tmp = tempfile::tempdir().unwrap();
    let net_dist = new_built(tmp.path(), "network", "sdk-net");
    let authz_dist = new_built(tmp.path(), "authz", "no-priv");
    // An authz plugin is not a registry artifact; the tool says where it goes.
    let out = std::process::Command::new(common::plugin_sdk::tool())
        .args(["push", "127.0.0.1:5000/no-priv:1"])
        .current_dir(tmp.path().join("no-priv"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("authz-plugins/NAME"),
        "{}",
        stderr(&out)
    );

    let mut d = TestDaemon::start_in_netns(&[
        "--bip",
        "10.231.40.1/24",
        "--default-address-pool",
        "base=10.241.0.0/16,size=24",
    ]);
    import_busybox(&d, IMG);
    copy_dir(&authz_dist, &d.data_root.join("authz-plugins/no-priv"));
    d.restart_with(&["--authorization-plugin", "no-priv"]);
    // The network plugin goes in through the API, as a local build would.
    d.docker_ok(&["plugin", "create", "sdk-net", net_dist.to_str().unwrap()]);
    d.docker_ok(&["plugin", "enable", "sdk-net"]);
    let caps = d.docker_ok(&[
        "plugin",
        "ls",
        "--filter",
        "capability=networkdriver",
        "--format",
        "{{.Name}}",
    ]);
    assert_eq!(caps.trim(), "sdk-net:latest");

    // The network template: its IPAM picks the subnet from the daemon's pool and
    // its intents give the container an address on it.
    d.docker_ok(&["network", "create", "-d", "sdk-net", "sdknet"]);
    let driver = d.docker_ok(&["network", "inspect", "-f", "{{.Driver}}", "sdknet"]);
    assert_eq!(driver.trim(), "sdk-net");
    let subnet = d.docker_ok(&[
        "network",
        "inspect",
        "-f",
        "{{range .IPAM.Config}}{{.Subnet}}{{end}}",
        "sdknet",
    ]);
    assert!(subnet.trim().starts_with("10.241."), "{subnet}");
    let out = d.docker(&[
        "run",
        "--rm",
        "--network",
        "sdknet",
        IMG,
        "ip",
        "-4",
        "-o",
        "addr",
        "show",
        "eth0",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let prefix = subnet.trim().rsplit_once('.').unwrap().0.to_string();
    assert!(
        stdout(&out).contains(&format!("inet {prefix}.")),
        "address not on {subnet}: {}",
        stdout(&out)
    );

    // The authz template's example rule, with the message the plugin chose.
    let err = d.docker_err(&["run", "--rm", "--privileged", IMG, "true"]);
    assert!(
        err.contains(
            "authorization denied by plugin no-priv: privileged containers are not allowed"
        ),
        "{err}"
    );
    // Its config switch, as an operator would flip it.
    d.stop();
    d.restart_with(&["--authz-opt", "no-priv.deny-privileged=false"]);
    d.docker_ok(&["run", "--rm", "--privileged", IMG, "true"]);
    d.docker_ok(&["network", "rm", "sdknet"]);
}
