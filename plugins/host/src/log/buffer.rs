//! One container's log buffer: its entries, delivery mode and counters (see the
//! module docs for the modes), and Docker's daemon-side log options.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use super::types::{ContainerLogInfo, LogEntry, LogStats};
use crate::error::PluginError;
use crate::stats::Stats;

pub(super) struct Buf {
    pub(super) q: VecDeque<LogEntry>,
    pub(super) bytes: usize,
}

/// Docker's `--log-opt mode=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogMode {
    Blocking,
    NonBlocking,
}

pub struct SessionShared {
    pub id: u64,
    pub info: ContainerLogInfo,
    pub(super) buf: Mutex<Buf>,
    pub(super) max_bytes: usize,
    pub(super) mode: LogMode,
    /// Signalled whenever buffered bytes leave (a batch taken, or the buffer discarded).
    pub(super) space: tokio::sync::Notify,
    pub(super) accepted: AtomicU64,
    pub(super) dropped: AtomicU64,
    pub(super) delivered: AtomicU64,
    /// Accepted entries the worker is done with (written, or dropped and counted), and a
    /// signal when that grows: see [`LogSession::stored`].
    pub(super) handled: AtomicU64,
    pub(super) progress: tokio::sync::Notify,
    pub(super) wake_pending: AtomicBool,
    /// The last write the plugin refused failed and none has succeeded since: a full disk
    /// fails every batch, so the warning is logged once per streak, not once per batch.
    pub(super) write_failing: AtomicBool,
    pub(super) closing: AtomicBool,
    pub(super) close_tx: Mutex<Option<tokio::sync::oneshot::Sender<LogStats>>>,
}

impl SessionShared {
    pub(super) fn stats(&self) -> LogStats {
        LogStats {
            accepted: self.accepted.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
        }
    }

    pub(super) fn pending(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
            || !self
                .buf
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .q
                .is_empty()
    }

    pub(super) fn has_room(&self) -> bool {
        self.buf.lock().unwrap_or_else(|p| p.into_inner()).bytes < self.max_bytes
    }

    /// Count `n` dropped entries, for the session and for its plugin's totals.
    pub(super) fn drop_n(&self, plugin: &Stats, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
        plugin.entries_dropped.fetch_add(n, Ordering::Relaxed);
    }

    /// The worker is done with `n` accepted entries.
    pub(super) fn handled_n(&self, n: u64) {
        self.handled.fetch_add(n, Ordering::AcqRel);
        self.progress.notify_waiters();
    }
}

/// The options left for the plugin, the delivery mode and the buffer size.
type HostOpts = (Vec<(String, String)>, LogMode, usize);

/// Docker's generic, daemon-side log options (`mode`, `max-buffer-size`): consumed here,
/// not sent to plugins. Same rules and messages as dockerd's `ValidateLogOpts`.
pub(super) fn split_host_opts(
    opts: &[(String, String)],
    default_buf: usize,
) -> Result<HostOpts, PluginError> {
    let mut rest = Vec::new();
    let mut mode = LogMode::Blocking;
    let mut buf = None;
    for (k, v) in opts {
        match k.as_str() {
            "mode" => {
                mode = match v.as_str() {
                    "" | "blocking" => LogMode::Blocking,
                    "non-blocking" => LogMode::NonBlocking,
                    _ => {
                        return Err(PluginError::Invalid(format!(
                            "logger: logging mode not supported: {v}"
                        )))
                    }
                }
            }
            "max-buffer-size" => {
                buf = Some(
                    parse_size(v)
                        .filter(|n| (1..=(1 << 30)).contains(n))
                        .ok_or_else(|| {
                            PluginError::Invalid(format!(
                                "error parsing option max-buffer-size: invalid size: '{v}'"
                            ))
                        })?,
                );
            }
            _ => rest.push((k.clone(), v.clone())),
        }
    }
    if buf.is_some() && mode != LogMode::NonBlocking {
        return Err(PluginError::Invalid(
            "logger: max-buffer-size option is only supported with 'mode=non-blocking'".into(),
        ));
    }
    Ok((rest, mode, buf.unwrap_or(default_buf)))
}

/// Docker's `units.RAMInBytes`: binary multipliers (`1m` = 1 MiB).
fn parse_size(s: &str) -> Option<usize> {
    let t = s
        .trim()
        .trim_end_matches(['b', 'B'])
        .trim_end_matches(['i', 'I']);
    let (num, shift) = match t.chars().last()? {
        'k' | 'K' => (&t[..t.len() - 1], 10),
        'm' | 'M' => (&t[..t.len() - 1], 20),
        'g' | 'G' => (&t[..t.len() - 1], 30),
        _ => (t, 0),
    };
    num.trim().parse::<usize>().ok()?.checked_mul(1 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_opts_are_consumed() {
        let opts = vec![
            ("mode".to_string(), "non-blocking".to_string()),
            ("max-buffer-size".to_string(), "4m".to_string()),
            ("max-size".to_string(), "10m".to_string()),
        ];
        let (rest, mode, buf) = split_host_opts(&opts, 1).unwrap();
        assert_eq!(rest, vec![("max-size".to_string(), "10m".to_string())]);
        assert_eq!((mode, buf), (LogMode::NonBlocking, 4 << 20));
        assert_eq!(split_host_opts(&[], 7).unwrap().1, LogMode::Blocking);
        assert!(split_host_opts(&[("mode".into(), "weird".into())], 1).is_err());
        let nb = ("mode".to_string(), "non-blocking".to_string());
        assert!(split_host_opts(&[nb, ("max-buffer-size".into(), "x".into())], 1).is_err());
        // Docker: max-buffer-size needs mode=non-blocking.
        assert!(split_host_opts(&[("max-buffer-size".into(), "1m".into())], 1).is_err());
    }
}
