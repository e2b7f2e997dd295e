//! The engine's handle on a loaded log driver: validate options, start sessions,
//! read logs back, remove a container's logs.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::buffer::{split_host_opts, Buf, SessionShared};
use super::session::LogSession;
use super::types::{ContainerLogInfo, LogEntry, ReadConfig};
use crate::bindings::v0_1_0::log::exports::berth::driver::log_driver as wit;
use crate::error::PluginError;
use crate::plugin::{request, submit, Job, Runner};
use crate::shared::Shared;

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
            write_failing: AtomicBool::new(false),
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
