//! The one JSON error shape of the HTTP surface, and the one place where engine and auth errors
//! become HTTP status codes.
//!
//! ```json
//! {"error": {"code": "not_found", "message": "no sandbox with id sbx_…"}}
//! ```
//! `code` is stable and meant for programs; `message` is for people. Internal failures are logged
//! with their detail and answered with a generic message.

use axum::Json;
use axum::extract::multipart::{MultipartError, MultipartRejection};
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::http::header::WWW_AUTHENTICATE;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::AuthError;
use crate::engine::{EngineError, McpServerError};
use crate::proxy::ProxyError;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, for programs: `not_found`, `busy`, `invalid_request`, `unauthorized`, ….
    pub code: String,
    /// For people.
    pub message: String,
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

    /// No route matches the request's path.
    pub fn no_route() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such route")
    }

    /// The route exists, the method does not.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not take that method",
        )
    }

    /// An axum extractor's rejection, in the one error shape: too large stays 413, a wrong
    /// content type 415, anything else about the input is 422.
    fn rejected(status: StatusCode, message: String) -> Self {
        match status {
            StatusCode::PAYLOAD_TOO_LARGE => Self::new(status, "too_large", message),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                Self::new(status, "unsupported_media_type", message)
            }
            status if status.is_server_error() => {
                tracing::error!(%status, %message, "request extraction failed");
                Self::new(status, "internal", "internal error; see the server log")
            }
            _ => Self::invalid(message),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        Self::rejected(rejection.status(), rejection.body_text())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        Self::rejected(rejection.status(), rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::rejected(rejection.status(), rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::rejected(rejection.status(), rejection.body_text())
    }
}

impl From<MultipartRejection> for ApiError {
    fn from(rejection: MultipartRejection) -> Self {
        Self::rejected(rejection.status(), rejection.body_text())
    }
}

impl From<MultipartError> for ApiError {
    fn from(error: MultipartError) -> Self {
        Self::rejected(error.status(), error.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
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
        let (status, code) = engine_status(&error);
        let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %error, detail = ?error, "internal error");
            "internal error; see the server log".to_string()
        } else {
            error.to_string()
        };
        Self::new(status, code, message)
    }
}

/// The status and stable code of an engine error: the one mapping every HTTP face uses.
pub fn engine_status(error: &EngineError) -> (StatusCode, &'static str) {
    use EngineError as E;
    match error {
        E::NotFound { .. } | E::ExecutionNotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
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
        // The runtime refused what the request asked for (say, more CPUs than the host has).
        E::Backend(crate::backend::BackendError::Refused { status: 400, .. }) => {
            tracing::info!(error = %error, detail = ?error, "the container runtime refused a request");
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request")
        }
        E::Kernel(_) => (StatusCode::SERVICE_UNAVAILABLE, "kernel_unavailable"),
        E::UploadInterrupted(_) => (StatusCode::BAD_REQUEST, "upload_interrupted"),
        E::McpServer(error) => mcp_server_status(error),
        E::Backend(_) | E::Spool(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

fn mcp_server_status(error: &McpServerError) -> (StatusCode, &'static str) {
    use McpServerError as M;
    match error {
        M::ServerNotFound { .. } => (StatusCode::NOT_FOUND, "mcp_server_not_found"),
        M::SessionNotFound { .. } => (StatusCode::NOT_FOUND, "session_not_found"),
        M::TooMany { .. } => (StatusCode::TOO_MANY_REQUESTS, "too_many"),
        // The command the caller registered does not start or does not speak MCP.
        M::Exited { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "mcp_server_failed"),
        M::Remote { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "mcp_error"),
        M::InvalidMessage => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        M::NotAnswering { .. } => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
        M::ProcessExited { .. } => (StatusCode::BAD_GATEWAY, "mcp_server_exited"),
        M::InvalidResponse { .. } => (StatusCode::BAD_GATEWAY, "mcp_server_invalid_response"),
        M::Backend(crate::backend::BackendError::Unavailable(_)) => {
            (StatusCode::SERVICE_UNAVAILABLE, "docker_unreachable")
        }
        M::Backend(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

/// The status of a proxy failure (`/containers/{id}/mcp-proxy/{server}`), whose body is a
/// JSON-RPC error rather than the error shape above.
pub fn proxy_status(error: &ProxyError) -> StatusCode {
    match error {
        ProxyError::Parse | ProxyError::InvalidRequest { .. } | ProxyError::MissingSession => {
            StatusCode::BAD_REQUEST
        }
        ProxyError::InitializeInBatch => StatusCode::BAD_REQUEST,
        ProxyError::Engine(error) => engine_status(error).0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendError;

    fn refused(status: u16) -> EngineError {
        EngineError::Backend(BackendError::Refused {
            operation: "container create",
            status,
            source: bollard::errors::Error::DockerResponseServerError {
                status_code: status,
                message: "daemon detail that must not leak".into(),
            },
        })
    }

    #[test]
    fn engine_errors_map_to_statuses_without_internal_detail() {
        let not_found = ApiError::from(EngineError::NotFound { id: "sbx_x".into() });
        assert_eq!(not_found.status, StatusCode::NOT_FOUND);
        assert_eq!(not_found.code, "not_found");
        let busy = ApiError::from(EngineError::Busy { id: "sbx_x".into() });
        assert_eq!(busy.status, StatusCode::CONFLICT);
        let bad_request = ApiError::from(refused(400));
        assert_eq!(bad_request.status, StatusCode::UNPROCESSABLE_ENTITY);
        let internal = ApiError::from(refused(500));
        assert_eq!(internal.status, StatusCode::INTERNAL_SERVER_ERROR);
        for error in [bad_request, internal] {
            assert!(
                !error.message.contains("daemon detail"),
                "{}",
                error.message
            );
        }
    }
}
