//! Shared test fixtures: build the plugin crates once (cross-process lock), then
//! give each test its own host with a private data root.
#![allow(dead_code)]

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use berth_plugin_host::{PluginHost, PluginHostConfig};

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Build every plugin with scripts/build-plugins.sh into target/test-plugins.
/// A flock serialises concurrent test binaries; the script itself is incremental.
pub fn built_plugins() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let ws = workspace();
        let out = ws.join("target/test-plugins");
        std::fs::create_dir_all(ws.join("target")).unwrap();
        let lock = std::fs::File::create(ws.join("target/test-plugins.lock")).unwrap();
        // SAFETY: flock on a valid fd; released when `lock` is dropped.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
        let status = std::process::Command::new("bash")
            .arg(ws.join("scripts/build-plugins.sh"))
            .arg("--out")
            .arg(&out)
            .status()
            .expect("running scripts/build-plugins.sh");
        assert!(status.success(), "scripts/build-plugins.sh failed");
        drop(lock);
        out
    })
}

pub struct TestHost {
    pub host: PluginHost,
    pub tmp: tempfile::TempDir,
    pub plugins: PathBuf,
}

pub fn test_config(tmp: &Path) -> PluginHostConfig {
    PluginHostConfig {
        // Shared across tests so each component is compiled once per engine config.
        cache_dir: workspace().join("target/test-plugin-cache"),
        data_root: tmp.join("data"),
        log_call_timeout: Duration::from_millis(300),
        volume_call_timeout: Duration::from_millis(1000),
        restart_backoff: Duration::from_millis(10),
        restart_backoff_max: Duration::from_millis(50),
        breaker_threshold: 50,
        ..Default::default()
    }
}

/// Copy the named built plugins into a private plugin dir.
pub fn stage(tmp: &Path, names: &[&str]) -> PathBuf {
    let src = built_plugins();
    let dst = tmp.join("plugins");
    for n in names {
        std::fs::create_dir_all(dst.join(n)).unwrap();
        for f in ["manifest.toml", "plugin.wasm"] {
            std::fs::copy(src.join(n).join(f), dst.join(n).join(f)).unwrap();
        }
    }
    dst
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

pub fn host_with(names: &[&str], tweak: impl FnOnce(&mut PluginHostConfig)) -> TestHost {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let plugins = stage(tmp.path(), names);
    let mut cfg = test_config(tmp.path());
    tweak(&mut cfg);
    let host = PluginHost::new(cfg).unwrap();
    let errs = host.load_dir(&plugins);
    assert!(errs.is_empty(), "load errors: {errs:?}");
    TestHost { host, tmp, plugins }
}

pub fn opts(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
