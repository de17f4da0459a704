//! The two MCP transports: the stdio loop behind `kernelbox stdio`, and the Streamable HTTP
//! service mounted at `/mcp` by `kernelbox serve`. Both serve the same [`KernelboxMcp`].

use std::sync::Arc;
use std::time::Duration;

use rmcp::ServiceExt;
use rmcp::transport::async_rw::AsyncRwTransport;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use super::KernelboxMcp;
use crate::engine::Engine;

/// The largest JSON-RPC message accepted (a `write_file` of a few MiB in base64 fits; a 20 MB
/// code string reaches the engine and gets a clear "too large" answer instead of being dropped).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// MCP transport failures.
#[derive(Debug, thiserror::Error)]
pub enum McpServeError {
    #[error("the MCP stdio session could not start")]
    Start(#[source] Box<rmcp::service::ServerInitializeError>),
    #[error("the MCP stdio session failed")]
    Run(#[source] tokio::task::JoinError),
}

/// Serves MCP on stdin/stdout until the client closes stdin (or `shutdown` resolves). The
/// connection's default sandbox is destroyed before returning.
pub async fn serve_stdio(
    engine: Arc<Engine>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), McpServeError> {
    let handler = KernelboxMcp::new(engine);
    let (stdin, stdout) = rmcp::transport::stdio_pipes();
    let transport =
        AsyncRwTransport::new_server(stdin, stdout).with_max_line_length(MAX_MESSAGE_BYTES);
    let running = handler
        .clone()
        .serve(transport)
        .await
        .map_err(|error| McpServeError::Start(Box::new(error)))?;
    tracing::info!("MCP over stdio ready");
    let cancel = running.cancellation_token();
    let outcome = tokio::select! {
        outcome = running.waiting() => outcome.map(|reason| tracing::info!(?reason, "MCP stdio session ended")),
        () = shutdown => {
            cancel.cancel();
            Ok(())
        }
    };
    handler.close().await;
    outcome.map_err(McpServeError::Run)
}

/// Settings of the `/mcp` endpoint.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// `Host` values accepted (DNS-rebinding protection); empty accepts any host.
    pub allowed_hosts: Vec<String>,
    /// Browser origins accepted; requests with any other `Origin` are refused. `None` accepts
    /// any origin.
    pub allowed_origins: Option<Vec<String>>,
    /// A legacy session idle this long is closed, and its default sandbox destroyed.
    pub session_idle: Duration,
    /// Stops every session at shutdown.
    pub shutdown: CancellationToken,
}

/// The Streamable HTTP service for `/mcp`: legacy sessions (2024-11-05 to 2025-11-25) and
/// stateless 2026-07-28 requests.
pub fn http_service(
    engine: Arc<Engine>,
    settings: HttpSettings,
) -> StreamableHttpService<KernelboxMcp, LocalSessionManager> {
    let mut sessions = LocalSessionManager::default();
    sessions.session_config.keep_alive = Some(settings.session_idle);
    let mut config = StreamableHttpServerConfig::default()
        .with_max_request_body_bytes(MAX_MESSAGE_BYTES)
        // Stateless (2026-07-28) answers without progress go out as one JSON body, not SSE.
        .with_json_response(true)
        .with_sse_keep_alive(Some(Duration::from_secs(10)))
        .with_cancellation_token(settings.shutdown);
    config = match settings.allowed_origins {
        Some(origins) => config
            .with_allowed_origins(origins)
            .enforce_origin_validation(),
        None => config.disable_allowed_origins(),
    };
    config = if settings.allowed_hosts.is_empty() {
        config.disable_allowed_hosts()
    } else {
        config.with_allowed_hosts(settings.allowed_hosts)
    };
    StreamableHttpService::new(
        move || Ok(KernelboxMcp::new(engine.clone())),
        Arc::new(sessions),
        config,
    )
}

/// Middleware for `/mcp`: a session `DELETE` answers 204 rather than rmcp's 202, which the
/// official Python SDK logs as a failed termination.
pub async fn session_delete_no_content(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let is_delete = request.method() == axum::http::Method::DELETE;
    let mut response = next.run(request).await;
    if is_delete && response.status() == axum::http::StatusCode::ACCEPTED {
        *response.status_mut() = axum::http::StatusCode::NO_CONTENT;
    }
    response
}
