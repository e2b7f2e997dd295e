//! VMM errors. Every failure maps to a distinct process exit code so the host
//! engine can tell "no KVM" from "bad kernel" without parsing messages.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("KVM is not available ({0}): is /dev/kvm present and accessible?")]
    NoKvm(#[source] kvm_ioctls::Error),
    #[error("KVM ioctl {op} failed: {err}")]
    Kvm {
        op: &'static str,
        #[source]
        err: kvm_ioctls::Error,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("guest memory: {0}")]
    Memory(String),
    #[error("bad kernel image {path}: {reason}")]
    Kernel { path: String, reason: String },
    #[error("initrd {path}: {reason}")]
    Initrd { path: String, reason: String },
    #[error("boot setup: {0}")]
    Boot(String),
    #[error("device {device}: {reason}")]
    Device { device: String, reason: String },
    #[error("TAP device {name}: {err}")]
    Tap {
        name: String,
        #[source]
        err: io::Error,
    },
    #[error("seccomp: {0}")]
    Seccomp(String),
    #[error("jail: {0}")]
    Jail(String),
    #[error("{context}: {err}")]
    Io {
        context: String,
        #[source]
        err: io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Adapter for `map_err` on KVM ioctls.
    pub fn kvm(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
        move |err| Error::Kvm { op, err }
    }

    pub fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let context = context.into();
        move |err| Error::Io { context, err }
    }

    /// Process exit code for this failure (documented in vmm/README.md).
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) => 2,
            Error::NoKvm(_) => 3,
            Error::Kernel { .. } | Error::Initrd { .. } => 4,
            Error::Memory(_) => 5,
            Error::Tap { .. } => 6,
            Error::Device { .. } => 7,
            Error::Seccomp(_) | Error::Jail(_) => 8,
            Error::Kvm { .. } | Error::Boot(_) => 9,
            Error::Io { .. } => 10,
        }
    }
}
