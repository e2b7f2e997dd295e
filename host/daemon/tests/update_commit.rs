//! `docker update` changes a container's limits live (checked in the host cgroup files
//! the agent manages) and in its record; `docker commit` works on a running container
//! (frozen for the copy, then thawed) and applies every `--change` instruction.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::images::daemon_with_busybox;
use common::microvm;
use common::{stderr, stdout, TestDaemon};

fn full_id(d: &TestDaemon, name: &str) -> String {
    d.docker_ok(&["inspect", "-f", "{{.Id}}", name])
        .trim()
        .to_string()
}

/// The v1 cgroup file of the container (the host is cgroup v1 hybrid; the agent puts
/// containers under `berth/<id>` in each controller).
fn cg_path(ctrl: &str, id: &str, file: &str) -> PathBuf {
    PathBuf::from("/sys/fs/cgroup")
        .join(ctrl)
        .join("berth")
        .join(id)
        .join(file)
}

fn cg(ctrl: &str, id: &str, file: &str) -> String {
    let p = cg_path(ctrl, id, file);
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
        .trim()
        .to_string()
}

fn inspect(d: &TestDaemon, name: &str, fmt: &str) -> String {
    d.docker_ok(&["inspect", "-f", fmt, name])
        .trim()
        .to_string()
}

/// `curl` against the daemon's socket: (status, body).
fn api(d: &TestDaemon, method: &str, path: &str, body: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", method])
        .args(["--unix-socket", d.socket.to_str().unwrap()])
        .args(["-H", "Content-Type: application/json", "-d", body])
        .arg(format!("http://localhost/v1.45{path}"))
        .output()
        .unwrap();
    let text = stdout(&out);
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_string())
}

const MIB: u64 = 1 << 20;

/// The `docker update` limits both isolation modes are checked with.
const UPDATED_LIMITS: &[&str] = &[
    "--memory",
    "64m",
    "--memory-swap",
    "128m",
    "--cpus",
    "0.5",
    "--pids-limit",
    "50",
    "--cpu-shares",
    "512",
];

#[test]
fn update_changes_running_limits_and_keeps_them_across_restart() {
    let d = daemon_with_busybox("bb:local");
    d.docker_ok(&["run", "-d", "--name", "upd", "bb:local", "sleep", "1000"]);
    let id = full_id(&d, "upd");
    let out = d.docker_ok(&[&["update"], UPDATED_LIMITS, &["--restart", "always", "upd"]].concat());
    assert_eq!(out.trim(), "upd");
    let check_live = |mem: u64, swap: u64| {
        assert_eq!(
            cg("memory", &id, "memory.limit_in_bytes"),
            (mem * MIB).to_string()
        );
        if cg_path("memory", &id, "memory.memsw.limit_in_bytes").exists() {
            assert_eq!(
                cg("memory", &id, "memory.memsw.limit_in_bytes"),
                (swap * MIB).to_string()
            );
        }
        assert_eq!(cg("cpu", &id, "cpu.cfs_quota_us"), "50000");
        assert_eq!(cg("cpu", &id, "cpu.cfs_period_us"), "100000");
        assert_eq!(cg("cpu", &id, "cpu.shares"), "512");
        assert_eq!(cg("pids", &id, "pids.max"), "50");
    };
    check_live(64, 128);
    assert_eq!(
        inspect(
            &d,
            "upd",
            "{{.HostConfig.Memory}} {{.HostConfig.MemorySwap}} {{.HostConfig.NanoCpus}} \
             {{.HostConfig.PidsLimit}} {{.HostConfig.CpuShares}} {{.HostConfig.RestartPolicy.Name}}"
        ),
        format!("{} {} 500000000 50 512 always", 64 * MIB, 128 * MIB)
    );

    // Lowering memory under the swap limit needs no swap; cpuset and reservation too.
    d.docker_ok(&[
        "update",
        "--memory",
        "32m",
        "--memory-reservation",
        "16m",
        "--cpuset-cpus",
        "0",
        "--cpuset-mems",
        "0",
        "upd",
    ]);
    assert_eq!(
        cg("memory", &id, "memory.limit_in_bytes"),
        (32 * MIB).to_string()
    );
    assert_eq!(
        cg("memory", &id, "memory.soft_limit_in_bytes"),
        (16 * MIB).to_string()
    );
    assert_eq!(cg("cpuset", &id, "cpuset.cpus"), "0");
    assert_eq!(cg("cpuset", &id, "cpuset.mems"), "0");
    // Raising memory above the current memory+swap limit: the kernel needs memsw first.
    d.docker_ok(&["update", "--memory", "256m", "--memory-swap", "512m", "upd"]);
    check_live(256, 512);

    // Block I/O weight: applied where the kernel has it, otherwise Docker's warning.
    let out = d.docker_ok(&["update", "--blkio-weight", "300", "upd"]);
    let weight = ["blkio.bfq.weight", "blkio.weight"]
        .into_iter()
        .find(|f| cg_path("blkio", &id, f).exists());
    if let Some(f) = weight {
        // BFQ prints `default 300` on some kernels.
        assert!(cg("blkio", &id, f).ends_with("300"), "{f}");
        assert_eq!(inspect(&d, "upd", "{{.HostConfig.BlkioWeight}}"), "300");
    } else {
        assert!(out.contains("does not support Block I/O weight"), "{out}");
        assert_eq!(inspect(&d, "upd", "{{.HostConfig.BlkioWeight}}"), "0");
    }

    // Paused containers are updated too (Docker counts them as running).
    d.docker_ok(&["pause", "upd"]);
    d.docker_ok(&["update", "--pids-limit", "40", "upd"]);
    assert_eq!(cg("pids", &id, "pids.max"), "40");
    d.docker_ok(&["unpause", "upd"]);
    d.docker_ok(&["update", "--pids-limit", "50", "upd"]);

    // A restart keeps the updated values: they are in the record.
    d.docker_ok(&["restart", "-t", "0", "upd"]);
    check_live(256, 512);
    assert_eq!(
        cg("memory", &id, "memory.soft_limit_in_bytes"),
        (16 * MIB).to_string()
    );
    assert_eq!(cg("cpuset", &id, "cpuset.cpus"), "0");

    // An unlimited pids limit is written back as "max".
    d.docker_ok(&["update", "--pids-limit", "-1", "upd"]);
    assert_eq!(cg("pids", &id, "pids.max"), "max");
}

/// The same update on a microVM container: the guest agent writes the guest's v2 cgroup
/// (the host only sizes the VM), read from inside through `docker exec`; the next boot
/// applies the record.
#[test]
fn microvm_update_changes_limits_inside_the_guest() {
    if microvm::skip_without_microvm() {
        return;
    }
    let d = microvm::daemon();
    d.docker_ok(&[
        "run",
        "-d",
        "--isolation=microvm",
        "--name",
        "vupd",
        "-m",
        "32m",
        "bb",
        "sleep",
        "1000",
    ]);
    let cg = |f: &str| microvm::guest_cgroup_file(&d, "vupd", f);
    assert_eq!(cg("memory.max"), (32 * MIB).to_string());
    assert_eq!(cg("pids.max"), "max");
    d.docker_ok(&[&["update"], UPDATED_LIMITS, &["vupd"]].concat());
    let check_live = || {
        assert_eq!(cg("memory.max"), (64 * MIB).to_string());
        assert_eq!(cg("cpu.max"), "50000 100000");
        // runc's shares -> weight conversion: 512 -> 20.
        assert_eq!(cg("cpu.weight"), "20");
    };
    check_live();
    assert_eq!(cg("pids.max"), "50");
    // v2 limits swap alone (Docker's value is memory+swap); a guest without swap has no file.
    let swap = cg("memory.swap.max");
    if swap == "missing" {
        eprintln!("memory.swap.max not checked: the guest kernel has no swap controller");
    } else {
        assert_eq!(swap, (64 * MIB).to_string());
    }
    assert_eq!(
        inspect(
            &d,
            "vupd",
            "{{.HostConfig.Memory}} {{.HostConfig.NanoCpus}} {{.HostConfig.PidsLimit}}"
        ),
        format!("{} 500000000 50", 64 * MIB)
    );
    d.docker_ok(&["update", "--pids-limit", "-1", "vupd"]);
    assert_eq!(cg("pids.max"), "max");
    // A new boot applies the updated record.
    d.docker_ok(&["restart", "-t", "0", "vupd"]);
    check_live();
    d.docker_ok(&["rm", "-f", "vupd"]);
}

#[test]
fn updated_restart_policy_takes_effect_for_the_running_container() {
    let d = daemon_with_busybox("bb:local");
    d.docker_ok(&[
        "run",
        "-d",
        "--name",
        "rp",
        "bb:local",
        "sh",
        "-c",
        "sleep 2; exit 3",
    ]);
    d.docker_ok(&["update", "--restart", "on-failure:5", "rp"]);
    assert_eq!(
        inspect(
            &d,
            "rp",
            "{{.HostConfig.RestartPolicy.Name}} {{.HostConfig.RestartPolicy.MaximumRetryCount}}"
        ),
        "on-failure 5"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let n: i64 = inspect(&d, "rp", "{{.RestartCount}}").parse().unwrap();
        if n >= 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the updated restart policy did not restart the container"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    d.docker_ok(&["rm", "-f", "rp"]);
}

#[test]
fn update_of_created_container_is_applied_at_start() {
    let d = daemon_with_busybox("bb:local");
    d.docker_ok(&["create", "--name", "cr", "bb:local", "sleep", "1000"]);
    let out = d.docker_ok(&[
        "update",
        "--memory",
        "48m",
        "--memory-swap",
        "96m",
        "--cpu-shares",
        "256",
        "--pids-limit",
        "30",
        "cr",
    ]);
    assert_eq!(out.trim(), "cr");
    assert_eq!(
        inspect(&d, "cr", "{{.HostConfig.Memory}} {{.HostConfig.CpuShares}}"),
        format!("{} 256", 48 * MIB)
    );
    d.docker_ok(&["start", "cr"]);
    let id = full_id(&d, "cr");
    assert_eq!(
        cg("memory", &id, "memory.limit_in_bytes"),
        (48 * MIB).to_string()
    );
    assert_eq!(cg("cpu", &id, "cpu.shares"), "256");
    assert_eq!(cg("pids", &id, "pids.max"), "30");
}

#[test]
fn update_validation_follows_docker() {
    let d = daemon_with_busybox("bb:local");
    d.docker_ok(&[
        "run", "-d", "--name", "val", "--memory", "64m", "bb:local", "sleep", "1000",
    ]);
    let err = d.docker_err(&["update", "--memory", "1m", "val"]);
    assert!(err.contains("Minimum memory limit allowed is 6MB"), "{err}");
    // `--memory 64m` alone gave a 128m memory+swap limit.
    let err = d.docker_err(&["update", "--memory", "256m", "val"]);
    assert!(
        err.contains(
            "Memory limit should be smaller than already set memoryswap limit, \
             update the memoryswap at the same time"
        ),
        "{err}"
    );
    let err = d.docker_err(&["update", "--memory", "64m", "--memory-swap", "32m", "val"]);
    assert!(
        err.contains("Minimum memoryswap limit should be larger than memory limit"),
        "{err}"
    );
    let err = d.docker_err(&["update", "--blkio-weight", "5", "val"]);
    assert!(
        err.contains("Range of blkio weight is from 10 to 1000"),
        "{err}"
    );
    let err = d.docker_err(&["update", "--cpuset-cpus", "99", "val"]);
    assert!(err.contains("Requested CPUs are not available"), "{err}");
    // Nothing of the refused updates was kept.
    assert_eq!(
        inspect(
            &d,
            "val",
            "{{.HostConfig.Memory}} {{.HostConfig.MemorySwap}}"
        ),
        format!("{} {}", 64 * MIB, 128 * MIB)
    );

    d.docker_ok(&[
        "run",
        "-d",
        "--name",
        "quota",
        "--cpu-quota",
        "50000",
        "bb:local",
        "sleep",
        "1000",
    ]);
    let err = d.docker_err(&["update", "--cpus", "0.5", "quota"]);
    assert!(
        err.contains(
            "Conflicting options: Nano CPUs cannot be updated as CPU Quota has already been set"
        ),
        "{err}"
    );

    d.docker_ok(&[
        "run", "-d", "--rm", "--name", "auto", "bb:local", "sleep", "1000",
    ]);
    let err = d.docker_err(&["update", "--restart", "always", "auto"]);
    assert!(
        err.contains(
            "Restart policy cannot be updated because AutoRemove is enabled for the container"
        ),
        "{err}"
    );
    let err = d.docker_err(&["update", "--memory", "64m", "nope"]);
    assert!(err.contains("No such container: nope"), "{err}");

    // Status codes and bodies as dockerd's.
    let (code, body) = api(&d, "POST", "/containers/val/update", r#"{"Memory":1024}"#);
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains(r#""message":"Minimum memory limit allowed is 6MB""#),
        "{body}"
    );
    let (code, body) = api(
        &d,
        "POST",
        "/containers/auto/update",
        r#"{"RestartPolicy":{"Name":"always"}}"#,
    );
    assert_eq!(code, 409, "{body}");
    let (code, body) = api(&d, "POST", "/containers/nope/update", "{}");
    assert_eq!(code, 404, "{body}");
    let (code, body) = api(
        &d,
        "POST",
        "/containers/val/update",
        r#"{"CpuShares":1024}"#,
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        serde_json::json!({ "Warnings": [] })
    );
    let (code, body) = api(&d, "POST", "/containers/val/update", "{bad");
    assert_eq!(code, 400, "{body}");
}

fn python_docker(d: &TestDaemon, script: &str) -> String {
    let out = Command::new("python3")
        .args(["-c", script])
        .env("DOCKER_HOST", d.host())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed:\n{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

#[test]
fn commit_running_container_through_docker_py_pauses_and_thaws() {
    let d = daemon_with_busybox("bb:local");
    d.docker_ok(&[
        "run",
        "-d",
        "--name",
        "live",
        "bb:local",
        "sh",
        "-c",
        "echo state > /f; sleep 1000",
    ]);
    // Wait for the file to be written.
    d.docker_ok(&[
        "exec",
        "live",
        "sh",
        "-c",
        "while [ ! -s /f ]; do sleep 0.05; done",
    ]);
    let out = python_docker(
        &d,
        r#"
import docker
cl = docker.from_env()
c = cl.containers.get("live")
img = c.commit(repository="snap", tag="py", changes=["ENV FROM_PY=1", 'CMD ["cat", "/f"]'])
print(img.id)
img2 = c.commit(repository="snap", tag="nopause", pause=False)
print(img2.id)
c.reload()
print(c.status)
"#,
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("sha256:"), "{out}");
    assert!(lines[1].starts_with("sha256:"), "{out}");
    // Thawed again after the commit.
    assert_eq!(lines[2], "running");
    assert_eq!(inspect(&d, "live", "{{.State.Status}}"), "running");
    assert_eq!(d.docker_ok(&["run", "--rm", "snap:py"]).trim(), "state");
    assert_eq!(
        d.docker_ok(&["run", "--rm", "snap:py", "sh", "-c", "echo $FROM_PY"])
            .trim(),
        "1"
    );
    assert_eq!(
        d.docker_ok(&["run", "--rm", "snap:nopause", "cat", "/f"])
            .trim(),
        "state"
    );
    // The freeze and thaw are visible as Docker's events.
    let ev = d.docker_ok(&[
        "events",
        "--since",
        "0",
        "--until",
        &format!(
            "{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
                + 1
        ),
        "--filter",
        "container=live",
        "--format",
        "{{.Action}}",
    ]);
    let actions: Vec<&str> = ev.lines().collect();
    let pos = |a: &str| actions.iter().position(|x| *x == a);
    assert!(
        pos("pause").is_some() && pos("unpause") > pos("pause"),
        "{ev}"
    );
    assert!(actions.contains(&"commit"), "{ev}");
}

#[test]
fn commit_changes_apply_every_instruction() {
    let d = daemon_with_busybox("bb:local");
    d.docker_ok(&["run", "-d", "--name", "base", "bb:local", "sleep", "1000"]);
    d.docker_ok(&["exec", "base", "mkdir", "-p", "/work"]);
    d.docker_ok(&[
        "commit",
        "--change",
        "ENTRYPOINT [\"/bin/sh\", \"-c\"]",
        "--change",
        "CMD [\"echo $GREETING $OTHER $(pwd) $(id -u)\"]",
        "--change",
        "ENV GREETING=hello",
        "--change",
        "ENV OTHER world",
        "--change",
        "LABEL a=b c=\"d e\"",
        "--change",
        "EXPOSE 8080 53/udp",
        "--change",
        "WORKDIR /work",
        "--change",
        "USER 1234",
        "--change",
        "VOLUME /data",
        "--change",
        "ONBUILD RUN echo hi",
        "--change",
        "STOPSIGNAL SIGUSR1",
        "base",
        "changed:1",
    ]);
    assert_eq!(
        d.docker_ok(&["run", "--rm", "changed:1"]).trim(),
        "hello world /work 1234"
    );
    let cfg = |f: &str| {
        d.docker_ok(&["image", "inspect", "-f", f, "changed:1"])
            .trim()
            .to_string()
    };
    assert_eq!(cfg("{{json .Config.Entrypoint}}"), r#"["/bin/sh","-c"]"#);
    assert_eq!(cfg("{{.Config.Labels.a}}|{{.Config.Labels.c}}"), "b|d e");
    assert_eq!(
        cfg("{{json .Config.ExposedPorts}}"),
        r#"{"53/udp":{},"8080/tcp":{}}"#
    );
    assert_eq!(cfg("{{.Config.WorkingDir}} {{.Config.User}}"), "/work 1234");
    assert_eq!(cfg("{{json .Config.Volumes}}"), r#"{"/data":{}}"#);
    assert_eq!(cfg("{{json .Config.OnBuild}}"), r#"["RUN echo hi"]"#);
    assert_eq!(cfg("{{.Config.StopSignal}}"), "SIGUSR1");
    // The container ran on, thawed.
    assert_eq!(inspect(&d, "base", "{{.State.Status}}"), "running");
    // A single `changes` value may carry several instructions, one per line (docker-py
    // sends a string as is).
    python_docker(
        &d,
        r#"
import docker
cl = docker.from_env()
cl.api.commit("base", repository="changed", tag="2", changes="ENV X=1\nWORKDIR /tmp")
"#,
    );
    assert_eq!(
        d.docker_ok(&["run", "--rm", "changed:2", "sh", "-c", "echo $X; pwd"]),
        "1\n/tmp\n"
    );
    let err = d.docker_err(&["commit", "--change", "FROM x", "base", "bad:1"]);
    assert!(err.contains("from is not a valid change command"), "{err}");
}
