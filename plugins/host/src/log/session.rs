//! One container's logging session: its bounded buffer, delivery mode and counters
//! (see the module docs for the modes), and Docker's daemon-side log options.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{ContainerLogInfo, LogEntry, LogStats};
use crate::error::PluginError;
use crate::plugin::{Job, Shared};
use crate::validate::{MAX_LINE_BYTES, MAX_PARTIAL_ID};

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

    pub(super) fn drop_n(&self, plugin: &Shared, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
        plugin.stats.entries_dropped.fetch_add(n, Ordering::Relaxed);
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

/// One container's logging session. `send` never blocks; in blocking mode the caller
/// waits on [`writable`](Self::writable) between bursts.
pub struct LogSession {
    pub(super) session: Arc<SessionShared>,
    pub(super) plugin: Arc<Shared>,
    pub(super) tx: SyncSender<Job>,
    pub(super) closed: bool,
}

impl LogSession {
    /// Buffer one entry for the plugin; returns false if it was dropped (non-blocking
    /// mode, buffer full). Lines above 1 MiB are cut (the runtime should split them first).
    pub fn send(&self, entry: LogEntry) -> bool {
        self.send_batch(std::iter::once(entry)) == 1
    }

    /// Buffer many entries under one lock; returns how many were accepted.
    pub fn send_batch(&self, entries: impl IntoIterator<Item = LogEntry>) -> usize {
        let s = &self.session;
        let (mut ok, mut dropped) = (0usize, 0u64);
        {
            let mut b = s.buf.lock().unwrap_or_else(|p| p.into_inner());
            for mut e in entries {
                e.line.truncate(MAX_LINE_BYTES);
                if let Some(p) = &mut e.partial {
                    p.id = crate::validate::truncate(std::mem::take(&mut p.id), MAX_PARTIAL_ID - 4);
                }
                let c = e.cost();
                if s.mode == LogMode::NonBlocking && b.bytes + c > s.max_bytes {
                    dropped += 1;
                    continue;
                }
                b.bytes += c;
                b.q.push_back(e);
                ok += 1;
            }
        }
        s.accepted.fetch_add(ok as u64, Ordering::Relaxed);
        if dropped > 0 {
            s.drop_n(&self.plugin, dropped);
        }
        if ok > 0 && !s.wake_pending.swap(true, Ordering::AcqRel) {
            // Wake the worker; if its queue is full it is busy and will pump anyway.
            if self.tx.try_send(Box::new(|_| {})).is_err() {
                s.wake_pending.store(false, Ordering::Release);
            }
        }
        ok
    }

    /// Resolves when the session can take more entries without growing past its
    /// buffer size: at once in non-blocking mode, otherwise once the plugin has caught up
    /// (or the buffer was given up, e.g. the session is closing).
    pub async fn writable(&self) {
        let s = &self.session;
        if s.mode == LogMode::NonBlocking {
            return;
        }
        loop {
            let notified = s.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if s.has_room() {
                return;
            }
            if !s.wake_pending.swap(true, Ordering::AcqRel)
                && self.tx.try_send(Box::new(|_| {})).is_err()
            {
                s.wake_pending.store(false, Ordering::Release);
            }
            notified.await;
        }
    }

    pub fn stats(&self) -> LogStats {
        self.session.stats()
    }

    /// Resolves once every entry accepted so far has been written by the plugin (or
    /// dropped and counted): the engine then tells the container's agent that the output
    /// is stored, and the agent forgets it.
    pub fn stored(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let s = self.session.clone();
        let target = s.accepted.load(Ordering::Acquire);
        async move {
            loop {
                let progress = s.progress.notified();
                tokio::pin!(progress);
                progress.as_mut().enable();
                if s.handled.load(Ordering::Acquire) >= target {
                    return;
                }
                progress.await;
            }
        }
    }

    pub fn container_id(&self) -> &str {
        &self.session.info.id
    }

    /// `/LogDriver.StopLogging`: flush what is buffered (bounded by the plugin's
    /// call deadline), close the plugin's session and return the final counters.
    pub async fn close(mut self) -> Result<LogStats, PluginError> {
        self.closed = true;
        let (otx, orx) = tokio::sync::oneshot::channel();
        *self
            .session
            .close_tx
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(otx);
        self.session.closing.store(true, Ordering::Release);
        let _ = self.tx.try_send(Box::new(|_| {}));
        let limit = self.plugin.cfg.log_call_timeout * 8 + Duration::from_secs(2);
        match tokio::time::timeout(limit, orx).await {
            Ok(Ok(stats)) => Ok(stats),
            _ => Err(PluginError::unavailable(
                &self.plugin.name,
                "log session did not close in time",
            )),
        }
    }
}

impl Drop for LogSession {
    fn drop(&mut self) {
        if !self.closed {
            self.session.closing.store(true, Ordering::Release);
            let _ = self.tx.try_send(Box::new(|_| {}));
        }
    }
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
