//! Helpers for device tests on virtio-queue's mock split queues.

use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use vm_memory::{GuestAddress, GuestMemoryMmap};

pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;

pub fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
}

/// A descriptor (next/NEXT are filled by the mock's build_desc_chain).
pub fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
}

/// Same, with explicit next index for add_desc_chains.
pub fn desc_next(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}
