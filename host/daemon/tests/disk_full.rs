//! Chaos: the data root's filesystem runs full. berthd's data root is a small ext4 image
//! mounted for the test; with the disk full, `docker pull`, `load`, `import`, `commit` and
//! `create` fail with Docker's 500 naming "no space left on device" (no hang, no half-stored
//! image), a container logging a lot is not blocked (lines that cannot be stored are
//! dropped, as dockerd does), and after the space is freed and berthd is `kill -9`ed and
//! restarted every record is intact, nothing half-written is left in the data root, and the
//! same operations succeed. The microVM tests: creating a VM's disk on a full data root,
//! and the data root filling under running VMs.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::images::import_busybox;
use common::registry::{start_registry_with, RegistryOpts};
use common::TestDaemon;

/// A loop-mounted ext4 image, unmounted on drop (also when the test panics).
struct LoopFs {
    mnt: PathBuf,
}

impl LoopFs {
    fn new(dir: &Path, mib: u64) -> LoopFs {
        let img = dir.join("disk.img");
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let run = |args: &[&str]| {
            let o = Command::new(args[0]).args(&args[1..]).output().unwrap();
            assert!(
                o.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        };
        run(&["truncate", "-s", &format!("{mib}M"), img.to_str().unwrap()]);
        // -m 0: berthd runs as root, which may use the reserved blocks; none are kept, so
        // "full" means full for the daemon too.
        run(&["mkfs.ext4", "-q", "-F", "-m", "0", img.to_str().unwrap()]);
        run(&[
            "mount",
            "-o",
            "loop",
            img.to_str().unwrap(),
            mnt.to_str().unwrap(),
        ]);
        LoopFs { mnt }
    }

    /// Free bytes on the filesystem.
    fn avail(&self) -> u64 {
        let o = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.mnt)
            .output()
            .unwrap();
        let s = String::from_utf8_lossy(&o.stdout);
        s.lines().nth(1).unwrap().trim().parse().unwrap()
    }

    /// Fill the filesystem until only about `leave` bytes are free.
    fn fill(&self, name: &str, leave: u64) {
        let f = self.mnt.join(name);
        // Filling to the last byte with one fallocate fails (the extent tree needs blocks
        // too): leave 1 MiB for dd below.
        let margin = if leave == 0 { 1 << 20 } else { leave };
        let want = self.avail().saturating_sub(margin);
        if want > 0 {
            let st = Command::new("fallocate")
                .args(["-l", &want.to_string()])
                .arg(&f)
                .status()
                .unwrap();
            assert!(st.success(), "fallocate");
        }
        if leave == 0 {
            // Take the last blocks too: dd stops at ENOSPC. Big writes first, then
            // single sectors for what is left of a block.
            for bs in ["bs=65536", "bs=512"] {
                let _ = Command::new("dd")
                    .args(["if=/dev/zero", bs, "status=none", "oflag=append"])
                    .arg("conv=notrunc")
                    .arg(format!("of={}", f.display()))
                    .stderr(std::process::Stdio::null())
                    .status();
            }
            assert_eq!(self.avail(), 0, "could not fill {}", self.mnt.display());
        }
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.mnt)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Something (a leftover container mount) still holds it: detach lazily so the
            // loop device is released once that goes.
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

/// Runs the docker CLI with a deadline: a hang is a failure, not a stuck test.
fn docker_timed(d: &TestDaemon, args: &[&str]) -> std::process::Output {
    let t = Instant::now();
    let out = Command::new("timeout")
        .args(["-s", "KILL", "60", common::DOCKER_CLI, "-H", &d.host()])
        .args(args)
        .output()
        .unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(59),
        "docker {args:?} hung on a full disk"
    );
    out
}

/// Every container as `NAME STATE`, sorted.
fn names_and_states(d: &TestDaemon) -> Vec<String> {
    let mut ps: Vec<String> = d
        .docker_ok(&["ps", "-a", "--format", "{{.Names}} {{.State}}"])
        .lines()
        .map(str::to_string)
        .collect();
    ps.sort();
    ps
}

/// [`docker_timed`] that must succeed: its stdout.
fn docker_timed_ok(d: &TestDaemon, args: &[&str]) -> String {
    let out = docker_timed(d, args);
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        common::stderr(&out)
    );
    common::stdout(&out)
}

/// The call must fail with Docker's error naming ENOSPC.
fn fails_no_space(d: &TestDaemon, args: &[&str]) {
    let out = docker_timed(d, args);
    let err = format!("{}{}", common::stdout(&out), common::stderr(&out));
    assert!(
        !out.status.success(),
        "docker {args:?} succeeded on a full disk:\n{err}"
    );
    assert!(
        err.to_lowercase().contains("no space left on device"),
        "docker {args:?} did not name the full disk:\n{err}\n{}",
        common::tail(&d.log(), 20)
    );
    assert!(
        !d.log().contains("panicked"),
        "{}",
        common::tail(&d.log(), 40)
    );
    eprintln!("docker {args:?} on a full disk: {}", err.trim());
}

/// The raw API answer to `POST path` with a JSON `body`: Docker's 500 and
/// `{"message": ...}` naming ENOSPC, as dockerd answers.
fn api_500_no_space(d: &TestDaemon, path: &str, body: &str) {
    let (code, json) = d.api("POST", &format!("/v1.43{path}"), Some(body));
    assert_eq!(code, 500, "POST {path}: {json}");
    let v: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    let msg = v["message"].as_str().unwrap_or_default().to_lowercase();
    assert!(
        msg.contains("no space left on device"),
        "POST {path}: {json}"
    );
}

fn image_names(d: &TestDaemon) -> String {
    d.docker_ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"])
}

/// A tar holding `bytes` of random data at /payload, in `dir`.
fn random_tar(dir: &Path, name: &str, bytes: usize) -> PathBuf {
    let src = dir.join(format!("{name}-src"));
    std::fs::create_dir_all(&src).unwrap();
    let mut data = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut data))
        .unwrap();
    std::fs::write(src.join("payload"), data).unwrap();
    let tar = dir.join(format!("{name}.tar"));
    common::images::tar_dir(&src, &tar);
    tar
}

/// Everything under `root`, relative, sorted.
fn tree(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p.clone());
            }
            out.push(p.strip_prefix(root).unwrap().to_path_buf());
        }
    }
    out.sort();
    out
}

/// Half-written things a failed operation could leave: temp files and directories, and
/// content-addressed blobs whose bytes do not hash to their name.
fn leftovers(root: &Path) -> Vec<String> {
    let mut bad = Vec::new();
    for rel in tree(root) {
        let s = rel.to_string_lossy().to_string();
        let name = rel.file_name().unwrap().to_string_lossy().to_string();
        if s == "lost+found" || s == "filler" {
            continue;
        }
        if name.contains(".tmp") || name.starts_with(".tmp") || name.ends_with(".partial") {
            bad.push(format!("temp file: {s}"));
        }
        if rel.parent().is_some_and(|p| p.ends_with("tmp")) {
            bad.push(format!("in a tmp dir: {s}"));
        }
        // Every state file (not container or layer contents) is whole JSON.
        let content = ["layers", "upper", "lower", "diff"]
            .iter()
            .any(|c| rel.components().any(|p| p.as_os_str() == *c));
        if name.ends_with(".json") && !content {
            let text = std::fs::read(root.join(&rel)).unwrap();
            if serde_json::from_slice::<serde_json::Value>(&text).is_err() {
                bad.push(format!("state file is not whole JSON: {s}"));
            }
        }
        if rel.parent().is_some_and(|p| p.ends_with("blobs/sha256")) {
            let out = Command::new("sha256sum")
                .arg(root.join(&rel))
                .output()
                .unwrap();
            let sum = String::from_utf8_lossy(&out.stdout);
            if sum.split_whitespace().next() != Some(name.as_str()) {
                bad.push(format!("blob does not match its digest: {s}"));
            }
        }
    }
    bad
}

#[test]
fn full_data_root_fails_cleanly_and_corrupts_nothing() {
    let t0 = Instant::now();
    let work = tempfile::Builder::new()
        .prefix("berth-full")
        .tempdir_in("/tmp")
        .unwrap();
    // Declared before the daemon: dropped after it, so the daemon is gone before unmount.
    let fs = LoopFs::new(work.path(), 128);
    let root = fs.mnt.join("data");
    let mut d = TestDaemon::start_in_netns_on(&["--bridge", "none"], Some(&root));
    let ns = d.netns.clone().unwrap();
    let reg_addr = "127.0.0.1:5000";
    let Some(_reg) = start_registry_with(RegistryOpts {
        netns: Some((&ns, reg_addr)),
        ..Default::default()
    }) else {
        return;
    };
    import_busybox(&d, "bb");
    let bb_id = d.docker_ok(&["image", "inspect", "-f", "{{.Id}}", "bb"]);

    // An image of a few MB in the registry and in a saved tarball, not stored locally.
    let big = format!("{reg_addr}/big:1");
    d.docker_ok(&[
        "run",
        "--name",
        "mk2",
        "bb",
        "sh",
        "-c",
        "head -c 3000000 /dev/urandom > /big",
    ]);
    d.docker_ok(&["commit", "mk2", &big]);
    d.docker_ok(&["push", &big]);
    let saved = work.path().join("big-saved.tar");
    d.docker_ok(&["save", "-o", saved.to_str().unwrap(), &big]);
    d.docker_ok(&["rm", "mk2"]);
    d.docker_ok(&["rmi", &big]);
    // A container whose few MB of changes are to be committed, and a rootfs to import.
    d.docker_ok(&[
        "run",
        "--name",
        "writer",
        "bb",
        "sh",
        "-c",
        "head -c 3000000 /dev/urandom > /w",
    ]);
    let import_tar = random_tar(work.path(), "imp", 3_000_000);

    // A few hundred KB left: writes start, then run out.
    fs.fill("filler", 300 << 10);
    eprintln!("disk filled: {} bytes free", fs.avail());
    fails_no_space(&d, &["pull", &big]);
    fails_no_space(&d, &["load", "-i", saved.to_str().unwrap()]);
    fails_no_space(&d, &["import", import_tar.to_str().unwrap(), "imported:1"]);
    fails_no_space(&d, &["commit", "writer", "committed:1"]);
    // Nothing half-stored shows up as an image.
    let names = image_names(&d);
    for n in [big.as_str(), "imported:1", "committed:1"] {
        assert!(
            !names.contains(n),
            "{n} listed after a failed store:\n{names}"
        );
    }

    // Logging does not block the container: what cannot be stored is dropped.
    let t = Instant::now();
    d.docker_ok(&["run", "-d", "--name", "logger", "bb", "seq", "1", "300000"]);
    let code = docker_timed(&d, &["wait", "logger"]);
    assert_eq!(
        common::stdout(&code).trim(),
        "0",
        "logger: {}",
        common::stderr(&code)
    );
    eprintln!("logger finished on a full disk in {:?}", t.elapsed());
    let logs = docker_timed(&d, &["logs", "logger"]);
    assert!(logs.status.success(), "{}", common::stderr(&logs));
    // Reported once per failing streak, not once per batch (that would flood the log).
    let log = d.log();
    let reports: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("log write failed"))
        .collect();
    assert_eq!(reports.len(), 1, "{}", common::tail(&log, 20));
    assert!(
        reports[0].contains("No space left on device"),
        "{}",
        reports[0]
    );

    // Not a byte left: even a container record cannot be written.
    fs.fill("filler2", 0);
    eprintln!("disk filled: {} bytes free", fs.avail());
    fails_no_space(&d, &["create", "--name", "c2", "bb", "true"]);
    api_500_no_space(
        &d,
        "/containers/create?name=c3",
        r#"{"Image":"bb","Cmd":["true"]}"#,
    );
    api_500_no_space(&d, "/commit?container=writer&repo=committed&tag=2", "{}");
    // Tag, rename and network create rewrite existing state files: the old ones stay.
    fails_no_space(&d, &["tag", "bb", "bb:other"]);
    fails_no_space(&d, &["rename", "writer", "writer2"]);
    fails_no_space(&d, &["network", "create", "--driver", "bridge", "n1"]);
    let ps = d.docker_ok(&["ps", "-a", "--format", "{{.Names}}"]);
    assert!(
        !ps.lines().any(|l| l == "c2" || l == "c3"),
        "a half-created container is listed:\n{ps}"
    );

    // Free the space; the daemon dies without any cleanup and comes back.
    std::fs::remove_file(fs.mnt.join("filler")).unwrap();
    std::fs::remove_file(fs.mnt.join("filler2")).unwrap();
    d.kill();
    d.restart();
    assert!(
        !d.log().contains("skipping unreadable"),
        "{}",
        common::tail(&d.log(), 20)
    );
    let bad = leftovers(&root);
    assert!(
        bad.is_empty(),
        "left in the data root:\n{}\ntree:\n{:#?}",
        bad.join("\n"),
        tree(&root)
    );
    assert_eq!(
        d.docker_ok(&["image", "inspect", "-f", "{{.Id}}", "bb"]),
        bb_id
    );
    let names = image_names(&d);
    assert_eq!(names.trim(), "bb:latest", "images after restart:\n{names}");
    assert_eq!(names_and_states(&d), ["logger exited", "writer exited"]);
    d.docker_ok(&["inspect", "logger", "writer", "bb"]);
    let nets = d.docker_ok(&["network", "ls", "--format", "{{.Name}}"]);
    assert!(!nets.lines().any(|n| n == "n1"), "{nets}");
    // The json-file log holds whole lines only: a write cut by ENOSPC left no fragment.
    // (Where the json-file plugin keeps it under the data root; it reports no LogPath.)
    let id = d.docker_ok(&["inspect", "-f", "{{.Id}}", "logger"]);
    let log_name = format!("{}-json.log", id.trim());
    let log_path = tree(&root)
        .into_iter()
        .find(|p| p.ends_with(&log_name))
        .expect("logger's json-file log");
    let text = std::fs::read_to_string(root.join(log_path)).unwrap();
    let stored = text.lines().count();
    for l in text.lines() {
        serde_json::from_str::<serde_json::Value>(l)
            .unwrap_or_else(|e| panic!("torn json-file line {l:?}: {e}"));
    }
    eprintln!("logger: {stored} of 300000 lines stored before the disk was full");
    assert!(stored < 300000);

    // Everything works again.
    assert_eq!(d.docker_ok(&["run", "--rm", "bb", "echo", "ok"]), "ok\n");
    d.docker_ok(&["pull", &big]);
    d.docker_ok(&["rmi", &big]);
    d.docker_ok(&["load", "-i", saved.to_str().unwrap()]);
    d.docker_ok(&["import", import_tar.to_str().unwrap(), "imported:1"]);
    d.docker_ok(&["commit", "writer", "committed:1"]);
    d.docker_ok(&["create", "--name", "c2", "bb", "true"]);
    assert_eq!(
        d.docker_ok(&["run", "--rm", "committed:1", "sh", "-c", "wc -c < /w"])
            .trim(),
        "3000000"
    );
    assert_eq!(
        d.docker_ok(&["run", "--rm", &big, "sh", "-c", "wc -c < /big"])
            .trim(),
        "3000000"
    );
    d.docker_ok(&["rm", "-f", "c2", "logger", "writer"]);
    eprintln!("disk-full test took {:?}", t0.elapsed());
}

/// A microVM-capable daemon (qemu) whose data root is a fresh loop-mounted filesystem of
/// `mib` MiB, with the busybox image as `bb`. Fields drop in order: the daemon is gone
/// before the filesystem is unmounted.
struct MicrovmOnLoopFs {
    d: TestDaemon,
    fs: LoopFs,
    root: PathBuf,
    _work: tempfile::TempDir,
}

impl MicrovmOnLoopFs {
    /// `None`, after saying why, without the microVM prerequisites.
    fn start(mib: u64) -> Option<MicrovmOnLoopFs> {
        if common::microvm::skip_without_microvm() {
            return None;
        }
        let work = tempfile::Builder::new()
            .prefix("berth-full")
            .tempdir_in("/tmp")
            .unwrap();
        let fs = LoopFs::new(work.path(), mib);
        let root = fs.mnt.join("data");
        let d = TestDaemon::start_in_netns_on(&["--bridge", "none", "--vmm", "qemu"], Some(&root));
        import_busybox(&d, "bb");
        Some(MicrovmOnLoopFs {
            d,
            fs,
            root,
            _work: work,
        })
    }
}

/// A microVM container's writable disk is made on the data root: on a full disk `docker
/// create --isolation=microvm` fails with the cause, and leaves no half-made disk or
/// container behind. (No VM boots: create only builds the disks.)
#[test]
fn full_data_root_microvm_disk_creation_fails_cleanly() {
    let Some(mut vm) = MicrovmOnLoopFs::start(128) else {
        return;
    };
    let (fs, root, d) = (&vm.fs, vm.root.clone(), &mut vm.d);
    // The first create builds the image's block image; later ones only make a rw disk.
    d.docker_ok(&[
        "create",
        "--isolation=microvm",
        "--name",
        "m1",
        "bb",
        "true",
    ]);
    fs.fill("filler", 300 << 10);
    fails_no_space(
        d,
        &[
            "create",
            "--isolation=microvm",
            "--name",
            "m2",
            "bb",
            "true",
        ],
    );
    let ps = d.docker_ok(&["ps", "-a", "--format", "{{.Names}}"]);
    assert_eq!(ps.trim(), "m1", "after the failed create:\n{ps}");
    let disks: Vec<_> = tree(&root)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("rw"))
        .collect();
    assert_eq!(disks.len(), 1, "{disks:#?}");

    std::fs::remove_file(fs.mnt.join("filler")).unwrap();
    d.kill();
    d.restart();
    let bad = leftovers(&root);
    assert!(bad.is_empty(), "left in the data root:\n{}", bad.join("\n"));
    let ps = d.docker_ok(&["ps", "-a", "--format", "{{.Names}}"]);
    assert_eq!(ps.trim(), "m1");
    d.docker_ok(&[
        "create",
        "--isolation=microvm",
        "--name",
        "m2",
        "bb",
        "true",
    ]);
    d.docker_ok(&["rm", "m1", "m2"]);
}

/// The data root fills while microVM containers run. Their writable disks are sparse
/// files there, so a guest write can meet ENOSPC on the host: the guest gets an I/O error
/// (qemu's default, `werror=enospc`, pauses the whole VM instead, and the container
/// hangs), the VM keeps answering exec and stop, a microVM that logs a lot is not blocked
/// (lines that cannot be stored are dropped), and after the space is freed and berthd is
/// `kill -9`ed and restarted the records are intact.
#[test]
fn full_data_root_while_a_microvm_runs() {
    let Some(mut vm) = MicrovmOnLoopFs::start(192) else {
        return;
    };
    let (fs, root, d) = (&vm.fs, vm.root.clone(), &mut vm.d);
    let run = |name: &str, cmd: &str| {
        d.docker_ok(&[
            "run",
            "-d",
            "--isolation=microvm",
            "--name",
            name,
            "bb",
            "sh",
            "-c",
            cmd,
        ]);
    };
    run("vmw", "sleep 1000");
    // Waits for /go, so it logs only once the disk is full.
    run(
        "vmlog",
        "while [ ! -e /go ]; do sleep 0.2; done; seq 1 100000",
    );

    fs.fill("filler", 300 << 10);
    eprintln!("disk filled: {} bytes free", fs.avail());
    let dd = docker_timed(
        d,
        &[
            "exec",
            "vmw",
            "dd",
            "if=/dev/zero",
            "of=/big",
            "bs=1M",
            "count=16",
            "conv=fsync",
        ],
    );
    assert!(
        !dd.status.success(),
        "16 MiB written and synced in a guest on a full host disk:\n{}",
        common::stderr(&dd)
    );
    eprintln!("guest write on a full disk: {}", common::stderr(&dd).trim());
    let alive = docker_timed_ok(d, &["exec", "vmw", "echo", "alive"]);
    assert_eq!(alive.trim(), "alive");

    docker_timed_ok(d, &["exec", "vmlog", "touch", "/go"]);
    assert_eq!(docker_timed_ok(d, &["wait", "vmlog"]).trim(), "0");
    docker_timed_ok(d, &["stop", "-t", "2", "vmw"]);

    std::fs::remove_file(fs.mnt.join("filler")).unwrap();
    d.kill();
    d.restart();
    let bad = leftovers(&root);
    assert!(bad.is_empty(), "left in the data root:\n{}", bad.join("\n"));
    assert_eq!(names_and_states(d), ["vmlog exited", "vmw exited"]);
    // The VM that met the full disk starts again once there is room.
    d.docker_ok(&["start", "vmw"]);
    assert_eq!(d.docker_ok(&["exec", "vmw", "echo", "back"]), "back\n");
    d.docker_ok(&["rm", "-f", "vmw", "vmlog"]);
}
