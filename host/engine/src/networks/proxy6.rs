//! Published ports on the host's IPv6 addresses. dockerd 20.10 publishes `-p 8080:80`
//! on `[::]:8080` too (its docker-proxy, when the host has IPv6), so `[::1]:8080` reaches
//! the container even on an IPv4-only network. berth's NAT is `table ip berth` (IPv4
//! DNAT: dockerd 20.10 has no IPv6 NAT without experimental ip6tables), so the IPv6 side
//! is a small proxy in berthd: one IPv6-only socket per published port bound to every
//! address, relaying to the container's IPv4 address.
//! - TCP: each connection is copied both ways.
//! - UDP: as docker-proxy does, each client gets its own upstream socket, so the
//!   container's replies find their way back; a client's relay ends after
//!   [`UDP_IDLE`] without replies, and at most [`UDP_MAX_CLIENTS`] are relayed at once.
//!
//! The sockets follow the recorded port mappings (synced whenever the NAT table is
//! rebuilt, at daemon start included), so they never outlive a mapping. A port served
//! here is listed a second time with HostIp `::` (inspect, `docker port`, `docker ps`), as
//! dockerd 20.10 lists its docker-proxy's IPv6 side; only ports actually bound are.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};

use super::model::PortMapping;
use super::Networks;

/// docker-proxy's UDP "connection" timeout.
const UDP_IDLE: Duration = Duration::from_secs(90);
/// Clients relayed at once per UDP port; datagrams from more are dropped.
const UDP_MAX_CLIENTS: usize = 1024;

/// `tcp` or `udp` and the host port: one socket each.
type Key = (bool, u16);

fn key(m: &PortMapping) -> Key {
    (m.proto == "udp", m.host_port)
}

/// One socket's state shared with its task.
#[derive(Debug)]
struct Listener {
    /// Where it relays to: changed in place when the port's container changes, so the
    /// port is never unbound and bound again.
    to: Mutex<SocketAddrV4>,
    /// Whether `[::]:port` is bound (what is listed).
    bound: AtomicBool,
}

type Target = Arc<Listener>;

/// Running sockets: (udp, host port) → (where it relays to, the task).
#[derive(Default)]
pub(crate) struct Proxies(Mutex<HashMap<Key, (Target, JoinHandle<()>)>>);

impl Drop for Proxies {
    fn drop(&mut self) {
        let running = self.0.get_mut().unwrap_or_else(|p| p.into_inner());
        for (_, (_, h)) in running.drain() {
            h.abort();
        }
    }
}

/// A bound `[::]:port` of either protocol.
enum Bound {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

/// `[::]:port`, IPv6 only (the IPv4 side is the NAT table's).
fn bind6((udp, port): Key) -> io::Result<Bound> {
    let (ty, proto) = if udp {
        (Type::DGRAM, Protocol::UDP)
    } else {
        (Type::STREAM, Protocol::TCP)
    };
    let sock = Socket::new(Domain::IPV6, ty, Some(proto))?;
    sock.set_only_v6(true)?;
    sock.set_nonblocking(true)?;
    if !udp {
        sock.set_reuse_address(true)?;
    }
    sock.bind(&SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0).into())?;
    if udp {
        return Ok(Bound::Udp(UdpSocket::from_std(sock.into())?));
    }
    sock.listen(128)?;
    Ok(Bound::Tcp(TcpListener::from_std(sock.into())?))
}

/// Serves `[::]:port` on `first` (bound when the mapping appeared), or binds it here when
/// that failed because a just-stopped socket of the port was not closed yet.
async fn serve(key: Key, target: Target, first: Option<Bound>) {
    let port = key.1;
    let mut bound = first;
    for _ in 0..20 {
        if bound.is_some() {
            break;
        }
        match bind6(key) {
            Ok(b) => bound = Some(b),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => {
                tracing::debug!(port, "not publishing on [::]: {e}");
                return;
            }
        }
    }
    let Some(bound) = bound else {
        tracing::warn!(port, "not publishing on [::]: the port is in use");
        return;
    };
    target.bound.store(true, Ordering::Release);
    match bound {
        Bound::Tcp(l) => serve_tcp(l, target).await,
        Bound::Udp(s) => serve_udp(s, target).await,
    }
}

async fn serve_tcp(listener: TcpListener, target: Target) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            // EMFILE and the like: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let to = *target.to.lock().unwrap();
        tokio::spawn(async move {
            if let Ok(mut out) = TcpStream::connect(to).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
            }
        });
    }
}

/// The relays of one UDP port's clients. Owned by the port's task, so stopping it (the
/// mapping went) stops them too and frees the port at once.
async fn serve_udp(sock: UdpSocket, target: Target) {
    let sock = Arc::new(sock);
    let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut relays: JoinSet<SocketAddr> = JoinSet::new();
    let mut buf = vec![0u8; 65536];
    loop {
        tokio::select! {
            got = sock.recv_from(&mut buf) => {
                let Ok((n, client)) = got else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let up = match upstreams.get(&client) {
                    Some(up) => up.clone(),
                    None if upstreams.len() >= UDP_MAX_CLIENTS => continue,
                    None => {
                        let to = *target.to.lock().unwrap();
                        let Ok(up) = upstream(to).await else {
                            continue;
                        };
                        upstreams.insert(client, up.clone());
                        relays.spawn(replies(up.clone(), sock.clone(), client));
                        up
                    }
                };
                let _ = up.send(&buf[..n]).await;
            }
            Some(Ok(client)) = relays.join_next(), if !relays.is_empty() => {
                upstreams.remove(&client);
            }
        }
    }
}

/// A socket of the host's own that talks to the container for one client.
async fn upstream(to: SocketAddrV4) -> io::Result<Arc<UdpSocket>> {
    let up = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await?;
    up.connect(to).await?;
    Ok(Arc::new(up))
}

/// The container's replies to `client`, until it has been silent for [`UDP_IDLE`].
async fn replies(up: Arc<UdpSocket>, down: Arc<UdpSocket>, client: SocketAddr) -> SocketAddr {
    let mut buf = vec![0u8; 65536];
    while let Ok(Ok(n)) = tokio::time::timeout(UDP_IDLE, up.recv(&mut buf)).await {
        let _ = down.send_to(&buf[..n], client).await;
    }
    client
}

impl Networks {
    /// Sockets for exactly the recorded mappings on every host address: new ones started,
    /// stale ones (container gone, address changed) stopped. A port that cannot be bound
    /// on IPv6 (no IPv6 on the host, taken by another program) is left to the IPv4 NAT
    /// alone, and tried again at the next sync.
    pub(crate) fn sync_v6_proxies(&self) {
        let want: HashMap<Key, SocketAddrV4> = self
            .state
            .lock()
            .unwrap()
            .ports
            .iter()
            .filter(|p| p.host_ip.is_unspecified())
            .map(|p| (key(p), SocketAddrV4::new(p.container_ip, p.container_port)))
            .collect();
        let mut running = self.proxies.0.lock().unwrap();
        running.retain(|k, (_, h)| {
            let keep = want.contains_key(k);
            if !keep {
                h.abort();
            }
            keep
        });
        for (k, to) in want {
            match running.get(&k) {
                Some((t, _)) => *t.to.lock().unwrap() = to,
                None => {
                    let t: Target = Arc::new(Listener {
                        to: Mutex::new(to),
                        bound: AtomicBool::new(false),
                    });
                    // Bound now, so that the port is listed as soon as `start` returns;
                    // the task retries only a port still held by a closing socket.
                    let first = bind6(k).ok();
                    t.bound.store(first.is_some(), Ordering::Release);
                    running.insert(k, (t.clone(), tokio::spawn(serve(k, t, first))));
                }
            }
        }
    }

    /// Whether `m` is also served on `[::]` by a bound socket.
    pub fn published_on_v6(&self, m: &PortMapping) -> bool {
        m.host_ip.is_unspecified()
            && self
                .proxies
                .0
                .lock()
                .unwrap()
                .get(&key(m))
                .is_some_and(|(t, _)| t.bound.load(Ordering::Acquire))
    }
}
