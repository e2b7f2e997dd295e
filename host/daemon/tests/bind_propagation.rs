//! Bind propagation through the real docker CLI: `-v src:dst:rslave` (and `--mount
//! type=bind,bind-propagation=...`) lets a mount made on the host under the source after
//! start appear in the container, `rprivate` (the default) does not; `Mounts[].Propagation`
//! as dockerd reports it; dockerd's rule on the source's mount; the refusal in a microVM.
//! Every mount this test makes is a tmpfs under its own temp dir.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::microvm::skip_without_microvm;
use common::TestDaemon;

fn sh(args: &[&str]) {
    let o = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A tmpfs at `dir`, with the given propagation (`--make-shared`, `--make-private`);
/// unmounted (with what is under it) on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn new(dir: &Path, make: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        sh(&["mount", "-t", "tmpfs", "berth-test", dir.to_str().unwrap()]);
        let t = Tmpfs(dir.to_path_buf());
        sh(&["mount", make, dir.to_str().unwrap()]);
        t
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-R").arg(&self.0).status();
    }
}

fn inspect(d: &TestDaemon, ctr: &str, fmt: &str) -> String {
    d.docker_ok(&["inspect", "-f", fmt, ctr]).trim().to_string()
}

#[test]
fn rslave_sees_host_mounts_made_after_start_rprivate_does_not() {
    let d = common::images::daemon_with_busybox("bb");
    let src = d.dir.path().join("shared-src");
    let _src = Tmpfs::new(&src, "--make-shared");
    let s = src.to_str().unwrap();
    d.run_sleeper("slave", &["-v", &format!("{s}:/dst:rslave")]);
    d.run_sleeper(
        "mnt",
        &[
            "--mount",
            &format!("type=bind,source={s},target=/dst,bind-propagation=rshared"),
            "-v",
            "/vol",
        ],
    );
    d.run_sleeper("priv", &["-v", &format!("{s}:/dst")]);
    assert_eq!(
        inspect(&d, "slave", "{{range .Mounts}}{{.Propagation}}{{end}}"),
        "rslave"
    );
    assert_eq!(
        inspect(&d, "priv", "{{range .Mounts}}{{.Propagation}}{{end}}"),
        "rprivate"
    );
    assert_eq!(
        inspect(
            &d,
            "mnt",
            "{{range .Mounts}}{{.Type}}={{.Propagation}};{{end}}"
        ),
        "bind=rshared;volume=;"
    );

    // A mount made on the host under the source, after the containers started.
    let sub = src.join("sub");
    let _sub = Tmpfs::new(&sub, "--make-private");
    std::fs::write(sub.join("f"), "from the host\n").unwrap();
    for ctr in ["slave", "mnt"] {
        let got = d.docker_ok(&["exec", ctr, "cat", "/dst/sub/f"]);
        assert_eq!(got, "from the host\n", "{ctr}");
    }
    let o = d.docker(&["exec", "priv", "cat", "/dst/sub/f"]);
    assert!(
        !o.status.success(),
        "rprivate must not receive the host's new mount"
    );
    d.docker_ok(&["rm", "-f", "slave", "mnt", "priv"]);
}

#[test]
fn source_must_be_shared_or_slave_as_dockerd_requires() {
    let d = common::images::daemon_with_busybox("bb");
    let src = d.dir.path().join("private-src");
    let _src = Tmpfs::new(&src, "--make-private");
    let s = src.to_str().unwrap();
    for (mode, rule) in [
        ("rslave", "a shared or slave mount"),
        ("rshared", "a shared mount"),
    ] {
        let e = d.docker_err(&[
            "run",
            "--rm",
            "-v",
            &format!("{s}:/dst:{mode}"),
            "bb",
            "true",
        ]);
        assert!(
            e.contains(&format!("path {s} is mounted on {s} but it is not {rule}")),
            "{mode}: {e}"
        );
    }
    // Private modes need nothing of the source.
    let out = d.docker_ok(&[
        "run",
        "--rm",
        "-v",
        &format!("{s}:/dst:private"),
        "bb",
        "echo",
        "ok",
    ]);
    assert_eq!(out, "ok\n");
}

#[test]
fn microvm_accepts_only_private_propagation() {
    if skip_without_microvm() {
        return;
    }
    let d = common::microvm::daemon();
    let src = d.dir.path().join("vm-src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), "x\n").unwrap();
    let s = src.to_str().unwrap();
    let e = d.docker_err(&[
        "run",
        "--rm",
        "--isolation=microvm",
        "-v",
        &format!("{s}:/dst:rslave"),
        "bb",
        "true",
    ]);
    assert!(
        e.contains("not supported with microvm isolation") && e.contains("virtio-fs"),
        "{e}"
    );
    let out = d.docker_ok(&[
        "run",
        "--rm",
        "--isolation=microvm",
        "-v",
        &format!("{s}:/dst:rprivate"),
        "bb",
        "cat",
        "/dst/f",
    ]);
    assert_eq!(out, "x\n");
}
