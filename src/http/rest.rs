//! The REST API: thin routes over the [`Engine`]. Each parses its input, calls one engine method
//! and renders the result; sandboxes are the same ones MCP sees.
//!
//! | part           | routes                                                                |
//! |----------------|-----------------------------------------------------------------------|
//! | [`containers`] | `POST/GET /containers`, `GET/DELETE /containers/{id}`                 |
//! | [`execute`]    | `POST /containers/{id}/execute`, `…/execute/stream` (SSE), `GET /executions/{id}` |
//! | [`files`]      | `POST/GET/DELETE /containers/{id}/files/{path}`, `POST/GET …/directories/{path}` |
//! | [`commands`]   | `POST /containers/{id}/commands`                                      |
//! | [`mcp_servers`] | `PUT/GET /containers/{id}/mcp/{server}`, `POST …/mcp/{server}/{tool}` |
//! | [`crate::proxy`] | `POST/DELETE /containers/{id}/mcp-proxy/{server}` (mounted here)     |
//!
//! Every route here (and `/metrics`, `/openapi.json`, `/docs`) sits behind
//! [`require_api_key`]; each key is a tenant, and another tenant's sandboxes are "not found".

pub mod commands;
pub mod containers;
pub mod execute;
pub mod files;
pub mod mcp_servers;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::extract::{FromRequest, FromRequestParts};
use axum::middleware;
use axum::routing::get;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};
use utoipa_axum::routes;

use super::auth::{ApiKeys, require_api_key};
use super::error::ApiError;
use super::{metrics, openapi};
use crate::engine::Engine;

/// The largest JSON body a route accepts (code is at most 2 MiB, and JSON escapes grow it).
pub const JSON_BODY_LIMIT: usize = 8 * 1024 * 1024;

/// The router state: the engine.
pub type RestState = Arc<Engine>;

/// A JSON body whose rejections use the one error shape (422, 413, 415).
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// Path parameters whose rejections use the one error shape.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// Upload routes stream their bodies under the engine's own limit, not the JSON one.
fn streamed(
    (schemas, paths, method_router): UtoipaMethodRouter<RestState>,
) -> UtoipaMethodRouter<RestState> {
    (
        schemas,
        paths,
        method_router.layer(DefaultBodyLimit::disable()),
    )
}

/// The REST routes with their OpenAPI description, before auth and state.
fn api() -> OpenApiRouter<RestState> {
    OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(containers::create, containers::list))
        .routes(routes!(containers::get_one, containers::destroy))
        .routes(routes!(execute::execute))
        .routes(routes!(execute::execute_stream))
        .routes(routes!(execute::execution))
        .routes(routes!(commands::run))
        .routes(streamed(routes!(files::upload_to_workspace)))
        .routes(streamed(routes!(files::upload_file)))
        .routes(routes!(files::download_file, files::delete_file))
        .routes(streamed(routes!(
            files::upload_workspace_tree,
            files::download_workspace_tree
        )))
        .routes(streamed(routes!(files::upload_tree, files::download_tree)))
        .routes(routes!(mcp_servers::register, mcp_servers::get_one))
        .routes(routes!(mcp_servers::call_tool))
        .routes(routes!(
            crate::proxy::routes::post,
            crate::proxy::routes::delete
        ))
        .routes(routes!(metrics::metrics))
}

/// The OpenAPI document of the REST API.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    let (_, document) = api().split_for_parts();
    openapi::finish(document)
}

/// The REST API, `/metrics`, `/openapi.json` and `/docs`, all behind the API-key check.
pub fn router(engine: Arc<Engine>, keys: Arc<ApiKeys>) -> axum::Router {
    let (routes, document) = api().split_for_parts();
    let document = Arc::new(openapi::finish(document));
    routes
        .route(
            "/openapi.json",
            get(move || {
                let document = document.clone();
                async move { axum::Json(document) }
            }),
        )
        .route("/docs", get(openapi::docs_page))
        .route_layer(middleware::from_fn_with_state(keys, require_api_key))
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
        // A span per request (method and URI, so the container id), seen with `--log tower_http=debug`.
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(engine)
}

/// Seconds from a request (`timeout`) as a duration; `None` when absent.
pub(crate) fn seconds(
    field: &'static str,
    value: Option<f64>,
) -> Result<Option<std::time::Duration>, ApiError> {
    value
        .map(|secs| {
            std::time::Duration::try_from_secs_f64(secs)
                .ok()
                .filter(|duration| !duration.is_zero())
                .ok_or_else(|| {
                    ApiError::invalid(format!("{field} must be a positive number of seconds"))
                })
        })
        .transpose()
}

/// Refuses strings the container runtime cannot carry (NUL bytes).
pub(crate) fn no_nul(field: &str, value: &str) -> Result<(), ApiError> {
    if value.contains('\0') {
        Err(ApiError::invalid(format!(
            "{field} must not contain NUL bytes"
        )))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_must_be_positive_and_finite() {
        assert_eq!(seconds("timeout", None).ok(), Some(None));
        assert_eq!(
            seconds("timeout", Some(1.5)).ok(),
            Some(Some(std::time::Duration::from_millis(1500)))
        );
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e300] {
            assert!(seconds("timeout", Some(bad)).is_err(), "{bad}");
        }
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
            "/metrics",
            "/containers/{id}/mcp/{server}",
            "/containers/{id}/mcp/{server}/{tool}",
            "/containers/{id}/mcp-proxy/{server}",
        ] {
            assert!(
                paths.iter().any(|path| path.as_str() == expected),
                "{expected} missing from {paths:?}"
            );
        }
        assert!(paths.iter().all(|path| !path.contains('*')));
    }
}
