//! A `POST /containers/create` body as berth reads it: [`body::decode`] turns the JSON
//! into bollard's `ContainerCreateBody` (with berth's own isolation values taken out
//! first), [`validate`] applies Docker's create-time checks with Docker's wording, and
//! [`seccomp_profile`] reads a `--security-opt seccomp=` profile.
//!
//! A crate of its own, apart from the engine, because the body is untrusted input
//! checked before anything is created: it is fuzzed (`host/fuzz`) without building the
//! engine and its heavy dependencies.

pub mod body;
pub mod seccomp_profile;
pub mod validate;

/// A refused create body, with Docker's message. Every such error is the client's (the
/// API answers 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Error(String);

impl Error {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error(msg.into())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
