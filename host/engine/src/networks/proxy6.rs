//! Published TCP ports on the host's IPv6 addresses. dockerd 20.10 publishes
//! `-p 8080:80` on `[::]:8080` too (its docker-proxy, when the host has IPv6), so
//! `[::1]:8080` reaches the container even on an IPv4-only network. berth's NAT is
//! `table ip berth` (IPv4 DNAT: dockerd 20.10 has no IPv6 NAT without experimental
//! ip6tables), so the IPv6 side is a small proxy in berthd: one IPv6-only listener per
//! published TCP port bound to every address, each connection copied to the container's
//! IPv4 address. The listeners follow the recorded port mappings (synced whenever the
//! NAT table is rebuilt, at daemon start included), so they never outlive a mapping.
//! UDP is not proxied on IPv6.

use std::collections::HashMap;
use std::net::{Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::Networks;

/// Where one listener forwards to: changed in place when the port's container changes,
/// so the port is never unbound and bound again.
type Target = Arc<Mutex<SocketAddrV4>>;

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

async fn serve(port: u16, target: Target) {
    // A listener of the same port that was just stopped may not be closed yet.
    let mut listener = None;
    for _ in 0..20 {
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
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            // EMFILE and the like: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let target = *target.lock().unwrap();
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
                Some((t, _)) => *t.lock().unwrap() = target,
                None => {
                    let t: Target = Arc::new(Mutex::new(target));
                    running.insert(port, (t.clone(), tokio::spawn(serve(port, t))));
                }
            }
        }
    }
}
