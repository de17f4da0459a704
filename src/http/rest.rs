//! The REST face: thin routes over the [`Engine`](crate::engine::Engine). Each parses its input,
//! calls one engine method and renders the result; sandboxes are the same ones MCP sees.
//!
//! | part              | routes                                                                |
//! |-------------------|-----------------------------------------------------------------------|
//! | [`containers`]    | `POST/GET /containers`, `GET/DELETE /containers/{id}`, `POST …/{id}/timeout` |
//! | [`firewall`]      | `POST/GET /containers/{id}/firewall`                                  |
//! | [`execute`]       | `POST /containers/{id}/execute`, `…/execute/stream` (SSE, NDJSON), `GET /executions/{id}`, `POST …/cancel` |
//! | [`files`]         | `POST/GET/HEAD/DELETE /containers/{id}/files/{path}`, `POST/GET …/directories/{path}` |
//! | [`file_ops`]      | `GET …/exists/{path}`, `GET …/stat/{path}`, `POST …/mkdir/{path}`, `POST …/copy`, `POST …/move` |
//! | [`commands`]      | `POST /containers/{id}/commands`, `POST /containers/{id}/packages`    |
//! | [`processes`]     | `POST/GET /containers/{id}/processes`, `GET …/{pid}`, `POST …/{pid}/kill|stdin`, `GET …/{pid}/events|ws` |
//! | [`guest_servers`] | `PUT/GET /containers/{id}/mcp/{server}`, `POST …/mcp/{server}/{tool}` |
//!
//! The server ([`crate::http::server`]) puts every route behind the request guard; each key is a
//! tenant, and another tenant's sandboxes are "not found".

pub mod commands;
pub mod containers;
pub mod execute;
pub mod file_ops;
pub mod files;
pub mod firewall;
pub mod guest_servers;
pub mod processes;

use axum::extract::DefaultBodyLimit;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};
use utoipa_axum::routes;

use super::extract::AppState;
use super::guard::json;

/// Upload routes stream their bodies under the engine's own limit, not the JSON one.
fn streamed(
    (schemas, paths, method_router): UtoipaMethodRouter<AppState>,
) -> UtoipaMethodRouter<AppState> {
    (
        schemas,
        paths,
        method_router.layer(DefaultBodyLimit::disable()),
    )
}

/// The REST routes with their OpenAPI description.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(json(routes!(containers::create, containers::list)))
        .routes(json(routes!(containers::get_one, containers::destroy)))
        .routes(json(routes!(containers::set_timeout)))
        .routes(json(routes!(firewall::set, firewall::get)))
        .routes(json(routes!(execute::execute)))
        .routes(json(routes!(execute::execute_stream)))
        .routes(json(routes!(execute::execution)))
        .routes(json(routes!(execute::cancel)))
        .routes(json(routes!(commands::run)))
        .routes(json(routes!(commands::install)))
        .routes(streamed(routes!(files::upload_to_workspace)))
        .routes(streamed(routes!(files::upload_file)))
        .routes(json(routes!(
            files::download_file,
            files::head_file,
            files::delete_file
        )))
        .routes(json(routes!(file_ops::exists)))
        .routes(json(routes!(file_ops::stat)))
        .routes(json(routes!(file_ops::mkdir)))
        .routes(json(routes!(file_ops::copy)))
        .routes(json(routes!(file_ops::move_path)))
        .routes(streamed(routes!(
            files::upload_workspace_tree,
            files::download_workspace_tree
        )))
        .routes(streamed(routes!(files::upload_tree, files::download_tree)))
        .routes(json(routes!(
            guest_servers::register,
            guest_servers::get_one
        )))
        .routes(json(routes!(guest_servers::call_tool)))
        .routes(json(routes!(processes::start, processes::list)))
        .routes(json(routes!(processes::get_one)))
        .routes(json(routes!(processes::kill)))
        .routes(json(routes!(processes::stdin)))
        .routes(json(routes!(processes::events)))
        .routes(json(routes!(processes::websocket)))
}
