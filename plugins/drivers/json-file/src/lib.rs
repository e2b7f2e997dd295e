//! berth's default log driver: Docker's json-file format on disk, inside the
//! plugin's own data directory (`/data/containers/<id>/<id>-json.log`), with
//! `max-size` / `max-file` rotation and `docker logs` (tail/since/until/follow).

mod jsonl;
mod opts;

use std::cell::RefCell;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};

wit_bindgen::generate!({
    path: "../../wit/0.1.0",
    world: "log-plugin",
});

use exports::berth::driver::lifecycle;
use exports::berth::driver::log_driver::{
    self, ContainerInfo, DriverError, LogEntry, LogReader, LogSession, Options, PartialMeta, ReadBatch,
    ReadConfig, Source,
};
use opts::Opts;

const ROOT: &str = "/data/containers";
/// Largest reply a single `next` builds (the host caps replies too).
const MAX_BATCH_BYTES: usize = 4 << 20;

fn fail(e: std::io::Error) -> DriverError {
    DriverError::Failed(e.to_string())
}

fn check_id(id: &str) -> Result<(), DriverError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        && !id.starts_with('.');
    ok.then_some(()).ok_or_else(|| DriverError::Invalid(format!("invalid container id {id:?}")))
}

fn log_path(id: &str) -> String {
    format!("{ROOT}/{id}/{id}-json.log")
}

struct Plugin;

impl lifecycle::Guest for Plugin {
    fn init(_config: Options) -> Result<(), DriverError> {
        fs::create_dir_all(ROOT).map_err(fail)
    }
}

struct WState {
    path: String,
    file: File,
    size: u64,
    opts: Opts,
    /// Pre-encoded `"attrs":{...},` fragment (empty when no labels are selected).
    attrs: Vec<u8>,
}

impl WState {
    /// Append whole lines. A write cut short (a full disk) is undone back to the last
    /// whole line, so the lines appended once space is back are not glued to a fragment.
    fn append(&mut self, bytes: &[u8]) -> Result<(), DriverError> {
        if let Err(e) = self.file.write_all(bytes) {
            let _ = self.file.set_len(self.size);
            return Err(fail(e));
        }
        self.size += bytes.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), DriverError> {
        let n = self.opts.max_file;
        if n > 1 {
            for i in (1..n - 1).rev() {
                let from = format!("{}.{i}", self.path);
                if fs::metadata(&from).is_ok() {
                    fs::rename(&from, format!("{}.{}", self.path, i + 1)).map_err(fail)?;
                }
            }
            fs::rename(&self.path, format!("{}.1", self.path)).map_err(fail)?;
        }
        self.file = OpenOptions::new().create(true).write(true).truncate(true).open(&self.path).map_err(fail)?;
        self.size = 0;
        Ok(())
    }
}

struct Session {
    st: RefCell<WState>,
}

fn encode(buf: &mut Vec<u8>, e: &LogEntry, attrs: &[u8]) {
    buf.extend_from_slice(b"{\"log\":");
    jsonl::push_json_str(buf, &e.line, e.partial.is_none());
    buf.extend_from_slice(match e.source {
        Source::Stdout => b",\"stream\":\"stdout\",",
        Source::Stderr => b",\"stream\":\"stderr\",",
    });
    buf.extend_from_slice(attrs);
    buf.extend_from_slice(b"\"time\":\"");
    jsonl::push_time(buf, e.time_nano);
    buf.extend_from_slice(b"\"}\n");
}

impl log_driver::GuestLogSession for Session {
    fn write(&self, entries: Vec<LogEntry>) -> Result<(), DriverError> {
        let st = &mut *self.st.borrow_mut();
        let cap = entries.iter().map(|e| e.line.len() + 80 + st.attrs.len()).sum();
        let mut buf = Vec::with_capacity(cap);
        for e in &entries {
            let start = buf.len();
            encode(&mut buf, e, &st.attrs);
            let max = st.opts.max_size;
            if max > 0 && st.size + start as u64 > 0 && st.size + buf.len() as u64 > max {
                st.append(&buf[..start])?;
                st.rotate()?;
                buf.drain(..start);
            }
        }
        st.append(&buf)
    }

    fn close(&self) -> Result<(), DriverError> {
        self.st.borrow_mut().file.flush().map_err(fail)
    }
}

struct RState {
    /// Oldest rotated file first, live file last.
    files: Vec<String>,
    idx: usize,
    offset: u64,
    since: Option<i64>,
    until: Option<i64>,
    follow: bool,
    done: bool,
}

enum Step {
    Entry(LogEntry),
    Skip,
    Stop,
}

impl RState {
    fn judge(&mut self, line: &[u8]) -> Step {
        let Some(p) = jsonl::parse_line(line) else { return Step::Skip };
        if self.until.is_some_and(|u| p.time_nano > u) {
            return Step::Stop;
        }
        if self.since.is_some_and(|s| p.time_nano < s) {
            return Step::Skip;
        }
        let mut log = p.log;
        let partial = if log.last() == Some(&b'\n') {
            log.pop();
            None
        } else {
            Some(PartialMeta { id: String::new(), ordinal: 0, last: false })
        };
        let source = if p.stderr { Source::Stderr } else { Source::Stdout };
        Step::Entry(LogEntry { source, time_nano: p.time_nano, line: log, partial })
    }

    /// Would `judge` return this line? Only its time is looked at.
    fn in_window(&self, line: &[u8]) -> bool {
        jsonl::parse_line(line).is_some_and(|p| {
            self.until.is_none_or(|u| p.time_nano <= u) && self.since.is_none_or(|s| p.time_nano >= s)
        })
    }

    /// `--tail N`: start at the N-th last line in the since/until window, found by reading
    /// the files backwards from the end in bounded chunks. Memory stays bounded whatever
    /// the log's size (a 1 GiB log must not be read into the sandbox).
    fn seek_tail(&mut self, tail: u64) -> Result<(), DriverError> {
        let last = self.files.len() - 1;
        if tail == 0 {
            self.idx = last;
            self.offset = fs::metadata(&self.files[last]).map(|m| m.len()).unwrap_or(0);
            return Ok(());
        }
        let mut found = 0;
        for idx in (0..self.files.len()).rev() {
            let Ok(mut lines) = BackLines::open(&self.files[idx]) else { continue };
            while let Some((offset, line)) = lines.next()? {
                if self.in_window(&line) {
                    found += 1;
                    if found == tail {
                        self.idx = idx;
                        self.offset = offset;
                        return Ok(());
                    }
                }
            }
        }
        self.idx = 0;
        self.offset = 0;
        Ok(())
    }

    /// Read whole lines from the current position into `out`. Returns true when the
    /// reader should report eof.
    fn fill(&mut self, out: &mut Vec<LogEntry>, max: usize) -> Result<bool, DriverError> {
        let mut bytes = 0usize;
        let mut chunk_cap = 256 << 10;
        while !self.done && out.len() < max && bytes < MAX_BATCH_BYTES {
            let Some(path) = self.files.get(self.idx).cloned() else {
                self.done = true;
                break;
            };
            let last = self.idx + 1 == self.files.len();
            let mut f = match File::open(&path) {
                Ok(f) => f,
                Err(_) if last => return Ok(!self.follow),
                Err(_) => {
                    self.idx += 1;
                    self.offset = 0;
                    continue;
                }
            };
            let len = f.metadata().map_err(fail)?.len();
            if last && len < self.offset {
                // Rotated under a follower: finish the old file (now `.1`) from where
                // we were, then start the new live file at 0. With max-file=1 the
                // file was truncated instead and the unread tail is gone (as in Docker).
                let rotated = format!("{path}.1");
                if fs::metadata(&rotated).is_ok_and(|m| m.len() >= self.offset) {
                    self.files.insert(self.idx, rotated);
                } else {
                    self.offset = 0;
                }
                continue;
            }
            if self.offset >= len {
                if last {
                    return Ok(!self.follow);
                }
                self.idx += 1;
                self.offset = 0;
                continue;
            }
            f.seek(SeekFrom::Start(self.offset)).map_err(fail)?;
            let want = ((len - self.offset) as usize).min(chunk_cap);
            let mut chunk = vec![0u8; want];
            f.read_exact(&mut chunk).map_err(fail)?;
            let mut used = 0;
            while let Some(nl) = chunk[used..].iter().position(|&b| b == b'\n') {
                let line = &chunk[used..used + nl];
                used += nl + 1;
                match self.judge(line) {
                    Step::Entry(e) => {
                        bytes += e.line.len() + 32;
                        out.push(e);
                    }
                    Step::Skip => {}
                    Step::Stop => {
                        self.done = true;
                        break;
                    }
                }
                if out.len() >= max || bytes >= MAX_BATCH_BYTES {
                    break;
                }
            }
            self.offset += used as u64;
            if used == 0 {
                if want < chunk_cap || chunk_cap >= 64 << 20 {
                    // Incomplete last line: still being written (live file) or torn (rotated).
                    if last {
                        return Ok(!self.follow);
                    }
                    self.idx += 1;
                    self.offset = 0;
                } else {
                    chunk_cap *= 2;
                }
            }
        }
        Ok(self.done)
    }

}

/// A file's complete lines, last first, read backwards in chunks. Bytes after the final
/// newline (a line still being written) are not a line yet.
struct BackLines {
    file: File,
    /// File offset of `buf[0]`.
    pos: u64,
    /// Unsplit bytes; once `started`, it ends right after a newline.
    buf: Vec<u8>,
    started: bool,
}

impl BackLines {
    const CHUNK: u64 = 256 << 10;

    fn open(path: &str) -> std::io::Result<Self> {
        let file = File::open(path)?;
        let pos = file.metadata()?.len();
        Ok(BackLines { file, pos, buf: Vec::new(), started: false })
    }

    /// The previous line (without its newline) and the offset where it starts.
    fn next(&mut self) -> Result<Option<(u64, Vec<u8>)>, DriverError> {
        loop {
            if self.started && !self.buf.is_empty() {
                let body = self.buf.len() - 1;
                if let Some(nl) = self.buf[..body].iter().rposition(|&b| b == b'\n') {
                    let line = self.buf[nl + 1..body].to_vec();
                    self.buf.truncate(nl + 1);
                    return Ok(Some((self.pos + nl as u64 + 1, line)));
                }
                if self.pos == 0 {
                    let line = self.buf[..body].to_vec();
                    self.buf.clear();
                    return Ok(Some((0, line)));
                }
            }
            if self.pos == 0 {
                return Ok(None);
            }
            let start = self.pos.saturating_sub(Self::CHUNK);
            let mut chunk = vec![0u8; (self.pos - start) as usize];
            self.file.seek(SeekFrom::Start(start)).map_err(fail)?;
            self.file.read_exact(&mut chunk).map_err(fail)?;
            chunk.extend_from_slice(&self.buf);
            self.buf = chunk;
            self.pos = start;
            if !self.started {
                match self.buf.iter().rposition(|&b| b == b'\n') {
                    Some(nl) => {
                        self.buf.truncate(nl + 1);
                        self.started = true;
                    }
                    // All of it belongs to the unfinished last line.
                    None => self.buf.clear(),
                }
            }
        }
    }
}

struct Reader {
    st: RefCell<RState>,
}

impl log_driver::GuestLogReader for Reader {
    fn next(&self, max_entries: u32) -> Result<ReadBatch, DriverError> {
        let mut entries = Vec::new();
        let eof = self.st.borrow_mut().fill(&mut entries, max_entries.max(1) as usize)?;
        Ok(ReadBatch { entries, eof })
    }
}

impl log_driver::Guest for Plugin {
    type LogSession = Session;
    type LogReader = Reader;

    fn read_logs_supported() -> bool {
        true
    }

    fn validate_options(opts: Options) -> Result<(), DriverError> {
        Opts::parse(&opts).map(|_| ())
    }

    fn start_logging(info: ContainerInfo) -> Result<LogSession, DriverError> {
        check_id(&info.id)?;
        let opts = Opts::parse(&info.log_opts)?;
        let attrs = opts.attrs(&info.labels);
        fs::create_dir_all(format!("{ROOT}/{}", info.id)).map_err(fail)?;
        let path = log_path(&info.id);
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(fail)?;
        let size = file.metadata().map_err(fail)?.len();
        let st = WState { path, file, size, opts, attrs };
        Ok(LogSession::new(Session { st: RefCell::new(st) }))
    }

    fn read_logs(info: ContainerInfo, config: ReadConfig) -> Result<LogReader, DriverError> {
        check_id(&info.id)?;
        let base = log_path(&info.id);
        let mut files: Vec<String> = (1..=1000)
            .map(|i| format!("{base}.{i}"))
            .take_while(|p| fs::metadata(p).is_ok())
            .collect();
        files.reverse();
        files.push(base);
        let mut st = RState {
            files,
            idx: 0,
            offset: 0,
            since: config.since_nano,
            until: config.until_nano,
            follow: config.follow,
            done: false,
        };
        if let Some(tail) = config.tail {
            st.seek_tail(tail as u64)?;
        }
        Ok(LogReader::new(Reader { st: RefCell::new(st) }))
    }

    fn remove_logs(container_id: String) -> Result<(), DriverError> {
        check_id(&container_id)?;
        match fs::remove_dir_all(format!("{ROOT}/{container_id}")) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(fail(e)),
            _ => Ok(()),
        }
    }
}

export!(Plugin);
