//! The default json-file log driver through the real host.

mod common;

use std::time::Duration;

use berth_plugin_host::*;
use common::*;

const S: i64 = 1_000_000_000;
/// 2026-01-02T03:04:05Z
const T0: i64 = 1_767_323_045 * S;

fn info(id: &str, o: &[(&str, &str)]) -> ContainerLogInfo {
    ContainerLogInfo {
        id: id.into(),
        name: format!("/{id}"),
        log_opts: opts(o),
        ..Default::default()
    }
}

async fn read_all(drv: &LogDriverHandle, id: &str, cfg: ReadConfig) -> Vec<LogEntry> {
    let mut rd = drv.read_logs(info(id, &[]), cfg).await.unwrap();
    let mut out = Vec::new();
    while let Some(e) = rd.recv().await {
        out.push(e.unwrap());
    }
    out
}

fn lines(v: &[LogEntry]) -> Vec<String> {
    v.iter()
        .map(|e| String::from_utf8_lossy(&e.line).into_owned())
        .collect()
}

#[tokio::test]
async fn writes_docker_format_and_reads_it_back() {
    let t = host_with(&["json-file"], |_| {});
    let drv = t.host.log_driver("json-file").unwrap();
    assert!(drv.read_logs_supported());
    let s = drv
        .start(ContainerLogInfo {
            labels: opts(&[("app", "web"), ("x", "y")]),
            ..info("c1", &[("labels", "app")])
        })
        .await
        .unwrap();
    s.send(LogEntry::new(
        LogSource::Stdout,
        T0 + 123_456_789,
        "hello \"world\" <tag>",
    ));
    s.send(LogEntry::new(LogSource::Stderr, T0 + S, "oops\tbad\u{1}"));
    s.send(LogEntry {
        partial: Some(PartialMeta {
            id: "p1".into(),
            ordinal: 1,
            last: false,
        }),
        ..LogEntry::new(LogSource::Stdout, T0 + 2 * S, vec![b'a', 0xff, b'b'])
    });
    let stats = s.close().await.unwrap();
    assert_eq!(
        stats,
        LogStats {
            accepted: 3,
            dropped: 0,
            delivered: 3
        }
    );

    let path = t
        .host
        .data_dir("json-file")
        .unwrap()
        .join("containers/c1/c1-json.log");
    let text = std::fs::read_to_string(&path).unwrap();
    let rows: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows[0]["log"], "hello \"world\" <tag>\n");
    assert_eq!(rows[0]["stream"], "stdout");
    assert_eq!(rows[0]["time"], "2026-01-02T03:04:05.123456789Z");
    assert_eq!(rows[0]["attrs"], serde_json::json!({"app": "web"}));
    assert_eq!(rows[1]["stream"], "stderr");
    assert_eq!(rows[1]["time"], "2026-01-02T03:04:06Z");
    assert_eq!(
        rows[2]["log"], "a\u{fffd}b",
        "partial lines get no newline; bad UTF-8 becomes U+FFFD"
    );
    assert!(
        text.contains("\\u003ctag\\u003e"),
        "HTML-escaped like Docker: {text}"
    );

    let got = read_all(&drv, "c1", ReadConfig::default()).await;
    assert_eq!(
        lines(&got),
        vec!["hello \"world\" <tag>", "oops\tbad\u{1}", "a\u{fffd}b"]
    );
    assert_eq!(got[0].time_nano, T0 + 123_456_789);
    assert_eq!(got[1].source, LogSource::Stderr);
    assert!(got[2].partial.is_some() && got[0].partial.is_none());
}

#[tokio::test]
async fn rotates_by_size_and_keeps_max_files() {
    let t = host_with(&["json-file"], |_| {});
    let drv = t.host.log_driver("json-file").unwrap();
    let s = drv
        .start(info("rot", &[("max-size", "1k"), ("max-file", "3")]))
        .await
        .unwrap();
    for i in 0..100 {
        s.send(LogEntry::new(
            LogSource::Stdout,
            T0 + i * S,
            format!("line {i:03} {}", "x".repeat(60)),
        ));
    }
    s.close().await.unwrap();
    let dir = t.host.data_dir("json-file").unwrap().join("containers/rot");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec!["rot-json.log", "rot-json.log.1", "rot-json.log.2"]
    );
    for n in &names {
        let len = std::fs::metadata(dir.join(n)).unwrap().len();
        assert!(len <= 1000, "{n} is {len} bytes");
    }
    let got = lines(&read_all(&drv, "rot", ReadConfig::default()).await);
    assert!(got.len() > 10 && got.len() < 40, "{} lines kept", got.len());
    assert!(got.last().unwrap().starts_with("line 099"));
    let nums: Vec<u32> = got.iter().map(|l| l[5..8].parse().unwrap()).collect();
    assert!(
        nums.windows(2).all(|w| w[1] == w[0] + 1),
        "out of order across files: {nums:?}"
    );
}

#[tokio::test]
async fn tail_since_until() {
    let t = host_with(&["json-file"], |_| {});
    let drv = t.host.log_driver("json-file").unwrap();
    let s = drv.start(info("c2", &[])).await.unwrap();
    s.send_batch((1..=10).map(|i| LogEntry::new(LogSource::Stdout, T0 + i * S, format!("{i}"))));
    s.close().await.unwrap();
    let tail = read_all(
        &drv,
        "c2",
        ReadConfig {
            tail: Some(3),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(lines(&tail), vec!["8", "9", "10"]);
    let tail0 = read_all(
        &drv,
        "c2",
        ReadConfig {
            tail: Some(0),
            ..Default::default()
        },
    )
    .await;
    assert!(tail0.is_empty());
    let window = ReadConfig {
        since_nano: Some(T0 + 4 * S),
        until_nano: Some(T0 + 7 * S),
        ..Default::default()
    };
    assert_eq!(
        lines(&read_all(&drv, "c2", window).await),
        vec!["4", "5", "6", "7"]
    );
    let both = ReadConfig {
        since_nano: Some(T0 + 4 * S),
        tail: Some(2),
        ..Default::default()
    };
    assert_eq!(lines(&read_all(&drv, "c2", both).await), vec!["9", "10"]);
}

async fn next(rd: &mut LogReader) -> Option<Result<LogEntry, PluginError>> {
    tokio::time::timeout(Duration::from_secs(5), rd.recv())
        .await
        .expect("follow stalled")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_streams_new_lines() {
    let t = host_with(&["json-file"], |_| {});
    let drv = t.host.log_driver("json-file").unwrap();
    let s = drv.start(info("c3", &[])).await.unwrap();
    s.send(LogEntry::new(LogSource::Stdout, T0, "first"));
    let mut rd = drv
        .read_logs(
            info("c3", &[]),
            ReadConfig {
                follow: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(next(&mut rd).await.unwrap().unwrap().line, b"first");
    s.send(LogEntry::new(LogSource::Stdout, T0 + 1, "second"));
    s.send(LogEntry::new(LogSource::Stderr, T0 + 2, "third"));
    assert_eq!(next(&mut rd).await.unwrap().unwrap().line, b"second");
    assert_eq!(next(&mut rd).await.unwrap().unwrap().line, b"third");
    assert!(
        tokio::time::timeout(Duration::from_millis(150), rd.recv())
            .await
            .is_err(),
        "follow ended early"
    );
    drop(rd);
    s.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_survives_rotation() {
    let t = host_with(&["json-file"], |_| {});
    let drv = t.host.log_driver("json-file").unwrap();
    let s = drv
        .start(info("c6", &[("max-size", "2k"), ("max-file", "5")]))
        .await
        .unwrap();
    s.send(LogEntry::new(LogSource::Stdout, T0, "000"));
    let mut rd = drv
        .read_logs(
            info("c6", &[]),
            ReadConfig {
                follow: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(next(&mut rd).await.unwrap().unwrap().line, b"000");
    // ~100-byte lines: each burst of 15 crosses the 2k limit once.
    for burst in 0..4 {
        for i in 1..=15 {
            let n = burst * 15 + i;
            s.send(LogEntry::new(
                LogSource::Stdout,
                T0 + n,
                format!("{n:03} {}", "z".repeat(40)),
            ));
        }
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    for n in 1..=60 {
        let e = next(&mut rd).await.unwrap().unwrap();
        assert_eq!(
            &e.line[..3],
            format!("{n:03}").as_bytes(),
            "line {n} missing or out of order"
        );
    }
    let dir = t.host.data_dir("json-file").unwrap().join("containers/c6");
    assert!(dir.join("c6-json.log.1").exists(), "no rotation happened");
    drop(rd);
    s.close().await.unwrap();
}

#[tokio::test]
async fn validates_options_and_removes_logs() {
    let t = host_with(&["json-file"], |_| {});
    let drv = t.host.log_driver("json-file").unwrap();
    for bad in [
        &[("nope", "1")][..],
        &[("max-size", "abc")],
        &[("max-size", "0")],
        &[("max-file", "0")],
        &[("compress", "true")],
        &[("mode", "sometimes")],
        // Docker: max-buffer-size only with mode=non-blocking.
        &[("max-buffer-size", "4m")],
        &[("mode", "blocking"), ("max-buffer-size", "4m")],
    ] {
        let e = drv.validate_options(&opts(bad)).await.unwrap_err();
        assert_eq!(e.http_status(), 400, "{bad:?}: {e}");
    }
    drv.validate_options(&opts(&[
        ("max-size", "10m"),
        ("max-file", "3"),
        ("mode", "non-blocking"),
        ("max-buffer-size", "4m"),
    ]))
    .await
    .unwrap();
    assert!(
        matches!(drv.start(info("c4", &[("bogus", "x")])).await, Err(PluginError::Invalid(m)) if m.contains("bogus"))
    );

    let s = drv.start(info("c4", &[])).await.unwrap();
    s.send(LogEntry::new(LogSource::Stdout, T0, "x"));
    s.close().await.unwrap();
    assert_eq!(read_all(&drv, "c4", ReadConfig::default()).await.len(), 1);
    drv.remove("c4").await.unwrap();
    assert!(read_all(&drv, "c4", ReadConfig::default()).await.is_empty());
    assert!(!t
        .host
        .data_dir("json-file")
        .unwrap()
        .join("containers/c4")
        .exists());
}

#[tokio::test]
async fn non_blocking_mode_drops_new_entries_when_full() {
    let t = host_with(&["hostile-log", "json-file"], |_| {});
    // hostile-log's "slow" line holds the plugin for 150 ms per entry.
    let drv = t.host.log_driver("hostile-log").unwrap();
    let s = drv
        .start(ContainerLogInfo {
            id: "c5".into(),
            log_opts: opts(&[("mode", "non-blocking"), ("max-buffer-size", "2k")]),
            ..Default::default()
        })
        .await
        .unwrap();
    let t0 = std::time::Instant::now();
    let mut accepted = 0;
    for i in 0..1000 {
        let line = if i == 0 {
            "slow".to_string()
        } else {
            format!("{i:04}{}", "y".repeat(100))
        };
        accepted += s.send(LogEntry::new(LogSource::Stdout, T0, line)) as u32;
    }
    assert!(
        t0.elapsed() < Duration::from_millis(100),
        "send blocked for {:?}",
        t0.elapsed()
    );
    assert!(accepted < 100, "2k buffer accepted {accepted}");
    let st = s.close().await.unwrap();
    assert_eq!(st.accepted, accepted as u64);
    assert_eq!(st.dropped, 1000 - accepted as u64);
    assert_eq!(st.delivered, accepted as u64);
}

#[tokio::test]
async fn blocking_mode_loses_nothing_and_waits_for_the_plugin() {
    let t = host_with(&["hostile-log", "json-file"], |_| {});
    // The default mode is blocking: a slow plugin makes the writer wait, never drop.
    let drv = t.host.log_driver("hostile-log").unwrap();
    let s = drv
        .start(ContainerLogInfo {
            id: "c6".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(s.send(LogEntry::new(LogSource::Stdout, T0, "slow")));
    let t0 = std::time::Instant::now();
    let mut waited = Duration::ZERO;
    for i in 0..3000 {
        let line = format!("{i:05}{}", "z".repeat(1000));
        assert!(
            s.send(LogEntry::new(LogSource::Stdout, T0, line)),
            "line {i} dropped"
        );
        let w = std::time::Instant::now();
        s.writable().await;
        waited += w.elapsed();
    }
    // 3 MB through a 1 MB buffer behind a plugin stuck for 150 ms: the writer waited.
    assert!(
        waited >= Duration::from_millis(100),
        "never waited: {waited:?}"
    );
    let st = s.close().await.unwrap();
    assert_eq!(
        (st.accepted, st.dropped, st.delivered),
        (3001, 0, 3001),
        "{:?}",
        t0.elapsed()
    );
    let file = t.host.data_dir("hostile-log").unwrap().join("c6.log");
    let text = std::fs::read_to_string(file).unwrap();
    assert_eq!(text.lines().filter(|l| l.contains("zzz")).count(), 3000);
}
