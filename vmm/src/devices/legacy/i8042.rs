//! Minimal i8042 keyboard controller: enough for Linux to probe it, reset
//! the machine (command 0xFE) and receive Ctrl+Alt+Del for a graceful
//! shutdown request. vm-superio's I8042Device only implements the reset
//! command, so this keeps a small keyboard buffer of our own.

use std::collections::VecDeque;

use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::BusDevice;

const OFS_DATA: u64 = 0;
const OFS_STATUS: u64 = 4;

const SB_OUT_DATA_AVAIL: u8 = 0x01;
const SB_I8042_CMD_DATA: u8 = 0x08;
const SB_KBD_ENABLED: u8 = 0x10;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_READ_OUTP: u8 = 0xd0;
const CMD_WRITE_OUTP: u8 = 0xd1;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_RESET_CPU: u8 = 0xfe;

const CB_KBD_INT: u8 = 0x01;
const CB_POST_OK: u8 = 0x04;

const KBD_ACK: u8 = 0xfa;
const KBD_RESET: u8 = 0xff;
const KBD_BUF_SIZE: usize = 16;

pub struct I8042 {
    reset_evt: EventFd,
    irq: EventFd,
    status: u8,
    control: u8,
    outp: u8,
    cmd: u8,
    buf: VecDeque<u8>,
}

impl I8042 {
    pub fn new(reset_evt: EventFd, irq: EventFd) -> Self {
        Self {
            reset_evt,
            irq,
            status: SB_KBD_ENABLED,
            control: CB_POST_OK | CB_KBD_INT,
            outp: 0,
            cmd: 0,
            buf: VecDeque::new(),
        }
    }

    fn push(&mut self, byte: u8) -> bool {
        if self.buf.len() >= KBD_BUF_SIZE {
            return false;
        }
        self.buf.push_back(byte);
        self.status |= SB_OUT_DATA_AVAIL;
        true
    }

    fn raise(&self) {
        if self.control & CB_KBD_INT != 0 {
            let _ = self.irq.write(1);
        }
    }

    /// Queues the Ctrl+Alt+Del scancodes (set 1); the guest kernel turns
    /// them into a reboot, which with `reboot=k` comes back as 0xFE.
    pub fn trigger_ctrl_alt_del(&mut self) -> bool {
        const SEQ: [u8; 8] = [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d];
        if self.buf.len() + SEQ.len() > KBD_BUF_SIZE {
            return false;
        }
        for b in SEQ {
            self.push(b);
        }
        self.raise();
        true
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = match offset {
            OFS_STATUS => self.status,
            OFS_DATA => {
                let v = self.buf.pop_front().unwrap_or(0);
                if self.buf.is_empty() {
                    self.status &= !SB_OUT_DATA_AVAIL;
                } else {
                    self.raise();
                }
                v
            }
            _ => 0,
        };
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = v;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        match offset {
            OFS_STATUS => {
                self.status |= SB_I8042_CMD_DATA;
                self.cmd = v;
                match v {
                    CMD_READ_CTR => {
                        let c = self.control;
                        self.push(c);
                    }
                    CMD_READ_OUTP => {
                        let o = self.outp;
                        self.push(o);
                    }
                    CMD_SELF_TEST => {
                        self.push(0x55);
                    }
                    CMD_KBD_TEST => {
                        self.push(0x00);
                    }
                    CMD_KBD_DISABLE => self.status &= !SB_KBD_ENABLED,
                    CMD_KBD_ENABLE => self.status |= SB_KBD_ENABLED,
                    CMD_RESET_CPU => {
                        tracing::info!("guest requested reset through the i8042");
                        let _ = self.reset_evt.write(1);
                    }
                    _ => {}
                }
            }
            OFS_DATA => {
                self.status &= !SB_I8042_CMD_DATA;
                match std::mem::take(&mut self.cmd) {
                    CMD_WRITE_CTR => self.control = v,
                    CMD_WRITE_OUTP => self.outp = v,
                    _ => {
                        // A byte for the keyboard itself: acknowledge it.
                        self.push(KBD_ACK);
                        if v == KBD_RESET {
                            self.push(0xaa);
                        }
                        self.raise();
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> (I8042, EventFd, EventFd) {
        let reset = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        (
            I8042::new(reset.try_clone().unwrap(), irq.try_clone().unwrap()),
            reset,
            irq,
        )
    }

    fn rd(d: &mut I8042, off: u64) -> u8 {
        let mut b = [0u8];
        d.read(off, &mut b);
        b[0]
    }

    #[test]
    fn reset_command_signals() {
        let (mut d, reset, _) = dev();
        assert!(reset.read().is_err(), "no reset yet");
        d.write(OFS_STATUS, &[CMD_RESET_CPU]);
        assert_eq!(reset.read().unwrap(), 1);
    }

    #[test]
    fn control_byte_self_test_and_cad() {
        let (mut d, _, irq) = dev();
        d.write(OFS_STATUS, &[CMD_SELF_TEST]);
        assert_eq!(rd(&mut d, OFS_STATUS) & SB_OUT_DATA_AVAIL, 1);
        assert_eq!(rd(&mut d, OFS_DATA), 0x55);
        assert_eq!(rd(&mut d, OFS_STATUS) & SB_OUT_DATA_AVAIL, 0);
        d.write(OFS_STATUS, &[CMD_WRITE_CTR]);
        d.write(OFS_DATA, &[0x47]);
        d.write(OFS_STATUS, &[CMD_READ_CTR]);
        assert_eq!(rd(&mut d, OFS_DATA), 0x47);
        assert!(d.trigger_ctrl_alt_del());
        assert!(irq.read().unwrap() >= 1);
        let seq: Vec<u8> = (0..8).map(|_| rd(&mut d, OFS_DATA)).collect();
        assert_eq!(seq, [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d]);
        d.write(OFS_DATA, &[KBD_RESET]);
        assert_eq!(
            (rd(&mut d, OFS_DATA), rd(&mut d, OFS_DATA)),
            (KBD_ACK, 0xaa)
        );
    }
}
