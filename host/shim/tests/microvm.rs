//! containerd runs a berth microVM through the shim: the annotation
//! `io.berth.isolation=microvm` boots the container's own VM (qemu here, TCG without
//! hardware KVM). Skips, saying why, without a guest kernel, vhost-device-vsock or qemu.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{err, out, Containerd};

const MICROVM: &str = "io.berth.isolation=microvm";

fn missing_prerequisite() -> Option<String> {
    let kernel = std::env::var_os("BERTH_GUEST_KERNEL")
        .map(PathBuf::from)
        .or_else(|| {
            std::fs::read_dir("/var/cache/berth/guest-kernel/out")
                .ok()?
                .flatten()
                .map(|e| e.path().join("vmlinux"))
                .find(|p| p.exists())
        });
    if kernel.is_none() {
        return Some("no guest kernel (run guest-kernel/build.sh)".into());
    }
    let vsock = Path::new("/var/cache/berth/tools/bin/vhost-device-vsock").exists()
        || common::which("vhost-device-vsock").is_some();
    if !vsock {
        return Some(
            "no vhost-device-vsock (run guest-kernel/test-boot.sh --install-vhost-vsock)".into(),
        );
    }
    if common::which("qemu-system-x86_64").is_none() {
        return Some("no qemu-system-x86_64 (apt-get install qemu-system-x86)".into());
    }
    None
}

#[test]
fn microvm_run_exec_kill_and_vmm_death() {
    if let Some(why) = common::unavailable().or_else(missing_prerequisite) {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let c = Containerd::start_with_env(&[("BERTH_SHIM_VMM", "qemu")]);
    c.import_busybox();

    // The container runs in the guest: its own kernel, exit code and output through ctr.
    let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let o = c.run(
        "vm1",
        &["--rm", "--annotation", MICROVM],
        &[
            "sh",
            "-c",
            "cat /proc/sys/kernel/osrelease; echo in-vm; exit 4",
        ],
    );
    assert_eq!(o.status.code(), Some(4), "{}{}", out(&o), err(&o));
    let stdout = out(&o);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", out(&o));
    assert_ne!(
        lines[0],
        host_kernel.trim(),
        "the container ran on the host kernel"
    );
    assert_eq!(lines[1], "in-vm");

    // exec, kill, then the VMM dies under a running task: the task is marked exited.
    let o = c.run("vm2", &["-d", "--annotation", MICROVM], &["sleep", "1000"]);
    assert!(o.status.success(), "{}{}", out(&o), err(&o));
    c.wait_status("vm2", "RUNNING", Duration::from_secs(60));
    let fifo = c.fifo_dir();
    let o = c.ctr(&[
        "task",
        "exec",
        "--fifo-dir",
        fifo.to_str().unwrap(),
        "--exec-id",
        "e1",
        "vm2",
        "sh",
        "-c",
        "echo exec in vm; exit 6",
    ]);
    assert_eq!(o.status.code(), Some(6), "{}{}", out(&o), err(&o));
    assert_eq!(out(&o), "exec in vm\n");
    c.ctr_ok(&["task", "pause", "vm2"]);
    c.wait_status("vm2", "PAUSED", Duration::from_secs(10));
    c.ctr_ok(&["task", "resume", "vm2"]);
    c.wait_status("vm2", "RUNNING", Duration::from_secs(10));
    let vmms: Vec<i32> = c
        .leftover_processes()
        .iter()
        .filter(|p| p.contains("qemu-system"))
        .filter_map(|p| p.split(':').next()?.parse().ok())
        .collect();
    assert_eq!(vmms.len(), 1, "{:?}", c.leftover_processes());
    // SAFETY: the VMM this test's shim started.
    unsafe { libc::kill(vmms[0], libc::SIGKILL) };
    c.wait_status("vm2", "STOPPED", Duration::from_secs(30));
    c.ctr_ok(&["task", "rm", "vm2"]);
    c.ctr_ok(&["c", "rm", "vm2"]);

    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let procs = c.leftover_processes();
        let dirs = c.leftover_run_dirs();
        let disks = c.leftover_vm_disks();
        if procs.is_empty() && dirs.is_empty() && disks.is_empty() && c.shim_pids().is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "left behind: {procs:?} {dirs:?} {disks:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
