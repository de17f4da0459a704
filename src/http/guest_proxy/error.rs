//! Why the guest proxy refused or failed a message, and that failure as an HTTP status and a
//! JSON-RPC error: the proxy's own failures are decided here, engine failures by the shared
//! mapping in `http::error`.

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::engine::{EngineError, GuestServerError};
use crate::http::error::{engine_jsonrpc_code, engine_status, jsonrpc};

/// Why the proxy refused or failed a message.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("Parse error: the body is not valid JSON")]
    Parse,
    #[error("Invalid Request: {reason}")]
    InvalidRequest { id: Value, reason: &'static str },
    #[error("Bad Request: send initialize first, then the Mcp-Session-Id header it returned")]
    MissingSession,
    #[error("Invalid Request: initialize must be sent alone, not in a batch")]
    InitializeInBatch,
    /// The answers to one batch passed [`MAX_BATCH_ANSWER_BYTES`](super::routes::MAX_BATCH_ANSWER_BYTES);
    /// the requests past it were sent, their answers dropped.
    #[error(
        "the answers to this batch passed {limit} bytes, so this one was dropped; send fewer requests at a time"
    )]
    BatchAnswersTooLarge { limit: usize },
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl From<GuestServerError> for ProxyError {
    fn from(error: GuestServerError) -> Self {
        ProxyError::Engine(error.into())
    }
}

impl ProxyError {
    /// The request id an error answer carries.
    pub fn id(&self) -> Value {
        match self {
            ProxyError::InvalidRequest { id, .. } => id.clone(),
            _ => Value::Null,
        }
    }

    /// The HTTP status of the answer (whose body is a JSON-RPC error, not the REST shape).
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Parse
            | ProxyError::InvalidRequest { .. }
            | ProxyError::MissingSession
            | ProxyError::InitializeInBatch => StatusCode::BAD_REQUEST,
            // Only ever inside a batch's answer, whose status is that of the batch.
            ProxyError::BatchAnswersTooLarge { .. } => StatusCode::OK,
            ProxyError::Engine(error) => engine_status(error),
        }
    }

    /// The JSON-RPC error code and message.
    pub fn jsonrpc(&self) -> (i64, String) {
        let code = match self {
            ProxyError::Parse => jsonrpc::PARSE_ERROR,
            ProxyError::InvalidRequest { .. } | ProxyError::InitializeInBatch => {
                jsonrpc::INVALID_REQUEST
            }
            ProxyError::MissingSession => jsonrpc::BAD_REQUEST,
            ProxyError::BatchAnswersTooLarge { .. } => jsonrpc::INTERNAL_ERROR,
            ProxyError::Engine(error) => engine_jsonrpc_code(error),
        };
        let message = match self {
            // Internal detail stays in the log, as on the REST routes.
            ProxyError::Engine(error) if error.is_internal() => {
                tracing::error!(%error, detail = ?error, "guest proxy failure");
                "internal error; see the server log".to_string()
            }
            other => other.to_string(),
        };
        (code, message)
    }

    /// The error as a JSON-RPC error response for request `id`.
    pub fn response_for(&self, id: Value) -> Value {
        let (code, message) = self.jsonrpc();
        error_response(id, code, &message)
    }
}

/// A JSON-RPC error response.
pub fn error_response(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_has_its_code() {
        assert_eq!(ProxyError::Parse.jsonrpc().0, jsonrpc::PARSE_ERROR);
        assert_eq!(
            ProxyError::InvalidRequest {
                id: Value::Null,
                reason: "x"
            }
            .jsonrpc()
            .0,
            jsonrpc::INVALID_REQUEST
        );
        assert_eq!(ProxyError::MissingSession.jsonrpc().0, jsonrpc::BAD_REQUEST);
        let exited = ProxyError::from(GuestServerError::ProcessExited {
            server: "time".into(),
        });
        assert_eq!(exited.jsonrpc().0, jsonrpc::SERVER_EXITED);
        assert!(exited.jsonrpc().1.contains("exited"));
        let gone = ProxyError::from(GuestServerError::SessionNotFound {
            session_id: "mcp_x".into(),
        });
        assert_eq!(gone.jsonrpc().0, jsonrpc::NOT_FOUND);
        let response = gone.response_for(serde_json::json!(4));
        assert_eq!(response["id"], 4);
        assert_eq!(response["error"]["code"], jsonrpc::NOT_FOUND);
    }
}
