//! Run options applied inside the container, through the real docker CLI and docker-py, in
//! both isolation modes where they mean something: `--ulimit`, `--sysctl`,
//! `--oom-score-adj`, `--shm-size`, `--device`, with Docker's validation errors.

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

/// Whether berthd (running as us) holds CAP_SYS_RESOURCE.
fn has_cap_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    eff & (1 << 24) != 0
}

fn run(d: &TestDaemon, mode: &str, args: &[&str], script: &str) -> String {
    let iso = format!("--isolation={mode}");
    let mut all = vec!["run", "--rm", iso.as_str()];
    all.extend_from_slice(args);
    all.extend_from_slice(&["bb", "sh", "-c", script]);
    let o = d.docker(&all);
    assert!(o.status.success(), "{mode} {args:?}: {}", stderr(&o));
    stdout(&o)
}

#[test]
fn ulimit_sysctl_oom_score_and_shm_size_apply_in_both_modes() {
    let d = daemon();
    for mode in modes() {
        let out = run(
            &d,
            mode,
            &["--ulimit", "nofile=1234:2345", "--ulimit", "nproc=300"],
            "ulimit -n; ulimit -Hn; ulimit -u",
        );
        assert_eq!(out, "1234\n2345\n300\n", "{mode}");

        let out = run(
            &d,
            mode,
            &[
                "--sysctl",
                "net.ipv4.ip_forward=1",
                "--sysctl",
                "kernel.shmmni=1000",
            ],
            "cat /proc/sys/net/ipv4/ip_forward /proc/sys/kernel/shmmni; \
             echo 0 > /proc/sys/net/ipv4/ip_forward 2>/dev/null || echo read-only",
        );
        assert_eq!(out, "1\n1000\nread-only\n", "{mode}");

        // Lowering the score needs CAP_SYS_RESOURCE, which this sandbox's root may lack.
        let adj = if has_cap_sys_resource() {
            "-500"
        } else {
            "500"
        };
        let out = run(
            &d,
            mode,
            &["--oom-score-adj", adj],
            "cat /proc/self/oom_score_adj",
        );
        assert_eq!(out.trim(), adj, "{mode}");
        // execs get the container's limits too.
        let iso = format!("--isolation={mode}");
        let id = d
            .docker_ok(&[
                "run",
                "-d",
                &iso,
                "--oom-score-adj",
                "300",
                "--ulimit",
                "nofile=777",
                "bb",
                "sleep",
                "1000",
            ])
            .trim()
            .to_string();
        assert_eq!(
            d.docker_ok(&[
                "exec",
                &id,
                "sh",
                "-c",
                "cat /proc/self/oom_score_adj; ulimit -n"
            ]),
            "300\n777\n",
            "{mode}"
        );
        d.docker_ok(&["rm", "-f", &id]);

        let out = run(
            &d,
            mode,
            &["--shm-size", "16m"],
            "grep ' /dev/shm ' /proc/mounts",
        );
        assert!(out.contains("size=16384k"), "{mode}: {out}");
        let out = run(&d, mode, &[], "grep ' /dev/shm ' /proc/mounts");
        assert!(out.contains("size=65536k"), "{mode}: {out}");
    }
    let id = d.docker_ok(&["create", "bb", "true"]).trim().to_string();
    assert_eq!(
        d.docker_ok(&["inspect", "-f", "{{.HostConfig.ShmSize}}", &id])
            .trim(),
        "67108864"
    );
}

#[test]
fn device_nodes_and_their_cgroup_rules() {
    let d = common::images::daemon_with_busybox("bb");
    // /dev/null under another name: readable and writable with rwm.
    let out = d.docker_ok(&[
        "run",
        "--rm",
        "--device",
        "/dev/null:/dev/mynull",
        "bb",
        "sh",
        "-c",
        "ls -l /dev/mynull; echo x > /dev/mynull && echo wrote",
    ]);
    assert!(out.starts_with("crw"), "{out}");
    assert!(out.contains("1,   3") && out.ends_with("wrote\n"), "{out}");
    // A device outside Docker's default list (/dev/fuse, 10:229): opened read-write with
    // `rw`, refused by the device cgroup for writing with `r` (cgroup v1 hosts).
    if std::path::Path::new("/sys/fs/cgroup/devices").exists()
        && std::path::Path::new("/dev/fuse").exists()
    {
        let out = d.docker_ok(&[
            "run",
            "--rm",
            "--device",
            "/dev/fuse:/dev/f:rw",
            "bb",
            "sh",
            "-c",
            "exec 3<>/dev/f && echo opened",
        ]);
        assert_eq!(out, "opened\n");
        let o = d.docker(&[
            "run",
            "--rm",
            "--device",
            "/dev/fuse:/dev/f:r",
            "bb",
            "sh",
            "-c",
            "exec 3</dev/f && echo read; exec 4>/dev/f",
        ]);
        assert_eq!(stdout(&o), "read\n");
        assert!(
            stderr(&o).contains("Operation not permitted"),
            "{}",
            stderr(&o)
        );
    } else {
        eprintln!("SKIPPED (part): no cgroup v1 devices controller to check permissions");
    }
    let err = d.docker_err(&["run", "--rm", "--device", "/dev/nonexistent", "bb", "true"]);
    assert!(err.contains("error gathering device information"), "{err}");
}

#[test]
fn run_options_are_validated_like_docker() {
    let d = common::images::daemon_with_busybox("bb");
    for (args, want) in [
        (
            vec!["--oom-score-adj", "1001"],
            "Invalid value 1001, range for oom score adj is [-1000, 1000]",
        ),
        (
            vec!["--network", "host", "--sysctl", "net.ipv4.ip_forward=1"],
            "not allowed in host network namespace",
        ),
    ] {
        let mut all = vec!["create"];
        all.extend_from_slice(&args);
        all.extend_from_slice(&["bb", "true"]);
        let err = d.docker_err(&all);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // Values the CLI would refuse itself reach the API through docker-py.
    let script = r#"
import docker, sys
c = docker.DockerClient(base_url=sys.argv[1])
for kw, want in [
    (dict(ulimits=[docker.types.Ulimit(name="bogus", soft=1, hard=1)]), "invalid ulimit type: bogus"),
    (dict(ulimits=[docker.types.Ulimit(name="nofile", soft=5, hard=2)]),
     "ulimit soft limit must be less than or equal to hard limit: 5 > 2"),
    (dict(shm_size=-1), "SHM size can not be less than 0"),
    (dict(sysctls={"kernel.panic": "1"}), 'sysctl "kernel.panic" is not in a separate kernel namespace'),
]:
    try:
        c.containers.create("bb", "true", **kw)
        sys.exit(f"accepted {kw}")
    except docker.errors.APIError as e:
        assert e.status_code == 400, (kw, e.status_code)
        assert want in str(e.explanation), (kw, e.explanation)
print("ok")
"#;
    let o = std::process::Command::new("python3")
        .args(["-c", script, &d.host()])
        .output()
        .unwrap();
    assert_eq!(stdout(&o), "ok\n", "{}", stderr(&o));
    if !skip_without_microvm() {
        let d = daemon();
        let err = d.docker_err(&[
            "create",
            "--isolation=microvm",
            "--device",
            "/dev/null",
            "bb",
            "true",
        ]);
        assert!(
            err.contains("not supported with microvm isolation"),
            "{err}"
        );
    }
}

/// `--pid host`, `--ipc host`, `--uts host` (process isolation): the container sees the
/// host's namespace of that kind, and never renames the host; `container:` is refused.
#[test]
fn host_pid_ipc_and_uts_namespaces() {
    let d = common::images::daemon_with_busybox("bb");
    let host_ns = |kind: &str| {
        std::fs::read_link(format!("/proc/self/ns/{kind}"))
            .unwrap()
            .to_string_lossy()
            .to_string()
    };
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let script = "readlink /proc/self/ns/pid; readlink /proc/self/ns/ipc; readlink /proc/self/ns/uts; hostname";
    let shared = run(
        &d,
        "process",
        &[
            "--pid",
            "host",
            "--ipc",
            "host",
            "--uts",
            "host",
            "--hostname",
            "ignored",
        ],
        script,
    );
    let lines: Vec<&str> = shared.lines().collect();
    assert_eq!(lines[0], host_ns("pid"), "{shared}");
    assert_eq!(lines[1], host_ns("ipc"), "{shared}");
    assert_eq!(lines[2], host_ns("uts"), "{shared}");
    assert_eq!(lines[3], host_name.trim(), "{shared}");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap(),
        host_name,
        "the host keeps its name"
    );
    // The host's processes are visible with --pid host (this test's own pid among them).
    let me = std::process::id();
    let seen = run(
        &d,
        "process",
        &["--pid", "host"],
        &format!("test -d /proc/{me} && echo seen"),
    );
    assert_eq!(seen, "seen\n");

    let private = run(&d, "process", &["--ipc", "shareable"], script);
    let lines: Vec<&str> = private.lines().collect();
    for (i, kind) in ["pid", "ipc", "uts"].iter().enumerate() {
        assert_ne!(lines[i], host_ns(kind), "{kind}: {private}");
    }

    // `container:<id>` modes: shared_namespaces.rs.
    let e = stderr(&d.docker(&[
        "run",
        "--rm",
        "--ipc",
        "host",
        "--sysctl",
        "kernel.shmmax=1000000",
        "bb",
        "true",
    ]));
    assert!(e.contains("not allowed in host IPC namespace"), "{e}");
}

/// `--group-add` (by number and by the image's group name), `--env-file` and
/// `--stop-timeout` (in the record, and how long `docker stop` waits for a process that
/// ignores SIGTERM), in both modes, through the CLI.
#[test]
fn group_add_env_file_and_stop_timeout() {
    let d = daemon();
    let env_file = d.dir.path().join("env.list");
    std::fs::write(
        &env_file,
        "# a comment\nFROM_FILE=one two\nEMPTY=\nPASSED\n",
    )
    .unwrap();
    let env_file = env_file.to_str().unwrap();
    for mode in modes() {
        let out = d
            .docker_cmd(&[
                "run",
                "--rm",
                &format!("--isolation={mode}"),
                "--group-add",
                "4242",
                "--group-add",
                "user",
                "--env-file",
                env_file,
                "bb",
                "sh",
                "-c",
                "id -G; id -Gn; echo \"[$FROM_FILE] [${EMPTY-unset}] [$PASSED]\"",
            ])
            .env("PASSED", "from-cli-env")
            .output()
            .unwrap();
        assert!(out.status.success(), "{mode}: {}", stderr(&out));
        let out = stdout(&out);
        let lines: Vec<&str> = out.lines().collect();
        let gids: Vec<&str> = lines[0].split_whitespace().collect();
        assert!(
            gids.contains(&"4242") && gids.contains(&"1000"),
            "{mode}: {out}"
        );
        assert!(
            lines[1].split_whitespace().any(|g| g == "user"),
            "{mode}: {out}"
        );
        assert_eq!(lines[2], "[one two] [] [from-cli-env]", "{mode}: {out}");

        // Ignores SIGTERM: `docker stop` must wait the container's own timeout, then kill.
        let name = format!("st-{mode}");
        d.docker_ok(&[
            "run",
            "-d",
            &format!("--isolation={mode}"),
            "--name",
            &name,
            "--stop-timeout",
            "3",
            "bb",
            "sh",
            "-c",
            "trap '' TERM; echo ready; while :; do sleep 0.1; done",
        ]);
        common::eventually("the trap is set", 60, || {
            match d.docker_ok(&["logs", &name]).contains("ready") {
                true => Ok(()),
                false => Err("not yet".into()),
            }
        });
        assert_eq!(
            d.docker_ok(&["inspect", "-f", "{{.Config.StopTimeout}}", &name])
                .trim(),
            "3"
        );
        let t0 = std::time::Instant::now();
        d.docker_ok(&["stop", &name]);
        let took = t0.elapsed();
        assert!(
            took >= std::time::Duration::from_millis(2900),
            "{mode}: stop returned after {took:?}, before the 3 s timeout"
        );
        assert!(
            took < std::time::Duration::from_secs(9),
            "{mode}: stop took {took:?}: the 10 s default, not --stop-timeout"
        );
        assert_eq!(
            d.docker_ok(&["inspect", "-f", "{{.State.ExitCode}}", &name])
                .trim(),
            "137",
            "{mode}"
        );
        d.docker_ok(&["rm", &name]);
    }
}
