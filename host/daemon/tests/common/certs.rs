//! Certificates made with openssl for TLS tests, and the docker CLI over TLS.

use std::path::Path;
use std::process::{Command, Output};

use super::{stderr, TestDaemon, DOCKER_CLI};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", stderr(&out));
}

/// A CA and a certificate it signs for `cn` (`ext`: the extensions to add).
pub fn ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}-key.pem"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
        ],
    );
}

pub fn leaf(dir: &Path, ca: &str, name: &str, ext: &str) {
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}-key.pem"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}-key.pem"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

/// The docker CLI over TLS to `addr` in the daemon's netns, as `client` (a
/// certificate name under `certs`) or with no client certificate.
pub fn docker_tls(
    d: &TestDaemon,
    certs: &Path,
    addr: &str,
    client: Option<&str>,
    args: &[&str],
) -> Output {
    let p = |f: &str| certs.join(f).to_string_lossy().to_string();
    let config = format!("DOCKER_CONFIG={}", certs.join("docker-config").display());
    let host = format!("tcp://{addr}");
    let mut a: Vec<String> = vec!["env".into(), config, DOCKER_CLI.into(), "-H".into(), host];
    match client {
        Some(c) => a.extend([
            "--tlsverify".into(),
            "--tlscacert".into(),
            p("ca.pem"),
            "--tlscert".into(),
            p(&format!("{c}.pem")),
            "--tlskey".into(),
            p(&format!("{c}-key.pem")),
        ]),
        // Server-authenticated TLS only: no client certificate to show.
        None => a.extend(["--tlsverify".into(), "--tlscacert".into(), p("ca.pem")]),
    }
    a.extend(args.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = a.iter().map(String::as_str).collect();
    d.in_netns(&refs)
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate (CN = name)
/// for each of `clients`; returns berthd's TLS flags for `-H tcp://{addr}`.
pub fn tls_setup(dir: &Path, addr: &str, clients: &[&str]) -> Vec<String> {
    ca(dir, "ca");
    leaf(
        dir,
        "ca",
        "server",
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    );
    for c in clients {
        leaf(dir, "ca", c, "extendedKeyUsage=clientAuth\n");
    }
    let p = |f: &str| dir.join(f).to_string_lossy().to_string();
    vec![
        "-H".into(),
        format!("tcp://{addr}"),
        "--tlsverify".into(),
        "--tlscacert".into(),
        p("ca.pem"),
        "--tlscert".into(),
        p("server.pem"),
        "--tlskey".into(),
        p("server-key.pem"),
    ]
}
