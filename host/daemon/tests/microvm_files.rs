//! A microVM container's files reach the host only as tars its guest agent writes (the
//! host never mounts a disk the guest wrote): `docker diff`, `commit` and `export` of
//! running and stopped microVM containers, and `docker build` whose RUN steps each run in
//! a microVM. Through qemu/TCG here; skipped, saying why, without the guest kernel or
//! vhost-device-vsock.

mod common;

use std::process::Command;
use std::time::Instant;

use common::images::import_busybox;
use common::microvm::{daemon, leftover_processes, skip_without_microvm};
use common::{stderr, stdout, TestDaemon};

fn tar_names(d: &TestDaemon, container: &str) -> Vec<String> {
    let out = d.dir.path().join(format!("{container}.tar"));
    d.docker_ok(&["export", "-o", out.to_str().unwrap(), container]);
    let o = Command::new("tar").arg("-tf").arg(&out).output().unwrap();
    assert!(o.status.success(), "tar -tf: {}", stderr(&o));
    stdout(&o)
        .lines()
        .map(|l| l.trim_start_matches("./").trim_end_matches('/').to_string())
        .collect()
}

/// Waits until no VM process of the test's daemon is left.
fn expect_no_vms(d: &TestDaemon) {
    common::eventually("VMs gone", 20, || {
        let left = leftover_processes(d.dir.path());
        match left.is_empty() {
            true => Ok(()),
            false => Err(format!("{left:?}")),
        }
    });
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

/// A running microVM container `running` that has written (or is about to write)
/// `/live.txt`.
fn start_live_writer(d: &TestDaemon) {
    d.docker_ok(&[
        "run",
        "-d",
        "--isolation=microvm",
        "--name",
        "running",
        "bb",
        "sh",
        "-c",
        "echo live > /live.txt; exec sleep 1000",
    ]);
}

#[test]
fn microvm_diff_commit_and_export_read_the_guest_disk() {
    if skip_without_microvm() {
        return;
    }
    let d = daemon();
    // A stopped container: its VM is gone, so each call boots one with only its disks.
    d.docker_ok(&[
        "run",
        "--isolation=microvm",
        "--name",
        "stopped",
        "bb",
        "sh",
        "-c",
        "echo hi > /new.txt; rm /bin/ls; mkdir -p /etc/app; echo c > /etc/app/conf",
    ]);
    let t0 = Instant::now();
    let diff = d.docker_ok(&["diff", "stopped"]);
    eprintln!(
        "docker diff of a stopped microVM container: {:?}",
        t0.elapsed()
    );
    let diff = lines(&diff);
    for want in [
        "A /new.txt",
        "D /bin/ls",
        "C /etc",
        "A /etc/app",
        "A /etc/app/conf",
    ] {
        assert!(diff.contains(&want), "{want:?} missing from {diff:?}");
    }
    // Engine-made mount points and files are not the user's changes.
    for hidden in ["/proc", "/sys", "/dev", "/etc/hosts", "/etc/resolv.conf"] {
        assert!(
            !diff.iter().any(|l| l.ends_with(hidden)),
            "{hidden} reported: {diff:?}"
        );
    }

    let t0 = Instant::now();
    d.docker_ok(&["commit", "stopped", "fromvm:1"]);
    eprintln!(
        "docker commit of a stopped microVM container: {:?}",
        t0.elapsed()
    );
    // The committed image runs anywhere: here as a process container.
    assert_eq!(
        d.docker_ok(&[
            "run",
            "--rm",
            "--isolation=process",
            "fromvm:1",
            "cat",
            "/new.txt",
            "/etc/app/conf"
        ]),
        "hi\nc\n"
    );
    let o = d.docker(&[
        "run",
        "--rm",
        "--isolation=process",
        "fromvm:1",
        "ls",
        "/bin/ls",
    ]);
    assert!(
        !o.status.success(),
        "the deleted file came back: {}",
        stdout(&o)
    );

    let names = tar_names(&d, "stopped");
    assert!(names.iter().any(|n| n == "new.txt"), "{names:?}");
    assert!(names.iter().any(|n| n == "bin/busybox"), "{names:?}");
    assert!(!names.iter().any(|n| n == "bin/ls"), "{names:?}");

    // The same for a running container, answered by its own VM.
    start_live_writer(&d);
    common::eventually("the running container wrote its file", 60, || {
        let diff = d.docker_ok(&["diff", "running"]);
        match diff.lines().any(|l| l == "A /live.txt") {
            true => Ok(()),
            false => Err(diff),
        }
    });
    // docker commit pauses by default; the container keeps running after it.
    d.docker_ok(&["commit", "running", "fromvm:2"]);
    assert_eq!(
        d.docker_ok(&["inspect", "-f", "{{.State.Status}}", "running"])
            .trim(),
        "running"
    );
    assert_eq!(
        d.docker_ok(&[
            "run",
            "--rm",
            "--isolation=process",
            "fromvm:2",
            "cat",
            "/live.txt"
        ]),
        "live\n"
    );
    let names = tar_names(&d, "running");
    assert!(names.iter().any(|n| n == "live.txt"), "{names:?}");

    // Nothing booted for an export outlives it.
    d.docker_ok(&["rm", "-f", "running", "stopped"]);
    expect_no_vms(&d);
}

#[test]
fn microvm_build_runs_every_step_in_a_vm() {
    if skip_without_microvm() {
        return;
    }
    let d = TestDaemon::start_with(&["--vmm", "qemu", "--default-isolation", "microvm"]);
    import_busybox(&d, "bb");
    let ctx = d.dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM bb\nRUN uname -r > /kernel && echo built > /built.txt\nRUN rm /bin/ls\nCMD [\"cat\", \"/built.txt\"]\n",
    )
    .unwrap();
    let t0 = Instant::now();
    let o = d
        .docker_cmd(&["build", "-t", "vmbuilt", ctx.to_str().unwrap()])
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .unwrap();
    eprintln!(
        "docker build with 2 RUN steps in microVMs: {:?}",
        t0.elapsed()
    );
    assert!(
        o.status.success(),
        "{}\n{}\n--- berthd ---\n{}",
        stdout(&o),
        stderr(&o),
        common::tail(&d.log(), 30)
    );
    assert_eq!(
        d.docker_ok(&["run", "--rm", "--isolation=process", "vmbuilt"]),
        "built\n"
    );
    // The step ran on the guest kernel, not the host's.
    let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let step_kernel = d.docker_ok(&[
        "run",
        "--rm",
        "--isolation=process",
        "vmbuilt",
        "cat",
        "/kernel",
    ]);
    assert_ne!(step_kernel.trim(), host_kernel.trim());
    assert!(!d
        .docker(&[
            "run",
            "--rm",
            "--isolation=process",
            "vmbuilt",
            "ls",
            "/bin/ls"
        ])
        .status
        .success());
    // Each step's changes were read from its own VM before it stopped: no VM was
    // booted again just to commit.
    let log = d.log();
    assert!(log.contains("microVM agent connected"), "no info logs?");
    assert!(
        !log.contains("export VM up"),
        "a RUN step was committed the slow way"
    );
    // The intermediate containers and their VMs are gone.
    assert_eq!(d.docker_ok(&["ps", "-aq"]), "");
    expect_no_vms(&d);
}

#[test]
fn microvm_docker_cp_reads_and_writes_the_guest_disk() {
    if skip_without_microvm() {
        return;
    }
    let d = daemon();
    let host = d.dir.path().join("cp");
    std::fs::create_dir_all(&host).unwrap();
    let host_s = host.to_str().unwrap();

    // Stopped: every call boots a VM with only the container's disks.
    d.docker_ok(&[
        "run",
        "--isolation=microvm",
        "--name",
        "stopped",
        "bb",
        "sh",
        "-c",
        "cat /in.txt 2>/dev/null; mkdir -p /data; uname -r > /data/kernel",
    ]);
    let t0 = Instant::now();
    d.docker_ok(&["cp", "stopped:/data", host_s]);
    eprintln!(
        "docker cp out of a stopped microVM container: {:?}",
        t0.elapsed()
    );
    let guest_kernel = std::fs::read_to_string(host.join("data/kernel")).unwrap();
    let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_ne!(guest_kernel.trim(), "");
    assert_ne!(guest_kernel, host_kernel, "the file came from the host?");

    std::fs::write(host.join("in.txt"), "copied in\n").unwrap();
    d.docker_ok(&[
        "cp",
        host.join("in.txt").to_str().unwrap(),
        "stopped:/in.txt",
    ]);
    // The next start sees it.
    assert_eq!(d.docker_ok(&["start", "-a", "stopped"]), "copied in\n");

    let o = d.docker(&["cp", "stopped:/nope", host_s]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("Could not find the file /nope"),
        "{}",
        stderr(&o)
    );

    // Running: answered by the container's own VM, seen by its processes at once.
    start_live_writer(&d);
    common::eventually("the running container wrote its file", 60, || {
        let o = d.docker(&["cp", "running:/live.txt", host_s]);
        match o.status.success() {
            true => Ok(()),
            false => Err(stderr(&o)),
        }
    });
    assert_eq!(
        std::fs::read_to_string(host.join("live.txt")).unwrap(),
        "live\n"
    );
    d.docker_ok(&["cp", host.join("in.txt").to_str().unwrap(), "running:/tmp/"]);
    assert_eq!(
        d.docker_ok(&["exec", "running", "cat", "/tmp/in.txt"]),
        "copied in\n"
    );
    // A tar stream both ways, as `docker cp -` uses.
    let o = d
        .docker_cmd(&["cp", "running:/tmp/in.txt", "-"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        o.stdout.windows(9).any(|w| w == b"copied in"),
        "no file in the tar"
    );

    d.docker_ok(&["rm", "-f", "running", "stopped"]);
    expect_no_vms(&d);
}
