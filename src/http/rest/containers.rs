//! Containers (sandboxes): create, list (filtered by metadata), look up, change the lifetime,
//! destroy.

use std::collections::HashMap;

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::http::header::LOCATION;
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::firewall::FirewallRules;
use crate::engine::Tenant;
use crate::engine::{CreateSandbox, Metadata, SandboxInfo, SandboxStatus};
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{ApiJson, ApiPath, AppState};

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
    /// The container's lifetime in seconds from now: it is destroyed then, busy or not (at most
    /// the server's `--max-sandbox-timeout-secs`, 86400 by default). Change it later with
    /// `POST /containers/{id}/timeout`. Default: no limit but the server's idle timeout.
    #[schema(minimum = 1)]
    pub timeout: Option<u64>,
    /// Your own names and values, shown with the container and usable as a list filter
    /// (`GET /containers?metadata.owner=alice`): at most 32 entries; names of 1 to 64 ASCII
    /// letters, digits and `_-.:/`; values of at most 512 bytes; 4096 bytes in all.
    pub metadata: Option<HashMap<String, String>>,
}

/// `POST /containers/{id}/timeout`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetTimeout {
    /// The container's new lifetime in seconds from now, shorter or longer than before (at most
    /// the server's `--max-sandbox-timeout-secs`).
    #[schema(minimum = 1)]
    pub timeout: u64,
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
    /// The lifetime last given, in seconds from when it was given; null: none.
    pub timeout: Option<u64>,
    /// When the container is destroyed (RFC 3339); null: only when idle.
    pub expires_at: Option<DateTime<Utc>>,
    /// The metadata given at creation.
    pub metadata: Metadata,
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
            timeout: info.timeout,
            expires_at: info.expires_at,
            metadata: info.metadata,
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
            timeout: request.timeout,
            metadata: request.metadata.unwrap_or_default().into_iter().collect(),
        })
        .await?;
    let location = format!("/containers/{}", info.id);
    Ok((
        StatusCode::CREATED,
        [(LOCATION, location)],
        Json(Container::from(info)),
    ))
}

/// List this tenant's containers, oldest first. `metadata.NAME=VALUE` (or
/// `metadata[NAME]=VALUE`) keeps only those whose metadata has that entry; several must all
/// match.
#[utoipa::path(
    get,
    path = "/containers",
    tag = "containers",
    params(
        ("metadata" = Option<HashMap<String, String>>, Query, style = DeepObject, explode,
            description = "Only containers with these metadata entries: `metadata.owner=alice` or `metadata[owner]=alice`, repeatable"),
    ),
    responses(
        (status = 200, description = "The containers", body = ContainerList),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 422, description = "A query parameter that is not a metadata filter, or a name that is not a metadata name", body = ErrorBody),
    )
)]
pub(crate) async fn list(
    State(engine): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    RawQuery(query): RawQuery,
) -> Result<Json<ContainerList>, ApiError> {
    let filter = metadata_filter(query.as_deref().unwrap_or_default())?;
    Ok(Json(ContainerList {
        containers: engine
            .list_filtered(&tenant, &filter)?
            .into_iter()
            .map(Container::from)
            .collect(),
    }))
}

/// The metadata filter of a list query: `metadata.NAME=VALUE` and `metadata[NAME]=VALUE` pairs.
fn metadata_filter(query: &str) -> Result<Metadata, ApiError> {
    let mut filter = Metadata::new();
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        let key = name
            .strip_prefix("metadata.")
            .or_else(|| {
                name.strip_prefix("metadata[")
                    .and_then(|rest| rest.strip_suffix(']'))
            })
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "unknown query parameter {name:?}: filter with metadata.NAME=VALUE"
                ))
            })?;
        if let Some(earlier) = filter.get(key)
            && *earlier != value
        {
            return Err(ApiError::invalid(format!(
                "metadata {key:?} is asked to be both {earlier:?} and {value:?}"
            )));
        }
        filter.insert(key.to_string(), value.into_owned());
    }
    Ok(filter)
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

/// Set a container's lifetime to `timeout` seconds from now (shorter or longer than before), as
/// E2B's `POST /sandboxes/{id}/timeout` does. It is destroyed then, busy or not; the change
/// survives a server restart.
#[utoipa::path(
    post,
    path = "/containers/{id}/timeout",
    tag = "containers",
    params(("id" = String, Path, description = "Container id (`sbx_…`)")),
    request_body = SetTimeout,
    responses(
        (status = 200, description = "The container with its new `timeout` and `expires_at`", body = Container),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such container for this tenant", body = ErrorBody),
        (status = 422, description = "A timeout that is not between 1 and the server's maximum", body = ErrorBody),
        (status = 503, description = "Docker unreachable", body = ErrorBody),
    )
)]
pub(crate) async fn set_timeout(
    State(engine): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    ApiPath(id): ApiPath<String>,
    ApiJson(request): ApiJson<SetTimeout>,
) -> Result<Json<Container>, ApiError> {
    Ok(Json(
        engine
            .set_timeout(&id, &tenant, request.timeout)
            .await?
            .into(),
    ))
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
        (status = 503, description = "Docker unreachable, or (`removal_pending`) the sandbox is closed but Docker failed to remove its containers; the server keeps trying", body = ErrorBody),
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
