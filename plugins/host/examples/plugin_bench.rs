//! Plugin-boundary benchmarks (see benches/plugins/run.sh and benches/RESULTS.md):
//! json-file throughput for 80-byte and 1 KiB lines, per-call overhead,
//! instantiate time from the precompiled cache, and component load times.
//!
//! usage: plugin_bench <built-plugins-dir>

use std::path::PathBuf;
use std::time::{Duration, Instant};

use berth_plugin_host::*;

fn pct(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p) as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

async fn throughput(host: &PluginHost, line_len: usize, lines: u64, batch: usize) -> (f64, f64) {
    let drv = host.log_driver("json-file").unwrap();
    let id = format!("bench{line_len}");
    let opts = vec![("max-buffer-size".to_string(), "1g".to_string())];
    let s = drv
        .start(ContainerLogInfo {
            id: id.clone(),
            log_opts: opts,
            ..Default::default()
        })
        .await
        .unwrap();
    let line = vec![b'x'; line_len];
    let t0 = Instant::now();
    let mut sent = 0u64;
    while sent < lines {
        let n = (batch as u64).min(lines - sent);
        let ts = 1_700_000_000_000_000_000 + sent as i64;
        let accepted = s.send_batch(
            (0..n).map(|i| LogEntry::new(LogSource::Stdout, ts + i as i64, line.clone())),
        );
        assert_eq!(accepted as u64, n, "bench buffer overflowed");
        sent += n;
    }
    let send_secs = t0.elapsed().as_secs_f64();
    let st = s.close().await.unwrap();
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(st.delivered, lines, "{st:?}");
    drv.remove(&id).await.unwrap();
    (lines as f64 / secs, lines as f64 / send_secs)
}

fn main() {
    let src = PathBuf::from(
        std::env::args()
            .nth(1)
            .expect("usage: plugin_bench <built-plugins-dir>"),
    );
    let tmp = tempfile::tempdir().unwrap();
    let cfg = PluginHostConfig {
        cache_dir: tmp.path().join("cache"),
        data_root: tmp.path().join("data"),
        log_call_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let dir = tmp.path().join("plugins");
    for n in ["json-file", "local"] {
        std::fs::create_dir_all(dir.join(n)).unwrap();
        for f in ["manifest.toml", "plugin.wasm"] {
            std::fs::copy(src.join(n).join(f), dir.join(n).join(f)).unwrap();
        }
    }

    // Component load: compile (cache miss) vs deserialize (cache hit), fresh hosts.
    let t = Instant::now();
    let host = PluginHost::new(cfg.clone()).unwrap();
    assert!(host.load_dir(&dir).is_empty());
    let cold = t.elapsed();
    drop(host);
    let t = Instant::now();
    let host = PluginHost::new(cfg.clone()).unwrap();
    assert!(host.load_dir(&dir).is_empty());
    let warm = t.elapsed();
    assert!(host.list().iter().all(|p| p.cache_hit));
    println!("pooling allocator: {}", host.pooling());
    println!(
        "load 2 plugins: cold (compile) {:.1} ms, warm (precompiled cache) {:.1} ms",
        cold.as_secs_f64() * 1e3,
        warm.as_secs_f64() * 1e3
    );

    for name in ["json-file", "local"] {
        let _ = host.bench_instantiate(name, 200).unwrap();
        let v = host.bench_instantiate(name, 2000).unwrap();
        println!(
            "instantiate+init {name}: p50 {:.1} us, p99 {:.1} us",
            us(pct(v.clone(), 0.5)),
            us(pct(v, 0.99))
        );
        let _ = host.bench_call_overhead(name, 1000).unwrap();
        let v = host.bench_call_overhead(name, 20000).unwrap();
        println!(
            "in-worker call {name}: p50 {:.2} us, p99 {:.2} us",
            us(pct(v.clone(), 0.5)),
            us(pct(v, 0.99))
        );
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let drv = host.log_driver("json-file").unwrap();
        let mut v = Vec::new();
        for i in 0..5000 {
            let t = Instant::now();
            drv.validate_options(&[]).await.unwrap();
            if i >= 500 {
                v.push(t.elapsed());
            }
        }
        println!(
            "daemon-side round trip (queue + worker + call + reply): p50 {:.1} us, p99 {:.1} us",
            us(pct(v.clone(), 0.5)),
            us(pct(v, 0.99))
        );
        for (len, n) in [(80usize, 2_000_000u64), (1024, 300_000)] {
            let (end_to_end, send_rate) = throughput(&host, len, n, 4096).await;
            println!(
                "json-file {len}-byte lines: {:.2} M lines/s end-to-end ({:.0} MB/s of log text), producer send {:.1} M lines/s",
                end_to_end / 1e6,
                end_to_end * len as f64 / 1e6,
                send_rate / 1e6
            );
        }
    });
}
