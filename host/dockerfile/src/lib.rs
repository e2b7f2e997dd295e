//! The classic builder's Dockerfile front end: [`dockerfile::parse`] turns the text into
//! stages of instructions, [`shell_lex::Lexer`] expands their arguments.
//!
//! A crate of its own, apart from the engine, because a Dockerfile is untrusted input
//! that is parsed before anything else of a build runs: it is fuzzed (`host/fuzz`)
//! without building the engine and its heavy dependencies.

pub mod dockerfile;
pub mod shell_lex;

/// A Dockerfile the builder refuses, with dockerd's message. Every such error is the
/// client's (the engine answers 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Error(String);

impl Error {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error(msg.into())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
