#![no_main]
//! Descriptor-chain parsing of virtio-vsock on fuzzer-controlled guest memory.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    berth_vmm::fuzz::vsock(data);
});
