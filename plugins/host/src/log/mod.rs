//! Log drivers: sessions with a bounded buffer per container, and `docker logs` readers.
//!
//! Delivery modes follow Docker's `--log-opt mode=`:
//! - `blocking` (the default): nothing is dropped for lack of room. The buffer holds
//!   about `max-buffer-size` bytes; past that, [`LogSession::writable`] stays pending
//!   until the plugin has taken a batch, so the engine stops reading the container's
//!   output and the container's own writes block, as with Docker.
//! - `non-blocking`: the buffer is a ring of `max-buffer-size` bytes (default 1 MB,
//!   Docker's size); when it is full, *new* entries are dropped and counted, and
//!   `writable` is always ready.
//!
//! In both modes entries in a batch whose `write` call traps, times out or returns an
//! error are dropped and counted (a poison batch is not replayed). While the plugin
//! restarts, entries keep buffering.
//!
//! The module: the record types here; [`session`] buffers a container's entries,
//! [`driver`] is the engine's handle (start sessions, read logs), [`runner`] is the
//! plugin worker's side (pumping batches into the plugin, serving readers).

mod driver;
mod runner;
mod session;

use crate::bindings::v0_1_0::log::exports::berth::driver::log_driver as wit;

pub use driver::{LogDriverHandle, LogReader};
pub use session::{LogMode, LogSession, SessionShared};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogSource {
    Stdout,
    Stderr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartialMeta {
    pub id: String,
    pub ordinal: u32,
    pub last: bool,
}

/// One log record. `line` has no trailing newline; `partial` marks a line the
/// runtime split (no newline is to be added when printing it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub source: LogSource,
    pub time_nano: i64,
    pub line: Vec<u8>,
    pub partial: Option<PartialMeta>,
}

impl LogEntry {
    pub fn new(source: LogSource, time_nano: i64, line: impl Into<Vec<u8>>) -> Self {
        LogEntry {
            source,
            time_nano,
            line: line.into(),
            partial: None,
        }
    }

    fn cost(&self) -> usize {
        self.line.len() + 64
    }

    fn into_wit(self) -> wit::LogEntry {
        wit::LogEntry {
            source: match self.source {
                LogSource::Stdout => wit::Source::Stdout,
                LogSource::Stderr => wit::Source::Stderr,
            },
            time_nano: self.time_nano,
            line: self.line,
            partial: self.partial.map(|p| wit::PartialMeta {
                id: p.id,
                ordinal: p.ordinal,
                last: p.last,
            }),
        }
    }

    fn from_wit(e: wit::LogEntry) -> Self {
        LogEntry {
            source: match e.source {
                wit::Source::Stdout => LogSource::Stdout,
                wit::Source::Stderr => LogSource::Stderr,
            },
            time_nano: e.time_nano,
            line: e.line,
            partial: e.partial.map(|p| PartialMeta {
                id: p.id,
                ordinal: p.ordinal,
                last: p.last,
            }),
        }
    }
}

/// What the plugin learns about a container (Docker's `Info`, minus the env).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerLogInfo {
    pub id: String,
    pub name: String,
    pub image_id: String,
    pub image_name: String,
    pub labels: Vec<(String, String)>,
    /// `--log-opt` pairs. The host consumes `mode` and `max-buffer-size` itself.
    pub log_opts: Vec<(String, String)>,
    pub created_nano: i64,
}

impl ContainerLogInfo {
    fn to_wit(&self) -> wit::ContainerInfo {
        wit::ContainerInfo {
            id: self.id.clone(),
            name: self.name.clone(),
            image_id: self.image_id.clone(),
            image_name: self.image_name.clone(),
            labels: self.labels.clone(),
            log_opts: self.log_opts.clone(),
            created_nano: self.created_nano,
        }
    }
}

/// `docker logs` options. `tail: None` = all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadConfig {
    pub since_nano: Option<i64>,
    pub until_nano: Option<i64>,
    pub tail: Option<u32>,
    pub follow: bool,
}

/// Per-session counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Entries accepted into the buffer.
    pub accepted: u64,
    /// Entries dropped (buffer full, plugin unavailable, or a failed write).
    pub dropped: u64,
    /// Entries the plugin acknowledged.
    pub delivered: u64,
}
