//! Process-mode agent: `Update` rewrites the running container's cgroup limits (v1 here),
//! in the order the kernel accepts, including lifting limits again.
mod common;

use std::time::Duration;

use berth_agent_protocol::{ProcessId, Resources};
use common::*;

const MIB: i64 = 1 << 20;

fn v1(id: &str, ctrl: &str, file: &str) -> Option<String> {
    std::fs::read_to_string(format!("/sys/fs/cgroup/{ctrl}/berth/{id}/{file}"))
        .ok()
        .map(|s| s.trim().to_string())
}

#[tokio::test]
async fn update_changes_live_cgroup_limits() {
    if skip() {
        return;
    }
    let (mut spec, dir) = make_spec("update", &["sleep", "300"]);
    spec.resources.memory = Some(64 * MIB);
    spec.resources.memory_swap = Some(128 * MIB);
    spec.resources.pids_limit = Some(20);
    let c = spawn(&spec, &dir).await;
    // Not running yet: there is no cgroup to change.
    let e = c
        .client
        .update(Resources::default())
        .await
        .expect_err("update before start");
    assert!(e.to_string().contains("not running"), "{e}");
    c.client.start(ProcessId::INIT).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    if v1(&spec.id, "memory", "memory.limit_in_bytes").is_none() {
        eprintln!("SKIP: not a cgroup v1 host");
        c.shutdown().await;
        return;
    }
    let has_memsw = v1(&spec.id, "memory", "memory.memsw.limit_in_bytes").is_some();
    let mem = |m: i64, s: i64| {
        assert_eq!(
            v1(&spec.id, "memory", "memory.limit_in_bytes").unwrap(),
            m.to_string()
        );
        if has_memsw {
            assert_eq!(
                v1(&spec.id, "memory", "memory.memsw.limit_in_bytes").unwrap(),
                s.to_string()
            );
        }
    };
    mem(64 * MIB, 128 * MIB);

    // Growing past the current memory+swap limit only works with memsw written first.
    c.client
        .update(Resources {
            memory: Some(512 * MIB),
            memory_swap: Some(1024 * MIB),
            cpu_quota: Some(25_000),
            cpu_period: Some(50_000),
            cpu_shares: Some(300),
            cpuset_cpus: Some("0".into()),
            pids_limit: Some(30),
            memory_reservation: Some(32 * MIB),
            blkio_weight: Some(250),
            ..Resources::default()
        })
        .await
        .unwrap();
    mem(512 * MIB, 1024 * MIB);
    assert_eq!(v1(&spec.id, "cpu", "cpu.cfs_quota_us").unwrap(), "25000");
    assert_eq!(v1(&spec.id, "cpu", "cpu.cfs_period_us").unwrap(), "50000");
    assert_eq!(v1(&spec.id, "cpu", "cpu.shares").unwrap(), "300");
    assert_eq!(v1(&spec.id, "cpuset", "cpuset.cpus").unwrap(), "0");
    assert_eq!(v1(&spec.id, "pids", "pids.max").unwrap(), "30");
    assert_eq!(
        v1(&spec.id, "memory", "memory.soft_limit_in_bytes").unwrap(),
        (32 * MIB).to_string()
    );
    if let Some(w) =
        v1(&spec.id, "blkio", "blkio.bfq.weight").or_else(|| v1(&spec.id, "blkio", "blkio.weight"))
    {
        // BFQ prints `default 250` on some kernels.
        assert!(w.ends_with("250"), "{w}");
    }

    // Shrinking below the current memory limit only works with memory written first.
    c.client
        .update(Resources {
            memory: Some(16 * MIB),
            memory_swap: Some(32 * MIB),
            ..Resources::default()
        })
        .await
        .unwrap();
    mem(16 * MIB, 32 * MIB);
    // Untouched fields stay as they were.
    assert_eq!(v1(&spec.id, "pids", "pids.max").unwrap(), "30");

    // Lifting limits: unlimited pids, swap and quota.
    c.client
        .update(Resources {
            memory: Some(16 * MIB),
            memory_swap: Some(-1),
            pids_limit: Some(0),
            cpu_quota: Some(-1),
            cpu_period: Some(100_000),
            ..Resources::default()
        })
        .await
        .unwrap();
    assert_eq!(v1(&spec.id, "pids", "pids.max").unwrap(), "max");
    assert_eq!(v1(&spec.id, "cpu", "cpu.cfs_quota_us").unwrap(), "-1");
    if has_memsw {
        let s: u64 = v1(&spec.id, "memory", "memory.memsw.limit_in_bytes")
            .unwrap()
            .parse()
            .unwrap();
        assert!(s > 1 << 50, "memsw not lifted: {s}");
    }

    // The kernel's refusal comes back as an error, nothing panics.
    let e = c
        .client
        .update(Resources {
            cpuset_cpus: Some("999".into()),
            ..Resources::default()
        })
        .await
        .expect_err("cpuset of a missing cpu");
    assert!(e.to_string().contains("cpuset.cpus"), "{e}");

    // Paused: the frozen cgroup still takes new limits.
    c.client.pause().await.unwrap();
    c.client
        .update(Resources {
            pids_limit: Some(7),
            ..Resources::default()
        })
        .await
        .unwrap();
    assert_eq!(v1(&spec.id, "pids", "pids.max").unwrap(), "7");
    c.client.resume().await.unwrap();
    c.client.signal(ProcessId::INIT, 9).await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), c.client.wait(ProcessId::INIT)).await;
    c.shutdown().await;
}
