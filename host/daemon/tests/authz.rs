//! Authorization plugins (`--authorization-plugin`): the shipped `tenant-policy`
//! driven by two tenants' docker CLIs over TLS with client certificates, and a
//! hostile plugin that traps or loops, which must fail closed while berthd keeps
//! serving. The plugins are the real WASM components from scripts/build-plugins.sh.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::certs::{docker_tls, tls_setup};
use common::images::import_busybox;
use common::{stderr, stdout, wait_exit, TestDaemon};

const ADDR: &str = "127.0.0.1:23761";

/// The staged plugins (built by scripts/build-plugins.sh, which the suite runs first).
fn plugins_built() -> bool {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = std::env::var("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| root.join("target"))
        .join("plugins");
    let ok = ["tenant-policy", "hostile-authz"]
        .iter()
        .all(|p| dir.join(p).join("authz.toml").exists());
    if !ok {
        eprintln!(
            "skipping: authz plugins not built in {} (run scripts/build-plugins.sh)",
            dir.display()
        );
    }
    ok
}

fn as_tenant(d: &TestDaemon, certs: &Path, who: &str, args: &[&str]) -> Output {
    docker_tls(d, certs, ADDR, Some(who), args)
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

fn refused(out: Output, what: &str, want: &str) {
    assert!(
        !out.status.success(),
        "{what} was allowed: {}",
        stdout(&out)
    );
    let err = stderr(&out);
    assert!(
        err.contains("authorization denied by plugin tenant-policy") && err.contains(want),
        "{what}: want a denial containing {want:?}, got: {err}"
    );
}

#[test]
fn tenants_see_and_manage_only_their_own_objects() {
    if !plugins_built() {
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path();
    let mut flags = tls_setup(dir, ADDR, &["alice", "bob"]);
    flags.extend(
        [
            "--authorization-plugin",
            "tenant-policy",
            // Process isolation keeps this test fast; forced microVMs are checked below.
            "--authz-opt",
            "tenant-policy.isolation=any",
            "--authz-opt",
            "tenant-policy.allowed-bind-prefix=/tmp/berth-tenants",
        ]
        .map(String::from),
    );
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let d = TestDaemon::start_in_netns(&flags);
    // Root on the unix socket is the admin.
    import_busybox(&d, "bb:local");

    let alice = |args: &[&str]| as_tenant(&d, dir, "alice", args);
    let bob = |args: &[&str]| as_tenant(&d, dir, "bob", args);
    ok(
        alice(&["run", "-d", "--name", "a1", "bb:local", "sleep", "300"]),
        "alice run",
    );
    ok(
        bob(&["run", "-d", "--name", "b1", "bb:local", "sleep", "300"]),
        "bob run",
    );

    // Each tenant lists only its own containers; the admin sees both.
    let names = |out: Output| -> Vec<String> {
        let mut v: Vec<String> = ok(out, "ps").lines().map(str::to_string).collect();
        v.sort();
        v
    };
    assert_eq!(
        names(alice(&["ps", "-a", "--format", "{{.Names}}"])),
        ["a1"]
    );
    assert_eq!(names(bob(&["ps", "-a", "--format", "{{.Names}}"])), ["b1"]);
    let all = d.docker_ok(&["ps", "--format", "{{.Names}}"]);
    assert!(all.contains("a1") && all.contains("b1"), "{all}");
    assert_eq!(
        d.docker_ok(&[
            "inspect",
            "-f",
            "{{index .Config.Labels \"berth.tenant\"}}",
            "a1"
        ])
        .trim(),
        "alice"
    );
    // A client-supplied tenant label is overwritten, not trusted.
    ok(
        alice(&[
            "create",
            "--name",
            "a2",
            "--label",
            "berth.tenant=bob",
            "bb:local",
            "true",
        ]),
        "alice create with a forged label",
    );
    assert_eq!(
        d.docker_ok(&[
            "inspect",
            "-f",
            "{{index .Config.Labels \"berth.tenant\"}}",
            "a2"
        ])
        .trim(),
        "alice"
    );

    // Alice cannot inspect, stop, exec into, read or remove Bob's container, by name
    // or by id; it stays running.
    let b1_id = d.docker_ok(&["inspect", "-f", "{{.Id}}", "b1"]);
    let b1_id = b1_id.trim();
    for target in ["b1", b1_id, &b1_id[..12]] {
        refused(alice(&["inspect", target]), "inspect", "No such container");
        refused(
            alice(&["stop", "-t", "1", target]),
            "stop",
            "No such container",
        );
        refused(
            alice(&["exec", target, "true"]),
            "exec",
            "No such container",
        );
        refused(alice(&["logs", target]), "logs", "No such container");
        refused(alice(&["rm", "-f", target]), "rm", "No such container");
    }
    assert_eq!(
        d.docker_ok(&["inspect", "-f", "{{.State.Running}}", "b1"])
            .trim(),
        "true"
    );
    // Her own container: exec (a hijacked stream) and logs work.
    assert_eq!(
        ok(alice(&["exec", "a1", "echo", "mine"]), "alice exec"),
        "mine\n"
    );
    ok(alice(&["logs", "a1"]), "alice logs");

    // What a tenant may not ask for.
    for (args, want) in [
        (
            &["run", "--rm", "--privileged", "bb:local", "true"][..],
            "privileged containers are not allowed",
        ),
        (
            &["run", "--rm", "--cap-add", "NET_ADMIN", "bb:local", "true"][..],
            "--cap-add is not allowed",
        ),
        (
            &["run", "--rm", "--pid", "host", "bb:local", "true"][..],
            "host namespaces",
        ),
        (
            &["run", "--rm", "--network", "host", "bb:local", "true"][..],
            "host namespaces",
        ),
        (
            &["run", "--rm", "--device", "/dev/null", "bb:local", "true"][..],
            "--device is not allowed",
        ),
        (
            &["run", "--rm", "-v", "/etc:/x", "bb:local", "true"][..],
            "bind mount of /etc is not allowed",
        ),
        (
            &[
                "run",
                "--rm",
                "-v",
                "/tmp/berth-tenants/../../etc:/x",
                "bb:local",
                "true",
            ][..],
            "is not allowed",
        ),
        (
            &["run", "--rm", "--volumes-from", "b1", "bb:local", "true"][..],
            "No such container",
        ),
        (
            &["exec", "--privileged", "a1", "true"][..],
            "privileged exec is not allowed",
        ),
        (&["rmi", "bb:local"][..], "not allowed for tenants"),
    ] {
        refused(alice(args), &format!("{args:?}"), want);
    }
    // Seccomp: neither off nor a profile of the tenant's own, which could allow what the
    // default filter denies.
    let profile = dir.join("allow-all.json");
    std::fs::write(&profile, r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#).unwrap();
    let custom = format!("seccomp={}", profile.display());
    for (opt, want) in [
        ("seccomp=unconfined", "unconfined is not allowed"),
        (custom.as_str(), "custom seccomp profiles are not allowed"),
    ] {
        let args = ["run", "--rm", "--security-opt", opt, "bb:local", "true"];
        refused(alice(&args), opt, want);
    }
    // A bind mount under the allowed prefix is fine.
    std::fs::create_dir_all("/tmp/berth-tenants/alice").unwrap();
    ok(
        alice(&[
            "run",
            "--rm",
            "-v",
            "/tmp/berth-tenants/alice:/x",
            "bb:local",
            "true",
        ]),
        "bind under the prefix",
    );

    // Volumes and networks: labelled on create, invisible to the other tenant.
    ok(alice(&["volume", "create", "av"]), "volume create");
    ok(alice(&["network", "create", "an"]), "network create");
    assert!(ok(alice(&["volume", "ls", "-q"]), "ls").contains("av"));
    assert!(!ok(bob(&["volume", "ls", "-q"]), "ls").contains("av"));
    assert!(ok(alice(&["network", "ls"]), "ls").contains("an"));
    assert!(!ok(bob(&["network", "ls"]), "ls").contains("an"));
    refused(bob(&["volume", "rm", "av"]), "volume rm", "No such volume");
    refused(
        bob(&["volume", "inspect", "av"]),
        "volume inspect",
        "No such volume",
    );
    refused(
        bob(&["network", "rm", "an"]),
        "network rm",
        "No such network",
    );
    refused(
        bob(&["run", "--rm", "-v", "av:/x", "bb:local", "true"]),
        "mounting another tenant's volume",
        "No such volume",
    );
    ok(
        alice(&["run", "--rm", "-v", "av:/x", "bb:local", "true"]),
        "mounting her own volume",
    );
    // Prune only touches the tenant's own objects.
    ok(bob(&["container", "prune", "-f"]), "bob prune");
    d.docker_ok(&["inspect", "a2"]);

    ok(alice(&["rm", "-f", "a1", "a2"]), "alice rm");
    ok(alice(&["volume", "rm", "av"]), "alice volume rm");
    ok(alice(&["network", "rm", "an"]), "alice network rm");
    d.docker_ok(&["rm", "-f", "b1"]);
}

#[test]
fn tenants_are_forced_into_microvms() {
    if !plugins_built() {
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path();
    let mut flags = tls_setup(dir, ADDR, &["carol"]);
    flags.extend(["--authorization-plugin", "tenant-policy"].map(String::from));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let d = TestDaemon::start_in_netns(&flags);
    import_busybox(&d, "bb:local");
    // Created, not started: the isolation is recorded without booting a VM.
    ok(
        as_tenant(
            &d,
            dir,
            "carol",
            &["create", "--name", "c1", "bb:local", "true"],
        ),
        "carol create",
    );
    assert_eq!(
        d.docker_ok(&["inspect", "-f", "{{.HostConfig.Isolation}}", "c1"])
            .trim(),
        "hyperv",
        "berth shows microvm isolation as hyperv"
    );
    refused(
        as_tenant(
            &d,
            dir,
            "carol",
            &["create", "--isolation", "process", "bb:local", "true"],
        ),
        "process isolation",
        "tenants run in microVMs",
    );
    // The admin (root on the unix socket) is not restricted.
    d.docker_ok(&[
        "create",
        "--name",
        "root1",
        "--isolation",
        "process",
        "bb:local",
        "true",
    ]);
    d.docker_ok(&["rm", "c1", "root1"]);
}

/// berthd with `hostile-authz` in `mode`, misbehaving on `docker ps` only.
fn hostile(mode: &str) -> TestDaemon {
    let m = format!("hostile-authz.mode={mode}");
    TestDaemon::start_with(&[
        "--authorization-plugin",
        "hostile-authz",
        "--authz-opt",
        &m,
        "--authz-opt",
        "hostile-authz.when=/containers/json",
    ])
}

#[test]
fn a_trapping_or_looping_plugin_fails_closed_and_berthd_keeps_serving() {
    if !plugins_built() {
        return;
    }
    for mode in ["trap", "loop"] {
        let d = hostile(mode);
        for _ in 0..3 {
            let t = Instant::now();
            let err = d.docker_err(&["ps"]);
            assert!(
                err.contains("authorization denied by plugin hostile-authz"),
                "{mode}: {err}"
            );
            let want = if mode == "trap" {
                "plugin trapped"
            } else {
                "did not answer within"
            };
            assert!(err.contains(want), "{mode}: {err}");
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{mode}: {:?}",
                t.elapsed()
            );
            // Everything the plugin allows is still served.
            assert!(!d
                .docker_ok(&["version", "--format", "{{.Server.Version}}"])
                .is_empty());
        }
    }
    // A plugin that denies: Docker's message shape.
    let d = hostile("deny");
    let err = d.docker_err(&["ps"]);
    assert!(
        err.contains("authorization denied by plugin hostile-authz: hostile-authz denies"),
        "{err}"
    );
}

/// berthd must not start when an authorization plugin cannot be loaded: a daemon
/// that came up without its policy would allow everything.
#[test]
fn berthd_refuses_to_start_without_its_authorization_plugins() {
    if !plugins_built() {
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("berth-az")
        .tempdir_in("/tmp")
        .unwrap();
    let data = tmp.path().join("data");
    let broken = data.join("authz-plugins").join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(
        broken.join("authz.toml"),
        "name = \"broken\"\nkind = \"authz\"\ninterface = \"berth:authz@0.1.0\"\n",
    )
    .unwrap();
    std::fs::write(broken.join("plugin.wasm"), b"\0asm garbage").unwrap();
    for (args, want) in [
        (
            &["--authorization-plugin", "no-such-plugin"][..],
            "not found",
        ),
        (&["--authorization-plugin", "broken"][..], "broken"),
        (
            &[
                "--authorization-plugin",
                "hostile-authz",
                "--authz-opt",
                "hostile-authz.nonsense=1",
            ][..],
            "no config key",
        ),
    ] {
        let sock = tmp.path().join("d.sock");
        let mut child = Command::new(env!("CARGO_BIN_EXE_berthd"))
            .arg("-H")
            .arg(format!("unix://{}", sock.display()))
            .arg("--data-root")
            .arg(&data)
            .arg("--exec-root")
            .arg(tmp.path().join("run"))
            .arg("--pidfile")
            .arg(tmp.path().join("berthd.pid"))
            .args(["--bridge", "none"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_exit(
            &mut child,
            Duration::from_secs(60),
            "berthd with a bad plugin",
        );
        let out = child.wait_with_output().unwrap();
        assert!(!out.status.success(), "{args:?}: berthd started");
        let err = stderr(&out);
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!stdout(&out).contains("listening"), "{args:?}");
        assert!(!sock.exists(), "{args:?}: the socket was bound");
    }
}
