//! Minimal log driver: appends `<prefix><stream> <time-nano> <line>` to
//! `/data/<container-id>.log` inside the plugin's own data directory, and reads
//! them back for `docker logs` (tail, since/until, follow).
//! Start here for a new log driver (`berth-plugin new --kind log NAME`).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};

wit_bindgen::generate!({
    path: "../../wit/0.1.0",
    world: "log-plugin",
});

use exports::berth::driver::lifecycle;
use exports::berth::driver::log_driver::{
    self, ContainerInfo, DriverError, LogEntry, LogReader, LogSession, Options, ReadConfig, Source,
};

static mut PREFIX: String = String::new();

struct Plugin;

impl lifecycle::Guest for Plugin {
    fn init(config: Options) -> Result<(), DriverError> {
        for (k, v) in config {
            if k == "prefix" {
                // Single-threaded component: init runs before any other export.
                unsafe { PREFIX = v };
            }
        }
        Ok(())
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

struct Session {
    file: RefCell<File>,
}

impl log_driver::GuestLogSession for Session {
    fn write(&self, entries: Vec<LogEntry>) -> Result<(), DriverError> {
        let prefix = unsafe { &*std::ptr::addr_of!(PREFIX) };
        let mut buf = Vec::with_capacity(entries.iter().map(|e| e.line.len() + 32).sum());
        for e in entries {
            let stream = match e.source {
                Source::Stdout => "stdout",
                Source::Stderr => "stderr",
            };
            let _ = write!(buf, "{prefix}{stream} {} ", e.time_nano);
            buf.extend_from_slice(&e.line);
            buf.push(b'\n');
        }
        self.file
            .borrow_mut()
            .write_all(&buf)
            .map_err(|e| DriverError::Failed(e.to_string()))
    }

    fn close(&self) -> Result<(), DriverError> {
        self.file.borrow_mut().flush().map_err(|e| DriverError::Failed(e.to_string()))
    }
}

/// `docker logs`: parses the file from where it last stopped; in follow mode an
/// empty batch with `eof = false` asks the host to poll again.
struct Reader {
    path: String,
    offset: Cell<u64>,
    pending: RefCell<VecDeque<LogEntry>>,
    config: ReadConfig,
    started: Cell<bool>,
}

fn parse_line(line: &[u8]) -> Option<LogEntry> {
    let prefix = unsafe { &*std::ptr::addr_of!(PREFIX) };
    let line = line.strip_prefix(prefix.as_bytes()).unwrap_or(line);
    let (source, rest) = if let Some(r) = line.strip_prefix(b"stdout ") {
        (Source::Stdout, r)
    } else {
        (Source::Stderr, line.strip_prefix(b"stderr ")?)
    };
    let sp = rest.iter().position(|&b| b == b' ')?;
    let time_nano = std::str::from_utf8(&rest[..sp]).ok()?.parse().ok()?;
    Some(LogEntry { source, time_nano, line: rest[sp + 1..].to_vec(), partial: None })
}

impl Reader {
    /// Parse the complete lines written since the last call.
    fn refill(&self) -> Result<(), DriverError> {
        let fail = |e: std::io::Error| DriverError::Failed(e.to_string());
        let mut buf = Vec::new();
        match File::open(&self.path) {
            Ok(mut f) => {
                f.seek(SeekFrom::Start(self.offset.get())).map_err(fail)?;
                f.read_to_end(&mut buf).map_err(fail)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(fail(e)),
        }
        let complete = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        self.offset.set(self.offset.get() + complete as u64);
        let c = &self.config;
        let mut entries: VecDeque<LogEntry> = buf[..complete]
            .split(|&b| b == b'\n')
            .filter_map(parse_line)
            .filter(|e| c.since_nano.is_none_or(|s| e.time_nano >= s))
            .filter(|e| c.until_nano.is_none_or(|u| e.time_nano <= u))
            .collect();
        if !self.started.replace(true) {
            if let Some(n) = c.tail {
                while entries.len() > n as usize {
                    entries.pop_front();
                }
            }
        }
        self.pending.borrow_mut().extend(entries);
        Ok(())
    }
}

impl log_driver::GuestLogReader for Reader {
    fn next(&self, max: u32) -> Result<log_driver::ReadBatch, DriverError> {
        if self.pending.borrow().is_empty() {
            self.refill()?;
        }
        let mut pending = self.pending.borrow_mut();
        let n = pending.len().min(max as usize);
        let entries: Vec<LogEntry> = pending.drain(..n).collect();
        let eof = pending.is_empty() && !self.config.follow;
        Ok(log_driver::ReadBatch { entries, eof })
    }
}

impl log_driver::Guest for Plugin {
    type LogSession = Session;
    type LogReader = Reader;

    fn read_logs_supported() -> bool {
        true
    }

    fn validate_options(opts: Options) -> Result<(), DriverError> {
        match opts.into_iter().next() {
            Some((k, _)) => Err(DriverError::Invalid(format!("unknown log opt '{k}' for template-log log driver"))),
            None => Ok(()),
        }
    }

    fn start_logging(info: ContainerInfo) -> Result<LogSession, DriverError> {
        Self::validate_options(info.log_opts.clone())?;
        if !valid_id(&info.id) {
            return Err(DriverError::Invalid("bad container id".into()));
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(format!("/data/{}.log", info.id))
            .map_err(|e| DriverError::Failed(e.to_string()))?;
        Ok(LogSession::new(Session { file: RefCell::new(file) }))
    }

    fn read_logs(info: ContainerInfo, config: ReadConfig) -> Result<LogReader, DriverError> {
        if !valid_id(&info.id) {
            return Err(DriverError::Invalid("bad container id".into()));
        }
        Ok(LogReader::new(Reader {
            path: format!("/data/{}.log", info.id),
            offset: Cell::new(0),
            pending: RefCell::new(VecDeque::new()),
            config,
            started: Cell::new(false),
        }))
    }

    fn remove_logs(container_id: String) -> Result<(), DriverError> {
        if !valid_id(&container_id) {
            return Err(DriverError::Invalid("bad container id".into()));
        }
        match std::fs::remove_file(format!("/data/{container_id}.log")) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(DriverError::Failed(e.to_string())),
            _ => Ok(()),
        }
    }
}

export!(Plugin);
