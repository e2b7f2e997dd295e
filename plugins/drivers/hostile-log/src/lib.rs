//! Hostile log driver used by the host's tests. `write` misbehaves on magic
//! lines; `read-logs` returns bad replies chosen by the container id.
//! Normal lines are appended to `/data/<id>.log` so tests can see what arrived.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::Write;

wit_bindgen::generate!({
    path: "../../wit/0.1.0",
    world: "log-plugin",
});

use berth::driver::host::{self, Level};
use exports::berth::driver::lifecycle;
use exports::berth::driver::log_driver::{
    self, ContainerInfo, DriverError, LogEntry, LogReader, LogSession, Options, PartialMeta, ReadBatch,
    ReadConfig, Source,
};

struct Plugin;

impl lifecycle::Guest for Plugin {
    fn init(_config: Options) -> Result<(), DriverError> {
        Ok(())
    }
}

fn entry(line: Vec<u8>) -> LogEntry {
    LogEntry { source: Source::Stdout, time_nano: 1, line, partial: None }
}

fn misbehave(line: &[u8]) {
    match line {
        b"loop" => loop {
            std::hint::black_box(());
        },
        b"oom" => {
            let mut hog: Vec<Vec<u8>> = Vec::new();
            loop {
                hog.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hog);
            }
        }
        // Keep 24 MiB for good: high-water mark for the host's recycling.
        b"leak" => std::mem::forget(std::hint::black_box(vec![1u8; 24 << 20])),
        b"panic" => panic!("hostile plugin panicked on request"),
        b"trap" => std::process::abort(),
        b"flood" => {
            let big = "x".repeat(4096);
            for _ in 0..100_000 {
                host::log(Level::Info, &big);
            }
            let chunk = vec![b'e'; 64 << 10];
            let mut err = std::io::stderr();
            for _ in 0..256 {
                let _ = err.write_all(&chunk);
            }
        }
        b"slow" => {
            let t = std::time::Instant::now();
            while t.elapsed() < std::time::Duration::from_millis(150) {
                std::hint::black_box(());
            }
        }
        _ => {}
    }
}

struct Session {
    file: RefCell<File>,
}

impl log_driver::GuestLogSession for Session {
    fn write(&self, entries: Vec<LogEntry>) -> Result<(), DriverError> {
        let mut buf = Vec::new();
        for e in &entries {
            misbehave(&e.line);
            buf.extend_from_slice(&e.line);
            buf.push(b'\n');
        }
        self.file.borrow_mut().write_all(&buf).map_err(|e| DriverError::Failed(e.to_string()))
    }
    fn close(&self) -> Result<(), DriverError> {
        Ok(())
    }
}

struct Reader {
    mode: String,
}

impl log_driver::GuestLogReader for Reader {
    fn next(&self, max: u32) -> Result<ReadBatch, DriverError> {
        let entries = match self.mode.as_str() {
            "too-many" => (0..max + 10).map(|i| entry(i.to_string().into_bytes())).collect(),
            "huge-line" => vec![entry(vec![b'x'; 2 << 20])],
            "bad-partial" => vec![LogEntry {
                partial: Some(PartialMeta { id: "p".repeat(10_000), ordinal: 0, last: true }),
                ..entry(b"x".to_vec())
            }],
            "negative-time" => vec![LogEntry { time_nano: -5, ..entry(b"x".to_vec()) }],
            _ => vec![entry(b"fine".to_vec())],
        };
        Ok(ReadBatch { entries, eof: true })
    }
}

impl log_driver::Guest for Plugin {
    type LogSession = Session;
    type LogReader = Reader;

    fn read_logs_supported() -> bool {
        true
    }

    /// `--log-opt do=<loop|oom|panic|trap|flood|slow>` misbehaves right here, so the
    /// failure comes back to the caller of this call.
    fn validate_options(opts: Options) -> Result<(), DriverError> {
        for (k, v) in opts {
            match (k.as_str(), v.as_str()) {
                // Round-trip through the host kv; persists across restarts.
                ("do", "kv") => {
                    let n = host::kv_get("count").map_or(0, |b| b[0]);
                    host::kv_set("count", &[n + 1])?;
                }
                // Hammer kv-set until the host says no (quota or rate limit).
                ("do", "kvflood") => {
                    for i in 0..100_000 {
                        host::kv_set(&format!("key{i}"), &[0u8; 1024])?;
                    }
                }
                ("do", other) => misbehave(other.as_bytes()),
                _ => {}
            }
        }
        Ok(())
    }

    fn start_logging(info: ContainerInfo) -> Result<LogSession, DriverError> {
        if info.id == "refuse" {
            return Err(DriverError::Invalid("refused on request".into()));
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(format!("/data/{}.log", info.id))
            .map_err(|e| DriverError::Failed(e.to_string()))?;
        Ok(LogSession::new(Session { file: RefCell::new(file) }))
    }

    fn read_logs(info: ContainerInfo, _config: ReadConfig) -> Result<LogReader, DriverError> {
        Ok(LogReader::new(Reader { mode: info.id }))
    }

    fn remove_logs(_container_id: String) -> Result<(), DriverError> {
        Ok(())
    }
}

export!(Plugin);
