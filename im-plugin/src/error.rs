//! The IM layer's request errors, each with the stable code a client switches on.

use mqim_schemas::v1::ErrorCode;

/// A request that cannot be served. Becomes an `error` reply; never closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ImError {
    pub code: ErrorCode,
    pub message: String,
}

impl ImError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ImError {
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, m)
    }

    pub fn invalid(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, m)
    }

    pub fn unavailable(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, m)
    }
}

impl From<crate::store::StoreError> for ImError {
    fn from(e: crate::store::StoreError) -> Self {
        tracing::warn!(error = %e, "store failure");
        ImError::unavailable("the message store is unavailable; retry with the same clientMsgId")
    }
}
