//! HTTPS registries as dockerd treats them: a real `docker-registry` serving TLS with
//! a CA the test makes, trusted through berthd's certs.d (`--registry-certs-dir`),
//! mutual TLS with `client.cert`/`client.key`, loopback HTTPS, `docker login`, a
//! docker.io mirror, and `GET /distribution/{name}/json`.
//!
//! A registry that must not count as loopback listens on 10.239.0.2 inside berthd's
//! own network namespace (`TestDaemon::start_in_netns`): no traffic leaves it.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::images::import_busybox;
use common::registry::{bcrypt_secret, free_port, start_registry_with, RegistryOpts, TestCa};
use common::TestDaemon;
use serde_json::Value;

/// The netns address `start_in_netns` gives berthd's namespace (not loopback).
const NS_IP: &str = "10.239.0.2";

fn netns_daemon(certs: &Path, extra: &[&str]) -> TestDaemon {
    let mut flags = vec![
        "--bridge",
        "none",
        "--registry-certs-dir",
        certs.to_str().unwrap(),
    ];
    flags.extend_from_slice(extra);
    TestDaemon::start_in_netns(&flags)
}

/// `docker push` that must fail, quickly (a TLS failure is an answer, not a hang).
fn push_fails(d: &TestDaemon, image: &str) -> String {
    let t = Instant::now();
    let err = d.docker_err(&["push", image]);
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "push took {:?}",
        t.elapsed()
    );
    err
}

fn trust(certs: &Path, registry: &str, files: &[(&Path, &str)]) {
    let dir = certs.join(registry);
    std::fs::create_dir_all(&dir).unwrap();
    for (src, name) in files {
        std::fs::copy(src, dir.join(name)).unwrap();
    }
}

/// A non-loopback HTTPS registry with basic auth: refused until its CA is in certs.d
/// (a certificate error, for login and push alike), then login, push and pull work.
#[test]
fn https_registry_is_trusted_through_certs_d() {
    let Some(hash) = bcrypt_secret() else {
        eprintln!("SKIP: cannot make a bcrypt htpasswd line (python3 crypt module missing)");
        return;
    };
    let ca = TestCa::new(NS_IP);
    let certs = tempfile::tempdir().unwrap();
    let d = netns_daemon(certs.path(), &[]);
    let ns = d.netns.clone().unwrap();
    let addr = format!("{NS_IP}:5443");
    let htpasswd = format!("tester:{hash}");
    let Some(_reg) = start_registry_with(RegistryOpts {
        htpasswd: Some(&htpasswd),
        tls: Some(&ca),
        netns: Some((&ns, &addr)),
        ..Default::default()
    }) else {
        return;
    };
    let image = format!("{addr}/secure/bb:1");
    import_busybox(&d, &image);

    let err = d.docker_err(&["login", "-u", "tester", "-p", "s3cret", &addr]);
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    let err = push_fails(&d, &image);
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert!(!err.contains("HTTP request to an HTTPS server"), "{err}");

    // certs.d is read per request, as dockerd does: no restart needed.
    trust(certs.path(), &addr, &[(&ca.ca_cert, "ca.crt")]);
    let err = d.docker_err(&["login", "-u", "tester", "-p", "wrong", &addr]);
    assert!(err.contains("401") || err.contains("nauthorized"), "{err}");
    let out = d.docker_ok(&["login", "-u", "tester", "-p", "s3cret", &addr]);
    assert!(out.contains("Login Succeeded"), "{out}");
    let out = d.docker_ok(&["push", &image]);
    assert!(out.contains("digest: sha256:"), "{out}");
    d.docker_ok(&["rmi", &image]);
    let out = d.docker_ok(&["pull", &image]);
    assert!(out.contains("Downloaded newer image"), "{out}");
    d.docker_ok(&["run", "--rm", &image, "true"]);
}

/// A registry that requires client certificates: the CA alone is not enough, the
/// CA plus `client.cert` + `client.key` is.
#[test]
fn mutual_tls_with_client_cert_and_key() {
    let ca = TestCa::new(NS_IP);
    let certs = tempfile::tempdir().unwrap();
    let d = netns_daemon(certs.path(), &[]);
    let ns = d.netns.clone().unwrap();
    let addr = format!("{NS_IP}:5444");
    let Some(_reg) = start_registry_with(RegistryOpts {
        tls: Some(&ca),
        client_auth: true,
        netns: Some((&ns, &addr)),
        ..Default::default()
    }) else {
        return;
    };
    let image = format!("{addr}/mtls/bb:1");
    import_busybox(&d, &image);
    trust(certs.path(), &addr, &[(&ca.ca_cert, "ca.crt")]);
    let err = push_fails(&d, &image);
    assert!(
        err.to_lowercase().contains("certificate") || err.contains("handshake"),
        "{err}"
    );
    trust(
        certs.path(),
        &addr,
        &[
            (&ca.client_cert, "client.cert"),
            (&ca.client_key, "client.key"),
        ],
    );
    let out = d.docker_ok(&["push", &image]);
    assert!(out.contains("digest: sha256:"), "{out}");
    d.docker_ok(&["rmi", &image]);
    d.docker_ok(&["pull", &image]);
}

fn curl_json(d: &TestDaemon, path: &str) -> (u16, Value) {
    let (code, body) = d.api("GET", path, None);
    (code, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// A loopback registry serving HTTPS with a certificate nobody trusts: dockerd tries
/// HTTPS first and does not verify a loopback registry, so push and pull just work
/// (not "HTTP request to an HTTPS server"). `/distribution` answers for what was
/// pushed, and with Docker's errors for what was not.
#[test]
fn loopback_https_registry_and_distribution_inspect() {
    let ca = TestCa::new("127.0.0.1");
    let Some(reg) = start_registry_with(RegistryOpts {
        tls: Some(&ca),
        ..Default::default()
    }) else {
        return;
    };
    let certs = tempfile::tempdir().unwrap();
    let d = TestDaemon::start_with(&["--registry-certs-dir", certs.path().to_str().unwrap()]);
    let image = format!("{}/loop/bb:1", reg.addr);
    import_busybox(&d, &image);
    let out = d.docker_ok(&["push", &image]);
    let digest = out
        .lines()
        .find_map(|l| l.strip_prefix("1: digest: "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("{out}"))
        .to_string();
    d.docker_ok(&["rmi", &image]);
    d.docker_ok(&["pull", &image]);

    let (code, v) = curl_json(&d, &format!("/v1.43/distribution/{image}/json"));
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["Descriptor"]["digest"], digest.as_str(), "{v}");
    assert_eq!(
        v["Descriptor"]["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert!(v["Descriptor"]["size"].as_u64().unwrap() > 100, "{v}");
    assert_eq!(v["Platforms"][0]["os"], "linux", "{v}");
    assert_eq!(v["Platforms"][0]["architecture"], "amd64", "{v}");

    let (code, v) = curl_json(
        &d,
        &format!("/v1.43/distribution/{}/loop/bb:nope/json", reg.addr),
    );
    assert_eq!(code, 404, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("manifest unknown"),
        "{v}"
    );
    // The same through docker-py (`inspect_distribution`, `get_registry_data`).
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/distribution.py");
    let missing = format!("{}/loop/bb:nope", reg.addr);
    let out = Command::new("python3")
        .args([script, &image, &digest, &missing])
        .env("DOCKER_HOST", d.host())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("distribution API: ok"),
        "{text}"
    );
    let (code, v) = curl_json(&d, "/v1.43/distribution/UPPER/json");
    assert_eq!(code, 400, "{v}");
    assert!(v["message"].is_string(), "{v}");
}

/// docker.io pulls go to `--registry-mirror` first. The daemon's namespace has no
/// route out, so the fall-through to docker.io for what the mirror lacks fails there.
#[test]
fn registry_mirror_serves_docker_io_pulls() {
    let certs = tempfile::tempdir().unwrap();
    let mirror_addr = "127.0.0.1:5005";
    let mirror = format!("http://{mirror_addr}");
    let d = netns_daemon(certs.path(), &["--registry-mirror", &mirror]);
    let ns = d.netns.clone().unwrap();
    let Some(_reg) = start_registry_with(RegistryOpts {
        netns: Some((&ns, mirror_addr)),
        ..Default::default()
    }) else {
        return;
    };
    // Fill the mirror as a pull-through cache would be: library/mirrored:1.
    let seeded = format!("{mirror_addr}/library/mirrored:1");
    import_busybox(&d, &seeded);
    d.docker_ok(&["push", &seeded]);
    d.docker_ok(&["rmi", &seeded]);

    let out = d.docker_ok(&["pull", "mirrored:1"]);
    assert!(
        out.contains("Downloaded newer image for mirrored:1"),
        "{out}"
    );
    d.docker_ok(&["run", "--rm", "mirrored:1", "true"]);
    let mirrors = d.docker_ok(&["info", "--format", "{{json .RegistryConfig.Mirrors}}"]);
    assert_eq!(mirrors.trim(), format!("[\"{mirror}/\"]"));
    let err = d.docker_err(&["pull", "notmirrored:1"]);
    assert!(err.contains("docker.io"), "{err}");
}

/// The token server of a token-auth registry, as a child process killed on drop.
struct TokenServer(std::process::Child);

impl Drop for TokenServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `docker login` against an HTTPS registry using token auth (Docker's token spec):
/// berthd follows the registry's Bearer challenge to the token server; the CLI then
/// sends the credentials with push and pull (`X-Registry-Auth`).
#[test]
fn login_push_pull_with_a_token_auth_registry() {
    let ca = TestCa::new("127.0.0.1");
    let tport = free_port();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/token_server.py");
    let _tokens = TokenServer(
        Command::new("python3")
            .arg(script)
            .arg(tport.to_string())
            .arg(&ca.server_key)
            .arg(&ca.server_cert)
            .args(["tester", "s3cret", "berth-test", "berth-test-issuer"])
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", tport)).is_err() {
        assert!(Instant::now() < deadline, "token server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let realm = format!("http://127.0.0.1:{tport}/token");
    let Some(reg) = start_registry_with(RegistryOpts {
        tls: Some(&ca),
        token: Some((&realm, &ca.ca_cert)),
        ..Default::default()
    }) else {
        return;
    };
    let certs = tempfile::tempdir().unwrap();
    let d = TestDaemon::start_with(&["--registry-certs-dir", certs.path().to_str().unwrap()]);
    let image = format!("{}/tok/bb:1", reg.addr);
    import_busybox(&d, &image);
    let err = d.docker_err(&["push", &image]);
    assert!(
        err.to_lowercase().contains("unauthorized") || err.contains("authentication"),
        "{err}"
    );
    let err = d.docker_err(&["login", "-u", "tester", "-p", "wrong", &reg.addr]);
    assert!(err.contains("401"), "{err}");
    let out = d.docker_ok(&["login", "-u", "tester", "-p", "s3cret", &reg.addr]);
    assert!(out.contains("Login Succeeded"), "{out}");
    let out = d.docker_ok(&["push", &image]);
    assert!(out.contains("digest: sha256:"), "{out}");
    d.docker_ok(&["rmi", &image]);
    d.docker_ok(&["pull", &image]);
}
