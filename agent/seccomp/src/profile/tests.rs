use berth_agent_protocol::{SeccompAction, SeccompArg, SeccompOp, SeccompProfile, SeccompRule};

use super::*;
use crate::tests::{errno_of, in_child, DEFAULT_CAPS, SYS_ADMIN};

/// Runs `filter` over a syscall the way the kernel does, for exhaustive checks of the
/// comparisons without a process per case. Real-process tests below check the kernel agrees.
fn run(filter: &[libc::sock_filter], nr: u32, args: [u64; 6]) -> u32 {
    let mut data = [0u8; 64];
    data[0..4].copy_from_slice(&nr.to_ne_bytes());
    data[4..8].copy_from_slice(&crate::AUDIT_ARCH_X86_64.to_ne_bytes());
    for (i, a) in args.iter().enumerate() {
        data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_ne_bytes());
    }
    let (mut pc, mut acc) = (0usize, 0u32);
    loop {
        let f = filter[pc];
        pc += 1;
        let cond = |taken: bool| usize::from(if taken { f.jt } else { f.jf });
        match f.code {
            BPF_LD_W_ABS => {
                let k = f.k as usize;
                acc = u32::from_ne_bytes(data[k..k + 4].try_into().unwrap());
            }
            BPF_ALU_AND_K => acc &= f.k,
            BPF_JEQ_K => pc += cond(acc == f.k),
            BPF_JGT_K => pc += cond(acc > f.k),
            BPF_JGE_K => pc += cond(acc >= f.k),
            BPF_RET_K => return f.k,
            other => panic!("unexpected opcode {other:#x}"),
        }
    }
}

fn one_rule(names: &[&str], action: SeccompAction, args: Vec<SeccompArg>) -> SeccompProfile {
    SeccompProfile {
        default_action: SeccompAction::Allow,
        rules: vec![SeccompRule {
            names: names.iter().map(|n| n.to_string()).collect(),
            action,
            args,
            ..Default::default()
        }],
    }
}

const ALLOW: u32 = 0x7fff_0000;
const DENY: u32 = 0x0005_0000 | 13;

#[test]
fn comparisons_on_64_bit_values() {
    let values = [0u64, 1, 5, 0xffff_ffff, 1 << 32, (1 << 32) + 5, u64::MAX];
    for op in [
        SeccompOp::Eq,
        SeccompOp::Ne,
        SeccompOp::Lt,
        SeccompOp::Le,
        SeccompOp::Gt,
        SeccompOp::Ge,
    ] {
        for &v in &values {
            let arg = SeccompArg {
                index: 2,
                value: v,
                value_two: 0,
                op,
            };
            let f = build(
                &one_rule(&["read"], SeccompAction::Errno(13), vec![arg]),
                DEFAULT_CAPS,
                (6, 1),
            )
            .unwrap();
            for &x in &values {
                let want = match op {
                    SeccompOp::Eq => x == v,
                    SeccompOp::Ne => x != v,
                    SeccompOp::Lt => x < v,
                    SeccompOp::Le => x <= v,
                    SeccompOp::Gt => x > v,
                    SeccompOp::Ge => x >= v,
                    SeccompOp::MaskedEq => unreachable!(),
                };
                let got = run(&f, 0, [0, 0, x, 0, 0, 0]);
                assert_eq!(got == DENY, want, "{op:?} {v:#x} against {x:#x}");
            }
        }
    }
    // Docker's clone rule: (flags & namespace bits) == 0.
    let masked = SeccompArg {
        index: 0,
        value: 0x7E02_0000,
        value_two: 0,
        op: SeccompOp::MaskedEq,
    };
    let f = build(
        &one_rule(&["clone"], SeccompAction::Errno(13), vec![masked]),
        DEFAULT_CAPS,
        (6, 1),
    )
    .unwrap();
    let clone = libc::SYS_clone as u32;
    assert_eq!(run(&f, clone, [libc::SIGCHLD as u64, 0, 0, 0, 0, 0]), DENY);
    assert_eq!(
        run(&f, clone, [libc::CLONE_NEWNET as u64, 0, 0, 0, 0, 0]),
        ALLOW
    );
    // Another syscall, and the arguments of a failed match, fall through to later rules.
    assert_eq!(run(&f, 0, [0; 6]), ALLOW);
}

#[test]
fn rules_follow_caps_kernel_and_order() {
    let profile = SeccompProfile {
        default_action: SeccompAction::Errno(1),
        rules: vec![
            SeccompRule {
                names: vec!["mount".into(), "no_such_call".into()],
                action: SeccompAction::Allow,
                include_caps: vec!["CAP_SYS_ADMIN".into()],
                ..Default::default()
            },
            SeccompRule {
                names: vec!["getpid".into()],
                action: SeccompAction::Allow,
                include_min_kernel: Some((4, 8)),
                ..Default::default()
            },
            SeccompRule {
                names: vec!["getppid".into()],
                action: SeccompAction::Allow,
                exclude_caps: vec!["CAP_SYS_ADMIN".into()],
                ..Default::default()
            },
            // Same as the default: changes nothing (libseccomp refuses such rules).
            SeccompRule {
                names: vec!["read".into()],
                action: SeccompAction::Errno(1),
                ..Default::default()
            },
            SeccompRule {
                names: vec!["read".into(), "write".into()],
                action: SeccompAction::KillProcess,
                ..Default::default()
            },
        ],
    };
    let eperm = 0x0005_0001;
    let nr = |n: i64| n as u32;
    let f = build(&profile, DEFAULT_CAPS, (6, 1)).unwrap();
    assert_eq!(run(&f, nr(libc::SYS_mount), [0; 6]), eperm);
    assert_eq!(run(&f, nr(libc::SYS_getpid), [0; 6]), ALLOW);
    assert_eq!(run(&f, nr(libc::SYS_getppid), [0; 6]), ALLOW);
    assert_eq!(run(&f, nr(libc::SYS_read), [0; 6]), 0x8000_0000);
    assert_eq!(run(&f, nr(libc::SYS_write), [0; 6]), 0x8000_0000);
    let admin = build(&profile, SYS_ADMIN, (4, 4)).unwrap();
    assert_eq!(run(&admin, nr(libc::SYS_mount), [0; 6]), ALLOW);
    assert_eq!(run(&admin, nr(libc::SYS_getpid), [0; 6]), eperm);
    assert_eq!(run(&admin, nr(libc::SYS_getppid), [0; 6]), eperm);
}

#[test]
fn too_large_a_profile_is_an_error() {
    let names: Vec<String> = (0..2100).map(|_| "read".to_string()).collect();
    let mut p = one_rule(&[], SeccompAction::Errno(1), vec![]);
    // Distinct rules so nothing is deduplicated.
    p.rules = names
        .iter()
        .map(|n| SeccompRule {
            names: vec![n.clone()],
            action: SeccompAction::Errno(1),
            ..Default::default()
        })
        .collect();
    let err = build(&p, DEFAULT_CAPS, (6, 1)).unwrap_err();
    assert!(err.contains("4096"), "{err}");
}

#[test]
fn a_profile_applies_in_a_real_process() {
    let mut p = one_rule(
        &["mkdir", "mkdirat"],
        SeccompAction::Errno(libc::EPERM as u16),
        vec![],
    );
    p.rules.push(SeccompRule {
        names: vec!["getpgid".into()],
        action: SeccompAction::Errno(libc::EDOM as u16),
        args: vec![SeccompArg {
            index: 0,
            value: 1 << 32,
            value_two: 0,
            op: SeccompOp::Ge,
        }],
        ..Default::default()
    });
    let filter = build(&p, DEFAULT_CAPS, kernel_version()).unwrap();
    let code = in_child(filter, || {
        let mut bad = 0;
        // SAFETY: syscalls with harmless arguments.
        unsafe {
            let dir = c"/nonexistent-berth-seccomp-test/x";
            if errno_of(libc::syscall(libc::SYS_mkdir, dir.as_ptr(), 0o700)) != libc::EPERM {
                bad |= 1;
            }
            let at = libc::syscall(libc::SYS_mkdirat, libc::AT_FDCWD, dir.as_ptr(), 0o700);
            if errno_of(at) != libc::EPERM {
                bad |= 2;
            }
            if errno_of(libc::syscall(libc::SYS_getpgid, 1i64 << 33)) != libc::EDOM {
                bad |= 4;
            }
            if libc::syscall(libc::SYS_getpgid, 0) <= 0 {
                bad |= 8;
            }
        }
        bad
    });
    assert_eq!(code, 0, "profile checks failed (bitmask {code:#b})");
}
