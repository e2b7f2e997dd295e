//! Test images built from Debian's busybox-static: no network needed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The static busybox binary (Debian's busybox-static package; installed by
/// scripts/install-deps.sh, or here when missing).
pub fn busybox() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let p = PathBuf::from("/bin/busybox");
        let is_static = |p: &Path| {
            Command::new("file")
                .arg("-L")
                .arg(p)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("statically linked"))
                .unwrap_or(true)
        };
        if !p.exists() || !is_static(&p) {
            let st = Command::new("sh")
                .arg("-c")
                .arg("DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static)")
                .status()
                .unwrap();
            assert!(st.success(), "cannot install busybox-static");
        }
        p
    })
}

/// A busybox rootfs directory with applet symlinks and the usual skeleton.
pub fn busybox_rootfs(dest: &Path) {
    let bin = dest.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(busybox(), bin.join("busybox")).unwrap();
    let out = Command::new(busybox()).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
        }
    }
    for d in [
        "etc", "tmp", "proc", "sys", "dev", "root", "home", "var", "usr",
    ] {
        std::fs::create_dir_all(dest.join(d)).unwrap();
    }
    std::os::unix::fs::symlink("../bin", dest.join("usr/bin")).ok();
    std::fs::write(dest.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\nuser:x:1000:1000:user:/home:/bin/sh\n").unwrap();
    std::fs::write(
        dest.join("etc/group"),
        "root:x:0:\nnogroup:x:65534:\nuser:x:1000:\n",
    )
    .unwrap();
}

/// A tarball (uncompressed) of a busybox rootfs, built once per test binary.
pub fn busybox_tar() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let dir = super::cache_dir().join("bbroot");
        let _ = std::fs::remove_dir_all(&dir);
        busybox_rootfs(&dir);
        let tar = super::cache_dir().join("busybox.tar");
        tar_dir(&dir, &tar);
        tar
    })
}

/// `tar -C dir -cf tar .`
pub fn tar_dir(dir: &std::path::Path, tar: &std::path::Path) {
    let st = Command::new("tar")
        .arg("-C")
        .arg(dir)
        .arg("-cf")
        .arg(tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(
        st.success(),
        "tar -C {} -cf {}",
        dir.display(),
        tar.display()
    );
}

/// Import the busybox rootfs into the daemon as `name` (e.g. "bb:local").
/// A daemon (`TestDaemon::start`) with the busybox image imported as `name`.
pub fn daemon_with_busybox(name: &str) -> super::TestDaemon {
    let d = super::TestDaemon::start();
    import_busybox(&d, name);
    d
}

pub fn import_busybox(d: &super::TestDaemon, name: &str) {
    let tar = busybox_tar();
    let out = d
        .docker_cmd(&["import", tar.to_str().unwrap(), name])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker import failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        super::tail(&d.log(), 30)
    );
}
