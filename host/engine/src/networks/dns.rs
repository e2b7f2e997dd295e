//! Embedded DNS for user-defined networks: a small responder on each network's gateway
//! address, UDP and TCP port 53 (inside berthd's network namespace, where the bridge
//! lives). It answers A and AAAA queries for the network's containers — name, aliases,
//! full and short id; AAAA records only on an IPv6 network, an empty NOERROR answer
//! otherwise, as dockerd — and relays everything else to the host's resolvers, over the transport the
//! query came on (a resolver retries over TCP when a UDP answer is truncated).
//!
//! Hand-written rather than hickory-server: the whole job is one question in, zero or
//! more A/AAAA records out, plus a byte-for-byte relay; that is ~150 lines with no new
//! dependency tree to build, and nothing to start per container (a network's responder
//! starts with its bridge). Containers point at it through resolv.conf, which plays the
//! part of Docker's 127.0.0.11.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// Names → addresses (IPv4 and, on an IPv6 network, IPv6) on one network.
pub type Lookup = Arc<dyn Fn(&str) -> Vec<IpAddr> + Send + Sync>;

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const RCODE_SERVFAIL: u8 = 2;
/// How long a TCP client may sit between queries, and how long an upstream may take.
const TCP_IDLE: Duration = Duration::from_secs(10);
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Open TCP connections per network; more wait for one to close (RFC 7766 lets a server
/// bound them).
const MAX_TCP_CLIENTS: usize = 64;

/// The question of a query: (lowercase name without the trailing dot, qtype, end offset).
fn question(pkt: &[u8]) -> Option<(String, u16, usize)> {
    if pkt.len() < 12 || u16::from_be_bytes([pkt[4], pkt[5]]) != 1 {
        return None;
    }
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = *pkt.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(pkt.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*pkt.get(i)?, *pkt.get(i + 1)?]);
    // qclass must be there too: the answer copies the question up to its end.
    pkt.get(i + 3)?;
    Some((labels.join("."), qtype, i + 4))
}

/// A response to `query` (question copied up to `qend`) with `answers` as A and AAAA
/// records.
fn response(query: &[u8], qend: usize, answers: &[IpAddr], rcode: u8) -> Vec<u8> {
    let mut r = Vec::with_capacity(qend + answers.len() * 16);
    r.extend_from_slice(&query[..2]);
    // QR, opcode 0, AA, RD copied; RA.
    r.push(0x84 | (query[2] & 0x01));
    r.push(0x80 | rcode);
    r.extend_from_slice(&1u16.to_be_bytes());
    r.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(&query[12..qend]);
    for ip in answers {
        let (rtype, data) = match ip {
            IpAddr::V4(a) => (TYPE_A, a.octets().to_vec()),
            IpAddr::V6(a) => (TYPE_AAAA, a.octets().to_vec()),
        };
        r.extend_from_slice(&[0xc0, 0x0c]);
        r.extend_from_slice(&rtype.to_be_bytes());
        r.extend_from_slice(&1u16.to_be_bytes());
        r.extend_from_slice(&600u32.to_be_bytes());
        r.extend_from_slice(&(data.len() as u16).to_be_bytes());
        r.extend_from_slice(&data);
    }
    r
}

async fn forward_udp(query: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    for up in upstreams {
        let bind: SocketAddr = if up.is_ipv4() {
            "0.0.0.0:0".parse().ok()?
        } else {
            "[::]:0".parse().ok()?
        };
        let Ok(sock) = UdpSocket::bind(bind).await else {
            continue;
        };
        if sock.send_to(query, up).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        if let Ok(Ok(n)) = tokio::time::timeout(UPSTREAM_TIMEOUT, sock.recv(&mut buf)).await {
            buf.truncate(n);
            return Some(buf);
        }
    }
    None
}

/// One length-prefixed message (RFC 1035 4.2.2), or `None` at a clean end of stream.
async fn read_tcp_message(s: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match s.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut msg).await?;
    Ok(Some(msg))
}

async fn write_tcp_message(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(std::io::Error::other)?;
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    s.write_all(&out).await
}

async fn forward_tcp(query: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    for up in upstreams {
        let exchange = async {
            let mut s = TcpStream::connect(up).await?;
            write_tcp_message(&mut s, query).await?;
            read_tcp_message(&mut s).await
        };
        if let Ok(Ok(Some(reply))) = tokio::time::timeout(UPSTREAM_TIMEOUT, exchange).await {
            return Some(reply);
        }
    }
    None
}

/// What to do with a query.
enum Answer {
    /// One of the network's names: this reply.
    Local(Vec<u8>),
    /// Another name: relay it (or SERVFAIL, built with the question's end).
    Relay { qend: usize },
    /// Not a query we can parse: dropped.
    Drop,
}

fn answer(query: &[u8], lookup: &Lookup) -> Answer {
    let Some((name, qtype, qend)) = question(query) else {
        return Answer::Drop;
    };
    let found = lookup(&name);
    if found.is_empty() {
        return Answer::Relay { qend };
    }
    // Known name: A or AAAA records (none on a network without IPv6); other types get
    // an empty NOERROR answer.
    let answers: Vec<IpAddr> = found
        .into_iter()
        .filter(|ip| match ip {
            IpAddr::V4(_) => qtype == TYPE_A,
            IpAddr::V6(_) => qtype == TYPE_AAAA,
        })
        .collect();
    Answer::Local(response(query, qend, &answers, 0))
}

/// Serve DNS on `addr:53`, UDP and TCP, until the task is aborted.
pub async fn serve(
    addr: Ipv4Addr,
    lookup: Lookup,
    upstreams: Vec<SocketAddr>,
) -> std::io::Result<()> {
    let udp = UdpSocket::bind((addr, 53)).await?;
    let tcp = TcpListener::bind((addr, 53)).await?;
    let upstreams = Arc::new(upstreams);
    tokio::select! {
        r = serve_udp(udp, lookup.clone(), upstreams.clone()) => r,
        r = serve_tcp(tcp, lookup, upstreams) => r,
    }
}

async fn serve_udp(
    sock: UdpSocket,
    lookup: Lookup,
    upstreams: Arc<Vec<SocketAddr>>,
) -> std::io::Result<()> {
    let sock = Arc::new(sock);
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, peer) = sock.recv_from(&mut buf).await?;
        let query = buf[..n].to_vec();
        let qend = match answer(&query, &lookup) {
            Answer::Local(reply) => {
                let _ = sock.send_to(&reply, peer).await;
                continue;
            }
            Answer::Drop => continue,
            Answer::Relay { qend } => qend,
        };
        let (sock, upstreams) = (sock.clone(), upstreams.clone());
        tokio::spawn(async move {
            let reply = match forward_udp(&query, &upstreams).await {
                Some(r) => r,
                None => response(&query, qend, &[], RCODE_SERVFAIL),
            };
            let _ = sock.send_to(&reply, peer).await;
        });
    }
}

async fn serve_tcp(
    listener: TcpListener,
    lookup: Lookup,
    upstreams: Arc<Vec<SocketAddr>>,
) -> std::io::Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_TCP_CLIENTS));
    loop {
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .map_err(std::io::Error::other)?;
        let (mut s, _) = listener.accept().await?;
        let (lookup, upstreams) = (lookup.clone(), upstreams.clone());
        tokio::spawn(async move {
            let _permit = permit;
            // Several queries may come on one connection (RFC 7766), answered in order.
            while let Ok(Ok(Some(query))) =
                tokio::time::timeout(TCP_IDLE, read_tcp_message(&mut s)).await
            {
                let reply = match answer(&query, &lookup) {
                    Answer::Local(reply) => reply,
                    Answer::Drop => return,
                    Answer::Relay { qend } => match forward_tcp(&query, &upstreams).await {
                        Some(r) => r,
                        None => response(&query, qend, &[], RCODE_SERVFAIL),
                    },
                };
                if write_tcp_message(&mut s, &reply).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// The host's resolvers as upstreams (berthd's namespace can reach loopback ones too).
pub fn upstreams() -> Vec<SocketAddr> {
    super::etc::host_nameservers()
        .iter()
        .filter_map(|s| s.parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_a_query() {
        // id 0x1234, RD, one question: web.  A IN
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(&[3, b'W', b'e', b'b', 0, 0, 1, 0, 1]);
        let (name, qtype, end) = question(&q).unwrap();
        assert_eq!((name.as_str(), qtype, end), ("web", 1, q.len()));
        let r = response(&q, end, &["10.0.0.2".parse().unwrap()], 0);
        let lookup: Lookup =
            Arc::new(|_| vec!["10.0.0.2".parse().unwrap(), "fd00:30::2".parse().unwrap()]);
        // The same name asked for AAAA: one 16-byte record of type 28.
        let mut q6 = q.clone();
        let n = q6.len();
        q6[n - 3] = 28;
        let Answer::Local(r6) = answer(&q6, &lookup) else {
            panic!("a local name is answered locally")
        };
        assert_eq!(&r6[6..8], &[0, 1]);
        assert_eq!(&r6[r6.len() - 16..r6.len() - 14], &[0xfd, 0x00]);
        assert_eq!(&r6[r6.len() - 26..r6.len() - 24], &[0, 28]);
        // Truncated or hostile packets are ignored, never a panic.
        assert!(question(&q[..q.len() - 1]).is_none());
        assert!(question(&[0u8; 5]).is_none());
        assert_eq!(&r[..2], &[0x12, 0x34]);
        assert_eq!(&r[6..8], &[0, 1]);
        assert_eq!(&r[r.len() - 4..], &[10, 0, 0, 2]);
    }
}
