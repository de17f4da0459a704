//! The one JSON error shape of the HTTP surface, and the one place where engine and auth errors
//! become HTTP status codes.
//!
//! ```json
//! {"error": {"code": "not_found", "message": "no sandbox with id sbx_…"}}
//! ```
//! `code` is stable and meant for programs; `message` is for people. Internal failures are logged
//! with their detail and answered with a generic message.

use axum::Json;
use axum::http::StatusCode;
use axum::http::header::WWW_AUTHENTICATE;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::auth::AuthError;
use crate::engine::EngineError;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    code: &'a str,
    message: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// A malformed or invalid request body or parameter.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(Body {
            error: Detail {
                code: self.code,
                message: &self.message,
            },
        });
        let mut response = (self.status, body).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", error.to_string())
    }
}

impl From<EngineError> for ApiError {
    fn from(error: EngineError) -> Self {
        use EngineError as E;
        let (status, code) = match &error {
            E::NotFound { .. } | E::ExecutionNotFound { .. } => {
                (StatusCode::NOT_FOUND, "not_found")
            }
            E::PathNotFound { .. } => (StatusCode::NOT_FOUND, "path_not_found"),
            E::Busy { .. } => (StatusCode::CONFLICT, "busy"),
            E::TooManySandboxes { .. } => (StatusCode::TOO_MANY_REQUESTS, "too_many_sandboxes"),
            E::InvalidInput { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
            E::PathOutsideWorkspace { .. } => (StatusCode::BAD_REQUEST, "path_outside_workspace"),
            E::IsADirectory { .. } => (StatusCode::CONFLICT, "is_a_directory"),
            E::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            E::CommandTimeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            E::ImageMissing { .. } => (StatusCode::SERVICE_UNAVAILABLE, "image_missing"),
            E::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            E::Backend(crate::backend::BackendError::Unavailable(_)) => {
                (StatusCode::SERVICE_UNAVAILABLE, "docker_unreachable")
            }
            E::Kernel(_) => (StatusCode::SERVICE_UNAVAILABLE, "kernel_unavailable"),
            E::Backend(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %error, detail = ?error, "internal error");
            "internal error; see the server log".to_string()
        } else {
            error.to_string()
        };
        Self::new(status, code, message)
    }
}
