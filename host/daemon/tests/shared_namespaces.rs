//! `--pid container:<id>` and `--ipc container:<id>` through the real docker CLI: the
//! joiner sees the donor's processes and SysV IPC namespace; dockerd's errors for a
//! missing, stopped or non-shareable donor; the refusal in a microVM.

mod common;

use common::microvm::skip_without_microvm;
use common::{stderr, stdout, TestDaemon};

fn ns_of(d: &TestDaemon, ctr: &str, kind: &str) -> String {
    d.docker_ok(&["exec", ctr, "readlink", &format!("/proc/self/ns/{kind}")])
}

#[test]
fn pid_and_ipc_join_a_running_donor() {
    let d = common::images::daemon_with_busybox("bb");
    d.docker_ok(&[
        "run",
        "-d",
        "--name",
        "donor",
        "--ipc",
        "shareable",
        "bb",
        "sh",
        "-c",
        "exec sleep 4242",
    ]);
    let script = "readlink /proc/self/ns/pid; readlink /proc/self/ns/ipc; ps -o args";
    let out = d.docker_ok(&[
        "run",
        "--rm",
        "--pid",
        "container:donor",
        "--ipc",
        "container:donor",
        "bb",
        "sh",
        "-c",
        script,
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        format!("{}\n", lines[0]),
        ns_of(&d, "donor", "pid"),
        "{out}"
    );
    assert_eq!(
        format!("{}\n", lines[1]),
        ns_of(&d, "donor", "ipc"),
        "{out}"
    );
    // The donor's main process is visible (and is PID 1 of the shared namespace).
    assert!(out.contains("sleep 4242"), "{out}");
    // docker-py's pid_mode/ipc_mode reach the same namespaces.
    let py = r#"
import docker, sys
c = docker.DockerClient(base_url=sys.argv[1])
print(c.containers.run("bb", ["sh", "-c", "readlink /proc/self/ns/ipc; ps -o args"],
      pid_mode="container:donor", ipc_mode="container:donor", remove=True).decode(), end="")
"#;
    let o = std::process::Command::new("python3")
        .args(["-c", py, &d.host()])
        .output()
        .unwrap();
    let py_out = stdout(&o);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        format!("{}\n", py_out.lines().next().unwrap_or("")),
        ns_of(&d, "donor", "ipc")
    );
    assert!(py_out.contains("sleep 4242"), "{py_out}");
    let mine = d.docker_ok(&["run", "--rm", "bb", "sh", "-c", script]);
    assert!(
        !mine.contains("sleep 4242"),
        "a private pid ns sees no donor: {mine}"
    );
    assert_ne!(mine.lines().next(), lines.first().copied());

    // A SysV shared memory segment made by the joiner is the donor's too.
    let d2 = d.docker_ok(&[
        "run",
        "-d",
        "--name",
        "joiner",
        "--ipc",
        "container:donor",
        "bb",
        "sleep",
        "1000",
    ]);
    assert!(!d2.trim().is_empty());
    assert_eq!(ns_of(&d, "joiner", "ipc"), ns_of(&d, "donor", "ipc"));
    // POSIX shared memory too: the donor's /dev/shm.
    d.docker_ok(&["exec", "donor", "sh", "-c", "echo shm-data > /dev/shm/x"]);
    assert_eq!(
        d.docker_ok(&["exec", "joiner", "cat", "/dev/shm/x"]),
        "shm-data\n"
    );
    d.docker_ok(&["exec", "joiner", "sh", "-c", "echo back > /dev/shm/y"]);
    assert_eq!(
        d.docker_ok(&["exec", "donor", "cat", "/dev/shm/y"]),
        "back\n"
    );
    let donor_shm = d.docker_ok(&["exec", "donor", "cat", "/proc/sysvipc/shm"]);
    let joiner_shm = d.docker_ok(&["exec", "joiner", "cat", "/proc/sysvipc/shm"]);
    assert_eq!(donor_shm, joiner_shm);
    d.docker_ok(&["rm", "-f", "joiner"]);

    // The joiner's processes die with the donor's pid namespace: stop the donor while a
    // joiner runs, and the joiner exits too (killed by the kernel).
    d.run_sleeper("pj", &["--pid", "container:donor"]);
    d.docker_ok(&["kill", "donor"]);
    let code = d.docker_ok(&["wait", "pj"]);
    assert_eq!(
        code.trim(),
        "137",
        "the kernel kills the joiner with the donor's init"
    );
}

#[test]
fn donor_errors_as_dockerd() {
    let d = common::images::daemon_with_busybox("bb");
    // Missing donor: 404.
    d.docker_ok(&[
        "create",
        "--name",
        "j1",
        "--pid",
        "container:nosuch",
        "bb",
        "true",
    ]);
    let (code, body) = d.api("POST", "/containers/j1/start", None);
    assert_eq!(code, 404, "{body}");
    assert!(
        body.contains("cannot join PID of a non running container: nosuch"),
        "{body}"
    );
    // A donor that exists but does not run: 409.
    d.docker_ok(&[
        "create",
        "--name",
        "stopped",
        "--ipc",
        "shareable",
        "bb",
        "true",
    ]);
    for (flag, kind) in [("--pid", "PID"), ("--ipc", "IPC")] {
        let name = format!("j{kind}");
        d.docker_ok(&[
            "create",
            "--name",
            &name,
            flag,
            "container:stopped",
            "bb",
            "true",
        ]);
        let (code, body) = d.api("POST", &format!("/containers/{name}/start"), None);
        assert_eq!(code, 409, "{body}");
        assert!(
            body.contains(&format!(
                "cannot join {kind} of a non running container: stopped"
            )),
            "{body}"
        );
    }
    // dockerd's default IPC mode, private, cannot be joined.
    d.docker_ok(&["run", "-d", "--name", "priv", "bb", "sleep", "1000"]);
    let e = d.docker_err(&["run", "--rm", "--ipc", "container:priv", "bb", "true"]);
    assert!(
        e.contains("non-shareable IPC (hint: use IpcMode:shareable for the donor container)"),
        "{e}"
    );
    // `--pid container:` needs no shareable mode.
    let o = d.docker(&["run", "--rm", "--pid", "container:priv", "bb", "true"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn microvm_refuses_to_join_another_containers_namespaces() {
    if skip_without_microvm() {
        return;
    }
    let d = common::microvm::daemon();
    d.run_sleeper("donor", &["--ipc", "shareable"]);
    for flag in ["--pid", "--ipc"] {
        let e = d.docker_err(&[
            "run",
            "--rm",
            "--isolation=microvm",
            flag,
            "container:donor",
            "bb",
            "true",
        ]);
        assert!(
            e.contains("not supported with microvm isolation") && e.contains("own guest kernel"),
            "{e}"
        );
    }
}
