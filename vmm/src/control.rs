//! Control socket: line-delimited JSON over a unix stream socket.
//!
//! Requests: `{"cmd":"status"}`, `{"cmd":"boot-time"}`, `{"cmd":"exit-reason"}`,
//! `{"cmd":"shutdown"}` (graceful: Ctrl+Alt+Del through the i8042, forced
//! after a timeout) and `{"cmd":"shutdown","force":true}`.
//! Every reply is one [`StatusResponse`] (or `{"ok":false,"error":...}`) line.

use std::io::{Read, Write};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

use serde::{Deserialize, Serialize};

use crate::state::{ExitReason, VmmShared};

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum ControlRequest {
    Status,
    BootTime,
    ExitReason,
    Shutdown {
        #[serde(default)]
        force: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct StatusResponse {
    pub ok: bool,
    /// "running" or "stopping".
    pub state: String,
    /// Boot-complete time from VMM start, once the guest signalled it.
    pub boot_time_us: Option<u64>,
    /// VMM CPU time used up to boot-complete.
    pub boot_cpu_us: Option<u64>,
    /// VMM start to vCPU 0's first KVM_RUN.
    pub first_run_us: Option<u64>,
    /// VMM CPU time (all threads) up to the first KVM_RUN.
    #[serde(default)]
    pub first_run_cpu_us: Option<u64>,
    /// How long registering guest RAM with KVM took (overlapped with setup).
    #[serde(default)]
    pub memslot_us: Option<u64>,
    pub exit_reason: Option<ExitReason>,
}

impl<'de> Deserialize<'de> for ExitReason {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "snake_case", tag = "kind", content = "detail")]
        enum R {
            Reset,
            Shutdown,
            TripleFault,
            Halted,
            Forced,
            VcpuError(String),
        }
        Ok(match R::deserialize(d)? {
            R::Reset => ExitReason::Reset,
            R::Shutdown => ExitReason::Shutdown,
            R::TripleFault => ExitReason::TripleFault,
            R::Halted => ExitReason::Halted,
            R::Forced => ExitReason::Forced,
            R::VcpuError(s) => ExitReason::VcpuError(s),
        })
    }
}

pub fn status(shared: &VmmShared) -> StatusResponse {
    StatusResponse {
        ok: true,
        state: if shared.stopping() {
            "stopping"
        } else {
            "running"
        }
        .into(),
        boot_time_us: shared.boot_time_us(),
        boot_cpu_us: shared.boot_cpu_us(),
        first_run_us: shared.first_run_us(),
        memslot_us: shared.memslot_us(),
        first_run_cpu_us: shared.first_run_cpu_us(),
        exit_reason: shared.exit_reason(),
    }
}

pub fn status_response(shared: &VmmShared) -> String {
    serde_json::to_string(&status(shared)).unwrap_or_default()
}

pub fn error_response(msg: &str) -> String {
    serde_json::json!({ "ok": false, "error": msg }).to_string()
}

/// Longest request line accepted; longer input closes the connection.
const MAX_LINE: usize = 4096;

pub struct ControlConn {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl ControlConn {
    pub fn new(stream: UnixStream) -> Self {
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// Reads what is available; returns parsed requests and whether the
    /// connection is still open.
    pub fn read_requests(&mut self) -> (Vec<Result<ControlRequest, String>>, bool) {
        let mut open = true;
        let mut tmp = [0u8; 1024];
        loop {
            match self.stream.read(&mut tmp) {
                Ok(0) => {
                    open = false;
                    break;
                }
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    open = false;
                    break;
                }
            }
        }
        let mut out = Vec::new();
        while let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            out.push(
                serde_json::from_str::<ControlRequest>(line)
                    .map_err(|e| format!("bad request: {e}")),
            );
        }
        if self.buf.len() > MAX_LINE {
            out.push(Err("request line too long".into()));
            open = false;
        }
        (out, open)
    }

    pub fn send(&mut self, line: &str) {
        // Replies are small; a client that does not read them loses them.
        let _ = self.stream.write_all(line.as_bytes());
        let _ = self.stream.write_all(b"\n");
    }
}

/// Client helper for the host side and tests: sends one request, reads one reply.
pub fn request(path: &std::path::Path, req: &ControlRequest) -> std::io::Result<StatusResponse> {
    use std::io::BufRead;
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    let mut line = serde_json::to_string(req).map_err(std::io::Error::other)?;
    line.push('\n');
    s.write_all(line.as_bytes())?;
    let mut reply = String::new();
    std::io::BufReader::new(s).read_line(&mut reply)?;
    serde_json::from_str(&reply).map_err(|e| std::io::Error::other(format!("{e}: {reply}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_requests() {
        let (a, b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let mut conn = ControlConn::new(b);
        let mut a2 = a.try_clone().unwrap();
        a2.write_all(b"{\"cmd\":\"status\"}\n{\"cmd\":\"shutdown\",\"force\":true}\n{\"cmd\":\"shutdown\"}\nnonsense\n{\"cmd\":\"boot-ti").unwrap();
        let (reqs, open) = conn.read_requests();
        assert!(open);
        assert_eq!(reqs.len(), 4);
        assert_eq!(reqs[0], Ok(ControlRequest::Status));
        assert_eq!(reqs[1], Ok(ControlRequest::Shutdown { force: true }));
        assert_eq!(reqs[2], Ok(ControlRequest::Shutdown { force: false }));
        assert!(reqs[3].is_err());
        a2.write_all(b"me\"}\n").unwrap();
        drop(a2);
        drop(a);
        let (reqs, open) = conn.read_requests();
        assert_eq!(reqs, vec![Ok(ControlRequest::BootTime)]);
        assert!(!open);
    }

    #[test]
    fn status_roundtrip() {
        let shared = VmmShared::new(std::time::Instant::now()).unwrap();
        shared.mark_boot_complete();
        shared.request_exit(ExitReason::VcpuError("x".into()));
        let s: StatusResponse = serde_json::from_str(&status_response(&shared)).unwrap();
        assert_eq!(s.state, "stopping");
        assert!(s.boot_time_us.is_some());
        assert_eq!(s.exit_reason, Some(ExitReason::VcpuError("x".into())));
    }
}
