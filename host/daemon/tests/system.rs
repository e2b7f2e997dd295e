//! System endpoints through the real docker CLI and bollard.

mod common;

use common::TestDaemon;

#[test]
fn version_ping_and_errors() {
    let d = TestDaemon::start();
    let v = d.docker_ok(&[
        "version",
        "--format",
        "{{.Server.APIVersion}} {{.Server.Os}}",
    ]);
    assert_eq!(v.trim(), "1.51 linux");

    // Unknown paths: Docker's 404 JSON shape; versioned paths above our max still route.
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-i",
            "--unix-socket",
            d.socket.to_str().unwrap(),
            "http://x/v1.99/nope",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/1.1 404"), "{text}");
    assert!(
        text.contains("content-type: application/json\r\n"),
        "{text}"
    );
    assert!(text.contains("api-version: 1.51"), "{text}");
    assert!(text.contains(r#"{"message":"page not found"}"#), "{text}");

    // Too-old versions are refused with Docker's wording.
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "--unix-socket",
            d.socket.to_str().unwrap(),
            "http://x/v1.12/version",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("is too old"));
}

#[tokio::test]
async fn bollard_ping_and_version() {
    let d = TestDaemon::start();
    let docker = d.bollard();
    assert_eq!(docker.ping().await.unwrap(), "OK");
    let v = docker.version().await.unwrap();
    assert_eq!(v.api_version.as_deref(), Some("1.51"));
    assert_eq!(v.os.as_deref(), Some("linux"));
}

#[test]
fn events_since_until_replays_and_ends() {
    let d = TestDaemon::start();
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // `--until` in the past must end the stream instead of hanging.
    let out = d.docker_ok(&[
        "events",
        "--since",
        &(start - 60).to_string(),
        "--until",
        &start.to_string(),
    ]);
    assert!(out.is_empty(), "no events expected yet: {out}");
    let err = d.docker_err(&["events", "--filter", "bogus=1", "--until", "0s"]);
    assert!(err.contains("invalid filter"), "{err}");
}

#[test]
fn sigterm_cleans_socket_and_pidfile() {
    let mut d = TestDaemon::start();
    assert!(d.socket.exists());
    d.stop();
    assert!(!d.socket.exists(), "socket left behind");
    assert!(
        !d.dir.path().join("berthd.pid").exists(),
        "pidfile left behind"
    );
}
