//! Signal proxying of the docker CLI (`docker run` in the foreground without a tty, and
//! `docker attach`): the CLI turns the signals it receives into
//! `POST /containers/{id}/kill?signal=...`, which must reach the container's process;
//! `--sig-proxy=false` forwards nothing.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::Duration;

use common::{wait_exit, TestDaemon};

/// Traps USR1 and TERM with their own exit codes, says `ready` once the traps are set.
const SCRIPT: &str = "trap 'echo got-usr1; exit 7' USR1; trap 'echo got-term; exit 9' TERM; \
                      echo ready; while true; do sleep 0.1; done";

fn kill(pid: u32, sig: i32) {
    // SAFETY: plain kill(2) on a child this test spawned.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
}

/// Spawns `docker args...` and waits for the container to say `ready`.
fn spawn_ready(d: &TestDaemon, args: &[&str]) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut child = d
        .docker_cmd(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("docker");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n", "{args:?}");
    (child, out)
}

fn rest(mut out: BufReader<std::process::ChildStdout>) -> String {
    let mut s = String::new();
    std::io::Read::read_to_string(&mut out, &mut s).unwrap();
    s
}

#[test]
fn docker_run_and_attach_forward_signals() {
    let d = common::images::daemon_with_busybox("bb");
    for (sig, word, code) in [
        (libc::SIGUSR1, "got-usr1", 7),
        (libc::SIGTERM, "got-term", 9),
    ] {
        let name = format!("run{sig}");
        let (mut child, out) = spawn_ready(&d, &["run", "--name", &name, "bb", "sh", "-c", SCRIPT]);
        kill(child.id(), sig);
        wait_exit(&mut child, Duration::from_secs(30), "docker run");
        assert_eq!(rest(out), format!("{word}\n"));
        assert_eq!(child.wait().unwrap().code(), Some(code), "signal {sig}");
        let exit = d.docker_ok(&["inspect", "-f", "{{.State.ExitCode}}", &name]);
        assert_eq!(exit.trim(), code.to_string());
    }

    // `docker attach` proxies too (its default is --sig-proxy=true).
    d.docker_ok(&["run", "-d", "--name", "att", "bb", "sh", "-c", SCRIPT]);
    let mut child = d
        .docker_cmd(&["attach", "att"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    // The attach stream has no backlog: wait until berthd has the attach open.
    common::eventually("attach connected", 20, || {
        if d.log().contains("/containers/att/attach") {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    kill(child.id(), libc::SIGUSR1);
    wait_exit(&mut child, Duration::from_secs(30), "docker attach");
    assert_eq!(rest(out), "got-usr1\n");
    assert_eq!(child.wait().unwrap().code(), Some(7));
}

#[test]
fn sig_proxy_false_forwards_nothing() {
    let d = common::images::daemon_with_busybox("bb");
    let (mut child, _out) = spawn_ready(
        &d,
        &[
            "run",
            "--sig-proxy=false",
            "--name",
            "np",
            "bb",
            "sh",
            "-c",
            SCRIPT,
        ],
    );
    // Without proxying the signals stay with the CLI (which may or may not die of them).
    kill(child.id(), libc::SIGUSR1);
    kill(child.id(), libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(1500));
    let _ = child.kill();
    let _ = child.wait();
    let state = d.docker_ok(&[
        "inspect",
        "-f",
        "{{.State.Running}} {{.State.ExitCode}}",
        "np",
    ]);
    assert_eq!(state.trim(), "true 0", "the container got no signal");
    let logs = d.docker_ok(&["logs", "np"]);
    assert_eq!(logs, "ready\n");
    d.docker_ok(&["rm", "-f", "np"]);
}

/// `docker run` in the foreground proxies a signal to a microVM container's process
/// (the kill travels to the guest agent).
#[test]
fn microvm_docker_run_forwards_signals() {
    if common::microvm::skip_without_microvm() {
        return;
    }
    let d = common::microvm::daemon();
    let (mut child, out) = spawn_ready(
        &d,
        &[
            "run",
            "--isolation=microvm",
            "--name",
            "vrun",
            "bb",
            "sh",
            "-c",
            SCRIPT,
        ],
    );
    kill(child.id(), libc::SIGUSR1);
    wait_exit(&mut child, Duration::from_secs(60), "docker run");
    assert_eq!(rest(out), "got-usr1\n");
    assert_eq!(child.wait().unwrap().code(), Some(7));
    let exit = d.docker_ok(&["inspect", "-f", "{{.State.ExitCode}}", "vrun"]);
    assert_eq!(exit.trim(), "7");
}
