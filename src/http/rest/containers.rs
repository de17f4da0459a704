//! Containers (sandboxes): create, list, look up, destroy.

use std::collections::HashMap;

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::http::header::LOCATION;
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::firewall::FirewallRules;
use crate::engine::Tenant;
use crate::engine::{CreateSandbox, SandboxInfo, SandboxStatus};
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{ApiPath, AppState};

/// `POST /containers`. Every field is optional; an empty body is the same as `{}`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateContainer {
    /// A free-form label to find the container again.
    pub tag: Option<String>,
    /// Environment variables for the kernel and commands (names: letters, digits, `_`).
    pub env: Option<HashMap<String, String>>,
    /// The image to run (default: the server's `--image`); others must be among the server's
    /// `--allowed-images`.
    pub image: Option<String>,
    /// Memory limit in MiB (default: the server's `--memory-mb`; at most its `--max-memory-mb`).
    #[schema(minimum = 64)]
    pub memory_mb: Option<u64>,
    /// What the container may reach (default: the server's `--egress` policy). It replaces
    /// the server's policy, like `POST /containers/{id}/firewall`.
    pub network: Option<FirewallRules>,
    /// CPU limit; fractions allowed (default: the server's `--cpus`; at most its `--max-cpus`).
    #[schema(exclusive_minimum = 0)]
    pub cpus: Option<f64>,
    /// Process limit (default: the server's `--pids`; at most its `--max-pids`).
    #[schema(minimum = 64)]
    pub pids: Option<u64>,
    /// pip requirements (`numpy`, `pandas==2.2.3`) installed before the container is handed
    /// out, under the server's package policy: a refused one is 403 before any container starts,
    /// a failed install 422 naming the package, and no container is left behind.
    pub dependencies: Option<Vec<String>>,
}

/// What the container is doing.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ContainerStatus {
    Running,
    Busy,
    Restarting,
    Dead,
}

/// A container.
#[derive(Debug, Serialize, ToSchema)]
pub struct Container {
    /// `sbx_…`: also the MCP `session_id`.
    pub id: String,
    pub tag: Option<String>,
    pub status: ContainerStatus,
    pub created_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
    pub image: String,
}

impl From<SandboxInfo> for Container {
    fn from(info: SandboxInfo) -> Self {
        Self {
            id: info.id,
            tag: info.tag,
            status: match info.status {
                SandboxStatus::Running => ContainerStatus::Running,
                SandboxStatus::Busy => ContainerStatus::Busy,
                SandboxStatus::Restarting => ContainerStatus::Restarting,
                SandboxStatus::Dead => ContainerStatus::Dead,
            },
            created_at: info.created_at,
            last_used_at: info.last_used_at,
            image: info.image,
        }
    }
}

/// `GET /containers`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ContainerList {
    pub containers: Vec<Container>,
}

/// Create a container and wait until its kernel answers and its `dependencies` are installed.
#[utoipa::path(
    post,
    path = "/containers",
    tag = "containers",
    request_body(content = CreateContainer, description = "Options; may be empty"),
    responses(
        (status = 201, description = "Created; `Location` names it", body = Container),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 403, description = "A dependency the package policy refuses", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Invalid options, or a dependency pip could not install", body = ErrorBody),
        (status = 429, description = "Too many live containers", body = ErrorBody),
        (status = 503, description = "Docker unreachable or image missing", body = ErrorBody),
    )
)]
pub(crate) async fn create(
    State(engine): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let body = body?;
    let request: CreateContainer = if body.iter().all(u8::is_ascii_whitespace) {
        CreateContainer::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|error| ApiError::invalid(format!("invalid JSON body: {error}")))?
    };
    let env = request.env.unwrap_or_default();
    let info = engine
        .create(CreateSandbox {
            tag: request.tag,
            env,
            image: request.image,
            network: request
                .network
                .as_ref()
                .map(FirewallRules::request)
                .transpose()?,
            tenant,
            memory_mb: request.memory_mb,
            cpus: request.cpus,
            pids: request.pids,
            dependencies: request.dependencies.unwrap_or_default(),
        })
        .await?;
    let location = format!("/containers/{}", info.id);
    Ok((
        StatusCode::CREATED,
        [(LOCATION, location)],
        Json(Container::from(info)),
    ))
}

/// List this tenant's containers, oldest first.
#[utoipa::path(
    get,
    path = "/containers",
    tag = "containers",
    responses(
        (status = 200, description = "The containers", body = ContainerList),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
    )
)]
pub(crate) async fn list(
    State(engine): State<AppState>,
    Extension(tenant): Extension<Tenant>,
) -> Json<ContainerList> {
    Json(ContainerList {
        containers: engine
            .list(&tenant)
            .into_iter()
            .map(Container::from)
            .collect(),
    })
}

/// One container.
#[utoipa::path(
    get,
    path = "/containers/{id}",
    tag = "containers",
    params(("id" = String, Path, description = "Container id (`sbx_…`)")),
    responses(
        (status = 200, description = "The container", body = Container),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such container for this tenant", body = ErrorBody),
    )
)]
pub(crate) async fn get_one(
    State(engine): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Container>, ApiError> {
    Ok(Json(engine.info(&id, &tenant)?.into()))
}

/// Destroy a container: its kernel, files and processes are gone.
#[utoipa::path(
    delete,
    path = "/containers/{id}",
    tag = "containers",
    params(("id" = String, Path, description = "Container id (`sbx_…`)")),
    responses(
        (status = 204, description = "Destroyed"),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such container for this tenant", body = ErrorBody),
        (status = 503, description = "Docker unreachable", body = ErrorBody),
    )
)]
pub(crate) async fn destroy(
    State(engine): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    engine.destroy(&id, &tenant).await?;
    Ok(StatusCode::NO_CONTENT)
}
