//! The one error type the serving core hands to front-ends; each front-end maps the kind
//! to its own status (HTTP code, gRPC code) and passes the message through unchanged.

use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Unknown model, version or tensor: HTTP 404 / gRPC NOT_FOUND.
    NotFound,
    /// The request itself is wrong: HTTP 400 / gRPC INVALID_ARGUMENT.
    InvalidArgument,
    /// Model not ready, or a queue timeout: HTTP 503 / gRPC UNAVAILABLE.
    Unavailable,
    /// The queue is full; retry later: HTTP 429 / gRPC UNAVAILABLE (+ Retry-After).
    QueueFull,
    /// The request is larger than the server accepts: HTTP 413 / gRPC RESOURCE_EXHAUSTED.
    TooLarge,
    /// The request conflicts with the server's state (e.g. unloading a model an ensemble
    /// uses): HTTP 409 / gRPC FAILED_PRECONDITION.
    Conflict,
    /// Refused by policy (e.g. a state change asked from another site's page):
    /// HTTP 403 / gRPC PERMISSION_DENIED.
    Forbidden,
    /// The body is not in a format the endpoint takes: HTTP 415 / gRPC INVALID_ARGUMENT.
    UnsupportedMediaType,
    /// Not implemented by this server: HTTP 501 / gRPC UNIMPLEMENTED.
    Unsupported,
    /// A fault inside the server or runtime: HTTP 500 / gRPC INTERNAL.
    Internal,
}

#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("{message}")]
pub struct ServeError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ServeError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ServeError {
            kind,
            message: message.into(),
        }
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, m)
    }
    pub fn invalid(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, m)
    }
    pub fn unavailable(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, m)
    }
    pub fn internal(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, m)
    }
    pub fn forbidden(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Forbidden, m)
    }
    pub fn too_large(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::TooLarge, m)
    }
    pub fn unsupported(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, m)
    }
}

pub type ServeResult<T> = Result<T, ServeError>;
