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
use super::session_owners::SessionOwners;
use crate::engine::Engine;

/// The longest line `kernelbox stdio` reads. It is larger than the HTTP faces' one body limit
/// because rmcp drops a longer line without an answer, which leaves the client waiting; under it
/// a 20 MB code string reaches the engine and gets a clear "too large" answer. stdio has one
/// local client, the user who started it.
pub const MAX_STDIO_LINE_BYTES: usize = 64 * 1024 * 1024;

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
        AsyncRwTransport::new_server(stdin, stdout).with_max_line_length(MAX_STDIO_LINE_BYTES);
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
    /// A legacy session idle this long is closed, and its default sandbox destroyed.
    pub session_idle: Duration,
    /// Stops every session at shutdown.
    pub shutdown: CancellationToken,
    /// The largest request body read (the HTTP faces' one JSON body limit).
    pub max_body_bytes: usize,
}

/// The Streamable HTTP service for `/mcp` (behind the HTTP server's request guard): legacy sessions (2024-11-05 to 2025-11-25) and
/// stateless 2026-07-28 requests.
/// Also returns the record of which tenant opened each session, for
/// [`bind_sessions_to_tenants`](super::session_owners::bind_sessions_to_tenants).
pub fn http_service(
    engine: Arc<Engine>,
    settings: HttpSettings,
) -> (
    StreamableHttpService<KernelboxMcp, LocalSessionManager>,
    SessionOwners,
) {
    let mut sessions = LocalSessionManager::default();
    sessions.session_config.keep_alive = Some(settings.session_idle);
    let sessions = Arc::new(sessions);
    let owners = SessionOwners::new(sessions.clone());
    let config = StreamableHttpServerConfig::default()
        .with_max_request_body_bytes(settings.max_body_bytes)
        // Stateless (2026-07-28) answers without progress go out as one JSON body, not SSE.
        .with_json_response(true)
        .with_sse_keep_alive(Some(Duration::from_secs(10)))
        .with_cancellation_token(settings.shutdown)
        // `Host` and `Origin` are checked for every route by the HTTP guard, `/mcp` included.
        .disable_allowed_origins()
        .disable_allowed_hosts();
    let tasks = super::tasks::new_tasks();
    let service = StreamableHttpService::new(
        move || Ok(KernelboxMcp::with_tasks(engine.clone(), tasks.clone())),
        sessions,
        config,
    );
    (service, owners)
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
