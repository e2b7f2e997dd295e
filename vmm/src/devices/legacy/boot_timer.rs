//! Boot-complete signal: the guest writes BOOT_COMPLETE_MAGIC to
//! BOOT_TIMER_ADDR (Firecracker's boot timer address and value).

use std::sync::Arc;

use crate::arch::layout::BOOT_COMPLETE_MAGIC;
use crate::devices::bus::BusDevice;
use crate::state::VmmShared;

pub struct BootTimer {
    shared: Arc<VmmShared>,
}

impl BootTimer {
    pub fn new(shared: Arc<VmmShared>) -> Self {
        Self { shared }
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 && data.first() == Some(&BOOT_COMPLETE_MAGIC) {
            self.shared.mark_boot_complete();
        }
    }
}
