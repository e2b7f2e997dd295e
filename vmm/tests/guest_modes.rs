//! Tiny guests booted through the VMM's own setup path in real, protected
//! and long mode, on real KVM.

mod common;

use std::time::Duration;

use berth_vmm::arch::BootMode;
use berth_vmm::ExitReason;
use common::*;

fn boot_and_print(mode: BootMode, vcpus: u8) {
    if !kvm_available() {
        return;
    }
    let (mut vm, cap) = tiny_vm(vcpus, 4);
    let shared = vm.shared();
    let mut a = Asm::new(mode);
    a.print(&format!("hello from {mode:?} mode\n"));
    if mode != BootMode::Real {
        a.boot_complete();
    }
    a.reset();
    vm.load_raw(&a.code, CODE_ADDR, mode).unwrap();
    let exit = wait_with_deadline(vm.start().unwrap(), Duration::from_secs(30));
    assert_eq!(exit, ExitReason::Reset, "serial so far: {:?}", cap.text());
    assert_eq!(cap.text(), format!("hello from {mode:?} mode\n"));
    assert!(shared.first_run_us().is_some());
    if mode != BootMode::Real {
        let t = shared.boot_time_us().expect("boot-complete write seen");
        assert!(t >= shared.first_run_us().unwrap());
    } else {
        assert_eq!(shared.boot_time_us(), None);
    }
}

#[test]
fn real_mode_serial_and_reset() {
    boot_and_print(BootMode::Real, 1);
}

#[test]
fn protected_mode_serial_boot_complete_and_reset() {
    boot_and_print(BootMode::Protected, 1);
}

#[test]
fn long_mode_serial_boot_complete_and_reset() {
    boot_and_print(BootMode::Long, 1);
}

#[test]
fn long_mode_smp_guest() {
    // The APs wait for INIT/SIPI inside KVM; the BSP runs and resets.
    boot_and_print(BootMode::Long, 2);
}

#[test]
fn triple_fault_is_reported() {
    if !kvm_available() {
        return;
    }
    let (mut vm, cap) = tiny_vm(1, 4);
    let mut a = Asm::new(BootMode::Long);
    // Empty IDT: the breakpoint exception escalates to a triple fault.
    a.print("x").ud2();
    vm.load_raw(&a.code, CODE_ADDR, BootMode::Long).unwrap();
    let exit = wait_with_deadline(vm.start().unwrap(), Duration::from_secs(30));
    assert_eq!(exit, ExitReason::TripleFault);
    assert_eq!(exit.exit_code(), 11);
    assert_eq!(cap.text(), "x");
}

#[test]
fn too_many_vcpus_and_tiny_memory_are_refused() {
    if !kvm_available() {
        return;
    }
    let err = berth_vmm::MicroVm::new(0, 4, Box::new(std::io::sink()), std::time::Instant::now())
        .err()
        .unwrap();
    assert_eq!(err.exit_code(), 2);
    let err = berth_vmm::MicroVm::new(1, 1, Box::new(std::io::sink()), std::time::Instant::now())
        .err()
        .unwrap();
    assert_eq!(err.exit_code(), 5, "{err}");
}
