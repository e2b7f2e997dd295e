//! Attach/exec stream hijacking: `Connection: Upgrade` + `Upgrade: tcp` → 101, then the
//! raw socket carries stdcopy frames (no tty) or raw bytes (tty) out, and stdin in.
//! A client half-close (CLI's CloseWrite) ends stdin only, never the output.

use std::os::fd::RawFd;
use std::time::Duration;

use axum::body::Body;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::{BufMut, Bytes, BytesMut};
use hyper_util::rt::TokioIo;

use crate::version::ApiVersion;

pub const RAW: &str = "application/vnd.docker.raw-stream";
pub const MULTIPLEXED: &str = "application/vnd.docker.multiplexed-stream";

/// Docker's content type for a stream: multiplexed only without a tty from API 1.42.
pub fn stream_content_type(tty: bool, v: ApiVersion) -> &'static str {
    if !tty && v.at_least(42) {
        MULTIPLEXED
    } else {
        RAW
    }
}

/// One stdcopy frame: `[stream, 0, 0, 0, len u32 BE] payload`.
pub fn frame(stream: u8, data: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(8 + data.len());
    b.put_u8(stream);
    b.put_bytes(0, 3);
    b.put_u32(data.len() as u32);
    b.put_slice(data);
    b.freeze()
}

pub fn wants_upgrade(req: &Request) -> bool {
    let h = req.headers();
    let has = |name: header::HeaderName, v: &str| {
        h.get(name)
            .and_then(|x| x.to_str().ok())
            .is_some_and(|x| x.to_ascii_lowercase().contains(v))
    };
    has(header::CONNECTION, "upgrade") && has(header::UPGRADE, "tcp")
}

pub type Upgraded = TokioIo<hyper::upgrade::Upgraded>;

/// The client connection's socket, recorded when it is accepted (see
/// [`crate::identity::Conn`]).
/// Only read while the connection is being served, so the descriptor is still ours.
#[derive(Debug, Clone, Copy)]
pub struct ConnFd(pub RawFd);

/// A 101 response on its way to the client; [`established`](Self::established) yields the
/// raw connection.
pub struct PendingHijack {
    on_upgrade: hyper::upgrade::OnUpgrade,
    conn: Option<ConnFd>,
}

impl PendingHijack {
    /// The upgraded connection, once the client has read the whole 101 response.
    ///
    /// Why wait: docker-py (and anything built on Python's `http.client`) parses the
    /// response headers through a buffered reader and then reads the stream from the raw
    /// socket. Stream bytes that arrive together with the headers land in that buffer and
    /// are lost to the client (docker/docker-py#2042, #3332: `exec_run` returns empty or
    /// partial output). runc's start latency hides this behind dockerd; berth starts an
    /// exec in a millisecond. So no stream byte is written until the kernel says the peer
    /// has consumed everything sent so far. Bounded, so a client that never reads cannot
    /// hold a task forever.
    pub async fn established(self) -> Option<Upgraded> {
        let up = self.on_upgrade.await.ok()?;
        if let Some(ConnFd(fd)) = self.conn {
            wait_until_consumed(fd, Duration::from_secs(2)).await;
        }
        Some(TokioIo::new(up))
    }
}

/// Bytes this end sent that the peer has not read yet (`SIOCOUTQ`; for unix stream
/// sockets the sender is charged until the receiver consumes them).
fn unread_by_peer(fd: RawFd) -> Option<i32> {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (== SIOCOUTQ) writes one int through a valid pointer.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n) };
    (rc == 0).then_some(n)
}

async fn wait_until_consumed(fd: RawFd, limit: Duration) {
    let start = std::time::Instant::now();
    let mut spins = 0u32;
    while let Some(n) = unread_by_peer(fd) {
        if n <= 0 || start.elapsed() >= limit {
            return;
        }
        // A client normally reads its headers within microseconds: yield first, then
        // back off to the timer's 1 ms granularity.
        if spins < 32 {
            spins += 1;
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// Take the upgrade future out of the request and build the 101 response. The
/// connection becomes available once the response has been written and read.
pub fn upgrade(req: &mut Request, content_type: &'static str) -> Option<(Response, PendingHijack)> {
    let on_upgrade = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>()?;
    let conn = req
        .extensions()
        .get::<ConnectInfo<ConnFd>>()
        .map(|ConnectInfo(c)| *c);
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("tcp"));
    Some((resp, PendingHijack { on_upgrade, conn }))
}

/// Docker's detach sequence (default ctrl-p, ctrl-q) matcher for stdin.
pub struct DetachKeys {
    keys: Vec<u8>,
    matched: usize,
}

impl DetachKeys {
    /// Parse `ctrl-p,ctrl-q` style keys; empty means the default.
    pub fn parse(s: Option<&str>) -> Result<DetachKeys, String> {
        let s = s.filter(|s| !s.is_empty()).unwrap_or("ctrl-p,ctrl-q");
        let mut keys = Vec::new();
        for k in s.split(',') {
            let k = k.trim();
            if let Some(c) = k.strip_prefix("ctrl-") {
                let c = c.as_bytes();
                if c.len() != 1 {
                    return Err(format!("Invalid detach keys ({s}) provided"));
                }
                let b = match c[0] {
                    b'a'..=b'z' => c[0] - b'a' + 1,
                    b'@' => 0,
                    b'[' => 27,
                    b'\\' => 28,
                    b']' => 29,
                    b'^' => 30,
                    b'_' => 31,
                    _ => return Err(format!("Invalid detach keys ({s}) provided")),
                };
                keys.push(b);
            } else if k.len() == 1 {
                keys.push(k.as_bytes()[0]);
            } else {
                return Err(format!("Invalid detach keys ({s}) provided"));
            }
        }
        Ok(DetachKeys { keys, matched: 0 })
    }

    /// Feed input; returns (bytes to forward, detach requested). Bytes that are a
    /// prefix of the sequence are held back until the sequence breaks.
    pub fn feed(&mut self, data: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(data.len());
        for &b in data {
            if b == self.keys[self.matched] {
                self.matched += 1;
                if self.matched == self.keys.len() {
                    return (out, true);
                }
            } else {
                out.extend_from_slice(&self.keys[..self.matched]);
                self.matched = 0;
                if b == self.keys[0] {
                    self.matched = 1;
                    if self.keys.len() == 1 {
                        return (out, true);
                    }
                } else {
                    out.push(b);
                }
            }
        }
        (out, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdcopy_frame() {
        assert_eq!(&frame(2, b"hi")[..], &[2, 0, 0, 0, 0, 0, 0, 2, b'h', b'i']);
    }

    #[test]
    fn detach_keys() {
        let mut d = DetachKeys::parse(None).unwrap();
        assert_eq!(d.feed(b"ab\x10c"), (b"ab\x10c".to_vec(), false));
        let (out, det) = d.feed(b"x\x10\x11y");
        assert_eq!((out, det), (b"x".to_vec(), true));
        assert!(DetachKeys::parse(Some("ctrl-1")).is_err());
        let mut d = DetachKeys::parse(Some("ctrl-a")).unwrap();
        assert_eq!(d.feed(b"q\x01"), (b"q".to_vec(), true));
    }
}
