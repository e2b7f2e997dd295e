//! Host-wide settings.

use std::path::PathBuf;
use std::time::Duration;

/// Settings for [`crate::PluginHost`]. `Default` gives production values with
/// both directories empty: set `cache_dir` and `data_root`.
#[derive(Debug, Clone)]
pub struct PluginHostConfig {
    /// Precompiled `.cwasm` cache (daemon-owned; created 0700).
    pub cache_dir: PathBuf,
    /// Each plugin gets `<data_root>/plugin-data/<name>/` as its only preopened dir,
    /// and `<data_root>/plugin-state/<name>.kv.json` for its host-side kv.
    pub data_root: PathBuf,
    /// Epoch deadline for each log-plugin call (write batch, read batch, start...).
    pub log_call_timeout: Duration,
    /// Epoch deadline for each volume-plugin call (time blocked in host imports
    /// such as mkfs is not billed to the plugin).
    pub volume_call_timeout: Duration,
    /// Epoch deadline for each network-plugin call (pure decisions: short).
    pub network_call_timeout: Duration,
    /// Linear-memory caps per instance; a manifest may ask for less, never more.
    pub log_memory_limit: usize,
    pub volume_memory_limit: usize,
    pub network_memory_limit: usize,
    /// Bounded request queue per plugin; when full, calls fail with `Unavailable`.
    pub queue_depth: usize,
    /// Restart backoff after a trap: base * 2^(n-1), capped.
    pub restart_backoff: Duration,
    pub restart_backoff_max: Duration,
    /// `breaker_threshold` failures within `breaker_window` open the circuit for
    /// `breaker_cooldown`; calls fail fast with `Unavailable` meanwhile.
    pub breaker_threshold: u32,
    pub breaker_window: Duration,
    pub breaker_cooldown: Duration,
    /// stderr bytes kept per call (the rest is counted and dropped).
    pub stderr_limit: usize,
    /// Default per-session log buffer (Docker's non-blocking ring default: 1 MB);
    /// `--log-opt max-buffer-size` overrides it per container.
    pub log_buffer_bytes: usize,
    /// Largest batch pushed to a log plugin in one `write` call.
    pub log_batch_entries: usize,
    pub log_batch_bytes: usize,
    /// Recycle an instance after a call once its linear memory exceeds this share
    /// (percent) of its memory cap.
    pub recycle_memory_percent: u8,
    /// Use the pooling allocator if the address-space probe passes.
    pub pooling: bool,
    /// Pool size (component instances) when pooling.
    pub max_instances: u32,
}

impl Default for PluginHostConfig {
    fn default() -> Self {
        PluginHostConfig {
            cache_dir: PathBuf::new(),
            data_root: PathBuf::new(),
            log_call_timeout: Duration::from_secs(1),
            volume_call_timeout: Duration::from_secs(5),
            network_call_timeout: Duration::from_secs(1),
            log_memory_limit: 64 << 20,
            volume_memory_limit: 128 << 20,
            network_memory_limit: 32 << 20,
            queue_depth: 256,
            restart_backoff: Duration::from_millis(100),
            restart_backoff_max: Duration::from_secs(10),
            breaker_threshold: 5,
            breaker_window: Duration::from_secs(60),
            breaker_cooldown: Duration::from_secs(30),
            stderr_limit: 64 << 10,
            log_buffer_bytes: 1_000_000,
            log_batch_entries: 4096,
            log_batch_bytes: 4 << 20,
            recycle_memory_percent: 50,
            pooling: true,
            max_instances: 128,
        }
    }
}
