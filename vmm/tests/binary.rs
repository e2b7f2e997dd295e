//! End-to-end tests of the `berth-vmm` binary with tiny raw guests: JSON
//! config, control socket, graceful and forced shutdown, exit codes, jail
//! and descriptor hygiene.

mod common;

use std::io::Read;
use std::os::unix::io::FromRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_vmm::arch::BootMode;
use berth_vmm::control::{request, ControlRequest, StatusResponse};
use berth_vmm::ExitReason;
use common::*;

/// A scratch dir for one test, removed when the test ends (pass or fail).
struct TmpDir(PathBuf);

impl std::ops::Deref for TmpDir {
    type Target = PathBuf;
    fn deref(&self) -> &PathBuf {
        &self.0
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tmpdir(tag: &str) -> TmpDir {
    let d = std::env::temp_dir().join(format!("berth-vmm-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    TmpDir(d)
}

fn write_guest(dir: &Path, handle_cad: bool) -> PathBuf {
    let mut a = Asm::new(BootMode::Long);
    a.print("up\n").boot_complete();
    if handle_cad {
        a.wait_i8042_data().print("bye\n").reset();
    } else {
        a.jmp_self();
    }
    let p = dir.join("guest.bin");
    std::fs::write(&p, &a.code).unwrap();
    p
}

/// Kills the VMM if a test fails before it exits (the tiny guests spin).
struct VmProc(Child);

impl Drop for VmProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(cfg: &serde_json::Value, dir: &Path) -> VmProc {
    let path = dir.join("vm.json");
    std::fs::write(&path, cfg.to_string()).unwrap();
    Command::new(env!("CARGO_BIN_EXE_berth-vmm"))
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map(VmProc)
        .unwrap()
}

fn wait_status(sock: &Path, pred: impl Fn(&StatusResponse) -> bool) -> StatusResponse {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(s) = request(sock, &ControlRequest::Status) {
            if pred(&s) {
                return s;
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting on the control socket"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn finish(mut p: VmProc) -> (i32, String) {
    let child = &mut p.0;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (st.code().unwrap_or(-1), err);
        }
        if Instant::now() > deadline {
            panic!("berth-vmm did not exit");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn base_config(dir: &Path, guest: &Path) -> serde_json::Value {
    serde_json::json!({
        "raw_image": {"path": guest, "load_addr": CODE_ADDR, "mode": "long"},
        "mem_mib": 16,
        "serial": {"file": dir.join("console.log")},
        "control_socket": dir.join("control.sock"),
    })
}

#[test]
fn control_socket_status_and_graceful_shutdown() {
    if !kvm_available() {
        return;
    }
    let dir = tmpdir("graceful");
    let guest = write_guest(&dir, true);
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    let mut cfg = base_config(&dir, &guest);
    cfg["drives"] = serde_json::json!([{"path": disk, "read_only": false}]);
    cfg["vsock"] = serde_json::json!({"guest_cid": 3, "uds_path": dir.join("v.sock")});
    let child = spawn(&cfg, &dir);
    let sock = dir.join("control.sock");
    let s = wait_status(&sock, |s| s.boot_time_us.is_some());
    assert!(s.ok);
    assert_eq!(s.state, "running");
    assert!(s.first_run_us.unwrap() <= s.boot_time_us.unwrap());
    assert_eq!(s.exit_reason, None);
    assert!(dir.join("v.sock").exists(), "vsock listener bound");
    let bt = request(&sock, &ControlRequest::BootTime).unwrap();
    assert_eq!(bt.boot_time_us, s.boot_time_us);
    let r = request(&sock, &ControlRequest::Shutdown { force: false }).unwrap();
    assert!(r.ok);
    let (code, stderr) = finish(child);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        std::fs::read_to_string(dir.join("console.log")).unwrap(),
        "up\nbye\n"
    );
    assert!(stderr.contains("Guest-boot-time = "), "{stderr}");
    let summary = stderr
        .lines()
        .find(|l| l.starts_with("{\"event\":\"exit\""))
        .expect(&stderr);
    let v: serde_json::Value = serde_json::from_str(summary).unwrap();
    assert_eq!(v["status"]["exit_reason"]["kind"], "reset");
    assert!(!sock.exists(), "control socket removed on exit");
}

#[test]
fn forced_shutdown_when_guest_ignores_ctrl_alt_del() {
    if !kvm_available() {
        return;
    }
    let dir = tmpdir("forced");
    let guest = write_guest(&dir, false);
    let mut cfg = base_config(&dir, &guest);
    cfg["graceful_shutdown_ms"] = serde_json::json!(200);
    let child = spawn(&cfg, &dir);
    let sock = dir.join("control.sock");
    wait_status(&sock, |s| s.boot_time_us.is_some());
    request(&sock, &ControlRequest::Shutdown { force: false }).unwrap();
    let (code, stderr) = finish(child);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("forcing"), "{stderr}");
    let summary = stderr
        .lines()
        .find(|l| l.starts_with("{\"event\":\"exit\""))
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(summary).unwrap();
    assert_eq!(
        serde_json::from_value::<ExitReason>(v["status"]["exit_reason"].clone()).unwrap(),
        ExitReason::Forced
    );
}

#[test]
fn failures_have_distinct_exit_codes_and_messages() {
    if !kvm_available() {
        return;
    }
    let dir = tmpdir("errors");
    let guest = write_guest(&dir, true);
    let run = |cfg: serde_json::Value| {
        let child = spawn(&cfg, &dir);
        finish(child)
    };
    let (code, err) = run(serde_json::json!({"kernel": dir.join("missing-vmlinux")}));
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("missing-vmlinux"), "{err}");
    let not_kernel = dir.join("not-a-kernel");
    std::fs::write(&not_kernel, b"hello, I am not a kernel").unwrap();
    let (code, err) = run(serde_json::json!({"kernel": not_kernel}));
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("neither an ELF vmlinux nor a bzImage"),
        "{err}"
    );
    let mut small = base_config(&dir, &guest);
    small["mem_mib"] = serde_json::json!(1);
    let (code, err) = run(small);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("too small"), "{err}");
    let mut tap = base_config(&dir, &guest);
    tap["net"] = serde_json::json!([{"tap": "no-such-tap-name-too-long"}]);
    let (code, err) = run(tap);
    assert_eq!(code, 6, "{err}");
    assert!(
        err.contains("TAP device no-such-tap-name-too-long"),
        "{err}"
    );
    let (code, err) = run(serde_json::json!({"kernel": "/k", "vcpus": 99}));
    assert_eq!(code, 2, "{err}");
    let mut fs = base_config(&dir, &guest);
    fs["fs"] = serde_json::json!([{"tag": "t", "socket": dir.join("nobody-listens.sock")}]);
    let (code, err) = run(fs);
    assert_eq!(code, 7, "{err}");
    assert!(err.contains("virtio-fs t"), "{err}");
}

/// The virtio-fs path of the binary: config -> memfd guest RAM -> vhost-user
/// connection to a real virtiofsd before the chroot jail, seccomp on, then a
/// clean shutdown that also ends virtiofsd (it exits when its frontend goes).
#[test]
fn virtio_fs_device_in_a_jailed_vmm() {
    if !kvm_available() {
        return;
    }
    let Some(bin) = [
        std::env::var_os("BERTH_VIRTIOFSD").map(PathBuf::from),
        Some(PathBuf::from("/var/cache/berth/tools/bin/virtiofsd")),
    ]
    .into_iter()
    .flatten()
    .find(|p| p.is_file()) else {
        eprintln!(
            "skipping: virtiofsd not found (scripts/install-vm-tools.sh, or $BERTH_VIRTIOFSD)"
        );
        return;
    };
    let dir = tmpdir("virtiofs");
    let root = dir.join("root");
    let shared = dir.join("shared");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&shared).unwrap();
    let sock = root.join("share.sock");
    let mut daemon = Command::new(bin)
        .arg("--socket-path")
        .arg(&sock)
        .arg("--shared-dir")
        .arg(&shared)
        .args(["--sandbox", "none", "--log-level", "error"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "virtiofsd did not listen");
        std::thread::sleep(Duration::from_millis(5));
    }
    let guest = write_guest(&dir, true);
    let mut cfg = base_config(&dir, &guest);
    cfg["jail"] = serde_json::json!({"chroot": root, "uid": 65534, "gid": 65534});
    cfg["fs"] = serde_json::json!([{"tag": "share", "socket": sock}]);
    let child = spawn(&cfg, &dir);
    let pid = child.0.id();
    let ctl = dir.join("control.sock");
    wait_status(&ctl, |s| s.boot_time_us.is_some());
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    assert!(
        maps.contains("/memfd:berth-guest-ram"),
        "guest RAM is not the shared memfd"
    );
    assert!(
        daemon.try_wait().unwrap().is_none(),
        "virtiofsd exited early"
    );
    request(&ctl, &ControlRequest::Shutdown { force: false }).unwrap();
    let (code, stderr) = finish(child);
    assert_eq!(code, 0, "{stderr}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while daemon.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "virtiofsd still running after its VMM exited"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn jail_and_no_inherited_fds() {
    if !kvm_available() {
        return;
    }
    let dir = tmpdir("jail");
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let guest = write_guest(&dir, true);
    let mut cfg = base_config(&dir, &guest);
    cfg["jail"] = serde_json::json!({"chroot": root, "uid": 65534, "gid": 65534});
    cfg["vsock"] = serde_json::json!({"guest_cid": 3, "uds_path": root.join("v.sock")});
    // A descriptor without CLOEXEC that the child would otherwise inherit.
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let child = spawn(&cfg, &dir);
    let pid = child.0.id();
    let sock = dir.join("control.sock");
    wait_status(&sock, |s| s.boot_time_us.is_some());
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uid_line.split_whitespace().nth(1),
        Some("65534"),
        "{uid_line}"
    );
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/root")).unwrap(),
        root
    );
    let ours: Vec<String> = fds
        .iter()
        .map(|fd| {
            std::fs::read_link(format!("/proc/self/fd/{fd}"))
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let entry = entry.unwrap();
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        let t = target.to_string_lossy().into_owned();
        assert!(
            !ours.contains(&t),
            "inherited fd {:?} leaked: {t}",
            entry.file_name()
        );
    }
    request(&sock, &ControlRequest::Shutdown { force: false }).unwrap();
    let (code, stderr) = finish(child);
    assert_eq!(code, 0, "{stderr}");
    // SAFETY: closing our own pipe.
    unsafe {
        drop(std::fs::File::from_raw_fd(fds[0]));
        drop(std::fs::File::from_raw_fd(fds[1]));
    }
}

#[test]
fn missing_kvm_is_reported() {
    // Hide /dev/kvm with an empty /dev in a private mount namespace.
    if !Path::new("/usr/bin/unshare").exists() {
        eprintln!("skipping: unshare(1) not available");
        return;
    }
    let dir = tmpdir("nokvm");
    let guest = write_guest(&dir, true);
    let cfg = base_config(&dir, &guest);
    let path = dir.join("vm.json");
    std::fs::write(&path, cfg.to_string()).unwrap();
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs none /dev && exec {} --config {}",
            env!("CARGO_BIN_EXE_berth-vmm"),
            path.display()
        ))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("KVM is not available"), "{err}");
}
