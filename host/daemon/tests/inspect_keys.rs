//! Every key dockerd returns is in berthd's answer too: responses recorded from dockerd
//! 20.10 (API 1.41; `tests/fixtures/dockerd-20.10/`, recorded with the same objects as
//! below) are compared with berthd's, key set against key set, recursively. Values are not
//! compared (ids and times differ), and maps keyed by data (labels, ports, driver data...)
//! are compared as leaves. Extra keys in berthd's answers are fine (newer API fields).

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::images::busybox_tar;
use common::{stdout, TestDaemon};

/// Maps whose keys are data, not schema.
const DATA_MAPS: &[&str] = &[
    "Labels",
    "Options",
    "DriverOpts",
    "Status",
    "Volumes",
    "ExposedPorts",
    "Ports",
    "Networks",
    "Sysctls",
    "Tmpfs",
    "StorageOpt",
    "Data",
    "IndexConfigs",
    "Runtimes",
    "Containers",
    "stats",
    "networks",
];

fn keys(v: &serde_json::Value, prefix: &str, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.insert(p.clone());
                if !DATA_MAPS.contains(&k.as_str()) {
                    keys(x, &p, out);
                }
            }
        }
        serde_json::Value::Array(a) => {
            for x in a {
                keys(x, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

fn get(d: &TestDaemon, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-w", "\n%{http_code}", "-X", method, "--unix-socket"])
        .arg(&d.socket)
        .arg(format!("http://x/v1.41{path}"));
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "-d", b]);
    }
    let out = stdout(&cmd.output().unwrap());
    let (body, code) = out.rsplit_once('\n').unwrap();
    (
        code.trim().parse().unwrap(),
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

#[test]
fn responses_have_every_key_dockerd_sends() {
    let d = TestDaemon::start();
    let o = d
        .docker_cmd(&[
            "import",
            "-c",
            "CMD [\"sh\"]",
            &busybox_tar().display().to_string(),
            "bb",
        ])
        .output()
        .unwrap();
    assert!(o.status.success());
    d.docker_ok(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        "running",
        "bb",
        "sleep",
        "1000",
    ]);
    d.docker_ok(&[
        "create",
        "--network",
        "none",
        "--name",
        "created",
        "-v",
        "/anon",
        "-v",
        "named:/named",
        "bb",
        "true",
    ]);
    let (_, exec) = get(
        &d,
        "POST",
        "/containers/running/exec",
        Some(r#"{"Cmd":["true"],"AttachStdout":true}"#),
    );
    let exec_id = exec["Id"].as_str().unwrap().to_string();
    let cases = [
        ("container-running", "/containers/running/json".to_string()),
        ("container-created", "/containers/created/json".to_string()),
        ("container-list", "/containers/json?all=1".to_string()),
        ("image", "/images/bb/json".to_string()),
        ("image-list", "/images/json".to_string()),
        ("volume", "/volumes/named".to_string()),
        ("volume-list", "/volumes".to_string()),
        ("exec", format!("/exec/{exec_id}/json")),
        (
            "stats",
            "/containers/running/stats?stream=false".to_string(),
        ),
        ("system-df", "/system/df".to_string()),
        ("info", "/info".to_string()),
        ("version", "/version".to_string()),
        ("network", "/networks/none".to_string()),
        ("network-list", "/networks".to_string()),
    ];
    let mut failures = Vec::new();
    for (name, path) in cases {
        let (code, ours) = get(&d, "GET", &path, None);
        if code == 404 && name.starts_with("network") {
            eprintln!("SKIPPED {name}: this berthd has no network API");
            continue;
        }
        assert_eq!(code, 200, "{path}: {ours}");
        failures.extend(missing_keys(name, &path, &ours));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// What the dockerd fixture `name` has that `ours` (the answer to `path`) lacks.
fn missing_keys(name: &str, path: &str, ours: &serde_json::Value) -> Option<String> {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/dockerd-20.10");
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{fixtures}/{name}.json")).unwrap()).unwrap();
    let (mut want, mut got) = (BTreeSet::new(), BTreeSet::new());
    keys(&reference, "", &mut want);
    keys(ours, "", &mut got);
    let missing: Vec<_> = want.difference(&got).cloned().collect();
    (!missing.is_empty()).then(|| format!("{name} ({path}) lacks {missing:?}"))
}

/// A microVM container's inspect (created and running), its exec instance and its stats
/// have every key dockerd sends too, and report the isolation.
#[test]
fn microvm_responses_have_every_key_dockerd_sends() {
    if common::microvm::skip_without_microvm() {
        return;
    }
    let d = common::microvm::daemon();
    for (name, args) in [
        ("vrunning", &["run", "-d"][..]),
        ("vcreated", &["create", "-v", "/anon"][..]),
    ] {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--isolation=microvm", "--network", "none", "--name", name]);
        all.extend_from_slice(&["bb", "sleep", "1000"]);
        d.docker_ok(&all);
    }
    let (_, exec) = get(
        &d,
        "POST",
        "/containers/vrunning/exec",
        Some(r#"{"Cmd":["true"],"AttachStdout":true}"#),
    );
    let exec_id = exec["Id"].as_str().unwrap().to_string();
    let cases = [
        ("container-running", "/containers/vrunning/json".to_string()),
        ("container-created", "/containers/vcreated/json".to_string()),
        ("exec", format!("/exec/{exec_id}/json")),
        (
            "stats",
            "/containers/vrunning/stats?stream=false".to_string(),
        ),
    ];
    let mut failures = Vec::new();
    for (name, path) in cases {
        let (code, ours) = get(&d, "GET", &path, None);
        assert_eq!(code, 200, "{path}: {ours}");
        if name.starts_with("container") {
            // The API enum's hypervisor isolation (it has no `microvm`).
            assert_eq!(ours["HostConfig"]["Isolation"], "hyperv", "{path}");
        }
        failures.extend(missing_keys(name, &path, &ours));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    d.docker_ok(&["rm", "-f", "vrunning", "vcreated"]);
}
