//! Process-mode agent: stop, restart, live restore, agent death, --init, many containers.
mod common;

use std::time::{Duration, Instant};

use berth_agent_protocol::{client::AgentClient, ProcessId, ProcessStatus};
use common::*;

#[tokio::test]
async fn stop_escalates_to_sigkill_when_sigterm_is_ignored() {
    if skip() {
        return;
    }
    let (spec, dir) = make_spec(
        "stop",
        &["sh", "-c", "trap '' TERM; while true; do sleep 0.1; done"],
    );
    let c = spawn(&spec, &dir).await;
    c.client.start(ProcessId::INIT).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    let status = c
        .client
        .stop(ProcessId::INIT, 15, Duration::from_secs(1))
        .await
        .unwrap();
    assert!(t.elapsed() >= Duration::from_secs(1));
    assert_eq!((status.code, status.signal), (137, Some(9)));

    // Restart: a new run with fresh namespaces; the overlay upper dir persists.
    let c2 = c.client.clone();
    let out = c2.output(ProcessId::INIT).await.unwrap();
    c.client.start(ProcessId::INIT).await.unwrap();
    c.client.signal(ProcessId::INIT, 9).await.unwrap();
    let _ = collect(out).await;
    assert_eq!(c.client.wait(ProcessId::INIT).await.unwrap().code, 137);
    c.shutdown().await;
}

#[tokio::test]
async fn sigterm_stops_a_cooperative_container() {
    if skip() {
        return;
    }
    let (spec, dir) = make_spec(
        "stopterm",
        &[
            "sh",
            "-c",
            "trap 'exit 0' TERM; while true; do sleep 0.1; done",
        ],
    );
    let c = spawn(&spec, &dir).await;
    c.client.start(ProcessId::INIT).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let status = c
        .client
        .stop(ProcessId::INIT, 15, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(status.code, 0);
    c.shutdown().await;
}

#[tokio::test]
async fn agent_survives_client_disconnect_and_reconnect_sees_exit() {
    if skip() {
        return;
    }
    let (spec, dir) = make_spec(
        "restore",
        &["sh", "-c", "echo before; sleep 1; echo after; exit 7"],
    );
    let opts = berth_agent_protocol::client::SpawnOpts::new(
        env!("CARGO_BIN_EXE_berth-agent"),
        &dir,
        &spec.id,
    );
    let (client, agent_pid) = berth_agent_protocol::client::spawn_process_agent(&opts)
        .await
        .unwrap();
    client.create(spec.clone()).await.unwrap();
    client.start(ProcessId::INIT).await.unwrap();
    let sock = berth_agent_protocol::client::agent_socket_path(&dir);
    drop(client);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        std::path::Path::new(&format!("/proc/{agent_pid}")).exists(),
        "agent died with its client"
    );
    let client = AgentClient::connect_unix(&sock).await.unwrap();
    let st = client.state().await.unwrap();
    assert_eq!(st.container_id.as_deref(), Some(spec.id.as_str()));
    assert_eq!(
        st.process(ProcessId::INIT).unwrap().status,
        ProcessStatus::Running
    );
    let out = client.output(ProcessId::INIT).await.unwrap();
    let (o, _) = collect(out).await;
    // Never delivered before: nothing was lost while no host was connected.
    assert_eq!(o, "before\nafter\n");
    assert_eq!(client.wait(ProcessId::INIT).await.unwrap().code, 7);
    drop(client);
    // Reconnect after exit: the status is still there.
    let client = AgentClient::connect_unix(&sock).await.unwrap();
    let st = client.state().await.unwrap();
    let init = st.process(ProcessId::INIT).unwrap();
    assert_eq!(init.status, ProcessStatus::Exited);
    assert_eq!(init.exit.as_ref().unwrap().code, 7);
    client.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir.parent().unwrap());
}

#[tokio::test]
async fn agent_death_is_seen_as_eof_and_kills_the_container() {
    if skip() {
        return;
    }
    let (spec, dir) = make_spec("agentdeath", &["sleep", "300"]);
    let c = spawn(&spec, &dir).await;
    let pid = c.client.start(ProcessId::INIT).await.unwrap();
    let waiter = tokio::spawn({
        let client = c.client.clone();
        async move { client.wait(ProcessId::INIT).await }
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(c.agent_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    tokio::time::timeout(Duration::from_secs(5), c.client.closed())
        .await
        .expect("client sees EOF");
    assert!(matches!(
        waiter.await.unwrap(),
        Err(berth_agent_protocol::ProtocolError::Closed)
    ));
    // The container's PID 1 dies with its agent (parent-death signal).
    for _ in 0..200 {
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "container outlived its agent"
    );
    // Cgroups of a killed agent are the host's to clean up.
    berth_agent_protocol::client::remove_orphaned_cgroups("berth", &spec.id)
        .await
        .unwrap();
    for d in cgroup_dirs(&spec.id) {
        assert!(!d.exists(), "leaked cgroup {}", d.display());
    }
    let _ = std::fs::remove_dir_all(dir.parent().unwrap());
}

#[tokio::test]
async fn tiny_init_reaps_and_forwards_exit() {
    if skip() {
        return;
    }
    let (mut spec, dir) = make_spec(
        "init",
        &[
            "sh",
            "-c",
            "echo $$; (sleep 0.1 &) ; sleep 0.3; ps -o pid,stat,comm | grep -c ' Z ' ; exit 4",
        ],
    );
    spec.init = true;
    let (status, out, _) = run(spec, &dir).await;
    assert_eq!(status.code, 4);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "2", "command runs as PID 2 under the init");
    assert_eq!(lines[1], "0", "orphaned zombie was reaped");
}

#[tokio::test]
async fn fifty_containers_in_parallel_leave_nothing_behind() {
    if skip() {
        return;
    }
    let mut set = tokio::task::JoinSet::new();
    let mut ids = Vec::new();
    for i in 0..50 {
        let (mut spec, dir) = make_spec(
            &format!("par{i}"),
            &["sh", "-c", "echo $HOSTNAME_CHECK; exit $((N % 7))"],
        );
        spec.process.env = vec![format!("N={i}"), "HOSTNAME_CHECK=ok".into()];
        spec.resources.memory = Some(64 << 20);
        spec.resources.pids_limit = Some(20);
        ids.push(spec.id.clone());
        set.spawn(async move {
            let (status, out, _) = run(spec, &dir).await;
            (i, status.code, out)
        });
    }
    while let Some(r) = set.join_next().await {
        let (i, code, out) = r.unwrap();
        assert_eq!(code, i % 7);
        assert_eq!(out, "ok\n");
    }
    for id in ids {
        for d in cgroup_dirs(&id) {
            assert!(!d.exists(), "leaked cgroup {}", d.display());
        }
    }
}
