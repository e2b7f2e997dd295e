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

/// Docker's `--log-opt mode=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogMode {
    Blocking,
    NonBlocking,
}

pub struct SessionShared {
    pub id: u64,
    pub info: ContainerLogInfo,
    buf: Mutex<Buf>,
    max_bytes: usize,
    mode: LogMode,
    /// Signalled whenever buffered bytes leave (a batch taken, or the buffer discarded).
    space: tokio::sync::Notify,
    accepted: AtomicU64,
    dropped: AtomicU64,
    delivered: AtomicU64,
    /// Accepted entries the worker is done with (written, or dropped and counted), and a
    /// signal when that grows: see [`LogSession::stored`].
    handled: AtomicU64,
    progress: tokio::sync::Notify,
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

    fn has_room(&self) -> bool {
        self.buf.lock().unwrap_or_else(|p| p.into_inner()).bytes < self.max_bytes
    }

    fn drop_n(&self, plugin: &Shared, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
        plugin.stats.entries_dropped.fetch_add(n, Ordering::Relaxed);
    }

    /// The worker is done with `n` accepted entries.
    fn handled_n(&self, n: u64) {
        self.handled.fetch_add(n, Ordering::AcqRel);
        self.progress.notify_waiters();
    }
}

/// The options left for the plugin, the delivery mode and the buffer size.
type HostOpts = (Vec<(String, String)>, LogMode, usize);

/// Docker's generic, daemon-side log options (`mode`, `max-buffer-size`): consumed here,
/// not sent to plugins. Same rules and messages as dockerd's `ValidateLogOpts`.
fn split_host_opts(opts: &[(String, String)], default_buf: usize) -> Result<HostOpts, PluginError> {
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
        let (rest, _, _) = split_host_opts(opts, self.shared.cfg.log_buffer_bytes)?;
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
        let (rest, mode, max_bytes) =
            split_host_opts(&info.log_opts, self.shared.cfg.log_buffer_bytes)?;
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
            mode,
            space: tokio::sync::Notify::new(),
            accepted: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            handled: AtomicU64::new(0),
            progress: tokio::sync::Notify::new(),
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
        self.read_logs_inner(info, config, None).await
    }

    /// `docker logs -f`: follow while `running` is true, and end once it has turned false
    /// and the plugin has handed over everything it has. The engine closes a run's log
    /// session (every line written) before it flips `running`, so a follower that ends
    /// this way has seen every line.
    pub async fn follow_logs(
        &self,
        info: ContainerLogInfo,
        config: ReadConfig,
        running: tokio::sync::watch::Receiver<bool>,
    ) -> Result<LogReader, PluginError> {
        let config = ReadConfig {
            follow: true,
            ..config
        };
        self.read_logs_inner(info, config, Some(running)).await
    }

    async fn read_logs_inner(
        &self,
        info: ContainerLogInfo,
        config: ReadConfig,
        mut running: Option<tokio::sync::watch::Receiver<bool>>,
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
        // Whole batches cross the channel: one send per batch, not per line.
        let (etx, erx) = tokio::sync::mpsc::channel(4);
        let (shared, tx) = (self.shared.clone(), self.tx.clone());
        tokio::spawn(async move {
            loop {
                let stopped = running.as_ref().is_some_and(|w| !*w.borrow());
                let batch = request(&shared, &tx, move |r| r.reader_next(id, READ_BATCH)).await;
                match batch {
                    Err(e) => {
                        let _ = etx.send(Err(e)).await;
                        break;
                    }
                    Ok((entries, eof)) => {
                        let empty = entries.is_empty();
                        if !empty && etx.send(Ok(entries)).await.is_err() {
                            break;
                        }
                        if eof || etx.is_closed() || (empty && stopped) {
                            break;
                        }
                        if empty {
                            // Caught up: poll again soon, or at once when the run ends.
                            let poll = tokio::time::sleep(Duration::from_millis(50));
                            match running.as_mut() {
                                Some(w) if !stopped => {
                                    tokio::select! {
                                        _ = poll => {}
                                        _ = w.changed() => {}
                                    }
                                }
                                _ => poll.await,
                            }
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
        Ok(LogReader {
            rx: erx,
            batch: std::collections::VecDeque::new(),
        })
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

/// Entries asked of the plugin per `next` call.
const READ_BATCH: u32 = 4096;

/// Stream of entries from [`LogDriverHandle::read_logs`].
pub struct LogReader {
    rx: tokio::sync::mpsc::Receiver<Result<Vec<LogEntry>, PluginError>>,
    batch: std::collections::VecDeque<LogEntry>,
}

impl LogReader {
    /// Next entry; `None` at the end (never, while following, until dropped).
    pub async fn recv(&mut self) -> Option<Result<LogEntry, PluginError>> {
        loop {
            if let Some(e) = self.batch.pop_front() {
                return Some(Ok(e));
            }
            match self.rx.recv().await? {
                Ok(b) => self.batch = b.into(),
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// The next batch as the plugin returned it (what is left of it after `recv`).
    pub async fn recv_batch(&mut self) -> Option<Result<Vec<LogEntry>, PluginError>> {
        if !self.batch.is_empty() {
            return Some(Ok(std::mem::take(&mut self.batch).into()));
        }
        self.rx.recv().await
    }

    /// Blocking variant for non-async callers.
    pub fn blocking_recv(&mut self) -> Option<Result<LogEntry, PluginError>> {
        loop {
            if let Some(e) = self.batch.pop_front() {
                return Some(Ok(e));
            }
            match self.rx.blocking_recv()? {
                Ok(b) => self.batch = b.into(),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// One container's logging session. `send` never blocks; in blocking mode the caller
/// waits on [`writable`](Self::writable) between bursts.
pub struct LogSession {
    session: Arc<SessionShared>,
    plugin: Arc<Shared>,
    tx: SyncSender<Job>,
    closed: bool,
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
                s.handled_n(n);
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
        drop(b);
        if !out.is_empty() {
            s.space.notify_waiters();
        }
        out
    }

    fn discard_buffer(&self, s: &SessionShared) {
        let n = {
            let mut b = s.buf.lock().unwrap_or_else(|p| p.into_inner());
            b.bytes = 0;
            std::mem::take(&mut b.q).len()
        };
        s.space.notify_waiters();
        s.drop_n(&self.shared, n as u64);
        s.handled_n(n as u64);
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
