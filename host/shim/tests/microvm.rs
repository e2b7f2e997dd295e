//! containerd runs a berth microVM through the shim: the annotation
//! `io.berth.isolation=microvm` boots the container's own VM (qemu here, TCG without
//! hardware KVM), or with the CRI's pod annotations one VM for the whole pod. Skips,
//! saying why, without a guest kernel, vhost-device-vsock, virtiofsd (pods) or qemu.

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

const POD_SANDBOX: &str = "io.kubernetes.cri.container-type=sandbox";
const POD_MEMBER: &str = "io.kubernetes.cri.container-type=container";

fn missing_virtiofsd() -> Option<String> {
    let found = std::env::var_os("BERTH_VIRTIOFSD").is_some()
        || Path::new("/var/cache/berth/tools/bin/virtiofsd").exists()
        || common::which("virtiofsd").is_some();
    (!found).then(|| "no virtiofsd (run scripts/install-vm-tools.sh)".to_string())
}

/// Mounts whose mount point is under `dir`.
fn mounts_under(dir: &Path) -> Vec<String> {
    let me = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|p| p.starts_with(&me)))
        .map(String::from)
        .collect()
}

/// The containers of a pod (CRI's annotations, set here with `ctr run --annotation`) share
/// the microVM their sandbox container booted: one VMM, one guest kernel, one network
/// namespace; each keeps its own exit code, exec and teardown.
#[test]
fn pod_containers_share_one_microvm() {
    if let Some(why) = common::unavailable()
        .or_else(missing_prerequisite)
        .or_else(missing_virtiofsd)
    {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let c = Containerd::start_with_env(&[("BERTH_SHIM_VMM", "qemu")]);
    c.import_busybox();
    let pod = |role: &'static str| -> Vec<&'static str> {
        vec![
            "--annotation",
            MICROVM,
            "--annotation",
            "io.kubernetes.cri.sandbox-id=pod1",
            "--annotation",
            role,
        ]
    };
    let qemus = |c: &Containerd| -> Vec<i32> {
        c.leftover_processes()
            .iter()
            .filter(|p| p.contains("qemu-system"))
            .filter_map(|p| p.split(':').next()?.parse().ok())
            .collect()
    };

    // The sandbox serves a file on the pod's loopback.
    let mut flags = pod(POD_SANDBOX);
    flags.push("-d");
    let o = c.run(
        "pod1",
        &flags,
        &[
            "sh",
            "-c",
            "mkdir -p /www && echo pod-secret > /www/s && exec httpd -f -p 7000 -h /www",
        ],
    );
    assert!(o.status.success(), "{}{}", out(&o), err(&o));
    c.wait_status("pod1", "RUNNING", Duration::from_secs(60));
    let fifo = c.fifo_dir();
    let exec = |id: &str, exec_id: &str, cmd: &str| {
        c.ctr(&[
            "task",
            "exec",
            "--fifo-dir",
            fifo.to_str().unwrap(),
            "--exec-id",
            exec_id,
            id,
            "sh",
            "-c",
            cmd,
        ])
    };
    let o = exec("pod1", "b1", "cat /proc/sys/kernel/random/boot_id");
    assert!(o.status.success(), "{}{}", out(&o), err(&o));
    let sandbox_boot = out(&o).trim().to_string();
    let host_boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert_ne!(
        sandbox_boot,
        host_boot.trim(),
        "the sandbox ran on the host kernel"
    );

    // A member: same kernel (boot id), same network namespace (the sandbox's loopback
    // server answers), its own exit code.
    // Its read-only bind mount reaches the guest through the pod's share, read-only.
    let shared = c.dir.path().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join("f"), "from-host\n").unwrap();
    let bind = format!(
        "type=bind,src={},dst=/data,options=rbind:ro",
        shared.display()
    );
    let mut flags = pod(POD_MEMBER);
    flags.extend(["--rm", "--mount", &bind]);
    let o = c.run(
        "c1",
        &flags,
        &[
            "sh",
            "-c",
            "cat /proc/sys/kernel/random/boot_id; wget -qO- http://127.0.0.1:7000/s; \
             cat /data/f; touch /data/x 2>/dev/null && echo wrote || echo read-only; exit 3",
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{}{}", out(&o), err(&o));
    let stdout = out(&o);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            sandbox_boot.as_str(),
            "pod-secret",
            "from-host",
            "read-only"
        ],
        "the member did not run in the pod's VM, network and mounts"
    );
    assert!(!shared.join("x").exists());
    assert_eq!(qemus(&c).len(), 1, "{:?}", c.leftover_processes());

    // A long-running member: exec into it, one VMM for the whole pod, and the VMM's death
    // ends every task of the pod.
    let mut flags = pod(POD_MEMBER);
    flags.push("-d");
    let o = c.run("c2", &flags, &["sleep", "1000"]);
    assert!(o.status.success(), "{}{}", out(&o), err(&o));
    c.wait_status("c2", "RUNNING", Duration::from_secs(60));
    let o = exec("c2", "e1", "cat /proc/sys/kernel/random/boot_id; exit 5");
    assert_eq!(o.status.code(), Some(5), "{}{}", out(&o), err(&o));
    assert_eq!(
        out(&o).trim(),
        sandbox_boot,
        "the member's exec ran in another kernel: {:?}\n{}",
        c.leftover_processes(),
        common::tail(&c.log(), 30)
    );
    let vmms = qemus(&c);
    assert_eq!(vmms.len(), 1, "{:?}", c.leftover_processes());
    // SAFETY: the VMM this test's shim started.
    unsafe { libc::kill(vmms[0], libc::SIGKILL) };
    c.wait_status("c2", "STOPPED", Duration::from_secs(30));
    c.wait_status("pod1", "STOPPED", Duration::from_secs(30));
    for id in ["c2", "pod1"] {
        c.ctr_ok(&["task", "rm", id]);
        c.ctr_ok(&["c", "rm", id]);
    }

    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let procs = c.leftover_processes();
        let dirs = c.leftover_run_dirs();
        let disks = c.leftover_vm_disks();
        let mounts = mounts_under(c.dir.path());
        if procs.is_empty()
            && dirs.is_empty()
            && disks.is_empty()
            && mounts.is_empty()
            && c.shim_pids().is_empty()
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "left behind: {procs:?} {dirs:?} {disks:?} {mounts:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
