//! Debian's docker-compose 1.29 (the Python one, speaking the Engine API) runs the
//! example app in `tests/fixtures/compose-app` against a berthd inside its own network
//! namespace: a built web service with a published port, a worker and a TCP store with
//! a healthcheck the others wait for, a named volume, and two networks.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::images::import_busybox;
use common::{eventually, stderr, stdout, TestDaemon};

fn app_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/compose-app")
}

fn compose_cmd(d: &TestDaemon, iso: &str, args: &[&str]) -> Command {
    let mut c = Command::new("docker-compose");
    c.current_dir(app_dir())
        .env("DOCKER_HOST", d.host())
        .env("COMPOSE_PROJECT_NAME", "berthapp")
        .env("SERVICE_ISOLATION", iso)
        .env("DOCKER_BUILDKIT", "0")
        .env("COMPOSE_DOCKER_CLI_BUILD", "0")
        .env("COMPOSE_INTERACTIVE_NO_CLI", "1")
        .args(["--no-ansi"])
        .args(args);
    c
}

fn compose(d: &TestDaemon, iso: &str, args: &[&str]) -> String {
    let out: Output = compose_cmd(d, iso, args)
        .output()
        .expect("run docker-compose");
    assert!(
        out.status.success(),
        "docker-compose {args:?} failed:\n{}\n{}\n--- berthd log ---\n{}",
        stdout(&out),
        stderr(&out),
        common::tail(&d.log(), 40)
    );
    stdout(&out) + &stderr(&out)
}

fn get(d: &TestDaemon, url: &str) -> String {
    stdout(&d.in_netns(&["timeout", "5", "/bin/busybox", "wget", "-qO-", url]))
}

fn have_compose() -> bool {
    let ok = Command::new("docker-compose")
        .arg("version")
        .output()
        .is_ok();
    if !ok {
        eprintln!("SKIPPED: docker-compose is not installed (scripts/install-deps.sh installs it)");
    }
    ok
}

#[test]
fn compose_app_up_scale_and_down() {
    if have_compose() {
        run_app("default", 60);
    }
}

/// The same app with every service in its own microVM (qemu/TCG here); the web image
/// is still built by process-isolated RUN steps (the daemon's default).
#[test]
fn compose_app_in_microvms() {
    if !have_compose() || common::microvm::skip_without_microvm() {
        return;
    }
    run_app("microvm", 180);
}

fn run_app(iso: &str, patience: u64) {
    let d = TestDaemon::start_in_netns(&[
        "--bip",
        "10.231.9.1/24",
        "--default-address-pool",
        "base=10.241.0.0/16,size=24",
        "--vmm",
        "qemu",
    ]);
    import_busybox(&d, "bb:local");

    let up = compose(&d, iso, &["up", "-d", "--build"]);
    assert!(up.contains("Successfully built"), "{up}");

    // The web service (built, published) shows what the worker sent to the store
    // over the second network, through the shared volume.
    eventually("web serves what the store received", patience, || {
        let got = get(&d, "http://10.239.0.2:18080/received.txt");
        if got.contains("job ") {
            Ok(())
        } else {
            Err(format!("{got:?}\n{}", common::tail(&d.log(), 20)))
        }
    });
    assert_eq!(
        get(&d, "http://127.0.0.1:18080/greeting.txt"),
        "hello from compose\n"
    );

    let ps = compose(&d, iso, &["ps"]);
    for svc in ["berthapp_store_1", "berthapp_worker_1", "berthapp_web_1"] {
        assert!(ps.contains(svc), "{ps}");
    }
    assert!(ps.contains("(healthy)"), "{ps}");

    // `logs -f` follows: bound it and look at what it printed.
    let followed = Command::new("timeout")
        .arg(if iso == "microvm" { "15" } else { "4" })
        .arg("docker-compose")
        .args(["--no-ansi", "logs", "-f", "worker"])
        .current_dir(app_dir())
        .env("DOCKER_HOST", d.host())
        .env("COMPOSE_PROJECT_NAME", "berthapp")
        .output()
        .unwrap();
    assert!(stdout(&followed).contains("job "), "{}", stdout(&followed));

    let exec = compose(&d, iso, &["exec", "-T", "store", "cat", "/data/received"]);
    assert!(exec.contains("job "), "{exec}");

    compose(&d, iso, &["restart", "worker"]);
    compose(&d, iso, &["up", "-d", "--scale", "worker=2"]);
    let workers = d.docker_ok(&[
        "ps",
        "-q",
        "--filter",
        "label=com.docker.compose.service=worker",
    ]);
    assert_eq!(workers.lines().count(), 2, "{workers}");
    eventually("both workers reach the store by name", patience, || {
        let got = compose_cmd(&d, iso, &["exec", "-T", "store", "cat", "/data/received"])
            .output()
            .map(|o| stdout(&o))
            .unwrap_or_default();
        let senders: std::collections::BTreeSet<&str> = got
            .lines()
            .filter_map(|l| l.rsplit_once(" from ").map(|(_, h)| h))
            .collect();
        if senders.len() >= 2 {
            Ok(())
        } else {
            Err(format!("{senders:?}"))
        }
    });

    compose(&d, iso, &["down", "-v"]);
    assert_eq!(d.docker_ok(&["ps", "-aq"]).trim(), "");
    let nets = d.docker_ok(&["network", "ls", "--format", "{{.Name}}"]);
    assert!(!nets.contains("berthapp"), "{nets}");
    assert_eq!(d.docker_ok(&["volume", "ls", "-q"]).trim(), "");
}
