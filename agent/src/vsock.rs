//! AF_VSOCK listener for the guest agent (tokio has no vsock support of its own).
use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    pin::Pin,
    task::{ready, Context, Poll},
};

use tokio::io::{unix::AsyncFd, AsyncRead, AsyncWrite, ReadBuf};

const VMADDR_CID_ANY: u32 = u32::MAX;

fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    crate::stdio::set_nonblocking(&fd)?;
    // SAFETY: the AsyncFd owns the fd for its whole registration.
    unsafe { AsyncFd::register(fd) }.map_err(|e| io::Error::other(e.to_string()))
}

pub struct VsockListener {
    fd: AsyncFd<OwnedFd>,
}

impl VsockListener {
    /// Listens on `port` for any CID (the host connects to the guest's CID).
    pub fn bind(port: u32) -> io::Result<Self> {
        // SAFETY: socket/bind/listen with a zeroed, filled-in sockaddr_vm.
        unsafe {
            let fd = libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let fd = OwnedFd::from_raw_fd(fd);
            let mut addr: libc::sockaddr_vm = std::mem::zeroed();
            addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
            addr.svm_port = port;
            addr.svm_cid = VMADDR_CID_ANY;
            let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
            if libc::bind(
                fd.as_raw_fd(),
                &addr as *const _ as *const libc::sockaddr,
                len,
            ) < 0
            {
                return Err(io::Error::last_os_error());
            }
            if libc::listen(fd.as_raw_fd(), 16) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(VsockListener { fd: register(fd)? })
        }
    }

    pub async fn accept(&self) -> io::Result<VsockStream> {
        loop {
            let mut guard = self.fd.readable().await?;
            let res = guard.try_io(|f| {
                // SAFETY: accept4 without an address buffer.
                let c = unsafe {
                    libc::accept4(
                        f.as_raw_fd(),
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        libc::SOCK_CLOEXEC,
                    )
                };
                if c < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    // SAFETY: accept4 returned a new fd we own.
                    Ok(unsafe { OwnedFd::from_raw_fd(c) })
                }
            });
            match res {
                Ok(Ok(fd)) => return Ok(VsockStream { fd: register(fd)? }),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

pub struct VsockStream {
    fd: AsyncFd<OwnedFd>,
}

/// The host's CID: every connection the agent serves comes from the VMM's host side.
pub const VMADDR_CID_HOST: u32 = 2;

impl VsockStream {
    /// The CID of the connecting side.
    pub fn peer_cid(&self) -> io::Result<u32> {
        // SAFETY: getpeername into a zeroed sockaddr_vm of the length passed.
        unsafe {
            let mut addr: libc::sockaddr_vm = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
            if libc::getpeername(
                self.fd.as_raw_fd(),
                &mut addr as *mut _ as *mut libc::sockaddr,
                &mut len,
            ) < 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(addr.svm_cid)
        }
    }

    /// The socket as a blocking file, for a thread that streams with `std::io`.
    pub fn into_blocking(self) -> io::Result<std::fs::File> {
        let fd = self.fd.into_inner();
        // SAFETY: F_GETFL/F_SETFL on an fd we own.
        unsafe {
            let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
            if flags < 0
                || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) < 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(std::fs::File::from(fd))
    }
}

impl AsyncRead for VsockStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let res = guard.try_io(|f| {
                // SAFETY: reading into the initialized unfilled part of `buf`.
                let n = unsafe {
                    libc::read(f.as_raw_fd(), unfilled.as_mut_ptr().cast(), unfilled.len())
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match res {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for VsockStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            let res = guard.try_io(|f| {
                // SAFETY: writing from a live slice; MSG_NOSIGNAL avoids SIGPIPE.
                let n = unsafe {
                    libc::send(
                        f.as_raw_fd(),
                        data.as_ptr().cast(),
                        data.len(),
                        libc::MSG_NOSIGNAL,
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match res {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // SAFETY: shutdown of our own socket.
        if unsafe { libc::shutdown(self.fd.as_raw_fd(), libc::SHUT_WR) } < 0 {
            return Poll::Ready(Err(io::Error::last_os_error()));
        }
        Poll::Ready(Ok(()))
    }
}
