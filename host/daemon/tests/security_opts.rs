//! `--security-opt seccomp=<profile.json>` (Docker's profile format) and `--cgroupns
//! private|host`, in both isolation modes, through the real docker CLI and the raw API.

mod common;

use common::microvm::{daemon, skip_without_microvm};
use common::{stderr, stdout, TestDaemon};

/// The modes to test: process always, microvm where it can run here.
fn modes() -> Vec<&'static str> {
    if skip_without_microvm() {
        vec!["process"]
    } else {
        vec!["process", "microvm"]
    }
}

/// Allows everything but `mkdir`/`mkdirat` (EPERM) and `rmdir` (ENOSYS, via `errnoRet`);
/// `s390x`-only and `CAP_SYS_ADMIN`-only rules must not apply here.
const MKDIR_PROFILE: &str = r#"{
    "defaultAction": "SCMP_ACT_ALLOW",
    "archMap": [{"architecture": "SCMP_ARCH_X86_64",
                 "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]}],
    "syscalls": [
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"},
        {"name": "rmdir", "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
        {"names": ["getpid"], "action": "SCMP_ACT_KILL", "includes": {"arches": ["s390x"]}},
        {"names": ["uname"], "action": "SCMP_ACT_KILL", "includes": {"caps": ["CAP_SYS_ADMIN"]}}
    ]
}"#;

#[test]
fn seccomp_profile_from_a_file_applies_in_both_modes() {
    let d = daemon();
    let profile = d.dir.path().join("no-mkdir.json");
    std::fs::write(&profile, MKDIR_PROFILE).unwrap();
    let opt = format!("seccomp={}", profile.display());
    let script = "mkdir /tmp/a 2>&1; echo mkdir=$?; \
                  rmdir /tmp 2>&1; echo rmdir=$?; uname -s";
    for mode in modes() {
        let iso = format!("--isolation={mode}");
        let name = format!("sc-{mode}");
        let out = d.docker_ok(&[
            "run",
            "--name",
            &name,
            &iso,
            "--security-opt",
            &opt,
            "bb",
            "sh",
            "-c",
            script,
        ]);
        assert!(out.contains("Operation not permitted"), "{mode}: {out}");
        assert!(out.contains("mkdir=1"), "{mode}: {out}");
        assert!(out.contains("Function not implemented"), "{mode}: {out}");
        assert!(out.ends_with("Linux\n"), "{mode}: {out}");
        // The profile is kept as Docker keeps it: the JSON text in SecurityOpt.
        let opts = d.docker_ok(&["inspect", "-f", "{{json .HostConfig.SecurityOpt}}", &name]);
        assert!(opts.contains("SCMP_ACT_ERRNO"), "{mode}: {opts}");
        // An exec gets the same filter.
        d.docker_ok(&["rm", "-f", &name]);
        let run = d.docker_ok(&[
            "run",
            "-d",
            "--name",
            &name,
            &iso,
            "--security-opt",
            &opt,
            "bb",
            "sleep",
            "60",
        ]);
        assert!(!run.trim().is_empty());
        let o = d.docker(&["exec", &name, "mkdir", "/tmp/b"]);
        assert!(!o.status.success(), "{mode}: exec mkdir succeeded");
        assert!(
            stderr(&o).contains("Operation not permitted"),
            "{mode}: {}",
            stderr(&o)
        );
        d.docker_ok(&["rm", "-f", &name]);
        // Without the profile, the default filter allows mkdir.
        let out = d.docker_ok(&[
            "run",
            "--rm",
            &iso,
            "bb",
            "sh",
            "-c",
            "mkdir /tmp/a && echo ok",
        ]);
        assert_eq!(out, "ok\n", "{mode}");
    }
}

#[test]
fn bad_seccomp_profiles_are_refused_with_400() {
    let d = common::images::daemon_with_busybox("bb");
    for (opt, want) in [
        (
            r#"seccomp={"defaultAction": "SCMP_ACT_BOGUS"}"#,
            "unknown action",
        ),
        ("seccomp={not json", "Decoding seccomp profile failed: "),
        (
            r#"seccomp={"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO","args":[{"index":7,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#,
            "argument index 7",
        ),
    ] {
        let body = serde_json::json!({
            "Image": "bb", "Cmd": ["true"], "HostConfig": {"SecurityOpt": [opt]}
        });
        let (code, text) = d.api("POST", "/containers/create", Some(&body.to_string()));
        assert_eq!(code, 400, "{opt}: {text}");
        let msg = serde_json::from_str::<serde_json::Value>(&text).unwrap()["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            msg.starts_with("Decoding seccomp profile failed: "),
            "{msg}"
        );
        assert!(msg.contains(want), "{opt}: {msg}");
    }
    // Valid JSON the CLI passes on, refused by the daemon with the same message.
    let profile = d.dir.path().join("bad.json");
    std::fs::write(&profile, r#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#).unwrap();
    let opt = format!("seccomp={}", profile.display());
    let err = d.docker_err(&["create", "--security-opt", &opt, "bb", "true"]);
    assert!(err.contains("Decoding seccomp profile failed"), "{err}");
    assert!(d.docker_ok(&["ps", "-aq"]).trim().is_empty());
}

/// What a container's processes show: `/proc/self/cgroup` of the main process (first part)
/// and of an exec (second part), whether `/sys/fs/cgroup` can be written, and whether it
/// holds the container's cgroup.
fn cgroup_view(d: &TestDaemon, mode: &str, extra: &[&str]) -> (String, String, String) {
    let name = format!("cg-{mode}-{}", extra.join("").replace(['-', ' '], ""));
    let iso = format!("--isolation={mode}");
    let script = "cat /proc/self/cgroup; echo ---; \
                  touch /sys/fs/cgroup/probe 2>&1; \
                  c=/sys/fs/cgroup; [ -d $c/memory ] && c=$c/memory; \
                  ls $c | grep -q procs && echo has-procs; \
                  mkdir $c/sub 2>/dev/null && rmdir $c/sub && echo rw; \
                  echo ready; sleep 60";
    let mut args = vec!["run", "-d", "--name", name.as_str(), iso.as_str()];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["bb", "sh", "-c", script]);
    d.docker_ok(&args);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let logs = loop {
        let o = d.docker(&["logs", &name]);
        let all = stdout(&o) + &stderr(&o);
        if all.contains("ready") || std::time::Instant::now() > deadline {
            break all;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let exec = d.docker_ok(&["exec", &name, "cat", "/proc/self/cgroup"]);
    let inspect = d.docker_ok(&[
        "inspect",
        "-f",
        "{{.Id}} {{.HostConfig.CgroupnsMode}}",
        &name,
    ]);
    d.docker_ok(&["rm", "-f", &name]);
    let (own, rest) = logs.split_once("---\n").unwrap_or((&logs, ""));
    (format!("{own}{exec}"), rest.to_string(), inspect)
}

#[test]
fn cgroupns_private_and_host_in_both_modes() {
    let d = daemon();
    for mode in modes() {
        let (cg, fs, inspect) = cgroup_view(&d, mode, &["--cgroupns", "private"]);
        let (id, reported) = inspect.trim().split_once(' ').unwrap();
        assert_eq!(reported, "private", "{mode}");
        // Every hierarchy is rooted at the container's own cgroup, for the exec too.
        assert!(cg.lines().count() >= 2, "{mode}: {cg}");
        assert!(cg.lines().all(|l| l.ends_with(":/")), "{mode}: {cg}");
        assert!(cg.contains("0::/"), "{mode}: {cg}");
        assert!(!cg.contains(id), "{mode}: {cg}");
        assert!(fs.contains("Read-only file system"), "{mode}: {fs}");
        assert!(
            fs.contains("has-procs"),
            "{mode}: the container's cgroup is not mounted: {fs}"
        );
        assert!(!fs.contains("rw\n"), "{mode}: {fs}");

        let (cg, fs, inspect) = cgroup_view(&d, mode, &["--cgroupns", "host"]);
        let (id, reported) = inspect.trim().split_once(' ').unwrap();
        assert_eq!(reported, "host", "{mode}");
        // The agent's namespace: the container's path in the hierarchy shows.
        let own: Vec<&str> = cg.lines().filter(|l| l.contains(id)).collect();
        assert!(
            own.len() >= 2,
            "{mode}: main and exec in the container's cgroup: {cg}"
        );
        assert!(fs.contains("Read-only file system"), "{mode}: {fs}");
        assert!(fs.contains("has-procs"), "{mode}: {fs}");

        // --privileged makes it writable.
        let (_, fs, _) = cgroup_view(&d, mode, &["--cgroupns", "private", "--privileged"]);
        assert!(fs.contains("rw\n"), "{mode}: {fs}");

        // The default is dockerd's for the cgroup version the container runs under.
        let (_, _, inspect) = cgroup_view(&d, mode, &[]);
        let v2 =
            mode == "microvm" || std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let want = if v2 { "private" } else { "host" };
        assert!(inspect.trim().ends_with(want), "{mode}: {inspect}");
    }
}

#[test]
fn invalid_cgroupns_mode_is_refused_with_400() {
    let d = common::images::daemon_with_busybox("bb");
    let body = r#"{"Image":"bb","Cmd":["true"],"HostConfig":{"CgroupnsMode":"shared"}}"#;
    let (code, text) = d.api("POST", "/containers/create", Some(body));
    assert_eq!(code, 400, "{text}");
    assert!(
        text.contains("invalid cgroup namespace mode: shared"),
        "{text}"
    );
    let out = d.docker(&["create", "--cgroupns", "shared", "bb", "true"]);
    assert!(!out.status.success());
}
