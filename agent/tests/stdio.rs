//! Process-mode agent: tty, resize, stdin, exec.
mod common;

use std::time::Duration;

use berth_agent_protocol::{client::OutputStream, ExecSpec, ProcessId, ProcessSpec};
use common::*;

async fn read_until(out: &mut OutputStream, acc: &mut String, needle: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !acc.contains(needle) {
        let chunk = tokio::time::timeout_at(deadline, out.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {needle:?}; got {acc:?}"));
        let chunk =
            chunk.unwrap_or_else(|| panic!("stream ended waiting for {needle:?}; got {acc:?}"));
        acc.push_str(&String::from_utf8_lossy(&chunk.data));
    }
}

#[tokio::test]
async fn tty_size_resize_and_stdin() {
    if skip() {
        return;
    }
    let (mut spec, dir) = make_spec(
        "tty",
        &["sh", "-c", "stty size; tty; read x; stty size; echo got-$x"],
    );
    spec.process.tty = true;
    spec.process.open_stdin = true;
    spec.process.console_size = Some((24, 80));
    let c = spawn(&spec, &dir).await;
    let mut out = c.client.output(ProcessId::INIT).await.unwrap();
    c.client.start(ProcessId::INIT).await.unwrap();
    let mut acc = String::new();
    read_until(&mut out, &mut acc, "/dev/pts/0").await;
    assert!(acc.contains("24 80\r\n"), "{acc:?}");
    c.client.resize(ProcessId::INIT, 40, 120).await.unwrap();
    let mut stdin = c.client.stdin(ProcessId::INIT);
    stdin.write(b"hello\n").await.unwrap();
    read_until(&mut out, &mut acc, "got-hello").await;
    assert!(acc.contains("40 120\r\n"), "{acc:?}");
    assert!(out.recv().await.is_none() || out.recv().await.is_none());
    assert!(out.completed());
    assert_eq!(c.client.wait(ProcessId::INIT).await.unwrap().code, 0);
    c.shutdown().await;
}

#[tokio::test]
async fn pipes_stdin_once_close() {
    if skip() {
        return;
    }
    let (mut spec, dir) = make_spec("stdin", &["sh", "-c", "cat; echo eof-seen"]);
    spec.process.open_stdin = true;
    let c = spawn(&spec, &dir).await;
    let out = c.client.output(ProcessId::INIT).await.unwrap();
    c.client.start(ProcessId::INIT).await.unwrap();
    let mut stdin = c.client.stdin(ProcessId::INIT);
    // Larger than the pipe buffer: exercises stdin backpressure.
    // Distinct lines so reordered chunks would show.
    let big: String = (0..40_000).map(|i| format!("{i}\n")).collect();
    stdin.write(big.as_bytes()).await.unwrap();
    stdin.close().await.unwrap();
    let (o, _) = collect(out).await;
    assert_eq!(o, format!("{big}eof-seen\n"));
    c.shutdown().await;
}

#[tokio::test]
async fn exec_joins_running_container() {
    if skip() {
        return;
    }
    let (mut spec, dir) = make_spec(
        "exec",
        &["sh", "-c", "echo $$ > /tmp/init.pid; exec sleep 300"],
    );
    spec.process.env = vec!["FROM_CONTAINER=1".into()];
    spec.process.cwd = "/tmp".into();
    let c = spawn(&spec, &dir).await;
    c.client.start(ProcessId::INIT).await.unwrap();
    let exec = ExecSpec {
        process: ProcessSpec {
            args: vec!["sh".into(), "-c".into(), "hostname; pwd; cat /tmp/init.pid; echo $FROM_CONTAINER $EXTRA; ps -o pid,comm | awk '$1==1{print $2}'; id -u; exit 5".into()],
            env: vec!["EXTRA=2".into()],
            ..ProcessSpec::default()
        },
        privileged: false,
    };
    let mut ready = false;
    for _ in 0..100 {
        // Wait for the init to write its pid file.
        let id = c
            .client
            .exec(ExecSpec {
                process: ProcessSpec {
                    args: vec!["test".into(), "-s".into(), "/tmp/init.pid".into()],
                    ..ProcessSpec::default()
                },
                privileged: false,
            })
            .await
            .unwrap();
        c.client.start(id).await.unwrap();
        if c.client.wait(id).await.unwrap().code == 0 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ready);
    let id = c.client.exec(exec).await.unwrap();
    assert_ne!(id, ProcessId::INIT);
    let out = c.client.output(id).await.unwrap();
    let mut events = c.client.events();
    c.client.start(id).await.unwrap();
    let (o, _) = collect(out).await;
    // The exit event arrives before the output's end.
    let ev = events.try_recv().expect("exit event before OutputEof");
    assert!(
        matches!(ev, berth_agent_protocol::Event::Exited { process, ref status } if process == id && status.code == 5),
        "{ev:?}"
    );
    // Same uts/mnt/pid namespaces, cwd and env inherited, PID 1 is the container's sleep.
    assert_eq!(o, "berthtest\n/tmp\n1\n1 2\nsleep\n0\n");
    assert_eq!(c.client.wait(id).await.unwrap().code, 5);

    // An exec with a tty of its own.
    let id = c
        .client
        .exec(ExecSpec {
            process: ProcessSpec {
                args: vec!["tty".into()],
                tty: true,
                ..ProcessSpec::default()
            },
            privileged: false,
        })
        .await
        .unwrap();
    let out = c.client.output(id).await.unwrap();
    c.client.start(id).await.unwrap();
    let (o, _) = collect(out).await;
    assert!(o.starts_with("/dev/pts/"), "{o:?}");

    // A missing binary in an exec: 127 and the process is reported exited.
    let id = c
        .client
        .exec(ExecSpec {
            process: ProcessSpec {
                args: vec!["nope".into()],
                ..ProcessSpec::default()
            },
            privileged: false,
        })
        .await
        .unwrap();
    let out = c.client.output(id).await.unwrap();
    let e = c.client.start(id).await.unwrap_err();
    assert_eq!(e.remote().unwrap().exit_code, Some(127));
    assert_eq!(c.client.wait(id).await.unwrap().code, 127);
    // An attached client is released: its stream ends (cleanly) even though nothing ran.
    assert_eq!(collect(out).await, (String::new(), String::new()));

    // No exec into a paused container (the child would freeze in setup).
    c.client.pause().await.unwrap();
    let e = c
        .client
        .exec(ExecSpec {
            process: ProcessSpec {
                args: vec!["true".into()],
                ..ProcessSpec::default()
            },
            privileged: false,
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.remote().unwrap().kind,
        berth_agent_protocol::ErrorKind::Conflict
    );
    assert!(e.to_string().contains("paused"), "{e}");
    c.client.resume().await.unwrap();
    c.shutdown().await;
}

#[tokio::test]
async fn output_before_subscribe_is_kept_and_bounded() {
    if skip() {
        return;
    }
    // 3 MiB of output, more than the agent buffers: the writer must block, not lose data.
    let (spec, dir) = make_spec(
        "buffered",
        &[
            "sh",
            "-c",
            "dd if=/dev/zero bs=1024 count=3072 2>/dev/null | tr '\\0' 'a'; echo; echo end",
        ],
    );
    let c = spawn(&spec, &dir).await;
    c.client.start(ProcessId::INIT).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let st = c.client.state().await.unwrap();
    assert_eq!(
        st.process(ProcessId::INIT).unwrap().status,
        berth_agent_protocol::ProcessStatus::Running,
        "blocked on full buffer"
    );
    let out = c.client.output(ProcessId::INIT).await.unwrap();
    let (o, _) = collect(out).await;
    assert_eq!(o.len(), 3 * 1024 * 1024 + "\nend\n".len());
    assert!(o.ends_with("a\nend\n"));
    c.shutdown().await;
}
