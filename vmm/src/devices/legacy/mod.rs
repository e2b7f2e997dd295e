pub mod boot_timer;
pub mod i8042;
pub mod serial;

pub use boot_timer::BootTimer;
pub use i8042::I8042;
pub use serial::{IrqTrigger, SerialDevice, SerialSink};
