//! berth's sandboxed WebAssembly driver plugins (log, volume, network).
//!
//! Plugins are WASI 0.2 components implementing a world of the versioned WIT
//! package `berth:driver` (`plugins/wit/<version>/`). The host runs each plugin in
//! its own wasmtime store on a dedicated thread, so a buggy or hostile plugin can
//! neither harm the host nor stall the daemon:
//!
//! * one [`wasmtime::Engine`] (Cranelift, pooling allocator when the probe passes),
//!   components precompiled once and cached by content hash, `InstancePre` reuse;
//! * per-store limits (memory, tables, instances), an epoch deadline on every call,
//!   bounded stderr capture, rate-limited host imports;
//! * WASI with nothing granted: no env, no args, stdin closed, stdout dropped, no
//!   sockets unless the manifest grants `ip:port` destinations; only the plugin's own
//!   `<data_root>/plugin-data/<name>/` is preopened (at `/data`);
//! * imports outside the kind's allowlist refuse the plugin at load time;
//! * a trap or timeout drops the instance; it is re-created with exponential backoff
//!   behind a circuit breaker, and log sessions are re-started on the new instance;
//! * every reply is re-validated (counts, sizes, paths beneath the plugin's root).
//!
//! # Daemon API
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use berth_plugin_host::*;
//! let host = PluginHost::new(PluginHostConfig {
//!     cache_dir: "/var/lib/berth/plugin-cache".into(),
//!     data_root: "/var/lib/berth".into(),
//!     ..Default::default()
//! })?;
//! for err in host.load_dir("/usr/lib/berth/plugins".as_ref()) {   // blocking
//!     eprintln!("{err}");
//! }
//! // docker info: Plugins.Log / Plugins.Volume
//! let _log_names = host.names(PluginKind::Log);
//!
//! // --log-driver json-file --log-opt max-size=10m
//! let drv = host.log_driver("json-file").expect("loaded");
//! let opts = vec![("max-size".to_string(), "10m".to_string())];
//! drv.validate_options(&opts).await?;                        // Invalid => HTTP 400
//! let session = drv
//!     .start(ContainerLogInfo { id: "c0ffee".into(), log_opts: opts, ..Default::default() })
//!     .await?;
//! session.send(LogEntry::new(LogSource::Stdout, 1_700_000_000_000_000_000, "hello"));  // never blocks
//! let _stats = session.close().await?;                        // StopLogging: flush + close
//! let mut rd = drv.read_logs(
//!     ContainerLogInfo { id: "c0ffee".into(), ..Default::default() },
//!     ReadConfig { tail: Some(100), follow: false, ..Default::default() },
//! ).await?;
//! while let Some(entry) = rd.recv().await { let _ = entry?; }
//! drv.remove("c0ffee").await?;                                // docker rm
//!
//! // docker volume create -d local -o kind=dir data
//! let vol = host.volume_driver("local").expect("loaded");
//! vol.create("data", &[]).await?;                             // AlreadyExists => 409
//! match vol.mount("data", "c0ffee").await? {
//!     MountSource::Directory(_host_dir) => { /* bind / virtio-fs */ }
//!     MountSource::Disk { path: _, format: _, read_only: _ } => { /* virtio-blk */ }
//! }
//! vol.unmount("data", "c0ffee").await?;
//! # Ok(()) }
//! ```
//!
//! Runtime notes: [`PluginHost::new`], [`PluginHost::load_dir`] and
//! [`PluginHost::load`] block (a cache miss compiles with Cranelift, ~200 ms per
//! plugin); call them before serving or from `spawn_blocking`. The async methods
//! need a tokio runtime with the time driver (`enable_all`), and `read_logs` spawns
//! a tokio task. `LogSession::send`/`send_batch` are plain non-blocking functions
//! callable from any thread. Plugin data lives in `<data_root>/plugin-data/<name>/`
//! and `<data_root>/plugin-state/<name>.kv.json`; keep the discovery directory
//! separate (e.g. `<config_root>/plugins/`).
//!
//! Errors are [`PluginError`]; [`PluginError::http_status`] gives the Docker API
//! status (404 not found, 409 exists/busy, 400 invalid, 403 denied, 501 unsupported,
//! 500 failed/crashed/bad reply, 503 timeout/unavailable).
//!
//! Log drop policy: see [`log`] — `send` never blocks; a full per-session buffer
//! (default 1 MB, `--log-opt max-buffer-size`) drops new entries and counts them.

pub mod authz;
pub mod bindings;
mod config;
mod engine;
mod error;
mod host;
mod interface;
mod kv;
pub mod log;
mod manifest;
pub mod network;
mod network_wit;
mod plugin;
mod resolve;
mod shared;
mod stats;
mod stdio;
mod store;
mod validate;
pub mod volume;

pub use config::PluginHostConfig;
pub use engine::TICK;
pub use error::{ErrorKind, HostError, LoadError, PluginError};
pub use host::{PluginHost, PluginInfo};
pub use interface::{check_standalone, InterfaceVersion};
pub use log::{
    ContainerLogInfo, LogDriverHandle, LogEntry, LogMode, LogReader, LogSession, LogSource,
    LogStats, PartialMeta, ReadConfig,
};
pub use manifest::{valid_plugin_name, Manifest, PluginKind};
pub use network::{
    AnyCidr, Cidr, Cidr6, EndpointSpec, NetIntent, NetworkDriverHandle, NetworkSpec,
};
pub use stats::PluginStats;
pub use volume::{DiskFormat, MountSource, VolumeDriverHandle, VolumeInfo, VolumeScope};

#[cfg(test)]
mod tests {
    fn send_sync<T: Send + Sync>() {}

    #[test]
    fn handles_are_shareable_across_tasks() {
        send_sync::<super::PluginHost>();
        send_sync::<super::LogDriverHandle>();
        send_sync::<super::LogSession>();
        send_sync::<super::VolumeDriverHandle>();
        send_sync::<super::PluginError>();
    }
}
