//! The log records and options the engine and the plugins exchange, and their
//! conversions to and from the WIT types.

use crate::bindings::v0_1_0::log::exports::berth::driver::log_driver as wit;

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

    pub(super) fn cost(&self) -> usize {
        self.line.len() + 64
    }

    pub(super) fn into_wit(self) -> wit::LogEntry {
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

    pub(super) fn from_wit(e: wit::LogEntry) -> Self {
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
    pub(super) fn to_wit(&self) -> wit::ContainerInfo {
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
