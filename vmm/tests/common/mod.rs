//! Helpers for tests that boot tiny hand-assembled guests on real KVM.
#![allow(dead_code)]

use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_vmm::arch::BootMode;
use berth_vmm::vmm::RunningVm;
use berth_vmm::{ExitReason, MicroVm};

/// Serial sink that keeps everything the guest printed.
#[derive(Clone, Default)]
pub struct Capture(pub Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Capture {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Returns None (and says why) when /dev/kvm cannot be used at all.
pub fn kvm_available() -> bool {
    match kvm_ioctls::Kvm::new() {
        Ok(_) => true,
        Err(e) => {
            eprintln!("skipping: /dev/kvm unusable: {e}");
            false
        }
    }
}

/// A tiny x86 assembler for the handful of instructions the test guests use.
/// `bits` is 16 (real mode) or 32/64 (the encodings below are identical in
/// protected and long mode because every address is < 4 GiB).
pub struct Asm {
    pub code: Vec<u8>,
    pub bits: u8,
}

impl Asm {
    pub fn new(mode: BootMode) -> Self {
        Self {
            code: Vec::new(),
            bits: if mode == BootMode::Real { 16 } else { 32 },
        }
    }
    fn b(&mut self, bytes: &[u8]) -> &mut Self {
        self.code.extend_from_slice(bytes);
        self
    }
    fn imm(&mut self, v: u32) -> &mut Self {
        if self.bits == 16 {
            self.b(&(v as u16).to_le_bytes())
        } else {
            self.b(&v.to_le_bytes())
        }
    }
    /// mov dx/edx, imm
    pub fn mov_edx(&mut self, v: u32) -> &mut Self {
        self.b(&[0xba]).imm(v)
    }
    pub fn mov_eax(&mut self, v: u32) -> &mut Self {
        self.b(&[0xb8]).imm(v)
    }
    pub fn mov_ebx(&mut self, v: u32) -> &mut Self {
        self.b(&[0xbb]).imm(v)
    }
    pub fn mov_esi(&mut self, v: u32) -> &mut Self {
        self.b(&[0xbe]).imm(v)
    }
    pub fn mov_edi(&mut self, v: u32) -> &mut Self {
        self.b(&[0xbf]).imm(v)
    }
    pub fn mov_al(&mut self, v: u8) -> &mut Self {
        self.b(&[0xb0, v])
    }
    pub fn out_dx_al(&mut self) -> &mut Self {
        self.b(&[0xee])
    }
    pub fn out_imm_al(&mut self, port: u8) -> &mut Self {
        self.b(&[0xe6, port])
    }
    /// Prints `s` on COM1.
    pub fn print(&mut self, s: &str) -> &mut Self {
        self.mov_edx(0x3f8);
        for c in s.bytes() {
            self.mov_al(c).out_dx_al();
        }
        self
    }
    /// mov byte [eax], v  (after mov_eax(addr))
    pub fn store_byte_at(&mut self, addr: u32, v: u8) -> &mut Self {
        self.mov_eax(addr).b(&[0xc6, 0x00, v])
    }
    /// Boot-complete write (32/64-bit only).
    pub fn boot_complete(&mut self) -> &mut Self {
        self.store_byte_at(0xc000_0000, 123)
    }
    /// mov eax, [ebx + disp]
    pub fn load(&mut self, disp: u32) -> &mut Self {
        self.b(&[0x8b, 0x83]).b(&disp.to_le_bytes())
    }
    /// mov dword [ebx + disp], v
    pub fn store(&mut self, disp: u32, v: u32) -> &mut Self {
        self.b(&[0xc7, 0x83])
            .b(&disp.to_le_bytes())
            .b(&v.to_le_bytes())
    }
    /// mov [edi + disp], eax
    pub fn save(&mut self, disp: u32) -> &mut Self {
        self.b(&[0x89, 0x87]).b(&disp.to_le_bytes())
    }
    /// Spins until the 16-bit word at [esi] equals `v`.
    pub fn spin_until_word(&mut self, v: u8) -> &mut Self {
        self.b(&[0x66, 0x83, 0x3e, v, 0x75, 0xfa])
    }
    /// Spins until the register at [ebx + disp] reads non-zero.
    pub fn spin_until_reg_nonzero(&mut self, disp: u32) -> &mut Self {
        // mov eax, [ebx + disp] (6 bytes); test eax, eax (2); jz back (2)
        self.load(disp).b(&[0x85, 0xc0, 0x74, 0xf6])
    }
    /// Waits for the i8042 output buffer to fill (a Ctrl+Alt+Del arrives).
    pub fn wait_i8042_data(&mut self) -> &mut Self {
        self.b(&[0xe4, 0x64, 0xa8, 0x01, 0x74, 0xfa])
    }
    /// i8042 CPU reset: the VMM's clean exit path.
    pub fn reset(&mut self) -> &mut Self {
        self.mov_al(0xfe).out_imm_al(0x64)
    }
    pub fn ud2(&mut self) -> &mut Self {
        self.b(&[0x0f, 0x0b])
    }
    pub fn jmp_self(&mut self) -> &mut Self {
        self.b(&[0xeb, 0xfe])
    }
}

/// Guest code is loaded here in every mode.
pub const CODE_ADDR: u64 = 0x10000;

pub fn tiny_vm(vcpus: u8, mem_mib: u64) -> (MicroVm, Capture) {
    let cap = Capture::default();
    let vm =
        MicroVm::new(vcpus, mem_mib, Box::new(cap.clone()), Instant::now()).expect("create VM");
    (vm, cap)
}

/// Waits for the VM with a deadline; a hung guest is forced down so the
/// test fails instead of hanging.
pub fn wait_with_deadline(running: RunningVm, limit: Duration) -> ExitReason {
    let shared = running.shared.clone();
    let start = Instant::now();
    let watchdog = std::thread::spawn(move || {
        while start.elapsed() < limit && !shared.stopping() {
            std::thread::sleep(Duration::from_millis(5));
        }
        if !shared.stopping() {
            shared.request_exit(ExitReason::VcpuError("test deadline exceeded".into()));
        }
    });
    let r = running.wait().expect("vm run");
    watchdog.join().unwrap();
    r
}
pub mod kernel;
