use super::*;

fn profile(text: &str) -> SeccompProfile {
    match parse(text).unwrap() {
        SeccompMode::Profile(p) => p,
        other => panic!("not a profile: {other:?}"),
    }
}

fn err(text: &str) -> String {
    match parse(text) {
        Err(e) => e.to_string(),
        other => panic!("expected a 400, got {other:?}"),
    }
}

#[test]
fn docker_format_with_every_field() {
    let p = profile(
        r#"{
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 38,
        "archMap": [{"architecture": "SCMP_ARCH_X86_64",
                     "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]}],
        "syscalls": [
            {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW", "comment": "io"},
            {"name": "mkdir", "action": "SCMP_ACT_ERRNO", "errnoRet": 1, "args": null},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 131072, "op": "SCMP_CMP_EQ"}]},
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
             "excludes": {"caps": ["CAP_SYS_ADMIN"], "arches": ["s390", "s390x"]}},
            {"names": ["bpf"], "action": "SCMP_ACT_ALLOW",
             "includes": {"caps": ["CAP_SYS_ADMIN"], "minKernel": "4.8"}},
            {"names": ["s390_pci_mmio_read"], "action": "SCMP_ACT_ALLOW",
             "includes": {"arches": ["s390x"]}},
            {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW",
             "includes": {"arches": ["amd64", "x32"]}},
            {"names": ["kill"], "action": "SCMP_ACT_KILL_PROCESS", "excludes": {"minKernel": "5.1"}},
            {"names": ["ptrace"], "action": "SCMP_ACT_TRACE", "errnoRet": 7},
            {"names": ["uname"], "action": "SCMP_ACT_LOG"},
            {"names": ["reboot"], "action": "SCMP_ACT_TRAP"},
            {"names": ["acct"], "action": "SCMP_ACT_KILL"}
        ]}"#,
    );
    assert_eq!(p.default_action, SeccompAction::Errno(38));
    let names: Vec<&str> = p.rules.iter().map(|r| r.names[0].as_str()).collect();
    // The s390-only rule is dropped on this architecture; the rest keep their order.
    assert_eq!(
        names,
        [
            "read",
            "mkdir",
            "personality",
            "clone",
            "bpf",
            "arch_prctl",
            "kill",
            "ptrace",
            "uname",
            "reboot",
            "acct"
        ]
    );
    assert_eq!(p.rules[0].names, ["read", "write"]);
    assert_eq!(p.rules[1].action, SeccompAction::Errno(1));
    assert_eq!(
        p.rules[3].args,
        [SeccompArg {
            index: 0,
            value: 0x7E02_0000,
            value_two: 0,
            op: SeccompOp::MaskedEq
        }]
    );
    assert_eq!(p.rules[3].exclude_caps, ["CAP_SYS_ADMIN"]);
    assert_eq!(p.rules[4].include_caps, ["CAP_SYS_ADMIN"]);
    assert_eq!(p.rules[4].include_min_kernel, Some((4, 8)));
    assert_eq!(p.rules[6].action, SeccompAction::KillProcess);
    assert_eq!(p.rules[6].exclude_min_kernel, Some((5, 1)));
    assert_eq!(p.rules[7].action, SeccompAction::Trace(7));
    assert_eq!(p.rules[8].action, SeccompAction::Log);
    assert_eq!(p.rules[9].action, SeccompAction::Trap);
    assert_eq!(p.rules[10].action, SeccompAction::KillThread);
}

#[test]
fn defaults_follow_runc() {
    // ERRNO without errnoRet is EPERM; an empty profile disables seccomp, as in moby.
    let p =
        profile(r#"{"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"]}"#);
    assert_eq!(p.default_action, SeccompAction::Errno(1));
    assert!(p.rules.is_empty());
    assert_eq!(parse("{}").unwrap(), SeccompMode::Unconfined);
}

#[test]
fn bad_profiles_are_refused_with_dockers_prefix() {
    for (text, want) in [
        ("{not json", "Decoding seccomp profile failed: "),
        (r#"{"defaultAction": 3}"#, "invalid type"),
        (
            r#"{"defaultAction": "SCMP_ACT_BOGUS"}"#,
            "unknown action \"SCMP_ACT_BOGUS\"",
        ),
        (
            r#"{"syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}"#,
            "missing action",
        ),
        (r#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#, "not supported"),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_LOG"]}"#,
            "flags",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
             "archMap": [{"architecture": "SCMP_ARCH_X86_64"}]}"#,
            "use either",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_Z80"]}"#,
            "unknown architecture",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW",
             "syscalls": [{"name": "read", "names": ["write"], "action": "SCMP_ACT_ERRNO"}]}"#,
            "use either",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW",
             "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                           "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}"#,
            "argument index 6",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW",
             "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                           "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_ABOUT"}]}]}"#,
            "unknown argument operator",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW",
             "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": 70000}]}"#,
            "out of range",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW",
             "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                           "includes": {"minKernel": "four"}}]}"#,
            "invalid kernel version",
        ),
    ] {
        let m = err(text);
        assert!(m.starts_with("Decoding seccomp profile failed: "), "{m}");
        assert!(m.contains(want), "{text}: {m}");
    }
}
