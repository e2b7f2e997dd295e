//! Shared by the microVM test files: prerequisites (skip with the reason when missing), a
//! daemon whose microVMs run through qemu, and leftover checks.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::images::import_busybox;
use super::TestDaemon;

pub fn guest_kernel() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BERTH_GUEST_KERNEL") {
        return Some(p.into());
    }
    // The newest build, as berthd picks it.
    std::fs::read_dir("/var/cache/berth/guest-kernel/out")
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("vmlinux").exists())
        .filter_map(|p| Some((p.join("build-info").metadata().ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p.join("vmlinux"))
}

pub fn vhost_vsock() -> Option<PathBuf> {
    let cached = PathBuf::from("/var/cache/berth/tools/bin/vhost-device-vsock");
    if cached.exists() {
        return Some(cached);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("vhost-device-vsock"))
        .find(|p| p.exists())
}

/// The virtio-fs daemon, where berthd looks for it.
pub fn virtiofsd() -> Option<PathBuf> {
    [
        "/var/cache/berth/tools/bin/virtiofsd",
        "/usr/libexec/virtiofsd",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// Why microVM tests cannot run here, if they cannot.
pub fn missing_prerequisite() -> Option<String> {
    if guest_kernel().is_none() {
        return Some("no guest kernel (run guest-kernel/build.sh)".into());
    }
    if vhost_vsock().is_none() {
        return Some(
            "no vhost-device-vsock (run guest-kernel/test-boot.sh --install-vhost-vsock)".into(),
        );
    }
    if !Path::new("/usr/bin/qemu-system-x86_64").exists() {
        return Some("no qemu-system-x86_64 (apt-get install qemu-system-x86)".into());
    }
    None
}

/// True (after printing why) when the microVM tests cannot run here: the caller returns.
pub fn skip_without_microvm() -> bool {
    match missing_prerequisite() {
        Some(why) => {
            eprintln!("SKIPPED: microVM prerequisites missing: {why}");
            true
        }
        None => false,
    }
}

/// A daemon whose microVMs run through qemu, with the busybox image as `bb`.
pub fn daemon() -> TestDaemon {
    let d = TestDaemon::start_with(&["--vmm", "qemu"]);
    import_busybox(&d, "bb");
    d
}

/// Host processes whose command line mentions the test's directory (VMMs, helpers).
pub fn leftover_processes(dir: &Path) -> Vec<String> {
    let needle = dir.display().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(&needle) && !cmd.contains("berthd") {
            out.push(format!("{pid}: {cmd}"));
        }
    }
    out
}

/// Files left under the daemon's run dirs and container dirs.
pub fn leftover_files(d: &TestDaemon) -> Vec<String> {
    let mut out = Vec::new();
    for root in [d.exec_root.join("c"), d.data_root.join("containers")] {
        if let Ok(rd) = std::fs::read_dir(&root) {
            out.extend(rd.flatten().map(|e| e.path().display().to_string()));
        }
    }
    out
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn inspect(d: &TestDaemon, id: &str, format: &str) -> String {
    d.docker_ok(&["inspect", "-f", format, id])
        .trim()
        .to_string()
}

/// A file of a microVM container's own cgroup, read from inside its guest (cgroup v2).
/// The container has no cgroup filesystem of its own, so a privileged exec mounts the
/// guest's hierarchy once and reads the file under the main process's cgroup path.
/// `missing` when the guest kernel has no such file.
pub fn guest_cgroup_file(d: &TestDaemon, id: &str, file: &str) -> String {
    let script = format!(
        "m=/tmp/.cg; mkdir -p $m; grep -q \" $m cgroup2 \" /proc/mounts || mount -t cgroup2 none $m || exit 1; \
         f=\"$m$(cut -d: -f3 /proc/1/cgroup)/{file}\"; \
         if [ -e \"$f\" ]; then cat \"$f\"; else echo missing; fi"
    );
    d.docker_ok(&["exec", "--privileged", id, "sh", "-c", &script])
        .trim()
        .to_string()
}
