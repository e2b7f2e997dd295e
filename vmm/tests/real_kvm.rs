//! Real Linux guest end-to-end: Debian kernel + busybox initramfs boots to
//! a serial marker and a boot-complete write, then reboots (i8042 reset).
//! Needs hardware virtualization: on PVM (software nested KVM) a full
//! kernel does not boot in useful time, so the test detects it and skips.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use berth_vmm::{ExitReason, MicroVm};
use common::kernel::debian_kernel;
use common::*;
use vmm_sys_util::tempfile::TempFile;

/// Why real Linux cannot boot here, if it cannot.
fn pvm_reason() -> Option<String> {
    if Path::new("/sys/module/kvm_pvm").exists() {
        return Some("KVM is PVM (/sys/module/kvm_pvm present): no hardware virtualization".into());
    }
    if !Path::new("/sys/module/kvm_intel").exists() && !Path::new("/sys/module/kvm_amd").exists() {
        return Some("neither kvm_intel nor kvm_amd is loaded".into());
    }
    None
}

/// Minimal newc cpio writer (uncompressed initramfs).
fn cpio(entries: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut push = |name: &str, mode: u32, data: &[u8], ino: u32| {
        let hdr = format!(
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        out.extend_from_slice(hdr.as_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out.extend_from_slice(data);
        while out.len() % 4 != 0 {
            out.push(0);
        }
    };
    for (i, (name, mode, data)) in entries.iter().enumerate() {
        push(name, *mode, data, i as u32 + 1);
    }
    push("TRAILER!!!", 0, &[], 0);
    out
}

const INIT: &str = "#!/bin/busybox sh
/bin/busybox mount -t devtmpfs dev /dev
/bin/busybox echo BERTH-GUEST-UP
/bin/busybox devmem 0xc0000000 8 123
/bin/busybox reboot -f
";

#[test]
fn real_linux_guest_boots_to_marker_and_boot_complete() {
    if let Some(reason) = pvm_reason() {
        eprintln!("skipping real-KVM Linux boot: {reason}");
        return;
    }
    if !kvm_available() {
        return;
    }
    let Some(k) = debian_kernel() else { return };
    if !Path::new("/bin/busybox").exists() {
        let st = std::process::Command::new("apt-get")
            .args(["install", "-y", "busybox-static"])
            .status()
            .unwrap();
        assert!(st.success(), "installing busybox-static");
    }
    let busybox = std::fs::read("/bin/busybox").unwrap();
    let initrd = TempFile::new().unwrap();
    std::fs::write(
        initrd.as_path(),
        cpio(&[
            ("bin", 0o040755, &[]),
            ("dev", 0o040755, &[]),
            ("bin/busybox", 0o100755, &busybox),
            ("init", 0o100755, INIT.as_bytes()),
        ]),
    )
    .unwrap();
    let cap = Capture::default();
    let start = Instant::now();
    let mut vm = MicroVm::new(1, 256, Box::new(cap.clone()), start).unwrap();
    vm.load_linux(
        &k.bzimage,
        Some(initrd.as_path()),
        "console=ttyS0 reboot=k panic=1 pci=off nomodule i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd rdinit=/init",
    )
    .unwrap();
    let shared = vm.shared();
    let exit = wait_with_deadline(vm.start().unwrap(), Duration::from_secs(60));
    let console = cap.text();
    assert_eq!(exit, ExitReason::Reset, "console:\n{console}");
    assert!(console.contains("BERTH-GUEST-UP"), "console:\n{console}");
    let boot = shared.boot_time_us().expect("boot-complete write");
    eprintln!(
        "real Linux boot: first KVM_RUN at {} us, boot-complete at {boot} us",
        shared.first_run_us().unwrap()
    );
}
