//! Error types the daemon sees.

use std::path::PathBuf;

/// Error from one plugin call. `kind()` tells the API layer which HTTP status to use.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PluginError {
    /// The object does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// The object exists already (409).
    #[error("{0}")]
    AlreadyExists(String),
    /// Bad request, e.g. an unknown `--log-opt` (400).
    #[error("{0}")]
    Invalid(String),
    /// The object is in use (409).
    #[error("{0}")]
    Busy(String),
    /// The plugin or the host refused the operation (403).
    #[error("{0}")]
    Denied(String),
    /// The plugin does not implement this (501).
    #[error("{0}")]
    Unsupported(String),
    /// The plugin reported a failure (500).
    #[error("{0}")]
    Failed(String),
    /// The plugin overran its per-call deadline; its instance was dropped (503).
    #[error("plugin {plugin}: call timed out after {millis} ms; instance restarted")]
    Timeout { plugin: String, millis: u64 },
    /// The plugin trapped (panic, out of memory, ...); its instance was dropped (500).
    #[error("plugin {plugin} crashed: {message}")]
    Trapped { plugin: String, message: String },
    /// The plugin answered with something the host refuses to accept (500).
    #[error("plugin {plugin} returned an invalid reply: {message}")]
    BadReply { plugin: String, message: String },
    /// The plugin is restarting, its circuit breaker is open, or its queue is full (503).
    #[error("plugin {plugin} unavailable: {message}")]
    Unavailable { plugin: String, message: String },
}

/// Coarse classes for mapping to HTTP statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    Conflict,
    Invalid,
    Denied,
    Unsupported,
    Internal,
    Unavailable,
}

impl PluginError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            PluginError::NotFound(_) => ErrorKind::NotFound,
            PluginError::AlreadyExists(_) | PluginError::Busy(_) => ErrorKind::Conflict,
            PluginError::Invalid(_) => ErrorKind::Invalid,
            PluginError::Denied(_) => ErrorKind::Denied,
            PluginError::Unsupported(_) => ErrorKind::Unsupported,
            PluginError::Failed(_) | PluginError::Trapped { .. } | PluginError::BadReply { .. } => {
                ErrorKind::Internal
            }
            PluginError::Timeout { .. } | PluginError::Unavailable { .. } => ErrorKind::Unavailable,
        }
    }

    /// HTTP status the Docker API should answer with.
    pub fn http_status(&self) -> u16 {
        match self.kind() {
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict => 409,
            ErrorKind::Invalid => 400,
            ErrorKind::Denied => 403,
            ErrorKind::Unsupported => 501,
            ErrorKind::Internal => 500,
            ErrorKind::Unavailable => 503,
        }
    }

    pub(crate) fn bad_reply(plugin: &str, message: impl Into<String>) -> Self {
        PluginError::BadReply {
            plugin: plugin.to_string(),
            message: message.into(),
        }
    }

    pub(crate) fn unavailable(plugin: &str, message: impl Into<String>) -> Self {
        PluginError::Unavailable {
            plugin: plugin.to_string(),
            message: message.into(),
        }
    }
}

impl From<crate::bindings::v0_1_0::log::berth::driver::types::DriverError> for PluginError {
    fn from(e: crate::bindings::v0_1_0::log::berth::driver::types::DriverError) -> Self {
        use crate::bindings::v0_1_0::log::berth::driver::types::DriverError as D;
        // Plugin-supplied text is bounded before it reaches logs or API replies.
        let cut = |s: String| crate::validate::truncate(s, 4096);
        match e {
            D::NotFound(m) => PluginError::NotFound(cut(m)),
            D::AlreadyExists(m) => PluginError::AlreadyExists(cut(m)),
            D::Invalid(m) => PluginError::Invalid(cut(m)),
            D::Denied(m) => PluginError::Denied(cut(m)),
            D::Unsupported(m) => PluginError::Unsupported(cut(m)),
            D::Busy(m) => PluginError::Busy(cut(m)),
            D::Failed(m) => PluginError::Failed(cut(m)),
        }
    }
}

/// Why a plugin directory was not loaded.
#[derive(Debug, thiserror::Error)]
#[error("plugin {}: {message}", path.display())]
pub struct LoadError {
    pub path: PathBuf,
    pub message: String,
}

impl LoadError {
    pub(crate) fn new(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        LoadError {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Errors creating the host itself.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("creating {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("wasmtime engine: {0}")]
    Engine(String),
}
