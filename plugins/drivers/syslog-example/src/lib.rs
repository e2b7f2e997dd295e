//! Worked example: a log driver that ships each line as an RFC 5424 message,
//! newline-framed, to `--log-opt syslog-address=tcp://IP:PORT`. The host only
//! lets it connect to addresses listed under `[grants] network` in its manifest.

use std::cell::RefCell;
use std::io::Write;
use std::net::SocketAddrV4;

use wasi::io::streams::{InputStream, OutputStream};
use wasi::sockets::network::{ErrorCode, IpAddressFamily, IpSocketAddress, Ipv4SocketAddress};
use wasi::sockets::tcp::TcpSocket;
use wasi::sockets::{instance_network, tcp_create_socket};

wit_bindgen::generate!({
    path: "../../wit/0.1.0",
    world: "log-plugin",
});

use exports::berth::driver::lifecycle;
use exports::berth::driver::log_driver::{
    self, ContainerInfo, DriverError, LogEntry, LogReader, LogSession, Options, ReadConfig, Source,
};

struct Plugin;

impl lifecycle::Guest for Plugin {
    fn init(_config: Options) -> Result<(), DriverError> {
        Ok(())
    }
}

struct Conf {
    addr: SocketAddrV4,
    tag: String,
}

fn parse(opts: &Options, name: &str) -> Result<Conf, DriverError> {
    let mut addr = None;
    let mut tag = name.trim_start_matches('/').to_string();
    for (k, v) in opts {
        match k.as_str() {
            "syslog-address" => {
                let hostport = v
                    .strip_prefix("tcp://")
                    .ok_or_else(|| DriverError::Invalid("syslog-address must be tcp://IP:PORT".into()))?;
                addr = Some(hostport.parse().map_err(|_| DriverError::Invalid(format!("bad syslog-address {v}")))?);
            }
            "tag" => tag = v.clone(),
            _ => return Err(DriverError::Invalid(format!("unknown log opt '{k}' for syslog-example log driver"))),
        }
    }
    let addr = addr.ok_or_else(|| DriverError::Invalid("syslog-address is required".into()))?;
    Ok(Conf { addr, tag })
}

/// An open TCP connection. Field order matters: streams drop before their socket.
struct Conn {
    out: OutputStream,
    _input: InputStream,
    _sock: TcpSocket,
}

/// Connect through wasi:sockets; the host's grant check decides whether this succeeds.
fn connect(addr: SocketAddrV4) -> Result<Conn, String> {
    let net = instance_network::instance_network();
    let sock = tcp_create_socket::create_tcp_socket(IpAddressFamily::Ipv4).map_err(|e| format!("{e:?}"))?;
    let o = addr.ip().octets();
    let remote = IpSocketAddress::Ipv4(Ipv4SocketAddress { port: addr.port(), address: (o[0], o[1], o[2], o[3]) });
    sock.start_connect(&net, remote).map_err(|e| format!("{e:?}"))?;
    let ready = sock.subscribe();
    let (input, out) = loop {
        match sock.finish_connect() {
            Ok(streams) => break streams,
            Err(ErrorCode::WouldBlock) => ready.block(),
            Err(e) => return Err(format!("{e:?}")),
        }
    };
    drop(ready);
    Ok(Conn { out, _input: input, _sock: sock })
}

impl Conn {
    fn send(&self, mut buf: &[u8]) -> Result<(), DriverError> {
        while !buf.is_empty() {
            let n = buf.len().min(4096);
            self.out
                .blocking_write_and_flush(&buf[..n])
                .map_err(|e| DriverError::Failed(format!("syslog write: {e:?}")))?;
            buf = &buf[n..];
        }
        Ok(())
    }
}

struct Session {
    conn: RefCell<Conn>,
    tag: String,
}

impl log_driver::GuestLogSession for Session {
    fn write(&self, entries: Vec<LogEntry>) -> Result<(), DriverError> {
        let mut buf = Vec::new();
        for e in entries {
            // PRI 14 = user.info, 11 = user.err; timestamp left as NILVALUE for brevity.
            let pri = if matches!(e.source, Source::Stderr) { 11 } else { 14 };
            let _ = write!(buf, "<{pri}>1 - - {} - - - ", self.tag);
            buf.extend_from_slice(&e.line);
            buf.push(b'\n');
        }
        self.conn.borrow().send(&buf)
    }
    fn close(&self) -> Result<(), DriverError> {
        Ok(())
    }
}

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
        parse(&opts, "").map(|_| ())
    }
    fn start_logging(info: ContainerInfo) -> Result<LogSession, DriverError> {
        let conf = parse(&info.log_opts, &info.name)?;
        let conn = connect(conf.addr).map_err(|e| DriverError::Denied(format!("connect {}: {e}", conf.addr)))?;
        Ok(LogSession::new(Session { conn: RefCell::new(conn), tag: conf.tag }))
    }
    fn read_logs(_info: ContainerInfo, _config: ReadConfig) -> Result<LogReader, DriverError> {
        Err(DriverError::Unsupported("syslog-example cannot read logs back".into()))
    }
    fn remove_logs(_container_id: String) -> Result<(), DriverError> {
        Ok(())
    }
}

export!(Plugin);
