//! The HTTP server behind `kernelbox serve`: composes the faces into one router, binds with
//! TCP_NODELAY and serves until shutdown.
//!
//! | path      | face                                                              |
//! |-----------|-------------------------------------------------------------------|
//! | `/health` | liveness, open without a key                                      |
//! | `/mcp`    | MCP over Streamable HTTP ([`crate::mcp`]), behind the API key     |

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router, middleware};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::engine::Engine;
use crate::http::auth::{ApiKeys, require_api_key};
use crate::mcp::transport::{HttpSettings, http_service, session_delete_no_content};

/// Server failures.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "refusing to listen on {host} without an API key: set KERNELBOX_API_KEY (or pass --insecure to allow it)"
    )]
    InsecureBind { host: IpAddr },
    #[error("the HTTP server failed")]
    Serve(#[source] std::io::Error),
}

/// How the HTTP faces are set up.
#[derive(Debug, Clone, Default)]
pub struct AppSettings {
    pub api_keys: Arc<ApiKeys>,
    /// `Host` values `/mcp` accepts; empty accepts any.
    pub allowed_hosts: Vec<String>,
    /// Browser origins accepted (besides loopback pages).
    pub allowed_origins: Vec<String>,
    /// Stops MCP sessions at shutdown.
    pub shutdown: CancellationToken,
}

/// `GET /health`.
#[derive(Debug, Serialize)]
pub struct Health {
    pub status: &'static str,
    pub version: &'static str,
    pub docker: bool,
    pub sandboxes: usize,
}

/// Browser origins that are always accepted on `/mcp`: pages served from this machine (MCP
/// Inspector runs on localhost).
const LOOPBACK_ORIGINS: [&str; 3] = ["http://localhost:*", "http://127.0.0.1:*", "http://[::1]:*"];

/// The router, without a socket (tests call it with `oneshot` or serve it themselves).
pub fn app(engine: Arc<Engine>, settings: AppSettings) -> Router {
    let mut origins: Vec<String> = LOOPBACK_ORIGINS.iter().map(|o| o.to_string()).collect();
    origins.extend(settings.allowed_origins.iter().cloned());
    let mcp = http_service(
        engine.clone(),
        HttpSettings {
            allowed_hosts: settings.allowed_hosts.clone(),
            allowed_origins: origins,
            session_idle: engine.config().max_idle,
            shutdown: settings.shutdown.clone(),
        },
    );
    let protected = Router::new()
        .nest_service("/mcp", mcp)
        .layer(middleware::from_fn(session_delete_no_content))
        .layer(middleware::from_fn_with_state(
            settings.api_keys.clone(),
            require_api_key,
        ));
    Router::new()
        .route("/health", get(health))
        .with_state(engine)
        .merge(protected)
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

/// Where and how to listen.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub host: IpAddr,
    pub port: u16,
    /// Allow a non-loopback address without API keys.
    pub insecure: bool,
    /// Destroy every sandbox at shutdown instead of leaving them for the next start.
    pub destroy_on_exit: bool,
    pub settings: AppSettings,
}

impl ServeOptions {
    /// The `Host` values to accept on `/mcp` when none are configured: loopback names for a
    /// loopback bind; any host otherwise (the API key guards it).
    fn effective_allowed_hosts(&self) -> Vec<String> {
        if !self.settings.allowed_hosts.is_empty() || !self.host.is_loopback() {
            return self.settings.allowed_hosts.clone();
        }
        ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec()
    }
}

/// Serves until `shutdown` resolves, then stops the engine. Sandboxes keep running for the next
/// start to reattach, unless `destroy_on_exit`.
pub async fn serve(
    engine: Arc<Engine>,
    mut options: ServeOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    if !options.host.is_loopback() && !options.settings.api_keys.is_enabled() && !options.insecure {
        return Err(ServerError::InsecureBind { host: options.host });
    }
    options.settings.allowed_hosts = options.effective_allowed_hosts();
    let addr = SocketAddr::new(options.host, options.port);
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
    let sessions = options.settings.shutdown.clone();
    let router = app(engine.clone(), options.settings);
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            shutdown.await;
            // Close MCP sessions (their SSE streams would hold the shutdown open).
            sessions.cancel();
        })
        .await
        .map_err(ServerError::Serve)?;
    engine.shutdown(options.destroy_on_exit).await;
    Ok(())
}
