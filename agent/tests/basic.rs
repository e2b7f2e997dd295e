//! Process-mode agent: lifecycle, exit codes, output, exec failures.
mod common;

use berth_agent_protocol::{ErrorKind, ProcessId};
use common::*;

#[tokio::test]
async fn exit_code_and_output() {
    if skip() {
        return;
    }
    let (spec, dir) = make_spec("exit3", &["sh", "-c", "echo out; echo err >&2; exit 3"]);
    let (status, out, err) = run(spec, &dir).await;
    assert_eq!(status.code, 3);
    assert_eq!(status.signal, None);
    assert!(!status.oom_killed);
    assert!(status.started_at_ns.unwrap() <= status.finished_at_ns);
    assert_eq!(out, "out\n");
    assert_eq!(err, "err\n");
}

#[tokio::test]
async fn command_not_found_is_127() {
    if skip() {
        return;
    }
    let (spec, dir) = make_spec("notfound", &["definitely-not-here"]);
    let c = spawn(&spec, &dir).await;
    let e = c.client.start(ProcessId::INIT).await.unwrap_err();
    let remote = e.remote().expect("agent error");
    assert_eq!(remote.kind, ErrorKind::ExecFailed);
    assert_eq!(remote.exit_code, Some(127));
    assert_eq!(
        remote.message,
        "exec: \"definitely-not-here\": executable file not found in $PATH"
    );
    let status = c.client.wait(ProcessId::INIT).await.unwrap();
    assert_eq!(status.code, 127);
    assert!(status.error.unwrap().contains("executable file not found"));
    // Not executable -> 126.
    c.shutdown().await;
    let (spec, dir) = make_spec("noexec", &["/etc/passwd"]);
    let c = spawn(&spec, &dir).await;
    let e = c.client.start(ProcessId::INIT).await.unwrap_err();
    assert_eq!(e.remote().unwrap().exit_code, Some(126), "{e}");
    c.shutdown().await;
    for d in cgroup_dirs(&spec.id) {
        assert!(!d.exists(), "leaked cgroup {}", d.display());
    }
}

#[tokio::test]
async fn plain_directory_rootfs() {
    if skip() {
        return;
    }
    let (mut spec, dir) = make_spec(
        "dirfs",
        &["sh", "-c", "echo hi > /created; cat /etc/passwd | head -1"],
    );
    let copy = dir.parent().unwrap().join("rootfs-copy");
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(busybox_layer())
        .arg(&copy)
        .status()
        .unwrap();
    assert!(st.success());
    spec.rootfs = berth_agent_protocol::Rootfs::Dir { path: copy.clone() };
    let c = spawn(&spec, &dir).await;
    let out = c.client.output(ProcessId::INIT).await.unwrap();
    c.client.start(ProcessId::INIT).await.unwrap();
    let (o, _) = collect(out).await;
    assert_eq!(o, "root:x:0:0:root:/root:/bin/sh\n");
    assert_eq!(
        std::fs::read_to_string(copy.join("created")).unwrap(),
        "hi\n"
    );
    c.shutdown().await;
}
