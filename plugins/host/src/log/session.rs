//! The engine's handle on one container's logging session: buffer entries, wait for
//! room (blocking mode), wait until they are stored, close.

use std::sync::atomic::Ordering;
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::Duration;

use super::buffer::{LogMode, SessionShared};
use super::types::{LogEntry, LogStats};
use crate::error::PluginError;
use crate::plugin::Job;
use crate::shared::Shared;
use crate::validate::{MAX_LINE_BYTES, MAX_PARTIAL_ID};

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
            s.drop_n(&self.plugin.stats, dropped);
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
