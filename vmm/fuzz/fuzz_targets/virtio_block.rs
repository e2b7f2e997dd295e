#![no_main]
//! Descriptor-chain parsing of virtio-block on fuzzer-controlled guest memory.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    berth_vmm::fuzz::block(data);
});
