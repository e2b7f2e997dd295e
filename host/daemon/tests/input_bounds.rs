//! Hostile and out-of-range input against a real berthd: each finding of the security
//! review, fixed at its root, with Docker's status codes and messages, and the API socket's
//! permissions.

mod common;

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::images::busybox_tar;
use common::{stderr, stdout, TestDaemon};

/// `curl` over the daemon's socket: (status, body).
fn api(d: &TestDaemon, method: &str, path: &str) -> (u16, String) {
    let o = Command::new("curl")
        .args([
            "-s",
            "-m",
            "20",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "-X",
            method,
        ])
        .arg("--unix-socket")
        .arg(&d.socket)
        .arg(format!("http://localhost{path}"))
        .output()
        .unwrap();
    let out = stdout(&o);
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn filters(json: &str) -> String {
    let mut enc = String::new();
    for b in json.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            enc.push(b as char);
        } else {
            enc.push_str(&format!("%{b:02X}"));
        }
    }
    format!("filters={enc}")
}

#[test]
fn socket_is_0660_and_takes_the_group() {
    let d = TestDaemon::start_with(&["-G", "daemon"]);
    let meta = std::fs::metadata(&d.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), 1, "group daemon");
    // Nothing is left of the private directory the socket was born in.
    let stray: Vec<_> = std::fs::read_dir(d.socket.parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".berthd-sock"))
        .collect();
    assert!(stray.is_empty());
    // A group that does not exist is an error at start-up, not a silent root-only socket.
    let o = Command::new(env!("CARGO_BIN_EXE_berthd"))
        .args(["--bridge", "none", "-G", "no-such-group-berth", "-H"])
        .arg(format!("unix://{}/x.sock", d.dir.path().display()))
        .arg("--data-root")
        .arg(d.dir.path().join("d2"))
        .arg("--exec-root")
        .arg(d.dir.path().join("r2"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no-such-group-berth"), "{}", stderr(&o));
}

#[test]
fn cgroup_parent_cannot_leave_the_hierarchy() {
    let d = common::images::daemon_with_busybox("bb");
    for parent in ["../../x", "a/../../b", "/..", "./x"] {
        let err = d.docker_err(&["create", "--cgroup-parent", parent, "bb", "true"]);
        assert!(err.contains("invalid cgroup parent"), "{parent}: {err}");
    }
    // A nested parent inside the hierarchy is fine, and holds the container.
    let out = d.docker_ok(&[
        "run",
        "--rm",
        "--cgroup-parent",
        "/berth-test-parent/inner",
        "bb",
        "cat",
        "/proc/self/cgroup",
    ]);
    assert!(out.contains("/berth-test-parent/inner/"), "{out}");
    // Parent cgroups stay after the container, as with dockerd: remove ours.
    for ctrl in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let _ = std::fs::remove_dir(ctrl.path().join("berth-test-parent/inner"));
        let _ = std::fs::remove_dir(ctrl.path().join("berth-test-parent"));
    }
}

#[test]
fn huge_memory_values_do_not_overflow() {
    let d = common::images::daemon_with_busybox("bb");
    let script = r#"
import docker, sys
c = docker.DockerClient(base_url=sys.argv[1])
ct = c.containers.create("bb", "true", mem_limit=2**63 - 1)
hc = ct.attrs["HostConfig"]
print(hc["Memory"], hc["MemorySwap"])
ct.start()
print(ct.wait()["StatusCode"])
ct.remove()
"#;
    let o = Command::new("python3")
        .args(["-c", script, &d.host()])
        .output()
        .unwrap();
    assert_eq!(
        stdout(&o),
        "9223372036854775807 9223372036854775807\n0\n",
        "{}",
        stderr(&o)
    );
}

#[test]
fn filters_with_multibyte_text_and_star_bombs_are_answered() {
    let d = common::images::daemon_with_busybox("bb");
    for path in [
        "/images/json",
        "/images/prune",
        "/containers/prune",
        "/events",
    ] {
        for until in [
            "é2023-11-14T22:13:20Z",
            "2023-11-14T22:1é:20Z",
            "99999999999999-01-01T00:00:00Z",
            "ééééééééééééééééééééé",
        ] {
            let method = if path.ends_with("prune") {
                "POST"
            } else {
                "GET"
            };
            let q = if path == "/events" {
                format!("until={}", until.replace('é', "%C3%A9"))
            } else {
                filters(&format!("{{\"until\":[\"{until}\"]}}"))
            };
            let (code, body) = api(&d, method, &format!("{path}?{q}"));
            assert_eq!(code, 400, "{path} until={until}: {body}");
            assert!(body.contains("\"message\""), "{body}");
        }
    }
    // 5,000 stars: answered at once (the old matcher backtracked exponentially).
    let pattern = "a*".repeat(5000) + "b";
    let t = Instant::now();
    let (code, body) = api(
        &d,
        "GET",
        &format!(
            "/images/json?{}",
            filters(&format!("{{\"reference\":[\"{pattern}\"]}}"))
        ),
    );
    assert_eq!((code, body.trim()), (200, "[]"));
    eprintln!("5,000-star reference filter answered in {:?}", t.elapsed());
    // The daemon still serves.
    assert_eq!(api(&d, "GET", "/_ping"), (200, "OK".into()));
}

#[test]
fn url_imports_are_capped() {
    let d = TestDaemon::start_with(&["--max-download-size", "1m"]);
    // A loopback HTTP server with a 3 MiB "image".
    let www = d.dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    let mut f = std::fs::File::create(www.join("big.tar")).unwrap();
    f.write_all(&vec![0u8; 3 << 20]).unwrap();
    std::fs::copy(busybox_tar(), www.join("bb.tar")).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut server = Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
        ])
        .current_dir(&www)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "http.server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = d.docker(&["import", &format!("http://127.0.0.1:{port}/big.tar"), "big"]);
    let _ = server.kill();
    let _ = server.wait();
    assert!(!o.status.success());
    let all = format!("{}{}", stdout(&o), stderr(&o));
    assert!(all.contains("--max-download-size"), "{all}");
    // Nothing half-downloaded is left in the store.
    assert!(d.docker_ok(&["images", "-q"]).trim().is_empty());
}

#[test]
fn sigterm_stops_the_daemon_with_requests_in_flight() {
    let mut d = common::images::daemon_with_busybox("bb");
    let id = d
        .docker_ok(&["run", "-d", "bb", "sleep", "1000"])
        .trim()
        .to_string();
    // Long-lived streams: events, logs -f, attach.
    let mut streams: Vec<_> = [
        vec!["events"],
        vec!["logs", "-f", id.as_str()],
        vec!["attach", id.as_str()],
    ]
    .iter()
    .map(|args| {
        d.docker_cmd(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    })
    .collect();
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    d.stop();
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "berthd took {:?} to stop",
        t.elapsed()
    );
    for s in &mut streams {
        let _ = s.kill();
        let _ = s.wait();
    }
}
