//! virtio-net with a TAP backend (no offloads: the guest sends and receives
//! plain Ethernet frames with a 12-byte virtio-net header).

mod device;
mod tap;

pub use device::{
    parse_mac, read_tx_frame, write_rx_frame, Net, MAX_FRAME, NET_HDR_LEN, NET_QUEUE_SIZE,
};
pub use tap::Tap;

#[cfg(test)]
mod tests;
