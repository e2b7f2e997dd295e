//! containerd runs berth containers through `containerd-shim-berth-v2` (process isolation):
//! a real containerd 1.6 of the test's own, driven with `ctr`.

mod common;

use std::time::Duration;

use common::{err, out, Containerd};

fn setup() -> Option<Containerd> {
    if let Some(why) = common::unavailable() {
        eprintln!("SKIPPED: {why}");
        return None;
    }
    let c = Containerd::start();
    c.import_busybox();
    Some(c)
}

/// Nothing of the test's containers is left: no containers or tasks in containerd, no
/// shim or agent processes, no agent run dirs.
fn assert_nothing_left(c: &Containerd) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let tasks = c.ctr_ok(&["task", "ls", "-q"]);
        let containers = c.ctr_ok(&["c", "ls", "-q"]);
        let procs = c.leftover_processes();
        let dirs = c.leftover_run_dirs();
        let shims = c.shim_pids();
        if tasks.trim().is_empty()
            && containers.trim().is_empty()
            && procs.is_empty()
            && dirs.is_empty()
            && shims.is_empty()
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "left behind: tasks {tasks:?}, containers {containers:?}, processes {procs:?}, run dirs {dirs:?}, shims {shims:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn run_rm_stdout_and_exit_codes() {
    let Some(c) = setup() else { return };
    // The shim's task events reach containerd (`ctr events` subscribes to them).
    let mut events = c
        .ctr_cmd(&["events"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let o = c.run("hello", &["--rm"], &["echo", "hello from berth"]);
    assert!(o.status.success(), "{}{}", out(&o), err(&o));
    assert_eq!(out(&o), "hello from berth\n");
    std::thread::sleep(Duration::from_millis(300));
    let _ = events.kill();
    let seen = out(&events.wait_with_output().unwrap());
    for topic in [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exit",
        "/tasks/delete",
    ] {
        assert!(
            seen.lines()
                .any(|l| l.contains(topic) && l.contains("hello")),
            "no {topic} event for the task:\n{seen}"
        );
    }

    // stdout and stderr through their own FIFOs, the exit code back to ctr.
    let o = c.run(
        "codes",
        &["--rm"],
        &["sh", "-c", "echo out; echo err >&2; exit 3"],
    );
    assert_eq!(o.status.code(), Some(3), "{}{}", out(&o), err(&o));
    assert_eq!(out(&o), "out\n");
    assert!(err(&o).contains("err\n"), "stderr: {}", err(&o));

    // The spec's env and cwd reach the process.
    let o = c.run(
        "spec",
        &["--rm", "--env", "GREETING=hi", "--cwd", "/tmp"],
        &["sh", "-c", "echo $GREETING $(pwd) $(id -u)"],
    );
    assert!(o.status.success(), "{}{}", out(&o), err(&o));
    assert_eq!(out(&o), "hi /tmp 0\n");

    // The spec's capabilities (containerd's defaults are Docker's: bounding set
    // 0xa80425fb); `--privileged` gets them all and may mount.
    let o = c.run(
        "caps",
        &["--rm"],
        &["sh", "-c", "grep CapBnd /proc/self/status"],
    );
    assert_eq!(out(&o), "CapBnd:\t00000000a80425fb\n", "{}", err(&o));
    let o = c.run(
        "priv",
        &["--rm", "--privileged"],
        &[
            "sh",
            "-c",
            "mkdir -p /mnt/t && mount -t tmpfs none /mnt/t && echo mounted",
        ],
    );
    assert_eq!(out(&o), "mounted\n", "{}", err(&o));
    let o = c.run(
        "unpriv",
        &["--rm"],
        &[
            "sh",
            "-c",
            "mkdir -p /mnt/t && mount -t tmpfs none /mnt/t && echo mounted",
        ],
    );
    assert!(
        !o.status.success(),
        "mounted without privileges: {}",
        out(&o)
    );

    // stdin through its FIFO, closed at EOF (CloseIO): `cat` ends.
    let mut cmd = c.ctr_cmd(&[
        "run",
        "--rm",
        "--runtime",
        common::RUNTIME,
        "--fifo-dir",
        c.fifo_dir().to_str().unwrap(),
        common::IMAGE,
        "stdin",
        "cat",
    ]);
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"through stdin\n").unwrap();
    }
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}{}", out(&o), err(&o));
    assert_eq!(out(&o), "through stdin\n");

    // A command that does not exist fails the start.
    let o = c.run("missing", &["--rm"], &["/no/such/binary"]);
    assert!(!o.status.success(), "{}{}", out(&o), err(&o));
    let _ = c.ctr(&["task", "rm", "-f", "missing"]);
    let _ = c.ctr(&["c", "rm", "missing"]);
    assert_nothing_left(&c);
    for id in [
        "hello", "codes", "spec", "caps", "priv", "unpriv", "stdin", "missing",
    ] {
        assert!(!c.shim_socket(id).exists(), "{id}: shim socket left");
    }
}

#[test]
fn exec_kill_pause_and_task_ls() {
    let Some(c) = setup() else { return };
    let o = c.run("svc", &["-d"], &["sleep", "1000"]);
    assert!(o.status.success(), "{}{}", out(&o), err(&o));
    c.wait_status("svc", "RUNNING", Duration::from_secs(10));

    let fifo = c.fifo_dir();
    let fifo = fifo.to_str().unwrap();
    let o = c.ctr(&[
        "task",
        "exec",
        "--fifo-dir",
        fifo,
        "--exec-id",
        "e1",
        "svc",
        "sh",
        "-c",
        "echo exec says hi; cat /proc/1/cmdline | tr '\\0' ' '",
    ]);
    assert!(o.status.success(), "{}{}", out(&o), err(&o));
    assert_eq!(out(&o), "exec says hi\nsleep 1000 ");
    let o = c.ctr(&[
        "task",
        "exec",
        "--fifo-dir",
        fifo,
        "--exec-id",
        "e2",
        "svc",
        "sh",
        "-c",
        "exit 5",
    ]);
    assert_eq!(o.status.code(), Some(5), "{}{}", out(&o), err(&o));

    // `ctr task ps` lists the container's processes by host pid.
    let ps = c.ctr_ok(&["task", "ps", "svc"]);
    let pids: Vec<u32> = ps
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    assert_eq!(pids.len(), 1, "{ps}");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", pids[0])).unwrap();
    assert_eq!(cmdline, b"sleep\x001000\x00");

    c.ctr_ok(&["task", "pause", "svc"]);
    c.wait_status("svc", "PAUSED", Duration::from_secs(10));
    assert_eq!(common::freezer_state("svc").as_deref(), Some("FROZEN"));
    c.ctr_ok(&["task", "resume", "svc"]);
    c.wait_status("svc", "RUNNING", Duration::from_secs(10));
    assert_eq!(common::freezer_state("svc").as_deref(), Some("THAWED"));

    let metrics = c.ctr_ok(&["task", "metrics", "svc"]);
    assert!(
        metrics.contains("memory") || metrics.contains("pids"),
        "{metrics}"
    );

    // Update (ctr 1.6 has no `task update`: the shim's Task API directly): a memory
    // limit the agent applies to the running container's cgroup.
    common::update_memory_limit(&c, "svc", 64 << 20);
    assert_eq!(common::memory_limit("svc"), Some(64 << 20));

    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", "svc"]);
    c.wait_status("svc", "STOPPED", Duration::from_secs(10));
    assert!(
        !std::path::Path::new(&format!("/proc/{}", pids[0])).exists(),
        "the container's process survived SIGKILL"
    );
    c.ctr_ok(&["task", "rm", "svc"]);
    c.ctr_ok(&["c", "rm", "svc"]);
    assert_nothing_left(&c);
    assert!(!common::cgroup_exists("svc"), "cgroup left");
}

#[test]
fn a_dead_agent_or_shim_ends_the_task() {
    let Some(c) = setup() else { return };
    // The agent (the container's supervisor) is SIGKILLed: the task exits, 137.
    let o = c.run("victim", &["-d"], &["sleep", "1000"]);
    assert!(o.status.success(), "{}{}", out(&o), err(&o));
    c.wait_status("victim", "RUNNING", Duration::from_secs(10));
    let agents: Vec<i32> = c
        .leftover_processes()
        .iter()
        .filter(|p| p.contains("berth-agent serve"))
        .filter_map(|p| p.split(':').next()?.parse().ok())
        .collect();
    assert_eq!(agents.len(), 1, "{:?}", c.leftover_processes());
    // SAFETY: the agent this test's shim started.
    unsafe { libc::kill(agents[0], libc::SIGKILL) };
    c.wait_status("victim", "STOPPED", Duration::from_secs(15));
    c.ctr_ok(&["task", "rm", "victim"]);
    c.ctr_ok(&["c", "rm", "victim"]);

    // The shim is SIGKILLed: containerd runs the shim's `delete`, which stops the agent.
    let o = c.run("orphan", &["-d"], &["sleep", "1000"]);
    assert!(o.status.success(), "{}{}", out(&o), err(&o));
    c.wait_status("orphan", "RUNNING", Duration::from_secs(10));
    let shims = c.shim_pids();
    assert_eq!(shims.len(), 1);
    // SAFETY: the shim of this test's containerd.
    unsafe { libc::kill(shims[0], libc::SIGKILL) };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        match c.task_status("orphan").as_deref() {
            None | Some("STOPPED") => break,
            st => assert!(
                std::time::Instant::now() < deadline,
                "task still {st:?} after its shim died"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = c.ctr(&["task", "rm", "orphan"]);
    c.ctr_ok(&["c", "rm", "orphan"]);
    assert_nothing_left(&c);
    for id in ["victim", "orphan"] {
        assert!(!c.shim_socket(id).exists(), "{id}: shim socket left");
        assert!(!common::cgroup_exists(id), "{id}: cgroup left");
    }
}

#[test]
fn containers_of_one_pod_share_a_shim() {
    let Some(c) = setup() else { return };
    // What containerd's CRI puts on a pod's containers: the sandbox's id.
    let pod = ["--annotation", "io.kubernetes.cri.sandbox-id=pod1"];
    for id in ["pod1", "pod1-app"] {
        let mut flags = vec!["-d"];
        flags.extend_from_slice(&pod);
        let o = c.run(id, &flags, &["sleep", "1000"]);
        assert!(o.status.success(), "{}{}", out(&o), err(&o));
        c.wait_status(id, "RUNNING", Duration::from_secs(10));
    }
    assert_eq!(c.shim_pids().len(), 1, "one shim serves the pod");
    // Each container still has its own agent.
    let agents = c
        .leftover_processes()
        .iter()
        .filter(|p| p.contains("berth-agent serve"))
        .count();
    assert_eq!(agents, 2);
    // The shim outlives the first container's removal and exits after the last.
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", "pod1-app"]);
    c.wait_status("pod1-app", "STOPPED", Duration::from_secs(10));
    c.ctr_ok(&["task", "rm", "pod1-app"]);
    c.ctr_ok(&["c", "rm", "pod1-app"]);
    assert_eq!(c.task_status("pod1").as_deref(), Some("RUNNING"));
    assert_eq!(c.shim_pids().len(), 1);
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", "pod1"]);
    c.wait_status("pod1", "STOPPED", Duration::from_secs(10));
    c.ctr_ok(&["task", "rm", "pod1"]);
    c.ctr_ok(&["c", "rm", "pod1"]);
    assert_nothing_left(&c);
}
