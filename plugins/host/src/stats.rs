//! A plugin's counters: the live atomics every part of the host bumps, and the
//! snapshot reported for `docker info`-style output and tests.

use std::sync::atomic::AtomicU64;

/// Counters for one plugin (monotonic since load).
#[derive(Default, Debug)]
pub struct Stats {
    pub calls: AtomicU64,
    pub instantiations: AtomicU64,
    pub traps: AtomicU64,
    pub timeouts: AtomicU64,
    pub bad_replies: AtomicU64,
    pub log_dropped: AtomicU64,
    pub stderr_dropped: AtomicU64,
    pub entries_dropped: AtomicU64,
    pub recycles: AtomicU64,
}

/// Snapshot of a plugin's health, for `docker info`-style reporting and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PluginStats {
    pub calls: u64,
    pub instantiations: u64,
    pub traps: u64,
    pub timeouts: u64,
    pub bad_replies: u64,
    /// `host.log` messages dropped by the rate limiter.
    pub log_messages_dropped: u64,
    /// stderr bytes beyond the capture bound.
    pub stderr_bytes_dropped: u64,
    /// Log entries dropped (buffer full, plugin down, or write failed).
    pub log_entries_dropped: u64,
    /// Instances replaced because their memory grew past the recycle threshold.
    pub recycles: u64,
    pub circuit_open: bool,
}
