//! Log drivers: sessions with a bounded buffer per container, and `docker logs` readers.
//!
//! Delivery modes follow Docker's `--log-opt mode=`:
//! - `blocking` (the default): nothing is dropped for lack of room. The buffer holds
//!   about `max-buffer-size` bytes; past that, [`LogSession::writable`] stays pending
//!   until the plugin has taken a batch, so the engine stops reading the container's
//!   output and the container's own writes block, as with Docker.
//! - `non-blocking`: the buffer is a ring of `max-buffer-size` bytes (default 1 MB,
//!   Docker's size); when it is full, *new* entries are dropped and counted, and
//!   `writable` is always ready.
//!
//! In both modes entries in a batch whose `write` call traps, times out or returns an
//! error are dropped and counted (a poison batch is not replayed). While the plugin
//! restarts, entries keep buffering.
//!
//! The module: the record types are in [`types`]; [`buffer`] holds a container's
//! entries and counters, [`session`] is the engine's handle on it (send, wait for
//! room, close), [`driver`] is the engine's handle on the plugin (start sessions,
//! read logs), [`runner`] is the plugin worker's side (pumping batches into the
//! plugin, serving readers).

pub(crate) mod buffer;
mod driver;
mod runner;
mod session;
mod types;

pub use buffer::{LogMode, SessionShared};
pub use driver::{LogDriverHandle, LogReader};
pub use session::LogSession;
pub use types::{ContainerLogInfo, LogEntry, LogSource, LogStats, PartialMeta, ReadConfig};
