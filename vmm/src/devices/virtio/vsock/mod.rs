//! virtio-vsock with Firecracker's hybrid design: guest AF_VSOCK streams
//! map to unix sockets on the host. The host connects to `uds_path` and
//! sends `CONNECT <port>\n` (answered with `OK <host_port>\n`); guest
//! connections to the host (CID 2) port P go to `<uds_path>_P`.

mod device;
mod muxer;
pub mod packet;

pub use device::{Vsock, VSOCK_QUEUE_SIZE};
pub use muxer::Muxer;

#[cfg(test)]
mod tests;
