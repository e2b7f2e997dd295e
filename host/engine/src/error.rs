//! The engine's error type. Each variant maps to one HTTP status in the API layer,
//! so engine code says *what kind* of failure happened and never picks status codes.

/// Engine result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 404: no such container/image/volume/exec.
    #[error("{0}")]
    NotFound(String),
    /// 400: malformed or invalid input.
    #[error("{0}")]
    InvalidArgument(String),
    /// 409: name in use, image in use, container running...
    #[error("{0}")]
    Conflict(String),
    /// 304: the request was a no-op (start a running container, stop a stopped one).
    #[error("{0}")]
    NotModified(String),
    /// 401: registry rejected the credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// 403
    #[error("{0}")]
    Forbidden(String),
    /// 501
    #[error("{0}")]
    NotImplemented(String),
    /// 503: a backend (registry, plugin) is unreachable.
    #[error("{0}")]
    Unavailable(String),
    /// A build step's command failed: the step's exit code becomes the client's.
    #[error("{message}")]
    StepFailed { message: String, code: i64 },
    /// 500
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl Error {
    pub fn not_found(msg: impl Into<String>) -> Self {
        Error::NotFound(msg.into())
    }
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }
    pub fn conflict(msg: impl Into<String>) -> Self {
        Error::Conflict(msg.into())
    }
    /// Docker reports conflicting create options as 400 (invalid parameter).
    pub fn conflict_invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }
    pub fn internal(msg: impl std::fmt::Display) -> Self {
        Error::Internal(anyhow::anyhow!("{msg}"))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Internal(e.into())
    }
}

/// A refused Dockerfile is the client's error.
impl From<berth_dockerfile::Error> for Error {
    fn from(e: berth_dockerfile::Error) -> Self {
        Error::InvalidArgument(e.to_string())
    }
}

/// A refused create body is the client's error.
impl From<berth_container_create::Error> for Error {
    fn from(e: berth_container_create::Error) -> Self {
        Error::InvalidArgument(e.to_string())
    }
}

/// A refused layer tar is the sender's error; failing to write it is ours.
impl From<berth_layer::Error> for Error {
    fn from(e: berth_layer::Error) -> Self {
        match e {
            berth_layer::Error::Invalid(m) => Error::InvalidArgument(m),
            berth_layer::Error::Io(e) => e.into(),
        }
    }
}
