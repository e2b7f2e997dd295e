//! Connection multiplexer between guest vsock streams and host unix
//! sockets. Runs on the device loop; all sockets are non-blocking and
//! watched through an inner epoll set whose fd the device loop polls.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::packet::*;
use crate::error::{Error, Result};

/// Receive buffer we advertise to the guest per connection.
pub const BUF_ALLOC: u32 = 256 * 1024;
const MAX_CONNS: usize = 1024;
const MAX_CONNECT_LINE: usize = 32;
const LISTENER_TOKEN: u64 = u64::MAX;
const FIRST_HOST_PORT: u32 = 1 << 30;

/// (local/host port, peer/guest port)
type Key = (u32, u32);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Host connected and sent CONNECT; waiting for the guest's RESPONSE.
    Connecting,
    Established,
}

struct Conn {
    stream: UnixStream,
    state: State,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Bytes sent to the guest.
    rx_cnt: u32,
    /// Bytes forwarded from the guest to the host socket.
    fwd_cnt: u32,
    last_fwd_cnt_sent: u32,
    /// Guest -> host bytes the socket has not taken yet.
    tx_buf: Vec<u8>,
    /// Host -> guest bytes read but not yet sent.
    rx_pending: Vec<u8>,
    readable: bool,
    host_eof: bool,
    shut_write: bool,
    close_after_flush: bool,
    interest: EventSet,
    /// Whether the fd is in the epoll set (it is removed while we want no
    /// events, so a hung-up socket cannot keep the loop spinning).
    registered: bool,
}

impl Conn {
    fn new(stream: UnixStream, state: State) -> Self {
        Self {
            stream,
            state,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            rx_cnt: 0,
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
            tx_buf: Vec::new(),
            rx_pending: Vec::new(),
            readable: false,
            host_eof: false,
            shut_write: false,
            close_after_flush: false,
            interest: EventSet::empty(),
            registered: false,
        }
    }

    /// Bytes the guest can still take.
    fn peer_free(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.rx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }

    fn can_send_data(&self) -> bool {
        self.state == State::Established
            && self.peer_free() > 0
            && (!self.rx_pending.is_empty() || (self.readable && !self.host_eof))
    }

    fn wanted_interest(&self) -> EventSet {
        let mut e = EventSet::empty();
        if self.state == State::Established
            && !self.readable
            && !self.host_eof
            && self.rx_pending.is_empty()
        {
            e |= EventSet::IN;
        }
        if !self.tx_buf.is_empty() {
            e |= EventSet::OUT;
        }
        e
    }
}

struct PendingHost {
    stream: UnixStream,
    buf: Vec<u8>,
}

pub struct Muxer {
    guest_cid: u64,
    /// Prefix for guest-initiated connections (`<base>_<port>`); differs
    /// from uds_path only inside a chroot jail.
    connect_base: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    conns: HashMap<Key, Conn>,
    by_fd: HashMap<RawFd, Key>,
    pending: HashMap<RawFd, PendingHost>,
    ctrl: VecDeque<Hdr>,
    next_port: u32,
}

impl Muxer {
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Self> {
        let err = |reason: String| Error::Device {
            device: format!("vsock {}", uds_path.display()),
            reason,
        };
        // A stale socket from an earlier run would make bind fail.
        if let Ok(meta) = std::fs::symlink_metadata(uds_path) {
            use std::os::unix::fs::FileTypeExt;
            if meta.file_type().is_socket() {
                let _ = std::fs::remove_file(uds_path);
            }
        }
        let listener = UnixListener::bind(uds_path).map_err(|e| err(format!("bind: {e}")))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| err(e.to_string()))?;
        let epoll = Epoll::new().map_err(|e| err(format!("epoll: {e}")))?;
        epoll
            .ctl(
                ControlOperation::Add,
                listener.as_raw_fd(),
                EpollEvent::new(EventSet::IN, LISTENER_TOKEN),
            )
            .map_err(|e| err(format!("epoll_ctl: {e}")))?;
        Ok(Self {
            guest_cid,
            connect_base: uds_path.to_path_buf(),
            listener,
            epoll,
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            pending: HashMap::new(),
            ctrl: VecDeque::new(),
            next_port: FIRST_HOST_PORT,
        })
    }

    pub fn set_connect_base(&mut self, base: PathBuf) {
        self.connect_base = base;
    }

    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    fn ctrl_hdr(&self, key: Key, op: u16, flags: u32) -> Hdr {
        make_hdr(self.guest_cid, key, op, flags)
    }
}

/// Header of a packet from the host (CID 2) to the guest.
fn make_hdr(guest_cid: u64, key: Key, op: u16, flags: u32) -> Hdr {
    Hdr {
        src_cid: HOST_CID,
        dst_cid: guest_cid,
        src_port: key.0,
        dst_port: key.1,
        type_: TYPE_STREAM,
        op,
        flags,
        buf_alloc: BUF_ALLOC,
        fwd_cnt: 0,
    }
}

impl Muxer {
    fn push_ctrl(&mut self, key: Key, op: u16, flags: u32) {
        let h = self.ctrl_hdr(key, op, flags);
        self.ctrl.push_back(h);
    }

    fn remove(&mut self, key: Key) {
        if let Some(c) = self.conns.remove(&key) {
            let fd = c.stream.as_raw_fd();
            self.by_fd.remove(&fd);
            if c.registered {
                let _ = self
                    .epoll
                    .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            }
        }
    }

    fn rst(&mut self, key: Key) {
        self.remove(key);
        self.push_ctrl(key, OP_RST, 0);
    }

    fn update_interest(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        let want = c.wanted_interest();
        if c.registered && want == c.interest {
            return;
        }
        let fd = c.stream.as_raw_fd();
        let ev = EpollEvent::new(want, fd as u64);
        let res = match (c.registered, want.is_empty()) {
            (false, true) => return,
            (true, true) => self.epoll.ctl(ControlOperation::Delete, fd, ev),
            (false, false) => self.epoll.ctl(ControlOperation::Add, fd, ev),
            (true, false) => self.epoll.ctl(ControlOperation::Modify, fd, ev),
        };
        if res.is_ok() {
            c.registered = !want.is_empty();
            c.interest = want;
        }
    }

    fn add_conn(&mut self, key: Key, conn: Conn) -> bool {
        let fd = conn.stream.as_raw_fd();
        self.by_fd.insert(fd, key);
        self.conns.insert(key, conn);
        self.update_interest(key);
        true
    }

    fn alloc_host_port(&mut self) -> u32 {
        loop {
            let p = self.next_port;
            self.next_port = self.next_port.checked_add(1).unwrap_or(FIRST_HOST_PORT);
            if !self.conns.keys().any(|k| k.0 == p) {
                return p;
            }
        }
    }

    /// Drains the inner epoll set: new host connections, CONNECT lines,
    /// readable and writable sockets.
    pub fn process_events(&mut self) {
        let mut events = [EpollEvent::default(); 32];
        // Bounded: new fds registered while handling a batch are picked up
        // in the next round, and anything left wakes the device loop again.
        for _ in 0..4 {
            let n = match self.epoll.wait(0, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            if n == 0 {
                return;
            }
            for ev in &events[..n] {
                let tok = ev.data();
                if tok == LISTENER_TOKEN {
                    self.accept_host();
                    continue;
                }
                let fd = tok as RawFd;
                if self.pending.contains_key(&fd) {
                    self.read_connect_line(fd);
                } else if let Some(&key) = self.by_fd.get(&fd) {
                    let set = ev.event_set();
                    if let Some(c) = self.conns.get_mut(&key) {
                        if set.intersects(
                            EventSet::IN
                                | EventSet::HANG_UP
                                | EventSet::ERROR
                                | EventSet::READ_HANG_UP,
                        ) {
                            c.readable = true;
                        }
                    }
                    if set.contains(EventSet::OUT) {
                        self.flush(key);
                    }
                    self.update_interest(key);
                }
            }
        }
    }

    fn accept_host(&mut self) {
        while let Ok((s, _)) = self.listener.accept() {
            if self.conns.len() + self.pending.len() >= MAX_CONNS
                || s.set_nonblocking(true).is_err()
            {
                continue;
            }
            let fd = s.as_raw_fd();
            if self
                .epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, fd as u64),
                )
                .is_ok()
            {
                self.pending.insert(
                    fd,
                    PendingHost {
                        stream: s,
                        buf: Vec::new(),
                    },
                );
            }
        }
    }

    fn read_connect_line(&mut self, fd: RawFd) {
        let Some(p) = self.pending.get_mut(&fd) else {
            return;
        };
        let mut tmp = [0u8; 64];
        let drop_it = match p.stream.read(&mut tmp) {
            Ok(0) => true,
            Ok(n) => {
                p.buf.extend_from_slice(&tmp[..n]);
                false
            }
            Err(e) => e.kind() != ErrorKind::WouldBlock,
        };
        let line_end = p.buf.iter().position(|b| *b == b'\n');
        if drop_it || (line_end.is_none() && p.buf.len() > MAX_CONNECT_LINE) {
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            self.pending.remove(&fd);
            return;
        }
        let Some(end) = line_end else { return };
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        let p = self.pending.remove(&fd).unwrap();
        let port = std::str::from_utf8(&p.buf[..end])
            .ok()
            .and_then(|l| l.trim().strip_prefix("CONNECT "))
            .and_then(|n| n.trim().parse::<u32>().ok());
        let Some(port) = port else {
            tracing::debug!("vsock: bad CONNECT line from host");
            return;
        };
        let local = self.alloc_host_port();
        let key = (local, port);
        let mut conn = Conn::new(p.stream, State::Connecting);
        // Bytes the host sent right after the CONNECT line.
        conn.rx_pending = p.buf[end + 1..].to_vec();
        if self.add_conn(key, conn) {
            self.push_ctrl(key, OP_REQUEST, 0);
        }
    }

    /// Writes buffered guest data to the host socket.
    fn flush(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        let mut failed = false;
        while !c.tx_buf.is_empty() {
            match c.stream.write(&c.tx_buf) {
                Ok(0) => {
                    failed = true;
                    break;
                }
                Ok(n) => {
                    c.tx_buf.drain(..n);
                    if c.state == State::Established {
                        c.fwd_cnt = c.fwd_cnt.wrapping_add(n as u32);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            self.rst(key);
            return;
        }
        let c = self.conns.get_mut(&key).unwrap();
        if c.tx_buf.is_empty() {
            if c.shut_write {
                let _ = c.stream.shutdown(std::net::Shutdown::Write);
            }
            if c.close_after_flush {
                self.rst(key);
                return;
            }
        }
        // Tell the guest about freed space before it runs out of credit.
        if c.fwd_cnt.wrapping_sub(c.last_fwd_cnt_sent) >= BUF_ALLOC / 4 {
            self.push_ctrl(key, OP_CREDIT_UPDATE, 0);
        }
        self.update_interest(key);
    }

    /// A packet from the guest.
    pub fn handle_tx(&mut self, hdr: &Hdr, data: &[u8]) {
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            tracing::debug!("vsock: dropping packet {}->{}", hdr.src_cid, hdr.dst_cid);
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        if hdr.type_ != TYPE_STREAM {
            self.rst(key);
            return;
        }
        if let Some(c) = self.conns.get_mut(&key) {
            c.peer_buf_alloc = hdr.buf_alloc;
            c.peer_fwd_cnt = hdr.fwd_cnt;
        }
        let state = self.conns.get(&key).map(|c| c.state);
        match (hdr.op, state) {
            (OP_REQUEST, None) => self.guest_connect(key),
            (OP_RESPONSE, Some(State::Connecting)) => {
                let c = self.conns.get_mut(&key).unwrap();
                c.state = State::Established;
                let ok = format!("OK {}\n", key.0);
                c.tx_buf.splice(0..0, ok.bytes());
                self.flush(key);
            }
            (OP_RST, Some(_)) => self.remove(key),
            (OP_RST, None) => {}
            (OP_SHUTDOWN, Some(_)) => {
                let c = self.conns.get_mut(&key).unwrap();
                if hdr.flags & SHUTDOWN_SEND != 0 {
                    c.shut_write = true;
                }
                if hdr.flags & (SHUTDOWN_SEND | SHUTDOWN_RCV) == SHUTDOWN_SEND | SHUTDOWN_RCV {
                    c.close_after_flush = true;
                }
                self.flush(key);
            }
            (OP_RW, Some(State::Established)) => {
                let c = self.conns.get_mut(&key).unwrap();
                // A guest that ignores our credit is cut off.
                if c.tx_buf.len() + data.len() > BUF_ALLOC as usize {
                    self.rst(key);
                    return;
                }
                c.tx_buf.extend_from_slice(data);
                self.flush(key);
            }
            (OP_CREDIT_UPDATE, Some(_)) => self.update_interest(key),
            (OP_CREDIT_REQUEST, Some(_)) => self.push_ctrl(key, OP_CREDIT_UPDATE, 0),
            _ => self.rst(key),
        }
    }

    fn guest_connect(&mut self, key: Key) {
        if self.conns.len() >= MAX_CONNS {
            self.push_ctrl(key, OP_RST, 0);
            return;
        }
        let path = format!("{}_{}", self.connect_base.display(), key.0);
        match UnixStream::connect(&path) {
            Ok(s) if s.set_nonblocking(true).is_ok() => {
                if self.add_conn(key, Conn::new(s, State::Established)) {
                    self.push_ctrl(key, OP_RESPONSE, 0);
                } else {
                    self.push_ctrl(key, OP_RST, 0);
                }
            }
            _ => {
                tracing::debug!("vsock: guest connect to {path} refused");
                self.push_ctrl(key, OP_RST, 0);
            }
        }
    }

    /// Whether there is anything for the guest.
    pub fn has_rx(&self) -> bool {
        !self.ctrl.is_empty() || self.conns.values().any(Conn::can_send_data)
    }

    /// Next packet for the guest, with at most `cap` payload bytes.
    pub fn next_rx(&mut self, cap: usize) -> Option<(Hdr, Vec<u8>)> {
        if let Some(mut h) = self.ctrl.pop_front() {
            if let Some(c) = self.conns.get_mut(&(h.src_port, h.dst_port)) {
                h.fwd_cnt = c.fwd_cnt;
                c.last_fwd_cnt_sent = c.fwd_cnt;
            }
            return Some((h, Vec::new()));
        }
        if cap == 0 {
            return None;
        }
        let gcid = self.guest_cid;
        let keys: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| c.can_send_data())
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            let c = self.conns.get_mut(&key).unwrap();
            let n = cap.min(c.peer_free() as usize).min(MAX_PKT_DATA as usize);
            let data = if !c.rx_pending.is_empty() {
                let n = n.min(c.rx_pending.len());
                c.rx_pending.drain(..n).collect::<Vec<u8>>()
            } else {
                let mut buf = vec![0u8; n];
                match c.stream.read(&mut buf) {
                    Ok(0) => {
                        // Host closed its end: tell the guest we will send no more.
                        c.host_eof = true;
                        c.readable = false;
                        let mut h = make_hdr(gcid, key, OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND);
                        h.fwd_cnt = c.fwd_cnt;
                        self.update_interest(key);
                        return Some((h, Vec::new()));
                    }
                    Ok(k) => {
                        buf.truncate(k);
                        buf
                    }
                    Err(e)
                        if e.kind() == ErrorKind::WouldBlock
                            || e.kind() == ErrorKind::Interrupted =>
                    {
                        c.readable = false;
                        self.update_interest(key);
                        continue;
                    }
                    Err(_) => {
                        self.rst(key);
                        continue;
                    }
                }
            };
            let c = self.conns.get_mut(&key).unwrap();
            c.rx_cnt = c.rx_cnt.wrapping_add(data.len() as u32);
            let mut h = make_hdr(gcid, key, OP_RW, 0);
            h.fwd_cnt = c.fwd_cnt;
            c.last_fwd_cnt_sent = c.fwd_cnt;
            self.update_interest(key);
            return Some((h, data));
        }
        None
    }

    /// Driver reset: every connection is dropped.
    pub fn reset(&mut self) {
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        for k in keys {
            self.remove(k);
        }
        for (fd, _) in self.pending.drain() {
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        }
        self.ctrl.clear();
    }
}
