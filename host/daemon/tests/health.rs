//! Healthchecks through the real docker CLI and docker-py: `--health-*`, an image's
//! HEALTHCHECK, `--no-healthcheck`, timeouts, `State.Health`, `ps` status and filter, and
//! `health_status` events, in both isolation modes.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::images::busybox_tar;
use common::microvm::{daemon, skip_without_microvm};
use common::{stderr, stdout, TestDaemon};

fn health(d: &TestDaemon, id: &str) -> String {
    d.docker_ok(&["inspect", "-f", "{{.State.Health.Status}}", id])
        .trim()
        .to_string()
}

fn wait_health(d: &TestDaemon, id: &str, want: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let h = health(d, id);
        if h == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "health of {id} is {h:?}, wanted {want:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn health_goes_starting_unhealthy_healthy_with_events_and_ps() {
    let d = daemon();
    let mut modes = vec!["process"];
    if !skip_without_microvm() {
        modes.push("microvm");
    }
    for mode in modes {
        let iso = format!("--isolation={mode}");
        let mut events = d
            .docker_cmd(&[
                "events",
                "--filter",
                "event=health_status",
                "--format",
                "{{.Action}}",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let id = d
            .docker_ok(&[
                "run",
                "-d",
                &iso,
                "--health-cmd",
                "test -f /tmp/ok && echo fine",
                "--health-interval",
                "500ms",
                "--health-retries",
                "2",
                "bb",
                "sh",
                "-c",
                "sleep 4; touch /tmp/ok; sleep 1000",
            ])
            .trim()
            .to_string();
        assert_eq!(health(&d, &id), "starting", "{mode}");
        let ps = d.docker_ok(&[
            "ps",
            "--filter",
            &format!("id={id}"),
            "--format",
            "{{.Status}}",
        ]);
        assert!(ps.contains("(health: starting)"), "{mode}: {ps}");
        wait_health(&d, &id, "unhealthy", Duration::from_secs(20));
        let streak: u32 = d
            .docker_ok(&["inspect", "-f", "{{.State.Health.FailingStreak}}", &id])
            .trim()
            .parse()
            .unwrap();
        assert!(streak >= 2, "{mode}: streak {streak}");
        wait_health(&d, &id, "healthy", Duration::from_secs(30));
        let ps = d.docker_ok(&[
            "ps",
            "--filter",
            "health=healthy",
            "--format",
            "{{.ID}} {{.Status}}",
        ]);
        assert!(
            ps.contains(&id[..12]) && ps.contains("(healthy)"),
            "{mode}: {ps}"
        );
        assert!(d
            .docker_ok(&["ps", "-q", "--filter", "health=unhealthy"])
            .trim()
            .is_empty());
        let log = d.docker_ok(&["inspect", "-f", "{{json .State.Health.Log}}", &id]);
        let log: serde_json::Value = serde_json::from_str(&log).unwrap();
        let last = log.as_array().unwrap().last().unwrap();
        assert_eq!(last["ExitCode"], 0, "{mode}: {log}");
        assert_eq!(last["Output"], "fine\n", "{mode}: {log}");
        assert!(log.as_array().unwrap().len() <= 5);
        d.docker_ok(&["rm", "-f", &id]);
        let _ = events.kill();
        let mut seen = Vec::new();
        for line in BufReader::new(events.stdout.take().unwrap()).lines() {
            seen.push(line.unwrap());
        }
        let _ = events.wait();
        assert_eq!(
            seen,
            ["health_status: unhealthy", "health_status: healthy"],
            "{mode}"
        );
    }
}

#[test]
fn image_healthcheck_timeout_and_no_healthcheck() {
    let d = TestDaemon::start();
    let o = d
        .docker_cmd(&[
            "import",
            "--change",
            "HEALTHCHECK --interval=1s --retries=1 CMD true",
            &busybox_tar().display().to_string(),
            "bbhc",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    // A bad change is refused with its reason, after the upload was read (no broken pipe).
    let o = d
        .docker_cmd(&[
            "import",
            "--change",
            "HEALTHCHECK --bogus=1 CMD true",
            &busybox_tar().display().to_string(),
            "bad",
        ])
        .output()
        .unwrap();
    assert!(
        !o.status.success() && stderr(&o).contains("unknown flag: --bogus"),
        "{}",
        stderr(&o)
    );
    // The image's HEALTHCHECK applies; the container can override parts of it.
    let id = d
        .docker_ok(&["run", "-d", "bbhc", "sleep", "1000"])
        .trim()
        .to_string();
    wait_health(&d, &id, "healthy", Duration::from_secs(20));
    // A probe that outlives its timeout counts as a failure with Docker's message.
    let slow = d
        .docker_ok(&[
            "run",
            "-d",
            "--health-cmd",
            "sleep 10",
            "--health-timeout",
            "1s",
            "bbhc",
            "sleep",
            "1000",
        ])
        .trim()
        .to_string();
    wait_health(&d, &slow, "unhealthy", Duration::from_secs(20));
    let out = d.docker_ok(&[
        "inspect",
        "-f",
        "{{(index .State.Health.Log 0).Output}} {{(index .State.Health.Log 0).ExitCode}}",
        &slow,
    ]);
    assert_eq!(out.trim(), "Health check exceeded timeout (1s) -1");
    // --no-healthcheck: no Health at all, and ps shows no health.
    let none = d
        .docker_ok(&["run", "-d", "--no-healthcheck", "bbhc", "sleep", "1000"])
        .trim()
        .to_string();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        d.docker_ok(&["inspect", "-f", "{{json .State.Health}}", &none])
            .trim(),
        "null"
    );
    assert!(d
        .docker_ok(&["ps", "-q", "--no-trunc", "--filter", "health=none"])
        .contains(&none));
    // docker-py sees the same through its own client.
    let script = r#"
import docker, sys
c = docker.DockerClient(base_url=sys.argv[1])
print(c.containers.get(sys.argv[2]).health, c.containers.get(sys.argv[3]).health)
"#;
    let o = std::process::Command::new("python3")
        .args(["-c", script, &d.host(), &id, &slow])
        .output()
        .unwrap();
    assert_eq!(stdout(&o), "healthy unhealthy\n", "{}", stderr(&o));
    d.docker_ok(&["rm", "-f", &id, &slow, &none]);
}

/// `--health-start-period`: failing probes during the start period are logged but do not
/// count, so a container that would be unhealthy after one failure stays `starting`
/// until the period ends (both modes).
#[test]
fn failures_in_the_start_period_do_not_count() {
    let d = daemon();
    let mut modes = vec!["process"];
    if !skip_without_microvm() {
        modes.push("microvm");
    }
    for mode in modes {
        let t0 = Instant::now();
        let id = d
            .docker_ok(&[
                "run",
                "-d",
                &format!("--isolation={mode}"),
                "--health-cmd",
                "false",
                "--health-interval",
                "500ms",
                "--health-start-interval",
                "300ms",
                "--health-retries",
                "1",
                "--health-start-period",
                "15s",
                "bb",
                "sleep",
                "1000",
            ])
            .trim()
            .to_string();
        // Several probes have failed (retries=1 would make one enough) and none counted.
        let deadline = Instant::now() + Duration::from_secs(5);
        let probes = loop {
            let n: usize = d
                .docker_ok(&["inspect", "-f", "{{len .State.Health.Log}}", &id])
                .trim()
                .parse()
                .unwrap();
            if n >= 3 || Instant::now() > deadline {
                break n;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let state = d.docker_ok(&[
            "inspect",
            "-f",
            "{{.State.Health.Status}} {{.State.Health.FailingStreak}}",
            &id,
        ]);
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "{mode}: too slow to check inside the start period"
        );
        assert!(probes >= 2, "{mode}: only {probes} probes ran");
        assert_eq!(state.trim(), "starting 0", "{mode}: {probes} probes");
        // After the period, the first failure counts.
        wait_health(&d, &id, "unhealthy", Duration::from_secs(30));
        assert!(t0.elapsed() >= Duration::from_secs(15), "{mode}");
        d.docker_ok(&["rm", "-f", &id]);
    }
}
