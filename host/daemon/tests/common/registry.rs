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
    if !ensure_registry_installed() {
        eprintln!("SKIP: docker-registry is not installed and apt-get could not install it");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let auth = match htpasswd {
        Some(line) => {
            std::fs::write(dir.path().join("htpasswd"), format!("{line}\n")).unwrap();
            format!(
                "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            )
        }
        None => String::new(),
    };
    let cfg = format!(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{auth}",
        dir.path().join("data").display()
    );
    std::fs::write(dir.path().join("config.yml"), cfg).unwrap();
    let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
    let child = Command::new("/usr/bin/docker-registry")
        .arg("serve")
        .arg(dir.path().join("config.yml"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "registry did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(Registry { child, addr, dir })
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
