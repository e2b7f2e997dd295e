//! The API over TCP with TLS and client certificates (`--tlsverify`), driven by the
//! docker CLI's own `--tlsverify` flags. berthd runs in a network namespace made for
//! the test, so its TCP port only exists on that namespace's loopback.

mod common;

use std::path::Path;
use std::process::Output;

use common::certs::{ca, leaf};
use common::images::import_busybox;
use common::{stderr, stdout, TestDaemon};

const ADDR: &str = "127.0.0.1:23760";

fn docker_tls(d: &TestDaemon, certs: &Path, client: Option<&str>, args: &[&str]) -> Output {
    common::certs::docker_tls(d, certs, ADDR, client, args)
}

#[test]
fn tcp_api_serves_only_tls_clients_with_a_certificate_from_the_ca() {
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path();
    ca(dir, "ca");
    ca(dir, "other-ca");
    leaf(
        dir,
        "ca",
        "server",
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    );
    leaf(dir, "ca", "client", "extendedKeyUsage=clientAuth\n");
    leaf(dir, "other-ca", "stranger", "extendedKeyUsage=clientAuth\n");
    let p = |f: &str| dir.join(f).to_string_lossy().to_string();
    let (ca_pem, cert, key) = (p("ca.pem"), p("server.pem"), p("server-key.pem"));
    let host = format!("tcp://{ADDR}");
    let d = TestDaemon::start_in_netns(&[
        "-H",
        &host,
        "--tlsverify",
        "--tlscacert",
        &ca_pem,
        "--tlscert",
        &cert,
        "--tlskey",
        &key,
    ]);
    import_busybox(&d, "bb:local");

    // A client with a certificate from the CA: plain calls, attach and exec (hijacked
    // streams) all work over TLS.
    let out = docker_tls(
        &d,
        dir,
        Some("client"),
        &["run", "--rm", "bb:local", "echo", "over tls"],
    );
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(stdout(&out), "over tls\n");
    let out = docker_tls(
        &d,
        dir,
        Some("client"),
        &["run", "-d", "--name", "tlsbox", "bb:local", "sleep", "60"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = docker_tls(
        &d,
        dir,
        Some("client"),
        &["exec", "tlsbox", "sh", "-c", "echo from exec; echo err >&2"],
    );
    assert_eq!(stdout(&out), "from exec\n", "{}", stderr(&out));
    assert_eq!(stderr(&out), "err\n");

    // A certificate from another CA, or none at all, is refused in the handshake.
    for client in [Some("stranger"), None] {
        let out = docker_tls(
            &d,
            dir,
            client,
            &["version", "--format", "{{.Server.Version}}"],
        );
        assert!(
            !out.status.success(),
            "{client:?} was served: {}",
            stdout(&out)
        );
    }
    // Plain HTTP on the TLS port gets no API answer.
    let out = d.in_netns(&[
        "curl",
        "-s",
        "-m",
        "5",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://{ADDR}/_ping"),
    ]);
    assert_ne!(stdout(&out).trim(), "200");
    // The unix socket keeps working alongside.
    assert_eq!(d.docker_ok(&["ps", "-q"]).lines().count(), 1);
    d.docker_ok(&["rm", "-f", "tlsbox"]);
}
