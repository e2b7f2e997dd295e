//! Chaos: `kill -9` of berthd while many `docker run`s are in flight. Nothing on disk may be
//! half-written: the image and every container record survive, and after the restart every
//! container the daemon knows is either running (re-adopted) or cleanly created/exited.

mod common;

use std::time::{Duration, Instant};

#[test]
fn sigkill_during_parallel_runs_leaves_consistent_state() {
    let d = common::images::daemon_with_busybox("bb");
    let image_id = d.docker_ok(&["image", "inspect", "-f", "{{.Id}}", "bb"]);
    let d = std::sync::Arc::new(std::sync::Mutex::new(Some(d)));
    let host = d.lock().unwrap().as_ref().unwrap().host();
    let runs: Vec<_> = (0..30)
        .map(|i| {
            let host = host.clone();
            std::thread::spawn(move || {
                // Some of these fail when the daemon dies under them; that is the point.
                std::process::Command::new(common::DOCKER_CLI)
                    .args(["-H", &host, "run", "-d", "--name", &format!("c{i}"), "bb"])
                    .args(["sh", "-c", "sleep 30"])
                    .output()
                    .map(|o| o.status.success())
                    .unwrap_or(false)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    let mut daemon = d.lock().unwrap().take().unwrap();
    daemon.kill();
    let started = runs
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|ok| *ok)
        .count();
    daemon.restart();
    let d = daemon;
    assert_eq!(
        d.docker_ok(&["image", "inspect", "-f", "{{.Id}}", "bb"]),
        image_id
    );
    // Every record on disk was loaded (none skipped as unreadable).
    assert!(
        !d.log().contains("skipping unreadable container record"),
        "{}",
        common::tail(&d.log(), 20)
    );
    let ps = d.docker_ok(&["ps", "-a", "--format", "{{.Names}} {{.State}}"]);
    let mut running = 0;
    for line in ps.lines() {
        let (_, state) = line.split_once(' ').unwrap();
        assert!(
            matches!(state, "running" | "created" | "exited"),
            "inconsistent after the kill: {line}\n{ps}"
        );
        running += (state == "running") as usize;
    }
    // Every run the CLI saw succeed is still there, running.
    assert!(
        running >= started,
        "{started} runs succeeded, {running} running:\n{ps}"
    );
    eprintln!(
        "{} containers after the kill: {running} running ({started} runs had returned)",
        ps.lines().count()
    );
    // The daemon works normally, and everything can be removed.
    assert_eq!(d.docker_ok(&["run", "--rm", "bb", "echo", "ok"]), "ok\n");
    let all = d.docker_ok(&["ps", "-aq"]);
    let ids: Vec<&str> = all.split_whitespace().collect();
    if !ids.is_empty() {
        let mut args = vec!["rm", "-f"];
        args.extend(ids);
        d.docker_ok(&args);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !d.docker_ok(&["ps", "-aq"]).trim().is_empty() {
        assert!(Instant::now() < deadline, "containers left after rm -f");
        std::thread::sleep(Duration::from_millis(100));
    }
}
