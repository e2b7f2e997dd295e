//! Address-range dispatch for port I/O and MMIO exits.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device on the port or MMIO bus. `offset` is relative to the range base.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Clone, Default)]
pub struct Bus {
    ranges: BTreeMap<u64, (u64, Arc<Mutex<dyn BusDevice>>)>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `dev` at [base, base+len). Overlaps are refused.
    pub fn insert(
        &mut self,
        dev: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), String> {
        if len == 0 {
            return Err("empty bus range".into());
        }
        let end = base.checked_add(len).ok_or("bus range overflows")?;
        if let Some((b, (l, _))) = self.ranges.range(..end).next_back() {
            if b + l > base {
                return Err(format!(
                    "bus range {base:#x}+{len:#x} overlaps {b:#x}+{l:#x}"
                ));
            }
        }
        self.ranges.insert(base, (len, dev));
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, &Arc<Mutex<dyn BusDevice>>)> {
        let (base, (len, dev)) = self.ranges.range(..=addr).next_back()?;
        (addr - base < *len).then_some((addr - base, dev))
    }

    /// Returns false when nothing is mapped at `addr` (reads then see all ones).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((off, dev)) => {
                dev.lock().unwrap().read(off, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((off, dev)) => {
                dev.lock().unwrap().write(off, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<u8>);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0.extend_from_slice(data);
        }
    }

    #[test]
    fn dispatch_and_overlap() {
        let mut bus = Bus::new();
        let dev = Arc::new(Mutex::new(Echo(vec![])));
        bus.insert(dev.clone(), 0x10, 8).unwrap();
        assert!(bus.insert(dev.clone(), 0x17, 2).is_err());
        assert!(bus.insert(dev.clone(), 0x8, 9).is_err());
        bus.insert(dev.clone(), 0x18, 1).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x13, &mut b));
        assert_eq!(b[0], 3);
        assert!(!bus.read(0x19, &mut b));
        assert_eq!(b[0], 0xff);
        assert!(bus.write(0x10, &[7]));
        assert_eq!(dev.lock().unwrap().0, vec![7]);
    }
}
