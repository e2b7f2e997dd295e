//! Containers end to end: the real docker CLI (and bollard) against a real berthd,
//! every container run by a real berth-agent in process isolation.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::images::daemon_with_busybox;
use common::images::import_busybox;
use common::{stderr, stdout, TestDaemon};

/// Nothing of the container may be left: no mounts mentioning it, no cgroups, no
/// agent process, no state dirs.
fn assert_no_leaks(d: &TestDaemon, id: &str) {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(id), "mount of {id} leaked:\n{mounts}");
    for ctrl in [
        "memory",
        "pids",
        "cpu,cpuacct",
        "freezer",
        "cpuset",
        "unified",
    ] {
        let p = std::path::Path::new("/sys/fs/cgroup")
            .join(ctrl)
            .join("berth")
            .join(id);
        assert!(!p.exists(), "cgroup {} leaked", p.display());
    }
    let procs = std::process::Command::new("pgrep")
        .args(["-f", id])
        .output()
        .unwrap();
    assert!(
        stdout(&procs).trim().is_empty(),
        "process for {id} leaked: {}",
        stdout(&procs)
    );
    assert!(
        !d.data_root.join("containers").join(id).exists(),
        "container dir leaked"
    );
}

#[test]
fn run_output_and_exit_codes() {
    let d = daemon_with_busybox("bb:local");
    let out = d.docker(&[
        "run",
        "--name",
        "c1",
        "bb:local",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(stdout(&out), "out\n");
    assert!(stderr(&out).contains("err\n"));
    // State is recorded like Docker's.
    let st = d.docker_ok(&[
        "inspect",
        "-f",
        "{{.State.Status}} {{.State.ExitCode}} {{.Name}}",
        "c1",
    ]);
    assert_eq!(st.trim(), "exited 3 /c1");
    let ps = d.docker_ok(&[
        "ps",
        "-a",
        "--format",
        "{{.Names}}|{{.Status}}|{{.Command}}",
    ]);
    assert!(ps.starts_with("c1|Exited (3) "), "{ps}");
    // Logs were kept, stdout and stderr apart.
    let logs = d.docker(&["logs", "c1"]);
    assert_eq!(stdout(&logs), "out\n");
    assert_eq!(stderr(&logs), "err\n");
    // Environment, working dir and user from flags.
    let out = d.docker_ok(&[
        "run",
        "--rm",
        "-e",
        "FOO=bar",
        "-w",
        "/tmp",
        "-u",
        "1000:1000",
        "--hostname",
        "box",
        "bb:local",
        "sh",
        "-c",
        "echo $FOO $(pwd) $(id -u):$(id -g) $(hostname)",
    ]);
    assert_eq!(out.trim(), "bar /tmp 1000:1000 box");
}

#[test]
fn errors_are_dockers() {
    let d = daemon_with_busybox("bb:local");
    // Command not found → 127, Docker's message.
    let out = d.docker(&["run", "--rm", "bb:local", "nosuchcmd"]);
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("executable file not found"),
        "{}",
        stderr(&out)
    );
    // Unknown container → 404 text; name conflict → 409.
    let err = d.docker_err(&["inspect", "--type", "container", "nope"]);
    assert!(err.contains("No such container: nope"), "{err}");
    d.docker_ok(&["create", "--name", "dup", "bb:local", "true"]);
    let err = d.docker_err(&["create", "--name", "dup", "bb:local", "true"]);
    assert!(err.contains("is already in use by container"), "{err}");
    // Invalid limits → 400 with Docker's wording.
    let err = d.docker_err(&["create", "--memory", "1m", "bb:local", "true"]);
    assert!(err.contains("Minimum memory limit allowed is 6MB"), "{err}");
    let err = d.docker_err(&["create", "--cpuset-cpus", "0-99", "bb:local", "true"]);
    assert!(err.contains("Requested CPUs are not available"), "{err}");
    let err = d.docker_err(&["run", "--rm", "--restart", "always", "bb:local", "true"]);
    assert!(
        err.contains("AutoRemove") || err.contains("conflicting options"),
        "{err}"
    );
    // Unknown image → 404 and the CLI tries to pull.
    let err = d.docker_err(&["create", "--pull", "never", "nosuchimage:1", "true"]);
    assert!(err.contains("No such image"), "{err}");
    // Starting a running container is a 304 (the CLI prints nothing and succeeds).
    d.docker_ok(&["run", "-d", "--name", "running", "bb:local", "sleep", "30"]);
    let status = curl(&d, "POST", "/v1.51/containers/running/start");
    assert!(status.starts_with("HTTP/1.1 304"), "{status}");
    let err = d.docker_err(&["rm", "running"]);
    assert!(err.contains("container is running"), "{err}");
    d.docker_ok(&["rm", "-f", "running"]);
    // Malformed JSON → 400 in Docker's error shape.
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-i",
            "--unix-socket",
            d.socket.to_str().unwrap(),
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            "{bad",
            "http://x/v1.51/containers/create",
        ])
        .output()
        .unwrap();
    let text = stdout(&out);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("\"message\":"), "{text}");
}

fn curl(d: &TestDaemon, method: &str, path: &str) -> String {
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-i",
            "-X",
            method,
            "--unix-socket",
            d.socket.to_str().unwrap(),
            &format!("http://x{path}"),
        ])
        .output()
        .unwrap();
    stdout(&out)
}

#[test]
fn rm_flag_leaves_nothing_behind() {
    let d = daemon_with_busybox("bb:local");
    let out = d.docker_ok(&[
        "run",
        "--rm",
        "--name",
        "gone",
        "bb:local",
        "sh",
        "-c",
        "echo bye; cat /proc/self/cgroup >/dev/null",
    ]);
    assert_eq!(out, "bye\n");
    let ps = d.docker_ok(&["ps", "-aq"]);
    assert!(ps.trim().is_empty(), "container still listed: {ps}");
    let entries: Vec<_> = std::fs::read_dir(d.data_root.join("containers"))
        .unwrap()
        .collect();
    assert!(entries.is_empty(), "state left: {entries:?}");
}

#[test]
fn logs_follow_while_writing() {
    let d = daemon_with_busybox("bb:local");
    d.docker_ok(&[
        "run",
        "-d",
        "--name",
        "ticker",
        "bb:local",
        "sh",
        "-c",
        "for i in 1 2 3 4 5; do echo tick $i; sleep 0.2; done",
    ]);
    let started = Instant::now();
    let out = d.docker(&["logs", "-f", "ticker"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "tick 1\ntick 2\ntick 3\ntick 4\ntick 5\n");
    // -f returned when the container stopped, not earlier.
    assert!(started.elapsed() >= Duration::from_millis(500));
    let tail = d.docker_ok(&["logs", "--tail", "2", "ticker"]);
    assert_eq!(tail, "tick 4\ntick 5\n");
    let ts = d.docker_ok(&["logs", "-t", "--tail", "1", "ticker"]);
    assert!(ts.contains("Z tick 5"), "{ts}");
    let none = d.docker_ok(&["logs", "--since", "2099-01-01T00:00:00Z", "ticker"]);
    assert!(none.is_empty());
}

#[test]
fn exec_into_running_container() {
    let d = daemon_with_busybox("bb:local");
    d.docker_ok(&["run", "-d", "--name", "svc", "bb:local", "sleep", "60"]);
    let out = d.docker_ok(&["exec", "svc", "sh", "-c", "echo in-$(hostname)"]);
    assert!(out.starts_with("in-"), "{out}");
    let out = d.docker(&["exec", "svc", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    let out = d.docker(&["exec", "svc", "nosuch"]);
    assert_eq!(
        out.status.code(),
        Some(127),
        "{} {}",
        stdout(&out),
        stderr(&out)
    );
    // stdin through exec -i.
    let mut child = d
        .docker_cmd(&["exec", "-i", "svc", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"piped input\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(stdout(&out), "piped input\n");
    // top sees the container's processes.
    let top = d.docker_ok(&["top", "svc"]);
    assert!(top.contains("sleep 60"), "{top}");
    d.docker_ok(&["rm", "-f", "svc"]);
}

#[test]
fn stop_escalates_to_sigkill_after_timeout() {
    let d = daemon_with_busybox("bb:local");
    // A shell that ignores SIGTERM (not PID 1 semantics: trap makes it explicit).
    d.docker_ok(&[
        "run",
        "-d",
        "--name",
        "stubborn",
        "bb:local",
        "sh",
        "-c",
        "trap '' TERM; while true; do sleep 0.1; done",
    ]);
    let t0 = Instant::now();
    d.docker_ok(&["stop", "-t", "1", "stubborn"]);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(8),
        "stop took {took:?}"
    );
    let st = d.docker_ok(&["inspect", "-f", "{{.State.ExitCode}}", "stubborn"]);
    assert_eq!(st.trim(), "137");
    // A container that honours SIGTERM stops at once.
    d.docker_ok(&[
        "run",
        "-d",
        "--name",
        "polite",
        "bb:local",
        "sh",
        "-c",
        "trap 'exit 0' TERM; echo ready; while true; do sleep 0.1; done",
    ]);
    // Only once the trap is set: before it, the shell is a PID 1 without a handler, which
    // ignores SIGTERM (slow guests under TCG take a moment to get there).
    let ready = Instant::now() + Duration::from_secs(30);
    while d.docker_ok(&["logs", "polite"]) != "ready\n" {
        assert!(Instant::now() < ready, "the container never set its trap");
        std::thread::sleep(Duration::from_millis(50));
    }
    let t0 = Instant::now();
    d.docker_ok(&["stop", "polite"]);
    // Well before the 10 s stop timeout (a microVM under TCG takes a few seconds to end).
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
    let st = d.docker_ok(&["inspect", "-f", "{{.State.ExitCode}}", "polite"]);
    assert_eq!(st.trim(), "0");
    // Stopping a stopped container is fine (304 to the API).
    d.docker_ok(&["stop", "polite"]);
}

#[test]
fn memory_limit_oom_kills_with_137() {
    let d = daemon_with_busybox("bb:local");
    let out = d.docker(&[
        "run",
        "--name",
        "hog",
        "-m",
        "16m",
        "bb:local",
        "sh",
        "-c",
        "x=aaaaaaaaaaaaaaaa; while true; do x=$x$x; done",
    ]);
    assert_eq!(out.status.code(), Some(137), "{}", stderr(&out));
    let st = d.docker_ok(&[
        "inspect",
        "-f",
        "{{.State.OOMKilled}} {{.State.ExitCode}} {{.HostConfig.Memory}}",
        "hog",
    ]);
    assert_eq!(st.trim(), "true 137 16777216");
}

#[test]
fn pids_limit_is_enforced() {
    let d = daemon_with_busybox("bb:local");
    let out = d.docker(&[
        "run",
        "--rm",
        "--pids-limit",
        "8",
        "bb:local",
        "sh",
        "-c",
        "for i in $(seq 20); do sleep 2 & done 2>&1; wait; echo done",
    ]);
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        all.contains("can't fork") || all.contains("Resource temporarily unavailable"),
        "{all}"
    );
    let ok = d.docker_ok(&[
        "run",
        "--rm",
        "--pids-limit",
        "8",
        "bb:local",
        "sh",
        "-c",
        "sleep 0.1 & wait; echo fine",
    ]);
    assert_eq!(ok.trim(), "fine");
}

#[test]
fn daemon_restart_keeps_state_and_running_containers() {
    let mut d = daemon_with_busybox("bb:local");
    assert_eq!(
        d.docker(&["run", "--name", "done3", "bb:local", "sh", "-c", "exit 3"])
            .status
            .code(),
        Some(3)
    );
    d.docker_ok(&[
        "run",
        "-d",
        "--name",
        "alive",
        "bb:local",
        "sh",
        "-c",
        "echo before; sleep 2; echo after; sleep 60",
    ]);
    let pid = d
        .docker_ok(&["inspect", "-f", "{{.State.Pid}}", "alive"])
        .trim()
        .to_string();
    // "before" is in the log before the kill: output still in flight between the agent
    // and the log driver at the moment of a SIGKILL is not covered here (a known gap).
    let deadline = Instant::now() + Duration::from_secs(20);
    while d.docker_ok(&["logs", "alive"]) != "before\n" {
        assert!(Instant::now() < deadline, "no output before the kill");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Kill the daemon hard: nothing gets a chance to clean up.
    d.kill();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "container died with the daemon"
    );
    d.restart();
    let ps = d.docker_ok(&["ps", "-a", "--format", "{{.Names}} {{.State}}"]);
    assert!(ps.contains("alive running"), "{ps}");
    assert!(ps.contains("done3 exited"), "{ps}");
    let code = d.docker_ok(&["inspect", "-f", "{{.State.ExitCode}}", "done3"]);
    assert_eq!(code.trim(), "3");
    // Re-adopted: output written while the daemon was down reaches the logs, exec works,
    // and stop works.
    std::thread::sleep(Duration::from_millis(2500));
    let logs = d.docker_ok(&["logs", "alive"]);
    assert_eq!(logs, "before\nafter\n");
    assert_eq!(d.docker_ok(&["exec", "alive", "echo", "hi"]), "hi\n");
    d.docker_ok(&["stop", "-t", "0", "alive"]);
    let st = d.docker_ok(&["inspect", "-f", "{{.State.Status}}", "alive"]);
    assert_eq!(st.trim(), "exited");
}

#[test]
fn agent_death_marks_container_exited_and_releases_everything() {
    let d = daemon_with_busybox("bb:local");
    let id = d
        .docker_ok(&["run", "-d", "bb:local", "sleep", "60"])
        .trim()
        .to_string();
    let st = std::fs::read_to_string(
        d.data_root
            .join("containers")
            .join(&id)
            .join("container.json"),
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&st).unwrap();
    let agent_pid = v["state"]["agent_pid"].as_i64().unwrap();
    assert!(agent_pid > 0);
    unsafe { libc_kill(agent_pid as i32, 9) };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = d.docker_ok(&["inspect", "-f", "{{.State.Status}}", &id]);
        if s.trim() == "exited" {
            break;
        }
        assert!(Instant::now() < deadline, "container not marked exited");
        std::thread::sleep(Duration::from_millis(100));
    }
    let err = d.docker_ok(&["inspect", "-f", "{{.State.Error}}", &id]);
    assert!(err.contains("agent"), "{err}");
    d.docker_ok(&["rm", &id]);
    // The container's processes die with their agent's namespaces.
    std::thread::sleep(Duration::from_millis(500));
    assert_no_leaks(&d, &id);
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

#[test]
fn fifty_parallel_containers_without_leaks() {
    if common::skip_in_microvm_suite(
        "50 VMs at once under TCG emulation take minutes on two cores; microvm.rs runs VMs in parallel",
    ) {
        return;
    }
    let d = daemon_with_busybox("bb:local");
    let ids: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..50)
            .map(|i| {
                let d = &d;
                s.spawn(move || {
                    let out = d.docker(&[
                        "run",
                        "-d",
                        "--memory",
                        "32m",
                        "--pids-limit",
                        "20",
                        "bb:local",
                        "sh",
                        "-c",
                        &format!("echo n{i}; sleep 1"),
                    ]);
                    assert!(out.status.success(), "run {i}: {}", stderr(&out));
                    stdout(&out).trim().to_string()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, id) in ids.iter().enumerate() {
        let code = d.docker_ok(&["wait", id]);
        assert_eq!(code.trim(), "0");
        assert_eq!(d.docker_ok(&["logs", id]), format!("n{i}\n"));
    }
    let mut args = vec!["rm"];
    args.extend(ids.iter().map(|s| s.as_str()));
    d.docker_ok(&args);
    std::thread::sleep(Duration::from_millis(500));
    for id in &ids {
        assert_no_leaks(&d, id);
    }
}

#[test]
fn interactive_tty_through_a_pty() {
    let d = daemon_with_busybox("bb:local");
    // `script` gives the CLI a real pty; the container sees a tty with the right size.
    let cmd = format!(
        "stty cols 97 rows 31; DOCKER_HOST={} {} run --rm -it bb:local sh -c 'tty; stty size; exit 4'",
        d.host(),
        common::DOCKER_CLI
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("DOCKER_CONFIG", d.dir.path().join("docker-config"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = stdout(&out);
    assert!(text.contains("/dev/pts/"), "{text}");
    assert!(text.contains("31 97"), "{text}");
    assert_eq!(out.status.code(), Some(4), "{text}");
}

#[test]
fn restart_policies_and_pause() {
    let d = daemon_with_busybox("bb:local");
    d.docker_ok(&[
        "run",
        "-d",
        "--name",
        "flaky",
        "--restart",
        "on-failure:2",
        "bb:local",
        "sh",
        "-c",
        "exit 1",
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = d.docker_ok(&[
            "inspect",
            "-f",
            "{{.RestartCount}} {{.State.Status}}",
            "flaky",
        ]);
        if s.trim() == "2 exited" {
            break;
        }
        assert!(Instant::now() < deadline, "restart count stuck at {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
    d.docker_ok(&["run", "-d", "--name", "pz", "bb:local", "sleep", "60"]);
    d.docker_ok(&["pause", "pz"]);
    let s = d.docker_ok(&["ps", "--format", "{{.Status}}", "--filter", "name=pz"]);
    assert!(s.contains("(Paused)"), "{s}");
    let err = d.docker_err(&["exec", "pz", "true"]);
    assert!(err.contains("paused"), "{err}");
    d.docker_ok(&["unpause", "pz"]);
    d.docker_ok(&["exec", "pz", "true"]);
    d.docker_ok(&["rename", "pz", "qz"]);
    d.docker_ok(&["kill", "qz"]);
    let st = d.docker_ok(&["inspect", "-f", "{{.State.ExitCode}}", "qz"]);
    assert_eq!(st.trim(), "137");
    let pruned = d.docker_ok(&["container", "prune", "-f"]);
    assert!(pruned.contains("Total reclaimed space"), "{pruned}");
    assert!(d.docker_ok(&["ps", "-aq"]).trim().is_empty());
}

#[tokio::test]
async fn bollard_create_start_wait_logs() {
    use bollard::query_parameters::{
        CreateContainerOptionsBuilder, LogsOptionsBuilder, WaitContainerOptions,
    };
    use futures::StreamExt;
    let d = daemon_with_busybox("bb:local");
    let docker = d.bollard();
    let body = bollard::models::ContainerCreateBody {
        image: Some("bb:local".into()),
        cmd: Some(vec![
            "sh".into(),
            "-c".into(),
            "echo via-bollard; exit 5".into(),
        ]),
        ..Default::default()
    };
    let created = docker
        .create_container(
            Some(CreateContainerOptionsBuilder::default().name("bc").build()),
            body,
        )
        .await
        .unwrap();
    docker
        .start_container(
            &created.id,
            None::<bollard::query_parameters::StartContainerOptions>,
        )
        .await
        .unwrap();
    let waited: Vec<_> = docker
        .wait_container(&created.id, None::<WaitContainerOptions>)
        .collect()
        .await;
    // bollard reports a non-zero exit as an error carrying the code.
    let code = match &waited[0] {
        Ok(r) => r.status_code,
        Err(bollard::errors::Error::DockerContainerWaitError { code, .. }) => *code,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(code, 5);
    let logs: Vec<_> = docker
        .logs(
            &created.id,
            Some(LogsOptionsBuilder::default().stdout(true).build()),
        )
        .collect()
        .await;
    let text: String = logs.into_iter().map(|l| l.unwrap().to_string()).collect();
    assert_eq!(text, "via-bollard\n");
    let info = docker
        .inspect_container(
            &created.id,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .unwrap();
    assert_eq!(info.state.unwrap().exit_code, Some(5));
    let err = docker
        .inspect_container(
            "nope",
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("No such container"), "{err}");
}

#[test]
fn cp_both_ways_stays_inside_the_container() {
    if common::skip_in_microvm_suite(
        "docker cp outside mounts needs host access to the container's files, which live on a guest disk (microvm_mounts.rs covers cp through mounts)",
    ) {
        return;
    }
    let d = daemon_with_busybox("bb:local");
    d.docker_ok(&[
        "run",
        "-d",
        "--name",
        "cpt",
        "bb:local",
        "sh",
        "-c",
        "echo data > /tmp/f; ln -s / /tmp/escape; sleep 60",
    ]);
    std::thread::sleep(Duration::from_millis(300));
    let out_file = d.dir.path().join("f.out");
    d.docker_ok(&["cp", "cpt:/tmp/f", out_file.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&out_file).unwrap(), "data\n");
    // Copy in through a symlink that points at "/": it must land in the container's
    // /etc, never the host's.
    let marker = format!("berth-cp-{}.txt", std::process::id());
    let src = d.dir.path().join(&marker);
    std::fs::write(&src, "hello\n").unwrap();
    d.docker_ok(&["cp", src.to_str().unwrap(), "cpt:/tmp/escape/etc/"]);
    assert_eq!(
        d.docker_ok(&["exec", "cpt", "cat", &format!("/etc/{marker}")]),
        "hello\n"
    );
    assert!(
        !std::path::Path::new("/etc").join(&marker).exists(),
        "cp escaped to the host"
    );
    let diff = d.docker_ok(&["diff", "cpt"]);
    assert!(diff.contains("A /tmp/f"), "{diff}");
    assert!(diff.contains(&format!("A /etc/{marker}")), "{diff}");
    // Stopped containers too (their rootfs is mounted privately for the copy).
    d.docker_ok(&["stop", "-t", "0", "cpt"]);
    let out = d.docker_cmd(&["cp", "cpt:/tmp/f", "-"]).output().unwrap();
    assert!(out.status.success());
    let mut ar = tar::Archive::new(&out.stdout[..]);
    let names: Vec<String> = ar
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert_eq!(names, vec!["f"]);
    let err = d.docker_err(&["cp", "cpt:/nope", "-"]);
    assert!(err.contains("Could not find the file /nope"), "{err}");
    d.docker_ok(&["cp", src.to_str().unwrap(), "cpt:/tmp/again.txt"]);
    d.docker_ok(&["start", "cpt"]);
    assert_eq!(
        d.docker_ok(&["exec", "cpt", "cat", "/tmp/again.txt"]),
        "hello\n"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains("berth-archive"), "archive mount leaked");
}

#[test]
fn commit_makes_a_layered_image() {
    if common::skip_in_microvm_suite(
        "docker commit needs host access to the container's files, which live on a guest disk",
    ) {
        return;
    }
    let d = daemon_with_busybox("bb:local");
    d.docker_ok(&[
        "run",
        "--name",
        "cm",
        "bb:local",
        "sh",
        "-c",
        "echo hi > /greeting; rm /bin/vi; mkdir -p /opt/x",
    ]);
    let id = d.docker_ok(&[
        "commit",
        "-c",
        "CMD [\"cat\",\"/greeting\"]",
        "-m",
        "my commit",
        "cm",
        "mine:1",
    ]);
    assert!(id.trim().starts_with("sha256:"), "{id}");
    assert_eq!(d.docker_ok(&["run", "--rm", "mine:1"]), "hi\n");
    // The deletion travels as a whiteout; the new dir as a dir.
    let out = d.docker(&[
        "run",
        "--rm",
        "mine:1",
        "sh",
        "-c",
        "ls /bin/vi; ls -d /opt/x",
    ]);
    assert_eq!(stdout(&out), "/opt/x\n");
    let layers = d.docker_ok(&["image", "inspect", "-f", "{{len .RootFS.Layers}}", "mine:1"]);
    assert_eq!(layers.trim(), "2");
    let hist = d.docker_ok(&["history", "--format", "{{.Comment}}", "mine:1"]);
    assert!(hist.starts_with("my commit\n"), "{hist}");
    // The base image is now in use by the new image's container only through layers:
    // removing the container leaves both images intact.
    d.docker_ok(&["rm", "cm"]);
    assert_eq!(
        d.docker_ok(&["run", "--rm", "bb:local", "echo", "base"]),
        "base\n"
    );
}

#[test]
fn copy_storage_driver_runs_containers() {
    if common::skip_in_microvm_suite("--storage-driver copy is a process-isolation storage option")
    {
        return;
    }
    // The fallback for hosts without overlayfs: each container gets a flattened copy.
    let d = TestDaemon::start_with(&["--storage-driver", "copy"]);
    import_busybox(&d, "bb:local");
    let drv = d.docker_ok(&["info", "--format", "{{.Driver}}"]);
    assert_eq!(drv.trim(), "copy");
    d.docker_ok(&[
        "run",
        "--name",
        "cp1",
        "bb:local",
        "sh",
        "-c",
        "echo changed > /etc/motd; rm /bin/vi",
    ]);
    // Changes stay in the container's own copy, never in the image.
    assert_eq!(
        d.docker_ok(&[
            "run",
            "--rm",
            "bb:local",
            "sh",
            "-c",
            "ls /bin/vi; cat /etc/motd 2>&1 || true"
        ])
        .lines()
        .next(),
        Some("/bin/vi")
    );
    // A second run sees the first run's changes (its rm now fails).
    let again = d.docker(&["start", "-a", "cp1"]);
    assert!(
        stderr(&again).contains("can't remove '/bin/vi'"),
        "{}",
        stderr(&again)
    );
    let err = d.docker_err(&["diff", "cp1"]);
    assert!(err.contains("overlay"), "{err}");
    d.docker_ok(&["rm", "cp1"]);
    assert!(std::fs::read_dir(d.data_root.join("containers"))
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn stats_and_start_attach() {
    let d = daemon_with_busybox("bb:local");
    d.docker_ok(&[
        "run", "-d", "--name", "st", "-m", "64m", "bb:local", "sleep", "30",
    ]);
    let out = d.docker_ok(&[
        "stats",
        "--no-stream",
        "--format",
        "{{.Name}} {{.MemUsage}}",
        "st",
    ]);
    assert!(out.starts_with("st "), "{out}");
    assert!(out.contains("64MiB"), "memory limit not reported: {out}");
    d.docker_ok(&["rm", "-f", "st"]);
    // docker start -a attaches before starting, so the whole output arrives.
    d.docker_ok(&[
        "create",
        "--name",
        "sa",
        "bb:local",
        "sh",
        "-c",
        "echo one; echo two >&2; exit 6",
    ]);
    let out = d.docker(&["start", "-a", "sa"]);
    assert_eq!(stdout(&out), "one\n");
    assert_eq!(stderr(&out), "two\n");
    assert_eq!(out.status.code(), Some(6));
}
