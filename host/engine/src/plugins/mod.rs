//! Plugin wiring: the WASM plugin host, and adapters that make its log drivers
//! [`LogDriver`]s for the container engine.
//!
//! Default plugins (`json-file`, `local`, `bridge`) are loaded from the build's plugin dir;
//! user plugins from the configured plugin dirs (default `<data-root>/plugins`) by
//! the [`PluginManager`], which also serves `docker plugin`.

pub mod artifact;
mod create;
mod install;
mod manager;
pub mod state;

pub use manager::{PluginManager, PluginView};
pub use state::Privilege;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_plugin_host::{
    ContainerLogInfo, LogDriverHandle, LogEntry as PEntry, LogSession, LogSource, PluginError,
    PluginHost, PluginHostConfig, ReadConfig,
};
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::logs::{LogDriver, LogEntry, LogInfo, LogWriter, ReadOpts, Source};
use crate::{Error, Result};

/// The plugins berth ships and loads by default.
pub const DEFAULT_PLUGINS: &[&str] = &["json-file", "local", "bridge"];

/// Map a plugin failure to the engine error the API turns into a status code.
pub fn plugin_err(e: PluginError) -> Error {
    let msg = e.to_string();
    match e.http_status() {
        404 => Error::NotFound(msg),
        409 => Error::Conflict(msg),
        400 => Error::InvalidArgument(msg),
        403 => Error::Forbidden(msg),
        501 => Error::NotImplemented(msg),
        503 => Error::Unavailable(msg),
        _ => Error::internal(msg),
    }
}

/// Where the shipped plugins are: `$BERTH_PLUGINS`, `<exe dir>/plugins`,
/// `<exe dir>/../plugins` (cargo's target/), or `/usr/lib/berth/plugins`.
pub fn default_plugin_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BERTH_PLUGINS") {
        return Some(p.into());
    }
    let exe = std::env::current_exe().ok()?;
    let mut dir = exe.parent()?.to_path_buf();
    for _ in 0..3 {
        let cand = dir.join("plugins");
        if cand.join("json-file").join("manifest.toml").exists() {
            return Some(cand);
        }
        dir = dir.parent()?.to_path_buf();
    }
    let sys = PathBuf::from("/usr/lib/berth/plugins");
    sys.exists().then_some(sys)
}

/// Start the plugin host and load the default plugins (user plugins are the
/// [`PluginManager`]'s). Load failures are logged, never fatal: the daemon serves
/// without the plugin.
pub fn open_host(data_root: &Path) -> Option<Arc<PluginHost>> {
    let host = match PluginHost::new(PluginHostConfig {
        cache_dir: data_root.join("plugin-cache"),
        data_root: data_root.to_path_buf(),
        ..Default::default()
    }) {
        Ok(h) => Arc::new(h),
        Err(e) => {
            tracing::error!("plugin host unavailable: {e}");
            return None;
        }
    };
    match default_plugin_dir() {
        Some(dir) => {
            for name in DEFAULT_PLUGINS {
                let d = dir.join(name);
                if let Err(e) = host.load(&d) {
                    tracing::warn!(plugin = name, "default plugin not loaded: {e}");
                }
            }
        }
        None => tracing::warn!(
            "no built plugins found (run scripts/build-plugins.sh): no json-file logs, \
             local volumes or bridge network"
        ),
    }
    Some(host)
}

/// A log plugin as an engine log driver.
pub struct PluginLogDriver {
    handle: LogDriverHandle,
}

impl PluginLogDriver {
    pub fn new(handle: LogDriverHandle) -> Self {
        PluginLogDriver { handle }
    }
}

fn plugin_info(info: &LogInfo) -> ContainerLogInfo {
    let mut labels: Vec<(String, String)> = info
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.sort();
    let mut log_opts: Vec<(String, String)> = info
        .opts
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    log_opts.sort();
    ContainerLogInfo {
        id: info.container_id.clone(),
        name: info.container_name.clone(),
        image_id: info.image_id.clone(),
        image_name: info.image_name.clone(),
        labels,
        log_opts,
        created_nano: 0,
    }
}

/// Run an async plugin call from the engine's synchronous driver trait. The call
/// itself runs on the plugin's own thread; this only waits for its answer.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    match tokio::runtime::Handle::try_current() {
        Ok(h) => tokio::task::block_in_place(|| h.block_on(f)),
        Err(_) => futures_util::FutureExt::now_or_never(f).expect("plugin call outside a runtime"),
    }
}

struct PluginWriter {
    session: Option<LogSession>,
    /// Lines of the current burst, handed to the session in one batch on `flush`.
    pending: Vec<PEntry>,
}

impl LogWriter for PluginWriter {
    fn write(&mut self, e: &LogEntry) {
        if self.session.is_none() {
            return;
        }
        // Docker's plugin protocol carries lines without their newline; a line
        // without one is a partial line.
        let line = e.line.strip_suffix(b"\n").unwrap_or(&e.line);
        let mut entry = PEntry::new(
            match e.source {
                Source::Stdout => LogSource::Stdout,
                Source::Stderr => LogSource::Stderr,
            },
            e.time_nano,
            line.to_vec(),
        );
        if e.partial {
            entry.partial = Some(berth_plugin_host::PartialMeta {
                id: String::new(),
                ordinal: 0,
                last: false,
            });
        }
        self.pending.push(entry);
    }

    fn flush(&mut self) {
        if let Some(s) = &self.session {
            if !self.pending.is_empty() {
                // Only a non-blocking session drops (full ring), and counts it.
                s.send_batch(self.pending.drain(..));
            }
        }
    }

    fn stored(&mut self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        match &self.session {
            Some(s) => Box::pin(s.stored()),
            None => Box::pin(async {}),
        }
    }

    fn ready(&mut self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            if let Some(s) = &self.session {
                s.writable().await;
            }
        })
    }

    fn finish(
        mut self: Box<Self>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        self.flush();
        let s = self.session.take();
        Box::pin(async move {
            if let Some(s) = s {
                match s.close().await {
                    Ok(stats) if stats.dropped > 0 => {
                        tracing::warn!(dropped = stats.dropped, "log plugin dropped lines")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("closing log session: {e}"),
                }
            }
        })
    }
}

impl Drop for PluginWriter {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            tokio::spawn(async move {
                let _ = s.close().await;
            });
        }
    }
}

impl LogDriver for PluginLogDriver {
    fn name(&self) -> &str {
        self.handle.name()
    }

    fn validate_opts(&self, opts: &HashMap<String, String>) -> Result<()> {
        let mut v: Vec<(String, String)> =
            opts.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        v.sort();
        block_on(self.handle.validate_options(&v)).map_err(plugin_err)
    }

    fn open(&self, info: &LogInfo) -> Result<Box<dyn LogWriter>> {
        let session = block_on(self.handle.start(plugin_info(info))).map_err(plugin_err)?;
        Ok(Box::new(PluginWriter {
            session: Some(session),
            pending: Vec::new(),
        }))
    }

    fn read(&self, info: &LogInfo, opts: ReadOpts) -> Result<mpsc::Receiver<LogEntry>> {
        if !self.handle.read_logs_supported() {
            return Err(Error::NotImplemented(format!(
                "configured logging driver does not support reading: {}",
                self.handle.name()
            )));
        }
        let cfg = ReadConfig {
            since_nano: opts.since_nano,
            until_nano: opts.until_nano,
            tail: opts.tail.map(|t| t.min(u32::MAX as usize) as u32),
            follow: opts.follow.is_some(),
        };
        let mut reader = match opts.follow {
            Some(running) => block_on(self.handle.follow_logs(plugin_info(info), cfg, running)),
            None => block_on(self.handle.read_logs(plugin_info(info), cfg)),
        }
        .map_err(plugin_err)?;
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(async move {
            let convert = |e: PEntry| {
                let partial = e.partial.is_some();
                let mut line = e.line;
                if !partial && !line.ends_with(b"\n") {
                    line.push(b'\n');
                }
                LogEntry {
                    source: match e.source {
                        LogSource::Stdout => Source::Stdout,
                        LogSource::Stderr => Source::Stderr,
                    },
                    time_nano: e.time_nano,
                    partial,
                    line: Bytes::from(line),
                }
            };
            // The reader ends by itself: at the end of the stored lines, or for a
            // follower once the container has stopped and every line was handed over.
            while let Some(batch) = reader.recv_batch().await {
                match batch {
                    Ok(entries) => {
                        for e in entries {
                            if tx.send(convert(e)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!("reading logs from plugin: {e}");
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }

    fn remove(&self, info: &LogInfo) {
        let handle = self.handle.clone();
        let id = info.container_id.clone();
        tokio::spawn(async move {
            if let Err(e) = handle.remove(&id).await {
                tracing::warn!(container = %id, "log plugin remove: {e}");
            }
        });
    }
}
