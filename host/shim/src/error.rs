//! Errors of the task service, with the ttrpc status codes containerd maps to its
//! `errdefs` (NotFound, FailedPrecondition, ...).

use containerd_shim_protos::ttrpc::{self, Code};

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Precondition(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("{0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, ShimError>;

impl ShimError {
    pub fn internal(e: impl std::fmt::Display) -> Self {
        ShimError::Internal(e.to_string())
    }
}

impl From<berth_agent_protocol::ProtocolError> for ShimError {
    fn from(e: berth_agent_protocol::ProtocolError) -> Self {
        use berth_agent_protocol::ErrorKind;
        match e.remote().map(|r| r.kind) {
            Some(ErrorKind::NotFound) => ShimError::NotFound(e.to_string()),
            Some(ErrorKind::Conflict) => ShimError::Precondition(e.to_string()),
            Some(ErrorKind::InvalidArgument) => ShimError::Invalid(e.to_string()),
            _ => ShimError::Internal(e.to_string()),
        }
    }
}

impl From<ShimError> for ttrpc::Error {
    fn from(e: ShimError) -> Self {
        let code = match &e {
            ShimError::NotFound(_) => Code::NOT_FOUND,
            ShimError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            ShimError::Precondition(_) => Code::FAILED_PRECONDITION,
            ShimError::Invalid(_) => Code::INVALID_ARGUMENT,
            ShimError::Unimplemented(_) => Code::UNIMPLEMENTED,
            ShimError::Internal(_) => Code::INTERNAL,
        };
        ttrpc::Error::RpcStatus(ttrpc::get_status(code, e.to_string()))
    }
}
