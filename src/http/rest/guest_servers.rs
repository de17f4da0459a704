//! Guest servers (stdio MCP servers inside a container) for callers that do not speak MCP:
//! register one (`PUT /containers/{id}/mcp/{server}`), list its tools (`GET`), call a tool
//! (`POST /containers/{id}/mcp/{server}/{tool}`). MCP clients use the guest proxy
//! (`/containers/{id}/mcp-proxy/{server}`, [`crate::http::guest_proxy`]) instead.

use std::collections::HashMap;

use axum::Extension;
use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::engine::Tenant;
use crate::engine::{GuestServer, GuestServerParams};
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{ApiJson, ApiPath, AppState};

/// `PUT /containers/{id}/mcp/{server}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterServer {
    pub server_params: GuestServerParamsBody,
}

/// How to start the server inside the container (as the sandbox user, in `/workspace`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GuestServerParamsBody {
    /// The program, found on `PATH` (`python3`, `mcp-server-time`, `npx`).
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment variables (names: letters, digits, `_`).
    #[serde(default)]
    pub env: HashMap<String, String>,
}

/// A registered server.
#[derive(Debug, Serialize, ToSchema)]
pub struct GuestServerInfo {
    /// The name it is registered under.
    pub name: String,
    /// The server's `serverInfo` from its `initialize` answer.
    #[schema(value_type = Object)]
    pub server_info: Value,
    pub protocol_version: Option<String>,
    /// Its tools, as it lists them (`name`, `description`, `inputSchema`, …).
    #[schema(value_type = Vec<Object>)]
    pub tools: Vec<Value>,
    /// The URL path of its MCP proxy endpoint.
    pub proxy_path: String,
}

fn info(sandbox_id: &str, registered: GuestServer) -> GuestServerInfo {
    GuestServerInfo {
        proxy_path: format!("/containers/{sandbox_id}/mcp-proxy/{}", registered.name),
        name: registered.name,
        server_info: registered
            .initialize
            .get("serverInfo")
            .cloned()
            .unwrap_or(Value::Null),
        protocol_version: registered
            .initialize
            .get("protocolVersion")
            .and_then(Value::as_str)
            .map(str::to_string),
        tools: registered.tools,
    }
}

/// `POST /containers/{id}/mcp/{server}/{tool}`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CallTool {
    /// The tool's arguments (default `{}`).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub params: Map<String, Value>,
}

/// Register (or replace) an MCP server: start it in the container, check it answers
/// `initialize`, and list its tools.
#[utoipa::path(
    put,
    path = "/containers/{id}/mcp/{server}",
    tag = "mcp",
    params(
        ("id" = String, Path, description = "Container id"),
        ("server" = String, Path, description = "A name for the server: letters, digits, `-`, `_`, `.`"),
    ),
    request_body = RegisterServer,
    responses(
        (status = 200, description = "Registered; its tools", body = GuestServerInfo),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such container", body = ErrorBody),
        (status = 422, description = "Invalid body, or the server did not start or speak MCP", body = ErrorBody),
        (status = 429, description = "Too many servers in this container", body = ErrorBody),
        (status = 504, description = "The server did not answer in time", body = ErrorBody),
    )
)]
pub(crate) async fn register(
    State(engine): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    ApiPath((id, server)): ApiPath<(String, String)>,
    ApiJson(request): ApiJson<RegisterServer>,
) -> Result<Json<GuestServerInfo>, ApiError> {
    let params = request.server_params;
    let registered = engine
        .register_guest_server(
            &id,
            &tenant,
            &server,
            GuestServerParams {
                command: params.command,
                args: params.args,
                env: params.env,
            },
        )
        .await?;
    Ok(Json(info(&id, registered)))
}

/// A registered MCP server and its tools, listed now.
#[utoipa::path(
    get,
    path = "/containers/{id}/mcp/{server}",
    tag = "mcp",
    params(
        ("id" = String, Path, description = "Container id"),
        ("server" = String, Path, description = "The registered server's name"),
    ),
    responses(
        (status = 200, description = "The server and its tools", body = GuestServerInfo),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such container or server", body = ErrorBody),
        (status = 422, description = "The server no longer starts", body = ErrorBody),
        (status = 504, description = "The server did not answer in time", body = ErrorBody),
    )
)]
pub(crate) async fn get_one(
    State(engine): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    ApiPath((id, server)): ApiPath<(String, String)>,
) -> Result<Json<GuestServerInfo>, ApiError> {
    let registered = engine.guest_server(&id, &tenant, &server).await?;
    Ok(Json(info(&id, registered)))
}

/// Call one tool and return its `CallToolResult` (`content`, `structuredContent`, `isError`).
/// A tool's own failure is `isError: true` in a 200; an error the server answers with is 422.
#[utoipa::path(
    post,
    path = "/containers/{id}/mcp/{server}/{tool}",
    tag = "mcp",
    params(
        ("id" = String, Path, description = "Container id"),
        ("server" = String, Path, description = "The registered server's name"),
        ("tool" = String, Path, description = "The tool's name"),
    ),
    request_body = CallTool,
    responses(
        (status = 200, description = "The tool's result", body = Object),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such container or server", body = ErrorBody),
        (status = 422, description = "Invalid body, or the server refused the call", body = ErrorBody),
        (status = 502, description = "The server process exited during the call", body = ErrorBody),
        (status = 504, description = "The tool did not answer within the execution timeout", body = ErrorBody),
    )
)]
pub(crate) async fn call_tool(
    State(engine): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    ApiPath((id, server, tool)): ApiPath<(String, String, String)>,
    ApiJson(request): ApiJson<CallTool>,
) -> Result<Json<Value>, ApiError> {
    let result = engine
        .call_guest_tool(&id, &tenant, &server, &tool, Value::Object(request.params))
        .await?;
    Ok(Json(result))
}
