//! The plugin worker's side of logging: pump buffered entries into the plugin in
//! batches, restart sessions on a new instance, serve `read_logs` readers.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::buffer::SessionShared;
use super::types::LogEntry;
use crate::bindings::v0_1_0::log::exports::berth::driver::log_driver as wit;
use crate::error::PluginError;
use crate::plugin::Runner;
use crate::validate::{MAX_LINE_BYTES, MAX_PARTIAL_ID};

impl Runner {
    /// The open log sessions, copied out so the lock is not held while they are served.
    fn log_session_list(&self) -> Vec<Arc<SessionShared>> {
        self.shared
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub(crate) fn logs_pending(&self) -> bool {
        self.shared
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .any(|s| s.pending())
    }

    /// Start (or re-start, after an instance restart) the plugin-side session.
    pub(crate) fn start_session(&mut self, s: &SessionShared) -> Result<(), PluginError> {
        let info = s.info.to_wit();
        let res = self
            .call(|st, i| {
                i.log()
                    .berth_driver_log_driver()
                    .call_start_logging(st, &info)
            })?
            .map_err(PluginError::from)?;
        self.log_sessions.insert(s.id, (self.generation, res));
        Ok(())
    }

    /// Push buffered entries of every session to the plugin, one batch each.
    pub(crate) fn pump_logs(&mut self) {
        for s in self.log_session_list() {
            s.wake_pending.store(false, Ordering::Release);
            if !s.pending() {
                continue;
            }
            if !self.available() {
                // Restarting: keep the buffer for the new instance. Breaker open: a
                // closing session gives up its buffer instead of waiting 30 s.
                if s.closing.load(Ordering::Acquire)
                    && self.shared.circuit_open.load(Ordering::Relaxed)
                {
                    self.finish_session(&s, false);
                }
                continue;
            }
            let current = self
                .log_sessions
                .get(&s.id)
                .is_some_and(|(g, _)| *g == self.generation);
            if !current {
                if let Err(e) = self.ensure_live().and_then(|_| {
                    if self
                        .log_sessions
                        .get(&s.id)
                        .is_some_and(|(g, _)| *g == self.generation)
                    {
                        Ok(())
                    } else {
                        self.start_session(&s)
                    }
                }) {
                    tracing::warn!(plugin = self.name(), container = %s.info.id, "cannot (re)start log session: {e}");
                    if matches!(e, PluginError::Unavailable { .. })
                        && !s.closing.load(Ordering::Acquire)
                    {
                        continue; // keep buffering until the plugin is back
                    }
                    self.discard_buffer(&s);
                    if s.closing.load(Ordering::Acquire) {
                        self.finish_session(&s, false);
                    }
                    continue;
                }
            }
            let batch = self.take_batch(&s);
            if !batch.is_empty() {
                let n = batch.len() as u64;
                let res = self.log_sessions[&s.id].1;
                match self.call(|st, i| {
                    i.log()
                        .berth_driver_log_driver()
                        .log_session()
                        .call_write(st, res, &batch)
                }) {
                    Ok(Ok(())) => {
                        s.delivered.fetch_add(n, Ordering::Relaxed);
                        if s.write_failing.swap(false, Ordering::Relaxed) {
                            let dropped = s.dropped.load(Ordering::Relaxed);
                            tracing::warn!(plugin = self.name(), container = %s.info.id, dropped, "log writes succeed again");
                        }
                    }
                    Ok(Err(e)) => {
                        s.drop_n(&self.shared.stats, n);
                        if !s.write_failing.swap(true, Ordering::Relaxed) {
                            tracing::warn!(plugin = self.name(), container = %s.info.id, "log write failed, dropping lines until writes succeed again: {}", PluginError::from(e));
                        }
                    }
                    Err(_) => s.drop_n(&self.shared.stats, n),
                }
                s.handled_n(n);
            }
            let empty = s.buf.lock().unwrap_or_else(|p| p.into_inner()).q.is_empty();
            if empty && s.closing.load(Ordering::Acquire) {
                self.finish_session(&s, true);
            }
        }
    }

    pub(super) fn take_batch(&self, s: &SessionShared) -> Vec<wit::LogEntry> {
        let (max_n, max_b) = (
            self.shared.cfg.log_batch_entries,
            self.shared.cfg.log_batch_bytes,
        );
        let mut b = s.buf.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::with_capacity(b.q.len().min(max_n));
        let mut bytes = 0;
        while out.len() < max_n {
            let Some(front) = b.q.front() else { break };
            let c = front.cost();
            if !out.is_empty() && bytes + c > max_b {
                break;
            }
            bytes += c;
            let e = b.q.pop_front().expect("front exists");
            out.push(e.into_wit());
        }
        b.bytes -= bytes;
        drop(b);
        if !out.is_empty() {
            s.space.notify_waiters();
        }
        out
    }

    pub(super) fn discard_buffer(&self, s: &SessionShared) {
        let n = {
            let mut b = s.buf.lock().unwrap_or_else(|p| p.into_inner());
            b.bytes = 0;
            std::mem::take(&mut b.q).len()
        };
        s.space.notify_waiters();
        s.drop_n(&self.shared.stats, n as u64);
        s.handled_n(n as u64);
    }

    /// Close the plugin-side session (if `call_close`), unregister, report stats.
    pub(super) fn finish_session(&mut self, s: &SessionShared, call_close: bool) {
        self.discard_buffer(s);
        if let Some((g, res)) = self.log_sessions.remove(&s.id) {
            if call_close && g == self.generation {
                let _ = self.call(|st, i| {
                    let r = i
                        .log()
                        .berth_driver_log_driver()
                        .log_session()
                        .call_close(&mut *st, res);
                    res.resource_drop(&mut *st)?;
                    r
                });
            }
        }
        self.shared
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&s.id);
        if let Some(tx) = s.close_tx.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = tx.send(s.stats());
        }
    }

    pub(crate) fn shutdown_logs(&mut self) {
        for s in self.log_session_list() {
            s.closing.store(true, Ordering::Release);
        }
        for _ in 0..64 {
            if !self.logs_pending() {
                break;
            }
            self.pump_logs();
        }
    }

    /// One validated batch from reader `id`.
    pub(crate) fn reader_next(
        &mut self,
        id: u64,
        max: u32,
    ) -> Result<(Vec<LogEntry>, bool), PluginError> {
        let Some(&(g, res)) = self.readers.get(&id) else {
            return Err(PluginError::unavailable(self.name(), "log reader is gone"));
        };
        if g != self.generation {
            self.readers.remove(&id);
            return Err(PluginError::unavailable(
                self.name(),
                "plugin restarted while reading logs",
            ));
        }
        let batch = self
            .call(|st, i| {
                i.log()
                    .berth_driver_log_driver()
                    .log_reader()
                    .call_next(st, res, max)
            })
            .inspect_err(|_| {
                self.readers.remove(&id);
            })?
            .map_err(PluginError::from)?;
        if let Err(msg) = validate_batch(&batch, max) {
            self.shared
                .stats
                .bad_replies
                .fetch_add(1, Ordering::Relaxed);
            self.drop_reader(id);
            return Err(PluginError::bad_reply(self.name(), msg));
        }
        Ok((
            batch.entries.into_iter().map(LogEntry::from_wit).collect(),
            batch.eof,
        ))
    }

    pub(crate) fn drop_reader(&mut self, id: u64) {
        if let Some((g, res)) = self.readers.remove(&id) {
            if g == self.generation {
                let _ = self.call(|st, _| res.resource_drop(st));
            }
        }
    }
}

fn validate_batch(b: &wit::ReadBatch, max: u32) -> Result<(), String> {
    if b.entries.len() > max as usize {
        return Err(format!(
            "{} entries for a request of at most {max}",
            b.entries.len()
        ));
    }
    for e in &b.entries {
        if e.line.len() > MAX_LINE_BYTES {
            return Err(format!(
                "log line of {} bytes (max {MAX_LINE_BYTES})",
                e.line.len()
            ));
        }
        if e.time_nano < 0 {
            return Err(format!("negative timestamp {}", e.time_nano));
        }
        if e.partial
            .as_ref()
            .is_some_and(|p| p.id.len() > MAX_PARTIAL_ID)
        {
            return Err(format!(
                "partial-meta id longer than {MAX_PARTIAL_ID} bytes"
            ));
        }
    }
    Ok(())
}
