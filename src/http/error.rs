//! The one JSON error shape of the HTTP faces, and the one place where engine and auth errors
//! become HTTP statuses and JSON-RPC codes.
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
use crate::engine::EngineError;

/// Why the guard refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    #[error(
        "the Host {host:?} is not accepted by this server (DNS-rebinding protection); add it with --allowed-hosts"
    )]
    HostNotAllowed { host: String },
    #[error(
        "requests from the page origin {origin:?} are not accepted; add it with --cors-origins"
    )]
    OriginNotAllowed { origin: String },
    #[error(
        "this route takes a JSON body: send Content-Type: application/json (got {content_type:?})"
    )]
    NotJson { content_type: String },
}

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

impl From<multer::Error> for ApiError {
    fn from(error: multer::Error) -> Self {
        let status = match error {
            multer::Error::FieldSizeExceeded { .. } | multer::Error::StreamSizeExceeded { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            _ => StatusCode::BAD_REQUEST,
        };
        Self::rejected(status, format!("invalid multipart body: {error}"))
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

impl From<GuardError> for ApiError {
    fn from(error: GuardError) -> Self {
        let (status, code) = match error {
            GuardError::HostNotAllowed { .. } => (StatusCode::FORBIDDEN, "host_not_allowed"),
            GuardError::OriginNotAllowed { .. } => (StatusCode::FORBIDDEN, "origin_not_allowed"),
            GuardError::NotJson { .. } => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
        };
        Self::new(status, code, error.to_string())
    }
}

impl From<EngineError> for ApiError {
    fn from(error: EngineError) -> Self {
        let status = engine_status(&error);
        let message = if error.is_internal() {
            tracing::error!(error = %error, detail = ?error, "internal error");
            "internal error; see the server log".to_string()
        } else {
            error.to_string()
        };
        Self::new(status, error.code(), message)
    }
}

/// The HTTP status of an engine error, decided by its stable code: the one mapping every HTTP
/// face uses.
pub fn engine_status(error: &EngineError) -> StatusCode {
    match error.code() {
        "not_found"
        | "path_not_found"
        | "mcp_server_not_found"
        | "session_not_found"
        | "process_not_found" => StatusCode::NOT_FOUND,
        "busy" | "is_a_directory" | "path_exists" | "tag_taken" | "process_ended"
        | "stdin_closed" => StatusCode::CONFLICT,
        "network_not_allowed" | "permission_denied" | "package_not_allowed" => {
            StatusCode::FORBIDDEN
        }
        "too_many_sandboxes" | "tenant_quota_reached" | "too_many" => StatusCode::TOO_MANY_REQUESTS,
        "invalid_request" | "mcp_server_failed" | "mcp_error" | "dependency_install_failed" => {
            if let EngineError::Backend(_) = error {
                tracing::info!(error = %error, detail = ?error, "the container runtime refused a request");
            }
            StatusCode::UNPROCESSABLE_ENTITY
        }
        "path_outside_workspace" | "upload_interrupted" => StatusCode::BAD_REQUEST,
        "too_large" => StatusCode::PAYLOAD_TOO_LARGE,
        "timeout" => StatusCode::GATEWAY_TIMEOUT,
        "image_missing"
        | "shutting_down"
        | "docker_unreachable"
        | "kernel_unavailable"
        | "operation_interrupted"
        | "spool_full"
        | "start_queue_timeout"
        | "start_abandoned"
        | "removal_pending" => StatusCode::SERVICE_UNAVAILABLE,
        "mcp_server_exited" | "mcp_server_invalid_response" => StatusCode::BAD_GATEWAY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// JSON-RPC error codes the guest proxy answers with.
pub mod jsonrpc {
    /// The body is not JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// Not a valid JSON-RPC message.
    pub const INVALID_REQUEST: i64 = -32600;
    /// Anything else that went wrong in the proxy.
    pub const INTERNAL_ERROR: i64 = -32603;
    /// No session header where one is needed (the code the official SDKs use).
    pub const BAD_REQUEST: i64 = -32000;
    /// The session, sandbox or server does not exist (any more).
    pub const NOT_FOUND: i64 = -32001;
    /// The guest server process exited, or was stopped for breaking the protocol, while the
    /// request waited.
    pub const SERVER_EXITED: i64 = -32002;
    /// The server process did not answer in time.
    pub const TIMEOUT: i64 = -32003;
}

/// The JSON-RPC error code of an engine error, decided by its stable code.
pub fn engine_jsonrpc_code(error: &EngineError) -> i64 {
    match error.code() {
        "not_found" | "mcp_server_not_found" | "session_not_found" => jsonrpc::NOT_FOUND,
        "mcp_server_exited" | "mcp_server_failed" | "mcp_server_invalid_response" => {
            jsonrpc::SERVER_EXITED
        }
        "timeout" => jsonrpc::TIMEOUT,
        _ => jsonrpc::INTERNAL_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendError;

    fn refused(invalid: bool) -> EngineError {
        let source = "daemon detail that must not leak".into();
        EngineError::Backend(if invalid {
            BackendError::Invalid {
                operation: "container create",
                source,
            }
        } else {
            BackendError::Failed {
                operation: "container create",
                source,
            }
        })
    }

    #[test]
    fn engine_errors_map_to_statuses_without_internal_detail() {
        let not_found = ApiError::from(EngineError::NotFound { id: "sbx_x".into() });
        assert_eq!(not_found.status, StatusCode::NOT_FOUND);
        assert_eq!(not_found.code, "not_found");
        let busy = ApiError::from(EngineError::Busy {
            id: "sbx_x".into(),
            running: "execution exe_x".into(),
        });
        assert_eq!(busy.status, StatusCode::CONFLICT);
        let denied = ApiError::from(EngineError::PermissionDenied {
            path: "secret".into(),
        });
        assert_eq!(
            (denied.status, denied.code),
            (StatusCode::FORBIDDEN, "permission_denied")
        );
        let killed = ApiError::from(EngineError::FileHelper(
            crate::engine::files::HelperFailure::Exit {
                code: 137,
                stderr: String::new(),
            },
        ));
        assert_eq!(
            (killed.status, killed.code),
            (StatusCode::SERVICE_UNAVAILABLE, "operation_interrupted")
        );
        let helper = ApiError::from(EngineError::FileHelper(
            crate::engine::files::HelperFailure::NoAnswer,
        ));
        assert_eq!(helper.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!helper.message.contains("helper"), "{}", helper.message);
        let bad_request = ApiError::from(refused(true));
        assert_eq!(bad_request.status, StatusCode::UNPROCESSABLE_ENTITY);
        let internal = ApiError::from(refused(false));
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
