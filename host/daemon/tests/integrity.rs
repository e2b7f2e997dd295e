//! Output must never be lost: exec output read by docker-py, every line of a big log
//! read back through `docker logs` and `logs -f`, `--tail` on a huge log, and container
//! processes that start with default signal dispositions (so a pipeline's writer dies
//! of SIGPIPE instead of spinning).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::images::daemon_with_busybox;
use common::{stdout, TestDaemon};

fn python_with_docker_py() -> Option<&'static str> {
    let ok = Command::new("python3")
        .args(["-c", "import docker"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some("python3")
}

/// docker-py reads exec output through the raw socket after parsing the 101 response
/// with a buffered reader: output sent along with the headers used to vanish (about 45%
/// of calls under load). 1,000 calls, 8 concurrent, in every read mode, lose nothing.
#[test]
fn docker_py_exec_output_is_never_lost() {
    let Some(py) = python_with_docker_py() else {
        panic!("docker-py is missing: scripts/install-deps.sh installs it");
    };
    let d = daemon_with_busybox("bb:local");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/exec_integrity.py");
    let out = Command::new(py)
        .args([script, "bb:local", "1000", "8"])
        .env("DOCKER_HOST", d.host())
        .output()
        .unwrap();
    let text = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert!(out.status.success(), "exec output lost:\n{text}");
    assert!(text.contains("lost: 0"), "{text}");
}

/// Prints the signal state and the open descriptors of the shell that runs it.
const PROBE: &str = "grep -E '^Sig(Ign|Blk)' /proc/self/status; ls /proc/self/fd | tr '\\n' ' '";

/// `out` (of [`PROBE`]) shows default dispositions, nothing blocked and only stdio open.
fn expect_clean_start(what: &str, out: &str) {
    assert!(
        out.contains("SigIgn:\t0000000000000000"),
        "{what}: signals ignored:\n{out}"
    );
    assert!(
        out.contains("SigBlk:\t0000000000000000"),
        "{what}: signals blocked:\n{out}"
    );
    // ls itself holds one descriptor (3) for the directory it lists.
    assert!(out.trim_end().ends_with("0 1 2 3"), "{what}: fds:\n{out}");
}

/// Every process the agent starts begins with default dispositions, nothing blocked and
/// only stdio open, as under runc: main process, exec, and the process under `--init`.
#[test]
fn processes_start_with_default_signals_and_only_stdio() {
    let d = daemon_with_busybox("bb:local");
    let (probe, expect) = (PROBE, expect_clean_start);
    let main = d.docker_ok(&["run", "--rm", "bb:local", "sh", "-c", probe]);
    expect("main", &main);
    let init = d.docker_ok(&["run", "--rm", "--init", "bb:local", "sh", "-c", probe]);
    expect("--init", &init);
    d.docker_ok(&["run", "-d", "--name", "sig", "bb:local", "sleep", "1000"]);
    let exec = d.docker_ok(&["exec", "sig", "sh", "-c", probe]);
    expect("exec", &exec);
    let exec_tty = d.docker_ok(&["exec", "-t", "sig", "sh", "-c", probe]);
    assert!(exec_tty.contains("SigIgn:\t0000000000000000"), "{exec_tty}");

    // The writer of a pipeline whose reader exits dies of SIGPIPE at once.
    let t0 = Instant::now();
    let out = d.docker_ok(&[
        "run",
        "--rm",
        "bb:local",
        "sh",
        "-c",
        "yes 0123456789 | head -c 20000000 | wc -c",
    ]);
    assert_eq!(out.trim(), "20000000");
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "pipeline took {:?}",
        t0.elapsed()
    );
}

/// The same in a microVM, where the guest agent starts the processes: the main process,
/// one under `--init` (its probe kept in a file) and an exec.
#[test]
fn microvm_processes_start_with_default_signals_and_only_stdio() {
    if common::microvm::skip_without_microvm() {
        return;
    }
    let d = common::microvm::daemon();
    let main = d.docker_ok(&[
        "run",
        "--rm",
        "--isolation=microvm",
        "bb",
        "sh",
        "-c",
        PROBE,
    ]);
    expect_clean_start("microvm main", &main);
    let under_init = format!("{{ {PROBE}; }} > /tmp/probe 2>&1; exec sleep 1000");
    d.docker_ok(&[
        "run",
        "-d",
        "--isolation=microvm",
        "--init",
        "--name",
        "vsig",
        "bb",
        "sh",
        "-c",
        &under_init,
    ]);
    let mut init = String::new();
    common::eventually("the probe under --init", 60, || {
        init = stdout(&d.docker(&["exec", "vsig", "cat", "/tmp/probe"]));
        // Complete once the fd list (space-terminated by tr) is written.
        match init.contains("SigBlk") && init.ends_with(' ') {
            true => Ok(()),
            false => Err(init.clone()),
        }
    });
    expect_clean_start("microvm --init", &init);
    let pid1 = d.docker_ok(&["exec", "vsig", "cat", "/proc/1/comm"]);
    assert_ne!(pid1.trim(), "sh", "--init did not put an init at pid 1");
    let exec = d.docker_ok(&["exec", "vsig", "sh", "-c", PROBE]);
    expect_clean_start("microvm exec", &exec);
    d.docker_ok(&["rm", "-f", "vsig"]);
}

fn count_in_order(reader: impl std::io::Read, n: u64) -> Result<u64, String> {
    let mut expect = 1u64;
    for line in BufReader::with_capacity(1 << 20, reader).lines() {
        let line = line.map_err(|e| e.to_string())?;
        if line != expect.to_string() {
            return Err(format!("line {expect}: got {line:?}"));
        }
        expect += 1;
    }
    if expect - 1 != n {
        return Err(format!("{} lines, expected {n}", expect - 1));
    }
    Ok(expect - 1)
}

/// Docker's default log mode is blocking: a million lines from `seq` come back exactly,
/// in order, through `docker logs` and through a `logs -f` started before the container.
#[test]
fn a_million_lines_are_all_logged() {
    let d = daemon_with_busybox("bb:local");
    const N: u64 = 1_000_000;
    d.docker_ok(&[
        "create",
        "--name",
        "seq1m",
        "bb:local",
        "seq",
        "1",
        &N.to_string(),
    ]);
    // Following a created container waits for its run (Docker's behaviour).
    let mut follower = d
        .docker_cmd(&["logs", "-f", "seq1m"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let fout = follower.stdout.take().unwrap();
    let counted = std::thread::spawn(move || count_in_order(fout, N));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        follower.try_wait().unwrap().is_none(),
        "logs -f on a created container returned at once"
    );
    let t0 = Instant::now();
    d.docker_ok(&["start", "-a", "seq1m"]);
    let run = t0.elapsed();
    let t1 = Instant::now();
    let mut all = d
        .docker_cmd(&["logs", "seq1m"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let res = count_in_order(all.stdout.take().unwrap(), N);
    assert!(all.wait().unwrap().success());
    let read = t1.elapsed();
    assert_eq!(res, Ok(N), "docker logs");
    common::wait_exit(&mut follower, Duration::from_secs(60), "logs -f");
    assert_eq!(counted.join().unwrap(), Ok(N), "docker logs -f");
    println!("1M lines: attached run {run:?}, docker logs {read:?}");

    // Non-blocking mode is the opt-in that may drop, and it is validated as Docker does.
    let err = d.docker_err(&[
        "run",
        "--rm",
        "--log-opt",
        "max-buffer-size=1m",
        "bb:local",
        "true",
    ]);
    assert!(err.contains("max-buffer-size"), "{err}");
    d.docker_ok(&[
        "run",
        "--rm",
        "--log-opt",
        "mode=non-blocking",
        "--log-opt",
        "max-buffer-size=1m",
        "bb:local",
        "true",
    ]);
}

/// `--tail` on a log far larger than a plugin's memory limit streams from the end.
#[test]
fn tail_of_a_one_gib_log() {
    let d = daemon_with_busybox("bb:local");
    d.docker_ok(&["run", "--name", "big", "bb:local", "echo", "first"]);
    let path = d
        .docker_ok(&["inspect", "-f", "{{.LogPath}}", "big"])
        .trim()
        .to_string();
    // The container's json-file log lives in the plugin's data dir.
    let file = if std::path::Path::new(&path).exists() {
        std::path::PathBuf::from(&path)
    } else {
        find_file(
            &d.data_root,
            &format!("{}-json.log", container_id(&d, "big")),
        )
        .expect("json-file log of the container")
    };
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap();
    let line = format!(
        "{{\"log\":\"{}\\n\",\"stream\":\"stdout\",\"time\":\"2026-01-01T00:00:00.000000001Z\"}}\n",
        "x".repeat(1000)
    );
    let block = line.repeat(1024);
    let mut written = 0u64;
    while written < (1 << 30) {
        f.write_all(block.as_bytes()).unwrap();
        written += block.len() as u64;
    }
    f.write_all(
        b"{\"log\":\"the end\\n\",\"stream\":\"stderr\",\"time\":\"2026-01-01T00:00:01Z\"}\n",
    )
    .unwrap();
    drop(f);
    let t0 = Instant::now();
    let out = d.docker(&["logs", "--tail", "2", "big"]);
    let took = t0.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "the end\n");
    assert_eq!(stdout(&out), format!("{}\n", "x".repeat(1000)));
    println!("docker logs --tail 2 of a 1 GiB log: {took:?}");
    assert!(took < Duration::from_secs(10), "tail took {took:?}");
    let _ = std::fs::remove_file(&file);
}

fn container_id(d: &TestDaemon, name: &str) -> String {
    d.docker_ok(&["inspect", "-f", "{{.Id}}", name])
        .trim()
        .to_string()
}

fn find_file(dir: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.file_name().is_some_and(|n| n == name) {
            return Some(p);
        }
        if e.file_type().ok()?.is_dir() {
            if let Some(f) = find_file(&p, name) {
                return Some(f);
            }
        }
    }
    None
}

/// SIGTERM to berthd while a container holds an unfinished line: the daemon writes it to
/// the log before it exits (its pumps drain), and the re-adopted container goes on.
#[test]
fn shutdown_flushes_a_line_in_progress() {
    let mut d = common::images::daemon_with_busybox("bb");
    let id = d
        .docker_ok(&[
            "run",
            "-d",
            "bb",
            "sh",
            "-c",
            "echo whole; printf 'half of a line'; sleep 1000",
        ])
        .trim()
        .to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while d.docker_ok(&["logs", &id]) != "whole\n" {
        assert!(std::time::Instant::now() < deadline, "no output");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Give the shell a moment to write the unfinished line after the whole one.
    std::thread::sleep(std::time::Duration::from_millis(300));
    d.stop();
    d.restart();
    assert_eq!(d.docker_ok(&["logs", &id]), "whole\nhalf of a line");
    assert_eq!(
        d.docker_ok(&["inspect", "-f", "{{.State.Status}}", &id])
            .trim(),
        "running"
    );
    d.docker_ok(&["rm", "-f", &id]);
}

/// SIGKILL of berthd while a container streams output: the agent keeps what the daemon has
/// not yet stored, and the next daemon gets it again, so no line is lost (a line stored but
/// not yet acknowledged may come twice).
#[test]
fn daemon_sigkill_mid_stream_loses_no_line() {
    let mut d = common::images::daemon_with_busybox("bb");
    const N: u64 = 400_000;
    // Bursts of 2,000 lines, a short pause between them: at least 10 s of streaming, so a
    // loaded host still kills the daemon mid-stream.
    let script = format!(
        "i=0; while [ $i -lt {N} ]; do seq $((i+1)) $((i+2000)); i=$((i+2000)); sleep 0.05; done"
    );
    let id = d
        .docker_ok(&["run", "-d", "bb", "sh", "-c", &script])
        .trim()
        .to_string();
    // Kill while lines are flowing.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = d
            .docker_cmd(&["logs", "--tail", "1", &id])
            .output()
            .unwrap();
        let last: u64 = stdout(&o).trim().parse().unwrap_or(0);
        if last > 1000 {
            assert!(last < N, "the container finished before the kill; raise N");
            break;
        }
        assert!(Instant::now() < deadline, "no output");
        std::thread::sleep(Duration::from_millis(20));
    }
    d.kill();
    d.restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    while d
        .docker_ok(&["inspect", "-f", "{{.State.Status}}", &id])
        .trim()
        != "exited"
    {
        assert!(Instant::now() < deadline, "container did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = d.docker_cmd(&["logs", &id]).output().unwrap();
    let mut seen = vec![false; N as usize + 1];
    let (mut lines, mut dups) = (0u64, 0u64);
    for l in o.stdout.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let n: usize = std::str::from_utf8(l).unwrap().parse().unwrap();
        if seen[n] {
            dups += 1;
        }
        seen[n] = true;
        lines += 1;
    }
    let missing = seen[1..].iter().filter(|s| !**s).count();
    eprintln!("{lines} lines logged for {N}; {dups} written twice, {missing} missing");
    assert_eq!(missing, 0, "lines lost across the daemon's SIGKILL");
    // At most one credit window (256 KiB, < 40k of these lines) can come twice.
    assert!(dups < 40_000, "{dups} duplicates");
    d.docker_ok(&["rm", &id]);
}
