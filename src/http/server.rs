//! The HTTP server behind `kernelbox serve`: composes the faces into one router, binds, serves
//! it through the accept loop in [`super::listener`] until shutdown, and stops within a deadline.
//!
//! | path                                   | face                                           |
//! |----------------------------------------|------------------------------------------------|
//! | `/health`                              | liveness, open without a key                   |
//! | `/ready`                               | readiness ([`super::probes`]), open too        |
//! | `/mcp`                                 | MCP over Streamable HTTP ([`crate::mcp`])      |
//! | `/containers/…`, `/executions/…`       | the REST face ([`super::rest`])                |
//! | `/containers/{id}/mcp-proxy/{server}`  | the guest proxy face ([`super::guest_proxy`])  |
//! | `/metrics`, `/openapi.json`, `/docs`, `/redoc` | Prometheus metrics, the OpenAPI document and its pages |
//!
//! Every request passes the `Host` and `Origin` checks ([`super::guard`]); everything but
//! `/health` is behind the API key when keys are set.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::routing::get;
use axum::{Json, Router, middleware};
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, CorsLayer};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::{API_KEY_HEADER, ApiKeys};
use super::error::ApiError;
use super::extract::{AppState, JSON_BODY_LIMIT};
use super::guard::{RequestPolicy, check_host_and_origin, require_api_key, require_json_body};
use super::listener::{ConnectionLimits, Listener};
use super::request_id::{REQUEST_ID_HEADER, request_context};
use super::rest::execute::EXECUTION_ID_HEADER;
use super::{guest_proxy, metrics, openapi, probes, rest};
use crate::engine::Engine;
use crate::mcp::session_owners::bind_sessions_to_tenants;
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
    #[error("the HTTP server failed")]
    Serve(#[source] std::io::Error),
    #[error(
        "refusing to serve {host} without an API key: set --api-key (KERNELBOX_API_KEY), bind 127.0.0.1, or pass --insecure"
    )]
    InsecureBind { host: IpAddr },
    #[error("--cors-origins: {origin:?} is not a valid origin")]
    InvalidOrigin { origin: String },
    #[error(
        "refusing --cors-origins '*' without an API key: any web page could read the sandboxes, their output and files; set --api-key or name the origins"
    )]
    OpenCorsWithoutKey,
}

/// What the HTTP faces share beyond the engine.
#[derive(Debug, Default, Clone)]
pub struct HttpConfig {
    /// API keys; empty means no auth.
    pub keys: Arc<ApiKeys>,
    /// Browser origins allowed by CORS (`*` allows any read); empty means no CORS headers.
    /// State-changing requests and `/mcp` accept these origins (never `*`) and loopback pages.
    pub cors_origins: Vec<String>,
    /// `Host` values every route accepts (DNS-rebinding protection); empty accepts any.
    pub allowed_hosts: Vec<String>,
    /// Closes MCP sessions (and their streams) at shutdown.
    pub shutdown: CancellationToken,
}

impl HttpConfig {
    /// The `Host` values to accept when none are configured: loopback names for a loopback
    /// bind, any host otherwise (the API key guards it then).
    fn hosts_for(&self, host: IpAddr) -> Vec<String> {
        if !self.allowed_hosts.is_empty() || !host.is_loopback() {
            return self.allowed_hosts.clone();
        }
        ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec()
    }
}

/// Refuses to expose the server beyond loopback without an API key, unless `insecure`.
pub fn check_bind(host: IpAddr, keys: &ApiKeys, insecure: bool) -> Result<(), ServerError> {
    if host.is_loopback() || keys.is_enabled() || insecure {
        Ok(())
    } else {
        Err(ServerError::InsecureBind { host })
    }
}

/// The CORS layer for the configured origins; `None` when there are none.
fn cors(origins: &[String]) -> Result<Option<CorsLayer>, ServerError> {
    let origins: Vec<&str> = origins
        .iter()
        .map(|origin| origin.trim())
        .filter(|origin| !origin.is_empty())
        .collect();
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.contains(&"*") {
        AllowOrigin::any()
    } else {
        let parsed = origins
            .iter()
            .map(|origin| {
                HeaderValue::from_str(origin).map_err(|_| ServerError::InvalidOrigin {
                    origin: origin.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(parsed)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
            .allow_headers([
                axum::http::header::AUTHORIZATION,
                axum::http::header::CONTENT_TYPE,
                HeaderName::from_static(API_KEY_HEADER),
                HeaderName::from_static(guest_proxy::SESSION_HEADER),
                HeaderName::from_static("mcp-protocol-version"),
                HeaderName::from_static(REQUEST_ID_HEADER),
            ])
            .expose_headers([
                HeaderName::from_static(EXECUTION_ID_HEADER),
                HeaderName::from_static(guest_proxy::SESSION_HEADER),
                HeaderName::from_static(REQUEST_ID_HEADER),
            ]),
    ))
}

/// `GET /health`.
#[derive(Debug, Serialize)]
pub struct Health {
    pub status: &'static str,
    pub version: &'static str,
    pub docker: bool,
    pub sandboxes: usize,
}

/// The documented routes behind the API key (the REST face, the guest proxy face, `/metrics`)
/// with their OpenAPI descriptions, before auth and state.
fn keyed_api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::base())
        .merge(rest::routes())
        .merge(guest_proxy::routes())
        .routes(routes!(metrics::metrics))
}

/// The documented routes open without a key: `/ready`.
fn open_api() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(probes::ready))
}

/// The OpenAPI document of the HTTP API.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    let (_, document) = keyed_api().merge(open_api()).split_for_parts();
    openapi::finish(document)
}

/// The documented routes, `/openapi.json`, `/docs` and `/redoc`, the keyed ones behind the key.
fn api_router(engine: Arc<Engine>, keys: Arc<ApiKeys>) -> Router {
    let (routes, _) = keyed_api().split_for_parts();
    let (open_routes, _) = open_api().split_for_parts();
    let document = Arc::new(openapi_document());
    routes
        .route(
            "/openapi.json",
            get(move || {
                let document = document.clone();
                async move { axum::Json(document) }
            }),
        )
        .route("/docs", get(openapi::docs_page))
        .route("/redoc", get(openapi::redoc_page))
        .route("/redoc/redoc.standalone.js", get(openapi::redoc_bundle))
        .route(
            "/redoc/redoc.standalone.js.LICENSE.txt",
            get(openapi::redoc_licenses),
        )
        .route_layer(middleware::from_fn_with_state(keys, require_api_key))
        .merge(open_routes)
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
        // A span per request (method and URI, so the container id), seen with `--log tower_http=debug`.
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(engine)
}

/// The router, without a socket (tests serve it on `127.0.0.1:0` or call it with `oneshot`).
pub fn app(engine: Arc<Engine>, config: &HttpConfig) -> Result<Router, ServerError> {
    if !config.keys.is_enabled() && config.cors_origins.iter().any(|o| o.trim() == "*") {
        return Err(ServerError::OpenCorsWithoutKey);
    }
    let (mcp, session_owners) = http_service(
        engine.clone(),
        HttpSettings {
            session_idle: engine.config().max_idle,
            shutdown: config.shutdown.clone(),
            max_body_bytes: JSON_BODY_LIMIT,
        },
    );
    let mcp = Router::new()
        .nest_service("/mcp", mcp)
        .layer(middleware::from_fn(session_delete_no_content))
        .layer(middleware::from_fn_with_state(
            session_owners,
            bind_sessions_to_tenants,
        ))
        .layer(middleware::from_fn(require_json_body))
        .layer(middleware::from_fn_with_state(
            config.keys.clone(),
            require_api_key,
        ));
    let router = Router::new()
        .route("/health", get(health))
        .with_state(engine.clone())
        .merge(mcp)
        .merge(api_router(engine, config.keys.clone()))
        .fallback(|| async { ApiError::no_route() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() });
    let router = match cors(&config.cors_origins)? {
        Some(cors) => router.layer(cors),
        None => router,
    };
    let policy = Arc::new(RequestPolicy::new(
        &config.allowed_hosts,
        &config.cors_origins,
    ));
    Ok(router
        .layer(middleware::from_fn_with_state(
            policy,
            check_host_and_origin,
        ))
        .layer(middleware::from_fn(request_context)))
}

async fn health(State(engine): State<Arc<Engine>>) -> Json<Health> {
    let docker = engine.backend_reachable().await;
    Json(Health {
        status: if docker { "ok" } else { "degraded" },
        version: env!("CARGO_PKG_VERSION"),
        docker,
        sandboxes: engine.sandbox_count(),
    })
}

/// How [`serve`] listens, and how long it may take to stop.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub addr: SocketAddr,
    pub connections: ConnectionLimits,
    /// From the shutdown signal to the end of [`serve`], at most: executions are interrupted,
    /// guest processes stopped and connections drained within it.
    pub shutdown_timeout: Duration,
    /// Destroy this instance's sandboxes at shutdown instead of leaving them for the next start.
    pub destroy_on_exit: bool,
}

/// Serves until `shutdown` resolves, then stops the engine and drains the connections, both
/// within `options.shutdown_timeout`. Sandboxes keep running for the next start to reattach,
/// unless `destroy_on_exit`.
pub async fn serve(
    engine: Arc<Engine>,
    mut config: HttpConfig,
    options: ServeOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let addr = options.addr;
    config.allowed_hosts = config.hosts_for(addr.ip());
    let sessions = config.shutdown.clone();
    let app = app(engine.clone(), &config)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })?;
    let local = listener.local_addr().map_err(ServerError::Serve)?;
    tracing::info!(%local, "listening");
    let stop = CancellationToken::new();
    let accepting = Listener::new(listener, app, options.connections).run(stop.clone());
    let signalled = async {
        shutdown.await;
        stop.cancel();
    };
    let (connections, ()) = tokio::join!(accepting, signalled);
    let started = Instant::now();
    let deadline = started + shutdown_budget(options.shutdown_timeout);
    // End MCP sessions (their open SSE streams), interrupt executions and stop guest processes,
    // while the connections finish what they still have.
    sessions.cancel();
    let (drained, stopped) = tokio::join!(
        connections.drain(deadline),
        engine.shutdown_until(options.destroy_on_exit, deadline)
    );
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        dropped_connections = drained.dropped,
        engine_stopped = stopped,
        "stopped"
    );
    Ok(())
}

/// The part of the shutdown timeout the work may use: the rest is left for the process to exit.
pub fn shutdown_budget(timeout: Duration) -> Duration {
    timeout.saturating_sub((timeout / 10).min(Duration::from_millis(500)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_is_open_without_a_key() {
        let none = ApiKeys::default();
        let some = ApiKeys::new(["k"]);
        let loopback: IpAddr = "127.0.0.1".parse().expect("ip");
        let v6_loopback: IpAddr = "::1".parse().expect("ip");
        let any: IpAddr = "0.0.0.0".parse().expect("ip");
        assert!(check_bind(loopback, &none, false).is_ok());
        assert!(check_bind(v6_loopback, &none, false).is_ok());
        assert!(matches!(
            check_bind(any, &none, false),
            Err(ServerError::InsecureBind { .. })
        ));
        assert!(check_bind(any, &some, false).is_ok());
        assert!(check_bind(any, &none, true).is_ok());
    }

    #[test]
    fn the_document_lists_every_route_without_wildcards() {
        let document = openapi_document();
        let paths: Vec<&String> = document.paths.paths.keys().collect();
        for expected in [
            "/containers",
            "/containers/{id}",
            "/containers/{id}/execute",
            "/containers/{id}/execute/stream",
            "/executions/{execution_id}",
            "/containers/{id}/commands",
            "/containers/{id}/files",
            "/containers/{id}/files/{path}",
            "/containers/{id}/directories",
            "/containers/{id}/directories/{path}",
            "/containers/{id}/exists/{path}",
            "/containers/{id}/stat/{path}",
            "/containers/{id}/mkdir/{path}",
            "/containers/{id}/copy",
            "/containers/{id}/move",
            "/metrics",
            "/containers/{id}/mcp/{server}",
            "/containers/{id}/mcp/{server}/{tool}",
            "/containers/{id}/mcp-proxy/{server}",
            "/ready",
        ] {
            assert!(
                paths.iter().any(|path| path.as_str() == expected),
                "{expected} missing from {paths:?}"
            );
        }
        assert!(paths.iter().all(|path| !path.contains('*')));
    }

    #[test]
    fn cors_origins_are_checked() {
        assert!(matches!(cors(&[]), Ok(None)));
        assert!(matches!(cors(&[" ".into()]), Ok(None)));
        assert!(matches!(cors(&["https://a.example".into()]), Ok(Some(_))));
        assert!(matches!(cors(&["*".into()]), Ok(Some(_))));
        assert!(matches!(
            cors(&["bad\norigin".into()]),
            Err(ServerError::InvalidOrigin { .. })
        ));
    }
}
