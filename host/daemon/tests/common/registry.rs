//! A loopback `docker-registry` (Debian's distribution 2.8) for pull/push tests.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A loopback `docker-registry` (Debian's distribution 2.8) on a free port.
pub struct Registry {
    child: Child,
    pub addr: String,
    dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn ensure_registry_installed() -> bool {
    if Path::new("/usr/bin/docker-registry").exists() {
        return true;
    }
    let ok = Command::new("sh")
        .arg("-c")
        .arg("DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-registry >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-registry)")
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    ok && Path::new("/usr/bin/docker-registry").exists()
}

/// Start a registry; `htpasswd` (a bcrypt line) turns on basic auth.
pub fn start_registry(htpasswd: Option<&str>) -> Option<Registry> {
    start_registry_with(RegistryOpts {
        htpasswd,
        ..Default::default()
    })
}

/// How to serve a test registry.
#[derive(Default)]
pub struct RegistryOpts<'a> {
    /// A bcrypt htpasswd line: basic auth on.
    pub htpasswd: Option<&'a str>,
    /// Serve HTTPS with this CA's server certificate.
    pub tls: Option<&'a TestCa>,
    /// Require client certificates signed by the CA (mutual TLS).
    pub client_auth: bool,
    /// Token auth: the token server's realm URL and the CA its signing certificate
    /// chains to (service `berth-test`, issuer `berth-test-issuer`).
    pub token: Option<(&'a str, &'a Path)>,
    /// Listen on this address inside network namespace `netns` (default: 127.0.0.1
    /// on a free port, in the test's own namespace).
    pub netns: Option<(&'a str, &'a str)>,
}

/// Start a registry as `opts` says.
pub fn start_registry_with(opts: RegistryOpts) -> Option<Registry> {
    if !ensure_registry_installed() {
        eprintln!("SKIP: docker-registry is not installed and apt-get could not install it");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let addr = match opts.netns {
        Some((_, a)) => a.to_string(),
        None => format!("127.0.0.1:{}", free_port()),
    };
    let auth = match opts.htpasswd {
        Some(line) => {
            std::fs::write(dir.path().join("htpasswd"), format!("{line}\n")).unwrap();
            format!(
                "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            )
        }
        None => match opts.token {
            Some((realm, ca)) => format!(
                "auth:\n  token:\n    realm: {realm}\n    service: berth-test\n    issuer: berth-test-issuer\n    rootcertbundle: {}\n",
                ca.display()
            ),
            None => String::new(),
        },
    };
    let tls = match opts.tls {
        Some(ca) => {
            let mut t = format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                ca.server_cert.display(),
                ca.server_key.display()
            );
            if opts.client_auth {
                t.push_str(&format!(
                    "    clientcas:\n      - {}\n",
                    ca.ca_cert.display()
                ));
            }
            t
        }
        None => String::new(),
    };
    let cfg = format!(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{tls}{auth}",
        dir.path().join("data").display()
    );
    std::fs::write(dir.path().join("config.yml"), cfg).unwrap();
    let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
    let mut cmd = match opts.netns {
        Some((ns, _)) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}"))
                .arg("/usr/bin/docker-registry");
            c
        }
        None => Command::new("/usr/bin/docker-registry"),
    };
    let child = cmd
        .arg("serve")
        .arg(dir.path().join("config.yml"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    // Readiness is checked where the registry listens: a netns address is not
    // reachable (and must not be tried) from the test's own namespace.
    let port = addr.rsplit(':').next().unwrap().to_string();
    let listening = || match opts.netns {
        Some((ns, _)) => Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .args(["ss", "-Hltn", &format!("sport = :{port}")])
            .output()
            .map(|o| !o.stdout.is_empty())
            .unwrap_or(false),
        None => std::net::TcpStream::connect(&addr).is_ok(),
    };
    while !listening() {
        assert!(Instant::now() < deadline, "registry did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(Registry { child, addr, dir })
}

/// A throwaway CA (openssl) with a server certificate for 127.0.0.1, localhost and
/// `extra_ip`, and a client certificate, all signed by it.
pub struct TestCa {
    pub dir: tempfile::TempDir,
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestCa {
    pub fn new(extra_ip: &str) -> TestCa {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=berth test CA",
            ],
        );
        std::fs::write(
            d.join("server.ext"),
            format!("subjectAltName=IP:127.0.0.1,DNS:localhost,IP:{extra_ip}\nextendedKeyUsage=serverAuth\n"),
        )
        .unwrap();
        std::fs::write(d.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        for (who, subj) in [("server", "/CN=registry"), ("client", "/CN=berth client")] {
            openssl(
                d,
                &[
                    "req",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-keyout",
                    &format!("{who}.key"),
                    "-out",
                    &format!("{who}.csr"),
                    "-subj",
                    subj,
                ],
            );
            openssl(
                d,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &format!("{who}.csr"),
                    "-CA",
                    "ca.crt",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-out",
                    &format!("{who}.crt"),
                    "-extfile",
                    &format!("{who}.ext"),
                ],
            );
        }
        TestCa {
            ca_cert: d.join("ca.crt"),
            server_cert: d.join("server.crt"),
            server_key: d.join("server.key"),
            client_cert: d.join("client.crt"),
            client_key: d.join("client.key"),
            dir,
        }
    }
}

/// A bcrypt hash of `s3cret` for a registry's htpasswd file (python3's crypt).
pub fn bcrypt_secret() -> Option<String> {
    Command::new("python3")
        .args([
            "-W",
            "ignore",
            "-c",
            "import crypt;print(crypt.crypt('s3cret', crypt.mksalt(crypt.METHOD_BLOWFISH)))",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|h| h.starts_with("$2"))
}

impl Registry {
    /// Where the registry keeps blob `digest` (`sha256:...`) on disk.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}
