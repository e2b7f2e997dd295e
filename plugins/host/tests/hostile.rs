//! Hostile plugins against the real host: deadlines, memory caps, traps, bad
//! replies, path escapes, floods, import allowlist, and other plugins staying up.

mod common;

use std::time::{Duration, Instant};

use berth_plugin_host::*;
use common::*;

fn info(id: &str) -> ContainerLogInfo {
    ContainerLogInfo {
        id: id.into(),
        name: format!("/{id}"),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_loop_is_stopped_and_other_plugins_keep_serving() {
    let t = host_with(&["hostile-log", "json-file"], |c| {
        c.log_call_timeout = Duration::from_secs(1)
    });
    let bad = t.host.log_driver("hostile-log").unwrap();
    let good = t.host.log_driver("json-file").unwrap();

    let started = Instant::now();
    let looping = tokio::spawn({
        let bad = bad.clone();
        async move { bad.validate_options(&opts(&[("do", "loop")])).await }
    });
    // While the hostile plugin spins on its own thread, json-file answers promptly.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t0 = Instant::now();
    good.validate_options(&opts(&[("max-size", "1m")]))
        .await
        .unwrap();
    assert!(
        t0.elapsed() < Duration::from_millis(200),
        "json-file stalled: {:?}",
        t0.elapsed()
    );
    assert!(!looping.is_finished(), "loop finished too early");

    let err = looping.await.unwrap().unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, PluginError::Timeout { .. }), "{err:?}");
    assert_eq!(err.http_status(), 503);
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_secs(2),
        "deadline not honoured: {took:?}"
    );
    assert_eq!(t.host.stats("hostile-log").unwrap().timeouts, 1);

    // The instance is re-created after the backoff and serves again.
    tokio::time::sleep(Duration::from_millis(30)).await;
    bad.validate_options(&[]).await.unwrap();
    assert!(t.host.stats("hostile-log").unwrap().instantiations >= 2);
}

#[tokio::test]
async fn memory_bomb_is_refused_at_the_cap() {
    let t = host_with(&["hostile-log"], |c| c.log_memory_limit = 16 << 20);
    let bad = t.host.log_driver("hostile-log").unwrap();
    let t0 = Instant::now();
    let err = bad
        .validate_options(&opts(&[("do", "oom")]))
        .await
        .unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(2));
    match &err {
        PluginError::Trapped { message, .. } => {
            assert!(message.contains("memory"), "no memory hint in {message:?}")
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    assert_eq!(t.host.stats("hostile-log").unwrap().traps, 1);
    tokio::time::sleep(Duration::from_millis(30)).await;
    bad.validate_options(&[])
        .await
        .expect("restarted after the memory bomb");
}

#[tokio::test]
async fn panic_and_trap_restart_the_instance_and_surface_the_error() {
    let t = host_with(&["hostile-log"], |_| {});
    let bad = t.host.log_driver("hostile-log").unwrap();
    let err = bad
        .validate_options(&opts(&[("do", "panic")]))
        .await
        .unwrap_err();
    match &err {
        PluginError::Trapped { message, .. } => {
            assert!(
                message.contains("hostile plugin panicked on request"),
                "panic text missing: {message}"
            )
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    assert_eq!(err.http_status(), 500);
    tokio::time::sleep(Duration::from_millis(30)).await;
    let err = bad
        .validate_options(&opts(&[("do", "trap")]))
        .await
        .unwrap_err();
    assert!(matches!(err, PluginError::Trapped { .. }), "{err:?}");
    tokio::time::sleep(Duration::from_millis(60)).await;
    bad.validate_options(&[]).await.unwrap();
    let s = t.host.stats("hostile-log").unwrap();
    assert_eq!(s.traps, 2);
    assert_eq!(s.instantiations, 3);
}

#[tokio::test]
async fn repeated_crashes_open_the_circuit_breaker() {
    let t = host_with(&["hostile-log"], |c| {
        c.breaker_threshold = 3;
        c.breaker_cooldown = Duration::from_millis(400);
        c.restart_backoff = Duration::from_millis(5);
        c.restart_backoff_max = Duration::from_millis(5);
    });
    let bad = t.host.log_driver("hostile-log").unwrap();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let e = bad
            .validate_options(&opts(&[("do", "panic")]))
            .await
            .unwrap_err();
        assert!(matches!(e, PluginError::Trapped { .. }), "{e:?}");
    }
    let e = bad.validate_options(&[]).await.unwrap_err();
    match &e {
        PluginError::Unavailable { message, .. } => {
            assert!(message.contains("circuit breaker"), "{message}")
        }
        other => panic!("expected breaker, got {other:?}"),
    }
    assert!(t.host.stats("hostile-log").unwrap().circuit_open);
    tokio::time::sleep(Duration::from_millis(450)).await;
    bad.validate_options(&[])
        .await
        .expect("breaker closes after the cooldown");
}

#[tokio::test]
async fn output_flood_is_rate_limited() {
    let t = host_with(&["hostile-log"], |c| {
        c.log_call_timeout = Duration::from_secs(5)
    });
    let bad = t.host.log_driver("hostile-log").unwrap();
    let t0 = Instant::now();
    bad.validate_options(&opts(&[("do", "flood")]))
        .await
        .expect("flooding is not fatal");
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "flood took {:?}",
        t0.elapsed()
    );
    let s = t.host.stats("hostile-log").unwrap();
    assert!(s.log_messages_dropped >= 99_000, "{s:?}");
    // 16 MiB written to stderr, at most 64 KiB kept.
    assert!(s.stderr_bytes_dropped >= (16 << 20) - (64 << 10), "{s:?}");
    assert_eq!(s.traps, 0);
}

#[tokio::test]
async fn oversized_and_malformed_log_replies_are_rejected() {
    let t = host_with(&["hostile-log"], |_| {});
    let bad = t.host.log_driver("hostile-log").unwrap();
    for mode in ["too-many", "huge-line", "bad-partial", "negative-time"] {
        let mut rd = bad
            .read_logs(info(mode), ReadConfig::default())
            .await
            .unwrap();
        match rd.recv().await {
            Some(Err(PluginError::BadReply { message, .. })) => assert!(!message.is_empty()),
            other => panic!("{mode}: expected a rejected reply, got {other:?}"),
        }
    }
    let mut rd = bad
        .read_logs(info("fine"), ReadConfig::default())
        .await
        .unwrap();
    assert_eq!(rd.recv().await.unwrap().unwrap().line, b"fine");
    assert!(rd.recv().await.is_none());
    assert_eq!(t.host.stats("hostile-log").unwrap().bad_replies, 4);
}

#[tokio::test]
async fn log_sessions_survive_a_plugin_crash() {
    let t = host_with(&["hostile-log"], |_| {});
    let bad = t.host.log_driver("hostile-log").unwrap();
    let s = bad.start(info("c1")).await.unwrap();
    assert!(s.send(LogEntry::new(LogSource::Stdout, 1, "before")));
    assert!(s.send(LogEntry::new(LogSource::Stdout, 2, "panic")));
    // Entries sent while the instance is down are buffered, then written to the
    // session the host re-starts on the new instance.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(s.send(LogEntry::new(LogSource::Stdout, 3, "after")));
    let stats = s.close().await.unwrap();
    assert_eq!(stats.accepted, 3);
    let file = t.host.data_dir("hostile-log").unwrap().join("c1.log");
    let text = std::fs::read_to_string(file).unwrap();
    assert!(
        text.contains("after"),
        "{text:?} {stats:?} {:?}",
        t.host.stats("hostile-log")
    );
    assert!(
        stats.delivered >= 1 && stats.delivered + stats.dropped == 3,
        "{stats:?}"
    );
    assert!(t.host.stats("hostile-log").unwrap().traps >= 1);
}

#[tokio::test]
async fn volume_path_escapes_are_rejected() {
    let t = host_with(&["hostile-volume"], |_| {});
    let vol = t.host.volume_driver("hostile-volume").unwrap();
    let root = t.host.data_dir("hostile-volume").unwrap();
    std::os::unix::fs::symlink("/etc", root.join("link")).unwrap();
    for name in [
        "dotdot",
        "nested-dotdot",
        "absolute",
        "symlink",
        "symlink-parent",
        "nul",
        "long",
        "missing",
        "disk-is-dir",
        "dir-is-file",
    ] {
        match vol.mount(name, "c1").await {
            Err(PluginError::BadReply { .. }) => {}
            other => panic!("{name}: expected rejection, got {other:?}"),
        }
        assert!(
            matches!(vol.path(name).await, Err(PluginError::BadReply { .. })),
            "{name}"
        );
    }
    assert_eq!(
        vol.mount("good", "c1").await.unwrap(),
        MountSource::Directory(root.join("volumes/good"))
    );
    assert!(matches!(
        vol.get("imposter").await,
        Err(PluginError::BadReply { .. })
    ));
    assert!(
        matches!(vol.list().await, Err(PluginError::BadReply { .. })),
        "200k volumes accepted"
    );
}

#[tokio::test]
async fn disk_image_requests_cannot_escape_the_root() {
    let t = host_with(&["hostile-volume"], |_| {});
    let vol = t.host.volume_driver("hostile-volume").unwrap();
    let root = t.host.data_dir("hostile-volume").unwrap();
    std::os::unix::fs::symlink(t.tmp.path(), root.join("out")).unwrap();
    for p in [
        "../escape.img",
        "/tmp/escape.img",
        "out/escape.img",
        "volumes/../../escape.img",
        "volumes/good",
    ] {
        let e = vol.create("x1", &opts(&[("path", p)])).await.unwrap_err();
        assert!(matches!(e, PluginError::Denied(_)), "{p}: {e:?}");
    }
    assert!(!t.tmp.path().join("escape.img").exists());
    assert!(!root.parent().unwrap().join("escape.img").exists());
    vol.create("x1", &opts(&[("path", "volumes/good/ok.img")]))
        .await
        .unwrap();
    assert_eq!(
        std::fs::metadata(root.join("volumes/good/ok.img"))
            .unwrap()
            .len(),
        1 << 20
    );
}

#[tokio::test]
async fn host_kv_persists_and_is_bounded() {
    let t = host_with(&["hostile-log"], |_| {});
    let bad = t.host.log_driver("hostile-log").unwrap();
    bad.validate_options(&opts(&[("do", "kv")])).await.unwrap();
    // A crash does not lose kv state: the count continues on the new instance.
    assert!(bad
        .validate_options(&opts(&[("do", "panic")]))
        .await
        .is_err());
    tokio::time::sleep(Duration::from_millis(30)).await;
    bad.validate_options(&opts(&[("do", "kv")])).await.unwrap();
    let kv = std::fs::read_to_string(t.tmp.path().join("data/plugin-state/hostile-log.kv.json"))
        .unwrap();
    assert_eq!(kv, r#"{"count":"02"}"#);
    let e = bad
        .validate_options(&opts(&[("do", "kvflood")]))
        .await
        .unwrap_err();
    match e {
        PluginError::Denied(m) => assert!(m.contains("rate limit") || m.contains("quota"), "{m}"),
        other => panic!("expected denial, got {other:?}"),
    }
    let len = std::fs::metadata(t.tmp.path().join("data/plugin-state/hostile-log.kv.json"))
        .unwrap()
        .len();
    assert!(len < 10 << 20, "kv file grew to {len}");
}

fn stage_syslog(tmp: &std::path::Path, grant: Option<u16>) -> std::path::PathBuf {
    let dir = stage(tmp, &["syslog-example"]).join("syslog-example");
    let base = "name = \"syslog-example\"\nkind = \"log\"\ninterface = \"berth:driver@0.1.0\"\n";
    let text = match grant {
        Some(p) => format!("{base}[grants]\nnetwork = [\"127.0.0.1:{p}\"]\n"),
        None => base.to_string(),
    };
    std::fs::write(dir.join("manifest.toml"), text).unwrap();
    dir
}

#[test]
fn socket_imports_without_a_grant_are_refused_at_load() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = stage_syslog(tmp.path(), None);
    let host = PluginHost::new(test_config(tmp.path())).unwrap();
    let err = host.load(&dir).unwrap_err();
    assert!(err.message.contains("wasi:sockets"), "{err}");
    assert!(err.message.contains("grants"), "{err}");
    assert!(host.list().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn granted_network_reaches_only_the_granted_address() {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other_port = other.local_addr().unwrap().port();
    let tmp = tempfile::tempdir().unwrap();
    let dir = stage_syslog(tmp.path(), Some(port));
    let host = PluginHost::new(test_config(tmp.path())).unwrap();
    host.load(&dir).unwrap();
    let drv = host.log_driver("syslog-example").unwrap();

    let denied = ContainerLogInfo {
        log_opts: opts(&[("syslog-address", &format!("tcp://127.0.0.1:{other_port}"))]),
        ..info("c2")
    };
    assert!(matches!(
        drv.start(denied).await,
        Err(PluginError::Denied(_))
    ));

    let ok = ContainerLogInfo {
        log_opts: opts(&[("syslog-address", &format!("tcp://127.0.0.1:{port}"))]),
        ..info("c1")
    };
    let s = drv.start(ok).await.unwrap();
    let (mut conn, _) = listener.accept().unwrap();
    s.send(LogEntry::new(LogSource::Stdout, 1, "hello syslog"));
    s.close().await.unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = vec![0u8; 256];
    let n = conn.read(&mut got).unwrap();
    let got = String::from_utf8_lossy(&got[..n]);
    assert_eq!(got, "<14>1 - - c1 - - - hello syslog\n");
}

#[test]
fn wrong_kind_or_version_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = stage(tmp.path(), &["json-file"]).join("json-file");
    let host = PluginHost::new(test_config(tmp.path())).unwrap();
    std::fs::write(
        dir.join("manifest.toml"),
        "name = \"x\"\nkind = \"volume\"\ninterface = \"berth:driver@0.1.0\"\n",
    )
    .unwrap();
    let e = host.load(&dir).unwrap_err();
    assert!(e.message.contains("not a volume plugin"), "{e}");
    std::fs::write(
        dir.join("manifest.toml"),
        "name = \"x\"\nkind = \"log\"\ninterface = \"berth:driver@0.2.0\"\n",
    )
    .unwrap();
    let e = host.load(&dir).unwrap_err();
    assert!(e.message.contains("0.2.0"), "{e}");
    std::fs::write(dir.join("plugin.wasm"), b"\0asm garbage").unwrap();
    std::fs::write(
        dir.join("manifest.toml"),
        "name = \"x\"\nkind = \"log\"\ninterface = \"berth:driver@0.1.0\"\n",
    )
    .unwrap();
    assert!(host.load(&dir).is_err());
}

#[tokio::test]
async fn grown_instances_are_recycled() {
    let t = host_with(&["hostile-log"], |c| c.log_memory_limit = 32 << 20);
    let bad = t.host.log_driver("hostile-log").unwrap();
    bad.validate_options(&[]).await.unwrap();
    assert_eq!(t.host.stats("hostile-log").unwrap().recycles, 0);
    bad.validate_options(&opts(&[("do", "leak")]))
        .await
        .expect("leaking below the cap is allowed");
    let s = t.host.stats("hostile-log").unwrap();
    assert_eq!((s.recycles, s.traps), (1, 0), "{s:?}");
    bad.validate_options(&[]).await.unwrap();
    assert_eq!(t.host.stats("hostile-log").unwrap().instantiations, 2);
}
