//! Embedded DNS for user-defined networks: a small UDP responder on each network's gateway
//! address (inside berthd's network namespace, where the bridge lives). It answers A
//! queries for the network's containers — name, aliases, full and short id — and relays
//! everything else to the host's resolvers.
//!
//! Hand-written rather than hickory-server: the whole job is one question in, zero or
//! more A records out, plus a byte-for-byte relay; that is ~150 lines with no new
//! dependency tree to build, and nothing to start per container (a network's responder
//! starts with its bridge). Containers point at it through resolv.conf, which plays the
//! part of Docker's 127.0.0.11.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;

/// Names → addresses on one network.
pub type Lookup = Arc<dyn Fn(&str) -> Vec<Ipv4Addr> + Send + Sync>;

const TYPE_A: u16 = 1;
const RCODE_SERVFAIL: u8 = 2;

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

/// A response to `query` (question copied up to `qend`) with `answers` as A records.
fn response(query: &[u8], qend: usize, answers: &[Ipv4Addr], rcode: u8) -> Vec<u8> {
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
        r.extend_from_slice(&[0xc0, 0x0c]);
        r.extend_from_slice(&TYPE_A.to_be_bytes());
        r.extend_from_slice(&1u16.to_be_bytes());
        r.extend_from_slice(&600u32.to_be_bytes());
        r.extend_from_slice(&4u16.to_be_bytes());
        r.extend_from_slice(&ip.octets());
    }
    r
}

async fn forward(query: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
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
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf)).await {
            buf.truncate(n);
            return Some(buf);
        }
    }
    None
}

/// Serve DNS on `addr:53` until the task is aborted.
pub async fn serve(
    addr: Ipv4Addr,
    lookup: Lookup,
    upstreams: Vec<SocketAddr>,
) -> std::io::Result<()> {
    let sock = Arc::new(UdpSocket::bind((addr, 53)).await?);
    let upstreams = Arc::new(upstreams);
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, peer) = sock.recv_from(&mut buf).await?;
        let query = buf[..n].to_vec();
        let Some((name, qtype, qend)) = question(&query) else {
            continue;
        };
        let found = lookup(&name);
        if !found.is_empty() {
            // Known name: A records; other types get an empty NOERROR answer.
            let answers = if qtype == TYPE_A { found } else { Vec::new() };
            let _ = sock
                .send_to(&response(&query, qend, &answers, 0), peer)
                .await;
            continue;
        }
        let (sock, upstreams) = (sock.clone(), upstreams.clone());
        tokio::spawn(async move {
            let reply = match forward(&query, &upstreams).await {
                Some(r) => r,
                None => response(&query, qend, &[], RCODE_SERVFAIL),
            };
            let _ = sock.send_to(&reply, peer).await;
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
        // Truncated or hostile packets are ignored, never a panic.
        assert!(question(&q[..q.len() - 1]).is_none());
        assert!(question(&[0u8; 5]).is_none());
        assert_eq!(&r[..2], &[0x12, 0x34]);
        assert_eq!(&r[6..8], &[0, 1]);
        assert_eq!(&r[r.len() - 4..], &[10, 0, 0, 2]);
    }
}
