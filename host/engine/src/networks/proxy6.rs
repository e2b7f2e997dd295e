//! Published TCP ports on the host's IPv6 addresses. dockerd 20.10 publishes
//! `-p 8080:80` on `[::]:8080` too (its docker-proxy, when the host has IPv6), so
//! `[::1]:8080` reaches the container even on an IPv4-only network. berth's NAT is
//! `table ip berth` (IPv4 DNAT: dockerd 20.10 has no IPv6 NAT without experimental
//! ip6tables), so the IPv6 side is a small proxy in berthd: one IPv6-only listener per
//! published TCP port bound to every address, each connection copied to the container's
//! IPv4 address. The listeners follow the recorded port mappings (synced whenever the
//! NAT table is rebuilt, at daemon start included), so they never outlive a mapping.
//! A port served here is listed a second time with HostIp `::` (inspect, `docker port`,
//! `docker ps`), as dockerd 20.10 lists its docker-proxy's IPv6 side; only ports
//! actually bound are. UDP is not proxied on IPv6, so UDP ports are listed once.

use std::collections::HashMap;
use std::net::{Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::model::PortMapping;
use super::Networks;

/// One listener's state shared with its task.
#[derive(Debug)]
struct Listener {
    /// Where it forwards to: changed in place when the port's container changes, so the
    /// port is never unbound and bound again.
    to: Mutex<SocketAddrV4>,
    /// Whether `[::]:port` is bound (what is listed).
    bound: AtomicBool,
}

type Target = Arc<Listener>;

/// Running listeners: host port → (the container address it forwards to, the task).
#[derive(Default)]
pub(crate) struct Proxies(Mutex<HashMap<u16, (Target, JoinHandle<()>)>>);

impl Drop for Proxies {
    fn drop(&mut self) {
        let running = self.0.get_mut().unwrap_or_else(|p| p.into_inner());
        for (_, (_, h)) in running.drain() {
            h.abort();
        }
    }
}

/// `[::]:port`, IPv6 only (the IPv4 side is the NAT table's).
fn listen6(port: u16) -> std::io::Result<TcpListener> {
    let sock = tokio::net::TcpSocket::new_v6()?;
    let on: libc::c_int = 1;
    // SAFETY: setsockopt on the socket's own fd with a c_int that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            &on as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    sock.set_reuseaddr(true)?;
    sock.bind(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0).into())?;
    sock.listen(128)
}

/// Serves `[::]:port` on `first` (bound when the mapping appeared), or binds it here when
/// that failed because a just-stopped listener of the port was not closed yet.
async fn serve(port: u16, target: Target, first: Option<TcpListener>) {
    let mut listener = first;
    for _ in 0..20 {
        if listener.is_some() {
            break;
        }
        match listen6(port) {
            Ok(l) => {
                listener = Some(l);
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => {
                tracing::debug!(port, "not publishing on [::]: {e}");
                return;
            }
        }
    }
    let Some(listener) = listener else {
        tracing::warn!(port, "not publishing on [::]: the port is in use");
        return;
    };
    target.bound.store(true, Ordering::Release);
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            // EMFILE and the like: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let target = *target.to.lock().unwrap();
        tokio::spawn(async move {
            if let Ok(mut out) = TcpStream::connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
            }
        });
    }
}

impl Networks {
    /// Listeners for exactly the recorded TCP mappings on every host address: new ones
    /// started, stale ones (container gone, address changed) stopped. A port that cannot
    /// be bound on IPv6 (no IPv6 on the host, taken by another program) is left to the
    /// IPv4 NAT alone, and tried again at the next sync.
    pub(crate) fn sync_v6_proxies(&self) {
        let want: HashMap<u16, SocketAddrV4> = self
            .state
            .lock()
            .unwrap()
            .ports
            .iter()
            .filter(|p| p.proto == "tcp" && p.host_ip.is_unspecified())
            .map(|p| {
                (
                    p.host_port,
                    SocketAddrV4::new(p.container_ip, p.container_port),
                )
            })
            .collect();
        let mut running = self.proxies.0.lock().unwrap();
        running.retain(|port, (_, h)| {
            let keep = want.contains_key(port);
            if !keep {
                h.abort();
            }
            keep
        });
        for (port, target) in want {
            match running.get(&port) {
                Some((t, _)) => *t.to.lock().unwrap() = target,
                None => {
                    let t: Target = Arc::new(Listener {
                        to: Mutex::new(target),
                        bound: AtomicBool::new(false),
                    });
                    // Bound now, so that the port is listed as soon as `start` returns;
                    // the task retries only a port still held by a closing listener.
                    let first = match listen6(port) {
                        Ok(l) => {
                            t.bound.store(true, Ordering::Release);
                            Some(l)
                        }
                        Err(_) => None,
                    };
                    running.insert(port, (t.clone(), tokio::spawn(serve(port, t, first))));
                }
            }
        }
    }

    /// Whether `m` is also served on `[::]` by a bound listener.
    pub fn published_on_v6(&self, m: &PortMapping) -> bool {
        m.proto == "tcp"
            && m.host_ip.is_unspecified()
            && self
                .proxies
                .0
                .lock()
                .unwrap()
                .get(&m.host_port)
                .is_some_and(|(t, _)| t.bound.load(Ordering::Acquire))
    }
}
