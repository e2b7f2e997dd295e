//! berth-vmm: a Firecracker-style microVM monitor on rust-vmm crates.
//!
//! One process per microVM: [`config::VmConfig`] describes it, [`builder`]
//! turns it into a [`vmm::MicroVm`], and [`control`] is the host's socket
//! protocol. See vmm/README.md.

pub mod arch;
pub mod builder;
pub mod config;
pub mod control;
pub mod devices;
pub mod error;
pub mod fuzz;
pub mod jail;
pub mod memory;
pub mod seccomp;
pub mod state;
pub mod vmm;
pub mod vstate;

pub use config::{CpuFeatures, VmConfig};
pub use error::{Error, Result};
pub use state::ExitReason;
pub use vmm::MicroVm;
