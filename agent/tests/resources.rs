//! Process-mode agent: cgroup limits, OOM, pids, stats/top, pause/resume, cleanup.
mod common;

use std::time::Duration;

use berth_agent_protocol::{ProcessId, ProcessStatus};
use common::*;

#[tokio::test]
async fn memory_limit_oom_kill_is_137() {
    if skip() {
        return;
    }
    let (mut spec, dir) = make_spec(
        "oom",
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
    );
    spec.resources.memory = Some(32 << 20);
    spec.resources.memory_swap = Some(32 << 20);
    let (status, _, _) = run(spec.clone(), &dir).await;
    assert_eq!(status.code, 137);
    assert_eq!(status.signal, Some(9));
    assert!(status.oom_killed);
    for d in cgroup_dirs(&spec.id) {
        assert!(!d.exists(), "leaked cgroup {}", d.display());
    }
    // Under the limit: no OOM.
    let (mut spec, dir) = make_spec(
        "nooom",
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=4M", "count=1"],
    );
    spec.resources.memory = Some(32 << 20);
    let (status, _, _) = run(spec, &dir).await;
    assert_eq!((status.code, status.oom_killed), (0, false));
}

#[tokio::test]
async fn pids_limit_is_enforced() {
    if skip() {
        return;
    }
    let (mut spec, dir) = make_spec(
        "pids",
        &[
            "sh",
            "-c",
            "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 1 & done; wait; echo done",
        ],
    );
    spec.resources.pids_limit = Some(5);
    let (status, _, err) = run(spec, &dir).await;
    // busybox sh aborts the script on the first failed fork.
    assert_eq!(status.code, 2, "{err}");
    assert!(err.contains("can't fork"), "expected fork failures: {err}");
}

#[tokio::test]
async fn stats_top_pause_resume_and_cleanup() {
    if skip() {
        return;
    }
    let (mut spec, dir) = make_spec("stats", &["sh", "-c", "sleep 300 & sleep 301"]);
    spec.resources.memory = Some(64 << 20);
    spec.resources.pids_limit = Some(50);
    spec.resources.nano_cpus = Some(500_000_000);
    spec.resources.cpu_shares = Some(512);
    spec.resources.cpuset_cpus = Some("0".into());
    spec.resources.memory_swap = Some(128 << 20);
    let c = spawn(&spec, &dir).await;
    c.client.start(ProcessId::INIT).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stats = c.client.stats().await.unwrap();
    assert_eq!(stats.memory_limit, 64 << 20);
    assert!(stats.memory_usage > 0);
    assert!(stats.cpu_usage_ns > 0);
    // sh execs its last command, so: sleep 300 (background) + sleep 301.
    assert_eq!(stats.pids_current, 2);
    assert_eq!(stats.pids_limit, 50);
    assert!(stats.system_cpu_usage_ns > 0);
    let v1 = |ctrl: &str, file: &str| {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{ctrl}/berth/{}/{file}", spec.id))
            .map(|s| s.trim().to_string())
    };
    if let Ok(q) = v1("cpu", "cpu.cfs_quota_us") {
        assert_eq!(q, "50000");
        assert_eq!(v1("cpu", "cpu.cfs_period_us").unwrap(), "100000");
        assert_eq!(v1("cpu", "cpu.shares").unwrap(), "512");
        assert_eq!(v1("cpuset", "cpuset.cpus").unwrap(), "0");
        assert_eq!(
            v1("memory", "memory.memsw.limit_in_bytes").unwrap(),
            (128u64 << 20).to_string()
        );
        assert_eq!(v1("pids", "pids.max").unwrap(), "50");
        let procs = v1("memory", "cgroup.procs").unwrap();
        assert_eq!(procs.lines().count(), 2, "{procs}");
    }
    // An exec joins the container's cgroups.
    let exec = berth_agent_protocol::ExecSpec {
        process: berth_agent_protocol::ProcessSpec {
            args: vec!["cat".into(), "/proc/self/cgroup".into()],
            ..Default::default()
        },
        privileged: false,
    };
    let id = c.client.exec(exec).await.unwrap();
    let out = c.client.output(id).await.unwrap();
    c.client.start(id).await.unwrap();
    let (cg, _) = collect(out).await;
    let want = format!("/berth/{}", spec.id);
    for ctrl in ["memory", "pids", "freezer", "cpu"] {
        assert!(
            cg.lines().any(|l| l.contains(ctrl) && l.ends_with(&want)),
            "{ctrl} not joined: {cg}"
        );
    }
    let top = c.client.top().await.unwrap();
    assert_eq!(
        top.titles,
        ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    );
    let cmds: Vec<&str> = top.processes.iter().map(|r| r[7].as_str()).collect();
    assert_eq!(cmds.len(), 2, "{cmds:?}");
    assert!(
        cmds.contains(&"sleep 300") && cmds.contains(&"sleep 301"),
        "{cmds:?}"
    );

    c.client.pause().await.unwrap();
    let st = c.client.state().await.unwrap();
    assert!(st.paused);
    assert_eq!(
        st.process(ProcessId::INIT).unwrap().status,
        ProcessStatus::Paused
    );
    if let Ok(f) = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/freezer/berth/{}/freezer.state",
        spec.id
    )) {
        assert_eq!(f.trim(), "FROZEN");
    }
    c.client.resume().await.unwrap();
    assert!(!c.client.state().await.unwrap().paused);

    // Kill while paused still works (the agent thaws after SIGKILL).
    c.client.pause().await.unwrap();
    c.client.signal(ProcessId::INIT, 9).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), c.client.wait(ProcessId::INIT))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code, 137);
    for d in cgroup_dirs(&spec.id) {
        assert!(!d.exists(), "leaked cgroup {}", d.display());
    }
    assert!(c.client.stats().await.is_err(), "no stats once stopped");
    c.shutdown().await;
}
