//! Container log storage behind the [`LogDriver`] trait. The engine feeds every line a
//! container writes to its driver and asks the driver to read them back for
//! `docker logs`. Built in is only `none`; every driver that stores logs, `json-file`
//! (Docker's on-disk format, the default) included, is a WASM log plugin
//! (`plugins/drivers/`), adapted to this trait by [`crate::plugins::PluginLogDriver`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Stdout,
    Stderr,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Stdout => "stdout",
            Source::Stderr => "stderr",
        }
    }
}

/// One log line (with its trailing newline unless `partial`).
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    pub source: Source,
    pub time_nano: i64,
    pub line: Bytes,
    pub partial: bool,
}

/// What a driver knows about the container it logs for.
#[derive(Debug, Clone, Default)]
pub struct LogInfo {
    pub container_id: String,
    pub container_name: String,
    pub image_id: String,
    pub image_name: String,
    pub labels: HashMap<String, String>,
    pub opts: HashMap<String, String>,
    /// The container's own directory (where json-file keeps `<id>-json.log`).
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Default)]
pub struct ReadOpts {
    pub since_nano: Option<i64>,
    pub until_nano: Option<i64>,
    /// Last N lines only.
    pub tail: Option<usize>,
    /// Keep streaming until this turns `false` (the container stopped).
    pub follow: Option<watch::Receiver<bool>>,
}

/// Receives a container's lines, in order. `write` must not block on slow storage
/// for long: it runs on the container's output pump.
pub trait LogWriter: Send {
    fn write(&mut self, entry: &LogEntry);
    /// Flush buffered lines (called after each burst of output).
    fn flush(&mut self) {}
    /// Resolves when the driver can take the next burst. The pump awaits it before
    /// reading more output, so in Docker's default `blocking` mode a driver that falls
    /// behind slows the container's writes instead of losing lines.
    fn ready(&mut self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async {})
    }
    /// Resolves once everything flushed so far is stored by the driver (a plugin's write
    /// returned), so the agent may forget that output. Writers that store on `flush`
    /// resolve at once.
    fn stored(&mut self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async {})
    }
    /// End of the run: hand over everything still buffered (plugins flush and
    /// close their session here). Awaited before the exit is reported.
    fn finish(self: Box<Self>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async {})
    }
}

pub trait LogDriver: Send + Sync {
    fn name(&self) -> &str;
    /// Reject unknown or malformed `--log-opt`s (a 400 at create time).
    fn validate_opts(&self, opts: &HashMap<String, String>) -> Result<()>;
    fn open(&self, info: &LogInfo) -> Result<Box<dyn LogWriter>>;
    /// Stream stored lines; `None` when the driver cannot read logs back.
    fn read(&self, info: &LogInfo, opts: ReadOpts) -> Result<mpsc::Receiver<LogEntry>>;
    /// The path `docker inspect` reports as `LogPath` (empty if none).
    fn log_path(&self, _info: &LogInfo) -> String {
        String::new()
    }
    /// Drop stored logs of a removed container.
    fn remove(&self, info: &LogInfo);
}

/// Registered drivers by name, and why a known plugin driver is not usable now
/// (disabled, refused at load), so `--log-driver` can say so.
#[derive(Clone, Default)]
pub struct LogDrivers {
    drivers: HashMap<String, Arc<dyn LogDriver>>,
    unavailable: HashMap<String, String>,
}

impl LogDrivers {
    /// The drivers compiled into the engine: `none`.
    pub fn builtin() -> Self {
        let mut d = LogDrivers::default();
        d.register(Arc::new(NoLogs));
        d
    }
    pub fn register(&mut self, driver: Arc<dyn LogDriver>) {
        self.register_as(driver.name().to_string(), driver);
    }
    /// Register under an extra name (a plugin's Docker name, e.g. `my-log:latest`).
    pub fn register_as(&mut self, name: String, driver: Arc<dyn LogDriver>) {
        self.unavailable.remove(&name);
        self.drivers.insert(name, driver);
    }
    /// Take a driver out of service; `get` then answers with `reason`.
    pub fn set_unavailable(&mut self, name: &str, reason: String) {
        self.drivers.remove(name);
        self.unavailable.insert(name.to_string(), reason);
    }
    /// Forget a driver entirely (its plugin was removed).
    pub fn forget(&mut self, name: &str) {
        self.drivers.remove(name);
        self.unavailable.remove(name);
    }
    pub fn get(&self, name: &str) -> Result<Arc<dyn LogDriver>> {
        if let Some(d) = self.drivers.get(name) {
            return Ok(d.clone());
        }
        Err(Error::invalid(match self.unavailable.get(name) {
            Some(why) => format!("logger: log driver '{name}' is not available: {why}"),
            None => format!("logger: no log driver named '{name}' is registered"),
        }))
    }
    /// Driver names, without the `name:tag` aliases of plugins.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .drivers
            .keys()
            .filter(|n| !n.contains(':'))
            .cloned()
            .collect();
        v.sort();
        v
    }
}

/// `--log-driver none`.
pub struct NoLogs;

impl LogDriver for NoLogs {
    fn name(&self) -> &str {
        "none"
    }
    fn validate_opts(&self, opts: &HashMap<String, String>) -> Result<()> {
        match opts.keys().next() {
            Some(k) => Err(Error::invalid(format!(
                "unknown log opt '{k}' for none log driver"
            ))),
            None => Ok(()),
        }
    }
    fn open(&self, _: &LogInfo) -> Result<Box<dyn LogWriter>> {
        struct Discard;
        impl LogWriter for Discard {
            fn write(&mut self, _: &LogEntry) {}
        }
        Ok(Box::new(Discard))
    }
    fn read(&self, _: &LogInfo, _: ReadOpts) -> Result<mpsc::Receiver<LogEntry>> {
        Err(Error::NotImplemented(
            "configured logging driver does not support reading".into(),
        ))
    }
    fn remove(&self, _: &LogInfo) {}
}

pub use crate::fsutil::now_nanos;

/// Splits a process's output chunks into log lines per stream (Docker splits at
/// newlines and caps a line at 16 KiB, marking the pieces partial).
#[derive(Default)]
pub struct LineSplitter {
    pending: [Vec<u8>; 2],
}

pub const MAX_LINE: usize = 16 * 1024;

impl LineSplitter {
    pub fn push(&mut self, source: Source, data: &[u8], mut emit: impl FnMut(LogEntry)) {
        let idx = source as usize;
        let now = now_nanos();
        let mut rest = data;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            let buf = &mut self.pending[idx];
            buf.extend_from_slice(&rest[..=pos]);
            emit(LogEntry {
                source,
                time_nano: now,
                line: Bytes::from(std::mem::take(buf)),
                partial: false,
            });
            rest = &rest[pos + 1..];
        }
        let buf = &mut self.pending[idx];
        buf.extend_from_slice(rest);
        while buf.len() >= MAX_LINE {
            let head: Vec<u8> = buf.drain(..MAX_LINE).collect();
            emit(LogEntry {
                source,
                time_nano: now,
                line: Bytes::from(head),
                partial: true,
            });
        }
    }

    /// End of output: whatever is pending becomes a final partial line.
    pub fn finish(&mut self, mut emit: impl FnMut(LogEntry)) {
        for (idx, source) in [(0, Source::Stdout), (1, Source::Stderr)] {
            let buf = std::mem::take(&mut self.pending[idx]);
            if !buf.is_empty() {
                emit(LogEntry {
                    source,
                    time_nano: now_nanos(),
                    line: Bytes::from(buf),
                    partial: true,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitter_lines_and_partials() {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        s.push(Source::Stdout, b"a\nb", |e| out.push(e));
        s.push(Source::Stderr, b"x\n", |e| out.push(e));
        s.push(Source::Stdout, b"c\n", |e| out.push(e));
        s.push(Source::Stdout, b"tail", |e| out.push(e));
        s.finish(|e| out.push(e));
        let lines: Vec<_> = out
            .iter()
            .map(|e| {
                (
                    e.source,
                    String::from_utf8_lossy(&e.line).into_owned(),
                    e.partial,
                )
            })
            .collect();
        assert_eq!(
            lines,
            vec![
                (Source::Stdout, "a\n".into(), false),
                (Source::Stderr, "x\n".into(), false),
                (Source::Stdout, "bc\n".into(), false),
                (Source::Stdout, "tail".into(), true),
            ]
        );
    }
}
