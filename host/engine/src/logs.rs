//! Container log storage behind the [`LogDriver`] trait. The engine feeds every line a
//! container writes to its driver and asks the driver to read them back for
//! `docker logs`. Drivers: the built-in `json-file` writer here (Docker's on-disk
//! format) and `none`; WASM log plugins plug in through the same trait.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

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
    pub fn builtin() -> Self {
        let mut d = LogDrivers::default();
        d.register(Arc::new(JsonFile));
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

/// Docker's json-file format: one `{"log","stream","time"}` object per line.
pub struct JsonFile;

#[derive(Serialize, Deserialize)]
struct JsonLine {
    log: String,
    stream: String,
    time: String,
}

impl JsonFile {
    fn path(info: &LogInfo) -> PathBuf {
        info.dir.join(format!("{}-json.log", info.container_id))
    }
}

/// Buffers whole lines and appends them in batches. A batch the disk cannot take (a full
/// disk) is dropped whole and the file cut back to its last whole line, so lines written
/// once space is back are not glued to a fragment; the failure is logged once per streak.
struct JsonFileWriter {
    file: std::fs::File,
    buf: Vec<u8>,
    /// Length of the file's whole lines.
    len: u64,
    failing: bool,
}

const JSON_FILE_BATCH: usize = 64 << 10;

impl JsonFileWriter {
    fn write_batch(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        match self.file.write_all(&self.buf) {
            Ok(()) => {
                self.len += self.buf.len() as u64;
                if std::mem::take(&mut self.failing) {
                    tracing::warn!("json-file log writes succeed again");
                }
            }
            Err(err) => {
                let _ = self.file.set_len(self.len);
                if !std::mem::replace(&mut self.failing, true) {
                    tracing::warn!(
                        "json-file log write failed, dropping lines until writes succeed again: {err}"
                    );
                }
            }
        }
        self.buf.clear();
    }
}

impl LogWriter for JsonFileWriter {
    fn write(&mut self, e: &LogEntry) {
        let line = JsonLine {
            log: String::from_utf8_lossy(&e.line).into_owned(),
            stream: e.source.as_str().to_string(),
            time: crate::fsutil::rfc3339_nanos(
                std::time::UNIX_EPOCH + Duration::from_nanos(e.time_nano.max(0) as u64),
            ),
        };
        if serde_json::to_writer(&mut self.buf, &line).is_ok() {
            self.buf.push(b'\n');
        }
        if self.buf.len() >= JSON_FILE_BATCH {
            self.write_batch();
        }
    }
    fn flush(&mut self) {
        self.write_batch();
    }
}

impl Drop for JsonFileWriter {
    fn drop(&mut self) {
        self.write_batch();
    }
}

fn parse_line(l: &str) -> Option<LogEntry> {
    let j: JsonLine = serde_json::from_str(l).ok()?;
    Some(LogEntry {
        source: if j.stream == "stderr" {
            Source::Stderr
        } else {
            Source::Stdout
        },
        time_nano: crate::fsutil::parse_rfc3339_utc(&j.time).unwrap_or(0) as i64,
        partial: !j.log.ends_with('\n'),
        line: Bytes::from(j.log),
    })
}

impl LogDriver for JsonFile {
    fn name(&self) -> &str {
        "json-file"
    }
    fn validate_opts(&self, opts: &HashMap<String, String>) -> Result<()> {
        for k in opts.keys() {
            if !matches!(
                k.as_str(),
                "max-size" | "max-file" | "labels" | "env" | "compress" | "tag"
            ) {
                return Err(Error::invalid(format!(
                    "unknown log opt '{k}' for json-file log driver"
                )));
            }
        }
        Ok(())
    }
    fn open(&self, info: &LogInfo) -> Result<Box<dyn LogWriter>> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(Self::path(info))?;
        let len = f.metadata()?.len();
        Ok(Box::new(JsonFileWriter {
            file: f,
            buf: Vec::with_capacity(JSON_FILE_BATCH),
            len,
            failing: false,
        }))
    }
    fn log_path(&self, info: &LogInfo) -> String {
        Self::path(info).display().to_string()
    }
    fn read(&self, info: &LogInfo, opts: ReadOpts) -> Result<mpsc::Receiver<LogEntry>> {
        let path = Self::path(info);
        let (tx, rx) = mpsc::channel(256);
        std::thread::Builder::new()
            .name("json-file-read".into())
            .spawn(move || {
                let _ = read_json_file(&path, opts, &tx);
            })
            .map_err(Error::internal)?;
        Ok(rx)
    }
    fn remove(&self, info: &LogInfo) {
        let _ = std::fs::remove_file(Self::path(info));
    }
}

fn read_json_file(path: &PathBuf, mut opts: ReadOpts, tx: &mpsc::Sender<LogEntry>) -> Option<()> {
    let keep = |e: &LogEntry, o: &ReadOpts| {
        o.since_nano.is_none_or(|s| e.time_nano >= s)
            && o.until_nano.is_none_or(|u| e.time_nano <= u)
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(_) if opts.follow.is_some() => {
            // Not written yet: wait for it while the container runs.
            loop {
                std::thread::sleep(Duration::from_millis(50));
                if let Ok(f) = std::fs::File::open(path) {
                    break f;
                }
                if !following(&mut opts) || tx.is_closed() {
                    return Some(());
                }
            }
        }
        Err(_) => return Some(()),
    };
    let mut reader = BufReader::new(file);
    // Existing content (with tail applied).
    let mut existing: Vec<LogEntry> = Vec::new();
    let mut line = String::new();
    let mut offset = 0u64;
    loop {
        line.clear();
        let n = reader.read_line(&mut line).ok()?;
        if n == 0 || !line.ends_with('\n') {
            break;
        }
        offset += n as u64;
        if let Some(e) = parse_line(line.trim_end_matches('\n')) {
            if keep(&e, &opts) {
                existing.push(e);
            }
        }
    }
    let skip = match opts.tail {
        Some(n) => existing.len().saturating_sub(n),
        None => 0,
    };
    for e in existing.into_iter().skip(skip) {
        tx.blocking_send(e).ok()?;
    }
    if opts.follow.is_none() || opts.until_nano.is_some_and(|u| u < now_nanos()) {
        return Some(());
    }
    // Follow: poll for appended lines until the container stops, then drain once more.
    let mut stopping = false;
    loop {
        reader.seek(SeekFrom::Start(offset)).ok()?;
        loop {
            line.clear();
            let n = reader.read_line(&mut line).ok()?;
            if n == 0 || !line.ends_with('\n') {
                break;
            }
            offset += n as u64;
            if let Some(e) = parse_line(line.trim_end_matches('\n')) {
                if opts.until_nano.is_some_and(|u| e.time_nano > u) {
                    return Some(());
                }
                if keep(&e, &opts) {
                    tx.blocking_send(e).ok()?;
                }
            }
        }
        if stopping || tx.is_closed() {
            return Some(());
        }
        if !following(&mut opts) {
            // One more pass picks up lines flushed just before the stop.
            stopping = true;
            continue;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn following(opts: &mut ReadOpts) -> bool {
    opts.follow.as_mut().is_some_and(|w| *w.borrow_and_update())
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

    #[tokio::test]
    async fn json_file_write_tail_since_follow() {
        let dir = tempfile::tempdir().unwrap();
        let info = LogInfo {
            container_id: "c1".into(),
            dir: dir.path().into(),
            ..Default::default()
        };
        let d = JsonFile;
        let mut w = d.open(&info).unwrap();
        for i in 0..5 {
            w.write(&LogEntry {
                source: Source::Stdout,
                time_nano: 1_000 + i,
                line: Bytes::from(format!("l{i}\n")),
                partial: false,
            });
        }
        w.flush();
        let text = std::fs::read_to_string(d.log_path(&info)).unwrap();
        assert!(
            text.starts_with(
                r#"{"log":"l0\n","stream":"stdout","time":"1970-01-01T00:00:00.000001000Z"}"#
            ),
            "{text}"
        );

        let mut rx = d
            .read(
                &info,
                ReadOpts {
                    tail: Some(2),
                    ..Default::default()
                },
            )
            .unwrap();
        let mut got = Vec::new();
        while let Some(e) = rx.recv().await {
            got.push(e.line);
        }
        assert_eq!(got, vec![Bytes::from("l3\n"), Bytes::from("l4\n")]);

        let mut rx = d
            .read(
                &info,
                ReadOpts {
                    since_nano: Some(1_003),
                    ..Default::default()
                },
            )
            .unwrap();
        let mut n = 0;
        while rx.recv().await.is_some() {
            n += 1;
        }
        assert_eq!(n, 2);

        let (run_tx, run_rx) = watch::channel(true);
        let mut rx = d
            .read(
                &info,
                // `since` (not `tail: 0`): the new line may land before or after the
                // reader's first pass; either way it must be delivered exactly once.
                ReadOpts {
                    since_nano: Some(1_500),
                    follow: Some(run_rx),
                    ..Default::default()
                },
            )
            .unwrap();
        w.write(&LogEntry {
            source: Source::Stderr,
            time_nano: 2_000,
            line: Bytes::from("late\n"),
            partial: false,
        });
        w.flush();
        let wait = std::time::Duration::from_secs(10);
        let e = tokio::time::timeout(wait, rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((e.source, e.line), (Source::Stderr, Bytes::from("late\n")));
        run_tx.send(false).unwrap();
        assert!(
            tokio::time::timeout(wait, rx.recv())
                .await
                .unwrap()
                .is_none(),
            "follow ends when the container stops"
        );
    }
}
