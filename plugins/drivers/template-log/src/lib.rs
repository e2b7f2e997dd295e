//! Minimal log driver: appends `<stream> <time-nano> <line>` to
//! `/data/<container-id>.log` inside the plugin's own data directory.
//! Copy this crate to start a new log driver (see plugins/README.md).

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::Write;

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

/// This template does not support `docker logs`; `read-logs-supported` says so.
struct Reader;

impl log_driver::GuestLogReader for Reader {
    fn next(&self, _max: u32) -> Result<log_driver::ReadBatch, DriverError> {
        Ok(log_driver::ReadBatch { entries: Vec::new(), eof: true })
    }
}

impl log_driver::Guest for Plugin {
    type LogSession = Session;
    type LogReader = Reader;

    fn read_logs_supported() -> bool {
        false
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

    fn read_logs(_info: ContainerInfo, _config: ReadConfig) -> Result<LogReader, DriverError> {
        Err(DriverError::Unsupported("template-log cannot read logs".into()))
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
