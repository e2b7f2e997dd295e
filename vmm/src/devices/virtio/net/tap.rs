//! TAP device opened through /dev/net/tun.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::{AsRawFd, RawFd};

use crate::error::{Error, Result};

pub struct Tap {
    file: File,
    name: String,
}

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl Tap {
    /// Attaches to (or creates, with CAP_NET_ADMIN) TAP `name`, with a
    /// virtio-net header of `vnet_hdr_len` bytes on every frame.
    pub fn open(name: &str, vnet_hdr_len: i32) -> Result<Self> {
        let err = |e: io::Error| Error::Tap {
            name: name.to_string(),
            err: e,
        };
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "bad interface name",
            )));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(err)?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: valid fd and a properly sized ifreq.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF as _, &mut req) } < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        // SAFETY: valid fd; the argument is a pointer to an int.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ as _, &vnet_hdr_len) } < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        // No checksum/TSO offloads: we do not offer them to the guest.
        // SAFETY: valid fd; the argument is a flag word.
        if unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                libc::TUNSETOFFLOAD as _,
                0 as libc::c_ulong,
            )
        } < 0
        {
            return Err(err(io::Error::last_os_error()));
        }
        Ok(Self {
            file,
            name: name.to_string(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: buf is valid for writes of its length.
        let n = unsafe { libc::read(self.file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    pub fn write_frame(&self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: buf is valid for reads of its length.
        let n = unsafe { libc::write(self.file.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
