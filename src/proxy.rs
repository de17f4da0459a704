//! The MCP proxy face: `POST/DELETE /containers/{id}/mcp-proxy/{server}`, a JSON-RPC 2.0
//! forwarder that speaks Streamable HTTP to the client and stdio to a server process inside the
//! sandbox. rmcp's Streamable HTTP service owns a `ServerHandler`, so it cannot forward; this
//! face parses messages, asks the engine for the session's process and renders the answers.
//! The processes and the session table live in [`crate::engine::mcp_servers`].
//!
//! | part        | what it does                                                         |
//! |-------------|----------------------------------------------------------------------|
//! | [`message`] | JSON-RPC parsing: single, batch, shorthand, invalid messages         |
//! | [`routes`]  | the HTTP handlers: sessions, JSON or SSE answers, `DELETE`           |
//! | this file   | [`ProxyError`] and the one mapping of errors to JSON-RPC error codes |

pub mod message;
pub mod routes;

use serde_json::Value;

use crate::engine::{EngineError, McpServerError};

/// JSON-RPC error codes the proxy answers with.
pub mod codes {
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
    /// The server process exited while the request waited.
    pub const SERVER_EXITED: i64 = -32002;
    /// The server process did not answer in time.
    pub const TIMEOUT: i64 = -32003;
}

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
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl From<McpServerError> for ProxyError {
    fn from(error: McpServerError) -> Self {
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

    /// The JSON-RPC error code and message: the one place they are decided.
    pub fn jsonrpc(&self) -> (i64, String) {
        use McpServerError as M;
        let code = match self {
            ProxyError::Parse => codes::PARSE_ERROR,
            ProxyError::InvalidRequest { .. } | ProxyError::InitializeInBatch => {
                codes::INVALID_REQUEST
            }
            ProxyError::MissingSession => codes::BAD_REQUEST,
            ProxyError::Engine(EngineError::NotFound { .. })
            | ProxyError::Engine(EngineError::McpServer(
                M::SessionNotFound { .. } | M::ServerNotFound { .. },
            )) => codes::NOT_FOUND,
            ProxyError::Engine(EngineError::McpServer(
                M::ProcessExited { .. } | M::Exited { .. },
            )) => codes::SERVER_EXITED,
            ProxyError::Engine(EngineError::McpServer(M::NotAnswering { .. })) => codes::TIMEOUT,
            ProxyError::Engine(_) => codes::INTERNAL_ERROR,
        };
        let message = match self {
            // Internal detail stays in the log (as on the REST routes).
            ProxyError::Engine(error)
                if crate::http::error::engine_status(error).0.is_server_error()
                    && !matches!(
                        error,
                        EngineError::McpServer(M::ProcessExited { .. } | M::NotAnswering { .. })
                    ) =>
            {
                tracing::error!(%error, detail = ?error, "MCP proxy failure");
                "internal error; see the server log".to_string()
            }
            other => other.to_string(),
        };
        (code, message)
    }

    /// The error as a JSON-RPC error response for request `id`.
    pub fn response_for(&self, id: Value) -> Value {
        let (code, message) = self.jsonrpc();
        message::error_response(id, code, &message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_has_its_code() {
        assert_eq!(ProxyError::Parse.jsonrpc().0, codes::PARSE_ERROR);
        assert_eq!(
            ProxyError::InvalidRequest {
                id: Value::Null,
                reason: "x"
            }
            .jsonrpc()
            .0,
            codes::INVALID_REQUEST
        );
        assert_eq!(ProxyError::MissingSession.jsonrpc().0, codes::BAD_REQUEST);
        let exited = ProxyError::from(McpServerError::ProcessExited {
            server: "time".into(),
        });
        assert_eq!(exited.jsonrpc().0, codes::SERVER_EXITED);
        assert!(exited.jsonrpc().1.contains("exited"));
        let gone = ProxyError::from(McpServerError::SessionNotFound {
            session_id: "mcp_x".into(),
        });
        assert_eq!(gone.jsonrpc().0, codes::NOT_FOUND);
        let response = gone.response_for(serde_json::json!(4));
        assert_eq!(response["id"], 4);
        assert_eq!(response["error"]["code"], codes::NOT_FOUND);
    }
}
