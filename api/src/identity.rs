//! Who is calling: recorded once per connection when it is accepted, and handed to
//! every request on it (authorization plugins see it as dockerd's `User` and
//! `UserAuthNMethod`).
//!
//! - TLS with a verified client certificate: the certificate subject's CN, method
//!   `TLS` (dockerd's authz does the same).
//! - The unix socket: the peer's uid from `SO_PEERCRED`, method `SO_PEERCRED`.
//! - TLS without client certificates: anonymous.

use std::os::fd::AsRawFd;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;

use crate::hijack::ConnFd;

/// The authenticated client of one connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientIdentity {
    /// CN of the client certificate, or the peer uid in decimal; empty if anonymous.
    pub user: String,
    /// `TLS`, `SO_PEERCRED`, or empty.
    pub authn_method: &'static str,
}

impl ClientIdentity {
    pub fn unix_peer(uid: u32) -> Self {
        ClientIdentity {
            user: uid.to_string(),
            authn_method: "SO_PEERCRED",
        }
    }
}

/// What the server records per accepted connection.
#[derive(Debug, Clone)]
pub struct Conn {
    pub fd: ConnFd,
    pub client: ClientIdentity,
}

/// The uid of the process at the other end of a unix socket.
pub fn peer_uid(fd: std::os::fd::RawFd) -> Option<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED writes one ucred of `len` bytes through a valid pointer.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut libc::ucred as *mut libc::c_void,
            &mut len,
        )
    };
    (rc == 0).then_some(cred.uid)
}

impl Connected<IncomingStream<'_, tokio::net::UnixListener>> for Conn {
    fn connect_info(stream: IncomingStream<'_, tokio::net::UnixListener>) -> Self {
        let fd = stream.io().as_raw_fd();
        Conn {
            fd: ConnFd(fd),
            client: peer_uid(fd)
                .map(ClientIdentity::unix_peer)
                .unwrap_or_default(),
        }
    }
}

impl Connected<IncomingStream<'_, crate::tls::TlsListener>> for Conn {
    fn connect_info(stream: IncomingStream<'_, crate::tls::TlsListener>) -> Self {
        let (tcp, session) = stream.io().get_ref();
        // The verifier accepted the chain before the handshake finished, so the
        // first certificate is the client's own.
        let user = session
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(|c| crate::x509_cn::subject_cn(c.as_ref()));
        Conn {
            fd: ConnFd(tcp.as_raw_fd()),
            client: match user {
                Some(cn) => ClientIdentity {
                    user: cn,
                    authn_method: "TLS",
                },
                None => ClientIdentity::default(),
            },
        }
    }
}
