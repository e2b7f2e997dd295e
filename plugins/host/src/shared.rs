//! What every handle, worker and store of one loaded plugin shares: its identity,
//! limits, counters, key-value state and live log sessions. Its own module so the
//! worker ([`crate::plugin`]), the store ([`crate::store`]) and the log sessions
//! ([`crate::log`]) can all use it without importing each other.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::PluginHostConfig;
use crate::kv::Kv;
use crate::log::buffer::SessionShared;
use crate::manifest::{Manifest, PluginKind};
use crate::stats::{PluginStats, Stats};
use crate::stdio::BoundedPipe;

pub struct Shared {
    pub name: String,
    pub kind: PluginKind,
    pub manifest: Manifest,
    pub root: PathBuf,
    pub memory_limit: usize,
    pub cfg: Arc<PluginHostConfig>,
    pub stderr: BoundedPipe,
    pub kv: Mutex<Kv>,
    pub stats: Stats,
    pub circuit_open: std::sync::atomic::AtomicBool,
    pub next_id: AtomicU64,
    /// Live log sessions (log plugins only), re-started after an instance restart.
    pub sessions: Mutex<HashMap<u64, Arc<SessionShared>>>,
    /// Cached `read-logs-supported` answer.
    pub reads_logs: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub fn snapshot(&self) -> PluginStats {
        let s = &self.stats;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PluginStats {
            calls: g(&s.calls),
            instantiations: g(&s.instantiations),
            traps: g(&s.traps),
            timeouts: g(&s.timeouts),
            bad_replies: g(&s.bad_replies),
            log_messages_dropped: g(&s.log_dropped),
            stderr_bytes_dropped: g(&s.stderr_dropped),
            log_entries_dropped: g(&s.entries_dropped),
            recycles: g(&s.recycles),
            circuit_open: self.circuit_open.load(Ordering::Relaxed),
        }
    }

    pub fn call_budget(&self) -> Duration {
        match self.kind {
            PluginKind::Log => self.cfg.log_call_timeout,
            PluginKind::Network => self.cfg.network_call_timeout,
            PluginKind::Volume => self.cfg.volume_call_timeout,
        }
    }
}
