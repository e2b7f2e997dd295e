//! `POST /containers/{id}/wait?condition=not-running|next-exit|removed` (docker-py's
//! `wait(condition=...)`; the CLI has no flag for it) and `GET /containers/{id}/stats`
//! streaming with `precpu_stats` carried from the previous sample, through curl.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{wait_exit, TestDaemon};

fn curl(d: &TestDaemon, method: &str, path: &str) -> Command {
    let mut c = Command::new("curl");
    c.args([
        "-s",
        "-N",
        "-w",
        "\n%{http_code}",
        "-X",
        method,
        "--unix-socket",
    ])
    .arg(&d.socket)
    .arg(format!("http://localhost{path}"));
    c
}

/// Starts a wait request; returns the running curl.
fn wait_bg(d: &TestDaemon, id: &str, cond: &str) -> Child {
    curl(
        d,
        "POST",
        &format!("/containers/{id}/wait?condition={cond}"),
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap()
}

/// (status, body) of a finished curl.
fn finish(c: Child) -> (u16, serde_json::Value) {
    let o = c.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let (body, code) = out.trim_end().rsplit_once('\n').unwrap();
    (
        code.parse().unwrap(),
        serde_json::from_str(body).unwrap_or_default(),
    )
}

fn still_waiting(c: &mut Child) -> bool {
    std::thread::sleep(Duration::from_millis(700));
    c.try_wait().unwrap().is_none()
}

#[test]
fn wait_conditions_as_dockerd() {
    let d = common::images::daemon_with_busybox("bb");
    d.docker_ok(&[
        "create",
        "--name",
        "wt",
        "bb",
        "sh",
        "-c",
        "sleep 1; exit 3",
    ]);
    // not-running: a created container is not running, so the answer comes at once.
    let (code, body) = finish(wait_bg(&d, "wt", "not-running"));
    assert_eq!(
        (code, body["StatusCode"].as_i64()),
        (200, Some(0)),
        "{body}"
    );

    // next-exit: waits through the start for the exit that follows.
    let mut next = wait_bg(&d, "wt", "next-exit");
    assert!(
        still_waiting(&mut next),
        "next-exit answered before any exit"
    );
    d.docker_ok(&["start", "wt"]);
    wait_exit(&mut next, Duration::from_secs(30), "next-exit wait");
    let (code, body) = finish(next);
    assert_eq!(
        (code, body["StatusCode"].as_i64()),
        (200, Some(3)),
        "{body}"
    );

    // removed: an exited container is not enough; its removal is.
    let mut removed = wait_bg(&d, "wt", "removed");
    assert!(still_waiting(&mut removed), "removed answered before rm");
    d.docker_ok(&["rm", "wt"]);
    wait_exit(&mut removed, Duration::from_secs(30), "removed wait");
    let (code, body) = finish(removed);
    assert_eq!(
        (code, body["StatusCode"].as_i64()),
        (200, Some(3)),
        "{body}"
    );

    // docker-py's wait(condition=...) through its low-level API.
    d.docker_ok(&["create", "--name", "wpy", "bb", "sh", "-c", "exit 5"]);
    let py = r#"
import docker, sys, threading
api = docker.APIClient(base_url=sys.argv[1])
res = {}
t = threading.Thread(target=lambda: res.update(api.wait("wpy", condition="next-exit")))
t.start()
t.join(0.7)
assert t.is_alive(), "next-exit answered before the start"
api.start("wpy")
t.join(30)
print(res["StatusCode"], api.wait("wpy", condition="not-running")["StatusCode"])
"#;
    let o = Command::new("python3")
        .args(["-c", py, &d.host()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "5 5\n");

    d.docker_ok(&["create", "--name", "wt2", "bb", "true"]);
    let (code, body) = finish(wait_bg(&d, "wt2", "bogus"));
    assert_eq!(code, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or("")
            .contains("invalid condition"),
        "{body}"
    );
}

/// `n` samples of the container's stats stream.
fn stats_samples(d: &TestDaemon, name: &str, n: usize) -> Vec<serde_json::Value> {
    let mut c = curl(d, "GET", &format!("/containers/{name}/stats?stream=true"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(c.stdout.take().unwrap()).lines();
    let mut samples: Vec<serde_json::Value> = Vec::new();
    while samples.len() < n {
        let l = lines.next().expect("stats stream ended").unwrap();
        if l.trim().is_empty() {
            continue;
        }
        samples.push(serde_json::from_str(&l).unwrap());
    }
    let _ = c.kill();
    let _ = c.wait();
    samples
}

/// Each sample's `precpu_stats` is the previous sample's `cpu_stats`, and a busy
/// container's CPU time grows between them.
fn check_precpu(samples: &[serde_json::Value]) {
    let total = |v: &serde_json::Value, k: &str| v[k]["cpu_usage"]["total_usage"].as_u64().unwrap();
    for w in samples.windows(2) {
        assert_eq!(total(&w[1], "precpu_stats"), total(&w[0], "cpu_stats"));
        assert_eq!(
            w[1]["precpu_stats"]["system_cpu_usage"],
            w[0]["cpu_stats"]["system_cpu_usage"]
        );
        assert!(
            total(&w[1], "cpu_stats") > total(&w[0], "cpu_stats"),
            "busy: {w:?}"
        );
        assert!(w[1]["memory_stats"]["usage"].as_u64().unwrap_or(0) > 0);
    }
}

#[test]
fn stats_stream_carries_precpu_from_the_previous_sample() {
    let d = common::images::daemon_with_busybox("bb");
    // Busy, so CPU time grows between samples.
    d.docker_ok(&[
        "run",
        "-d",
        "--name",
        "busy",
        "bb",
        "sh",
        "-c",
        "while :; do :; done",
    ]);
    check_precpu(&stats_samples(&d, "busy", 3));
    d.docker_ok(&["rm", "-f", "busy"]);
}

/// The same in a microVM: the waits follow the VM's exit and removal, the samples come
/// from the guest's cgroup.
#[test]
fn microvm_wait_conditions_and_stats_stream() {
    if common::microvm::skip_without_microvm() {
        return;
    }
    let d = common::microvm::daemon();
    d.docker_ok(&[
        "create",
        "--isolation=microvm",
        "--name",
        "vwt",
        "bb",
        "sh",
        "-c",
        "sleep 1; exit 3",
    ]);
    let mut next = wait_bg(&d, "vwt", "next-exit");
    assert!(
        still_waiting(&mut next),
        "next-exit answered before any exit"
    );
    d.docker_ok(&["start", "vwt"]);
    wait_exit(&mut next, Duration::from_secs(90), "next-exit wait");
    let (code, body) = finish(next);
    assert_eq!(
        (code, body["StatusCode"].as_i64()),
        (200, Some(3)),
        "{body}"
    );
    let mut removed = wait_bg(&d, "vwt", "removed");
    assert!(still_waiting(&mut removed), "removed answered before rm");
    d.docker_ok(&["rm", "vwt"]);
    wait_exit(&mut removed, Duration::from_secs(60), "removed wait");
    let (code, body) = finish(removed);
    assert_eq!(
        (code, body["StatusCode"].as_i64()),
        (200, Some(3)),
        "{body}"
    );

    d.docker_ok(&[
        "run",
        "-d",
        "--isolation=microvm",
        "--name",
        "vbusy",
        "bb",
        "sh",
        "-c",
        "while :; do :; done",
    ]);
    let samples = stats_samples(&d, "vbusy", 2);
    check_precpu(&samples);
    d.docker_ok(&["rm", "-f", "vbusy"]);
}
