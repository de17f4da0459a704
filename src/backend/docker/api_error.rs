//! Docker API errors as the backend's own errors, mapped by status code and kind.

use bollard::errors::Error as DockerError;

use crate::backend::BackendError;

/// Maps a Docker error by status code (never by message text).
pub(super) fn classify(
    operation: &'static str,
    what: &'static str,
    error: DockerError,
) -> BackendError {
    match error {
        DockerError::DockerResponseServerError {
            status_code: 404, ..
        } => BackendError::NotFound { what },
        DockerError::DockerResponseServerError {
            status_code: 409, ..
        } => BackendError::Conflict { what },
        DockerError::DockerResponseServerError {
            status_code: 400, ..
        } => BackendError::Invalid {
            operation,
            source: Box::new(error),
        },
        DockerError::HyperResponseError { .. }
        | DockerError::IOError { .. }
        | DockerError::SocketNotFoundError(_) => unavailable(error),
        other => BackendError::Failed {
            operation,
            source: Box::new(other),
        },
    }
}

pub(super) fn unavailable(error: DockerError) -> BackendError {
    BackendError::Unavailable {
        source: Box::new(error),
    }
}
