#![no_main]
//! `--security-opt seccomp=<profile.json>`: a client's JSON, decoded and checked by the
//! host (`berth-container-create`), then compiled to classic BPF by the code the agent
//! runs (`berth-seccomp`) for a few capability sets and kernels. A profile the host
//! accepts either compiles to a program the kernel would load, or is refused with a
//! message; it never panics the compiler.

use berth_agent_protocol::SeccompMode;
use libfuzzer_sys::fuzz_target;

const NO_CAPS: berth_seccomp::HasCap = &|_| false;
const ALL_CAPS: berth_seccomp::HasCap = &|_| true;
const SOME_CAPS: berth_seccomp::HasCap = &|c| c.len() % 2 == 0;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(mode) = berth_container_create::seccomp_profile::parse(text) else {
        return;
    };
    if let SeccompMode::Profile(p) = &mode {
        for (has, kernel) in [(NO_CAPS, (6, 1)), (ALL_CAPS, (3, 10)), (SOME_CAPS, (5, 4))] {
            if let Ok(program) = berth_seccomp::profile::build(p, has, kernel) {
                if let Err(e) = berth_seccomp::check_program(&program) {
                    panic!("the compiler made a program the kernel refuses: {e}");
                }
            }
        }
    }
});
