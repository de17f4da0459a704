//! The HTTP server behind `kernelbox serve`: binds with TCP_NODELAY and serves the routes until
//! shutdown. Routes: `GET /health` (the REST and MCP faces mount here as they land).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::engine::Engine;

/// Server failures.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the HTTP server failed")]
    Serve(#[source] std::io::Error),
}

/// `GET /health`.
#[derive(Debug, Serialize)]
pub struct Health {
    pub status: &'static str,
    pub version: &'static str,
    pub docker: bool,
    pub sandboxes: usize,
}

/// The router, without a socket (tests call it with `oneshot`).
pub fn app(engine: Arc<Engine>) -> Router {
    Router::new()
        .route("/health", get(health))
        .with_state(engine)
}

async fn health(State(engine): State<Arc<Engine>>) -> Json<Health> {
    let docker = engine.backend_reachable().await;
    Json(Health {
        status: if docker { "ok" } else { "degraded" },
        version: env!("CARGO_PKG_VERSION"),
        docker,
        sandboxes: engine.list(None).len(),
    })
}

/// Serves until `shutdown` resolves, then stops the engine. Sandboxes keep running for the next
/// start to reattach, unless `destroy_on_exit`.
pub async fn serve(
    engine: Arc<Engine>,
    host: IpAddr,
    port: u16,
    destroy_on_exit: bool,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let addr = SocketAddr::new(host, port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })?;
    let local = listener.local_addr().map_err(ServerError::Serve)?;
    tracing::info!(%local, "listening");
    let listener = axum::serve::ListenerExt::tap_io(listener, |stream| {
        // Without TCP_NODELAY small responses wait for delayed ACKs (45 ms instead of 0.8 ms).
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "could not set TCP_NODELAY");
        }
    });
    axum::serve(listener, app(engine.clone()))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(ServerError::Serve)?;
    engine.shutdown(destroy_on_exit).await;
    Ok(())
}
