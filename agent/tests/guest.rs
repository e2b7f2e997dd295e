//! Guest mode (the agent as PID 1), exercised in a fresh pid + mount namespace with a unix socket
//! instead of vsock (vsock needs a VM; this host has no vsock loopback transport).
mod common;

use std::{process::Command, time::Duration};

use berth_agent_protocol::{client::AgentClient, ProcessId};
use common::*;

#[tokio::test]
async fn agent_as_pid1_mounts_serves_and_reaps() {
    if skip() {
        return;
    }
    let (spec, dir) = make_spec(
        "guest",
        &["sh", "-c", "(sleep 0.2 &); echo in-guest; cat /proc/1/comm"],
    );
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("guest.sock");
    let child = Command::new("unshare")
        .args([
            "--pid",
            "--fork",
            "--kill-child",
            "--mount",
            "--propagation",
            "private",
        ])
        .arg(env!("CARGO_BIN_EXE_berth-agent"))
        .arg("guest")
        .arg("--unix")
        .arg(&sock)
        .arg("--exec-dir")
        .arg(&dir)
        .env("RUST_LOG", "debug")
        .stderr(std::fs::File::create(dir.parent().unwrap().join("guest.log")).unwrap())
        .spawn()
        .unwrap();
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = KillOnDrop(child);
    let mut client = None;
    for _ in 0..200 {
        if let Ok(c) = AgentClient::connect_unix(&sock).await {
            client = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let client = client.expect("guest agent did not come up");
    assert_eq!(
        client.info().agent_pid,
        1,
        "agent must be PID 1 of its namespace"
    );
    client.create(spec.clone()).await.unwrap();
    let out = client.output(ProcessId::INIT).await.unwrap();
    client.start(ProcessId::INIT).await.unwrap();
    let (o, _) = collect(out).await;
    // The container has its own pid namespace below the agent's: its PID 1 is the command
    // (sh execs its last command, cat).
    assert_eq!(o, "in-guest\ncat\n");
    assert_eq!(client.wait(ProcessId::INIT).await.unwrap().code, 0);
    client.shutdown().await.unwrap();
    // PID 1 powers off: the namespace (and the unshare wrapper) go away.
    let mut exited = false;
    for _ in 0..300 {
        if child.0.try_wait().unwrap().is_some() {
            exited = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(exited, "guest agent did not power off");
    for d in cgroup_dirs(&spec.id) {
        assert!(!d.exists(), "leaked cgroup {}", d.display());
    }
    let _ = std::fs::remove_dir_all(dir.parent().unwrap());
}
