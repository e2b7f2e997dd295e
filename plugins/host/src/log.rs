//! Log drivers: sessions with a bounded, never-blocking buffer per container, and
//! `docker logs` readers.
//!
//! Drop policy: each session buffers at most `max-buffer-size` bytes (default
//! 1 MB, Docker's non-blocking ring size). When the buffer is full, *new* entries
//! are dropped and counted (as Docker's ring does); `send` never blocks and never
//! waits for the plugin. Entries in a batch whose `write` call traps, times out or
//! returns an error are dropped and counted as well (a poison batch is not replayed).
//! While the plugin restarts, entries keep buffering up to the cap.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::bindings::v0_1_0::log::exports::berth::driver::log_driver as wit;
use crate::error::PluginError;
use crate::plugin::{request, submit, Job, Runner, Shared};
use crate::validate::{MAX_LINE_BYTES, MAX_PARTIAL_ID};

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

struct Buf {
    q: VecDeque<LogEntry>,
    bytes: usize,
}

pub struct SessionShared {
    pub id: u64,
    pub info: ContainerLogInfo,
    buf: Mutex<Buf>,
    max_bytes: usize,
    accepted: AtomicU64,
    dropped: AtomicU64,
    delivered: AtomicU64,
    wake_pending: AtomicBool,
    closing: AtomicBool,
    close_tx: Mutex<Option<tokio::sync::oneshot::Sender<LogStats>>>,
}

impl SessionShared {
    fn stats(&self) -> LogStats {
        LogStats {
            accepted: self.accepted.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
        }
    }

    fn pending(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
            || !self
                .buf
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .q
                .is_empty()
    }

    fn drop_n(&self, plugin: &Shared, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
        plugin.stats.entries_dropped.fetch_add(n, Ordering::Relaxed);
    }
}

/// Docker's generic, daemon-side log options: consumed here, not sent to plugins.
fn split_host_opts(
    opts: &[(String, String)],
    default_buf: usize,
) -> Result<(Vec<(String, String)>, usize), PluginError> {
    let mut rest = Vec::new();
    let mut buf = default_buf;
    for (k, v) in opts {
        match k.as_str() {
            // berth never blocks container output on a plugin; both modes buffer.
            "mode" if v == "blocking" || v == "non-blocking" => {}
            "mode" => return Err(PluginError::Invalid(format!("unknown log mode {v:?}"))),
            "max-buffer-size" => {
                buf = parse_size(v)
                    .filter(|n| (1..=(1 << 30)).contains(n))
                    .ok_or_else(|| {
                        PluginError::Invalid(format!("invalid max-buffer-size {v:?}"))
                    })?;
            }
            _ => rest.push((k.clone(), v.clone())),
        }
    }
    Ok((rest, buf))
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

/// Handle to a loaded log driver. Cheap to clone.
#[derive(Clone)]
pub struct LogDriverHandle {
    pub(crate) shared: Arc<Shared>,
    pub(crate) tx: SyncSender<Job>,
}

impl LogDriverHandle {
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// `/LogDriver.Capabilities` ReadLogs (asked once at load).
    pub fn read_logs_supported(&self) -> bool {
        self.shared.reads_logs.load(Ordering::Relaxed)
    }

    /// Validate `--log-opt` pairs at container-create time. Bad options come back
    /// as `PluginError::Invalid` (HTTP 400).
    pub async fn validate_options(&self, opts: &[(String, String)]) -> Result<(), PluginError> {
        let (rest, _) = split_host_opts(opts, self.shared.cfg.log_buffer_bytes)?;
        crate::validate::check_options(&rest).map_err(PluginError::Invalid)?;
        request(&self.shared, &self.tx, move |r| {
            r.call(|s, i| {
                i.log()
                    .berth_driver_log_driver()
                    .call_validate_options(s, &rest)
            })?
            .map_err(PluginError::from)
        })
        .await
    }

    /// `/LogDriver.StartLogging`. The session stays registered until closed and is
    /// re-started on the plugin's side whenever the instance restarts.
    pub async fn start(&self, info: ContainerLogInfo) -> Result<LogSession, PluginError> {
        crate::validate::check_name("container id", &info.id).map_err(PluginError::Invalid)?;
        let (rest, max_bytes) = split_host_opts(&info.log_opts, self.shared.cfg.log_buffer_bytes)?;
        crate::validate::check_options(&rest).map_err(PluginError::Invalid)?;
        crate::validate::check_options(&info.labels).map_err(PluginError::Invalid)?;
        let info = ContainerLogInfo {
            log_opts: rest,
            ..info
        };
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let session = Arc::new(SessionShared {
            id,
            info,
            buf: Mutex::new(Buf {
                q: VecDeque::new(),
                bytes: 0,
            }),
            max_bytes,
            accepted: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            wake_pending: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            close_tx: Mutex::new(None),
        });
        let s2 = session.clone();
        request(&self.shared, &self.tx, move |r| {
            r.start_session(&s2)?;
            r.shared
                .sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(s2.id, s2.clone());
            Ok(())
        })
        .await?;
        Ok(LogSession {
            session,
            plugin: self.shared.clone(),
            tx: self.tx.clone(),
            closed: false,
        })
    }

    /// `/LogDriver.ReadLogs`: entries arrive on the returned reader; with `follow`
    /// it stays open until dropped. Every batch is re-validated by the host.
    pub async fn read_logs(
        &self,
        info: ContainerLogInfo,
        config: ReadConfig,
    ) -> Result<LogReader, PluginError> {
        crate::validate::check_name("container id", &info.id).map_err(PluginError::Invalid)?;
        let wit_cfg = wit::ReadConfig {
            since_nano: config.since_nano,
            until_nano: config.until_nano,
            tail: config.tail,
            follow: config.follow,
        };
        let wit_info = info.to_wit();
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        request(&self.shared, &self.tx, move |r| {
            let res = r
                .call(|s, i| {
                    i.log()
                        .berth_driver_log_driver()
                        .call_read_logs(s, &wit_info, wit_cfg)
                })?
                .map_err(PluginError::from)?;
            r.readers.insert(id, (r.generation, res));
            Ok(())
        })
        .await?;
        let (etx, erx) = tokio::sync::mpsc::channel(1024);
        let (shared, tx) = (self.shared.clone(), self.tx.clone());
        tokio::spawn(async move {
            'outer: loop {
                let batch = request(&shared, &tx, move |r| r.reader_next(id, 1024)).await;
                match batch {
                    Err(e) => {
                        let _ = etx.send(Err(e)).await;
                        break;
                    }
                    Ok((entries, eof)) => {
                        let empty = entries.is_empty();
                        for e in entries {
                            if etx.send(Ok(e)).await.is_err() {
                                break 'outer;
                            }
                        }
                        if eof || etx.is_closed() {
                            break;
                        }
                        if empty {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            }
            let _ = submit(
                &shared,
                &tx,
                Box::new(move |r: &mut Runner| r.drop_reader(id)),
            );
        });
        Ok(LogReader { rx: erx })
    }

    /// Delete everything the plugin stored for a container (docker rm).
    pub async fn remove(&self, container_id: &str) -> Result<(), PluginError> {
        crate::validate::check_name("container id", container_id).map_err(PluginError::Invalid)?;
        let id = container_id.to_string();
        request(&self.shared, &self.tx, move |r| {
            r.call(|s, i| i.log().berth_driver_log_driver().call_remove_logs(s, &id))?
                .map_err(PluginError::from)
        })
        .await
    }
}

/// Stream of entries from [`LogDriverHandle::read_logs`].
pub struct LogReader {
    rx: tokio::sync::mpsc::Receiver<Result<LogEntry, PluginError>>,
}

impl LogReader {
    /// Next entry; `None` at the end (never, while following, until dropped).
    pub async fn recv(&mut self) -> Option<Result<LogEntry, PluginError>> {
        self.rx.recv().await
    }

    /// Blocking variant for non-async callers.
    pub fn blocking_recv(&mut self) -> Option<Result<LogEntry, PluginError>> {
        self.rx.blocking_recv()
    }
}

/// One container's logging session. `send` never blocks.
pub struct LogSession {
    session: Arc<SessionShared>,
    plugin: Arc<Shared>,
    tx: SyncSender<Job>,
    closed: bool,
}

impl LogSession {
    /// Buffer one entry for the plugin; returns false if it was dropped (buffer
    /// full). Lines above 1 MiB are cut (the runtime should split them first).
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
                if b.bytes + c > s.max_bytes {
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

    pub fn stats(&self) -> LogStats {
        self.session.stats()
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

impl Runner {
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
        let sessions: Vec<Arc<SessionShared>> = self
            .shared
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for s in sessions {
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
                    }
                    Ok(Err(e)) => {
                        s.drop_n(&self.shared, n);
                        tracing::warn!(plugin = self.name(), container = %s.info.id, "log write failed: {}", PluginError::from(e));
                    }
                    Err(_) => s.drop_n(&self.shared, n),
                }
            }
            let empty = s.buf.lock().unwrap_or_else(|p| p.into_inner()).q.is_empty();
            if empty && s.closing.load(Ordering::Acquire) {
                self.finish_session(&s, true);
            }
        }
    }

    fn take_batch(&self, s: &SessionShared) -> Vec<wit::LogEntry> {
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
        out
    }

    fn discard_buffer(&self, s: &SessionShared) {
        let n = {
            let mut b = s.buf.lock().unwrap_or_else(|p| p.into_inner());
            b.bytes = 0;
            std::mem::take(&mut b.q).len()
        };
        s.drop_n(&self.shared, n as u64);
    }

    /// Close the plugin-side session (if `call_close`), unregister, report stats.
    fn finish_session(&mut self, s: &SessionShared, call_close: bool) {
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
        let sessions: Vec<_> = self
            .shared
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for s in sessions {
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
        let (rest, buf) = split_host_opts(&opts, 1).unwrap();
        assert_eq!(rest, vec![("max-size".to_string(), "10m".to_string())]);
        assert_eq!(buf, 4 << 20);
        assert!(split_host_opts(&[("mode".into(), "weird".into())], 1).is_err());
        assert!(split_host_opts(&[("max-buffer-size".into(), "x".into())], 1).is_err());
    }
}
