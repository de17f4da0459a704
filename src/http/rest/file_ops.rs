//! File operations that move no file content through the server: exists and stat (one cheap
//! call, nothing downloaded), mkdir (with parents), and copy and move inside `/workspace`. The
//! engine runs each as the sandbox user, under the same path rules as the file routes.

use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::engine::{EngineError, FileKind, PathStat, Tenant, Transfer, TransferKind};
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{ApiJson, ApiPath, AppState};

/// The kind of an entry, as every file route names it.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EntryType {
    File,
    Directory,
    Symlink,
    Other,
}

impl From<FileKind> for EntryType {
    fn from(kind: FileKind) -> Self {
        match kind {
            FileKind::File => Self::File,
            FileKind::Directory => Self::Directory,
            FileKind::Symlink => Self::Symlink,
            FileKind::Other => Self::Other,
        }
    }
}

/// `GET …/exists/{path}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Existence {
    pub exists: bool,
    /// What is there; null when nothing is.
    #[serde(rename = "type")]
    pub kind: Option<EntryType>,
}

/// `GET …/stat/{path}`: the entry itself (a symlink is reported as one, not followed).
#[derive(Debug, Serialize, ToSchema)]
pub struct FileStat {
    /// Absolute path inside the container.
    pub path: String,
    #[serde(rename = "type")]
    pub kind: EntryType,
    /// Bytes (for a symlink, the length of its target's name).
    pub size: u64,
    /// Permission bits in octal, e.g. `0644`.
    #[schema(example = "0644")]
    pub mode: String,
    /// Last modification, RFC 3339 in UTC.
    pub modified_at: String,
}

impl From<PathStat> for FileStat {
    fn from(stat: PathStat) -> Self {
        let modified_at = DateTime::<Utc>::from_timestamp_micros((stat.modified * 1e6) as i64)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        Self {
            path: stat.path,
            kind: stat.kind.into(),
            size: stat.size,
            mode: format!("{:04o}", stat.mode),
            modified_at,
        }
    }
}

/// `POST …/mkdir/{path}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct MadeDirectory {
    /// Absolute path inside the container.
    pub path: String,
    /// False when the directory was there already.
    pub created: bool,
}

/// The body of `POST …/copy` and `POST …/move`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferRequest {
    /// Relative to `/workspace`, or absolute inside it.
    pub source: String,
    /// The new path itself (not a directory to put the source into); missing parents are made.
    pub destination: String,
    /// Replace what is at `destination` (default false: 409 `path_exists`).
    #[serde(default)]
    pub overwrite: bool,
}

/// A copy or a move done.
#[derive(Debug, Serialize, ToSchema)]
pub struct TransferDone {
    /// Absolute paths inside the container.
    pub source: String,
    pub destination: String,
    /// What went: a file, a directory tree, or (moved) a symlink.
    #[serde(rename = "type")]
    pub kind: EntryType,
}

impl From<Transfer> for TransferDone {
    fn from(done: Transfer) -> Self {
        Self {
            source: done.source,
            destination: done.destination,
            kind: done.kind.into(),
        }
    }
}

/// Whether a path exists, and what it is.
///
/// A symlink is reported as one, not followed; nothing is read.
#[utoipa::path(
    get,
    path = "/containers/{id}/exists/{*path}",
    tag = "files",
    params(
        ("id" = String, Path, description = "Container id"),
        ("path" = String, Path, description = "Path, relative to /workspace"),
    ),
    responses(
        (status = 200, description = "Whether it exists", body = Existence),
        (status = 400, description = "Path outside /workspace (also through a link)", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 403, description = "The sandbox user may not look there", body = ErrorBody),
        (status = 404, description = "No such container", body = ErrorBody),
        (status = 422, description = "Invalid path", body = ErrorBody),
    )
)]
pub(crate) async fn exists(
    State(engine): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    ApiPath((id, path)): ApiPath<(String, String)>,
) -> Result<Json<Existence>, ApiError> {
    let stat = engine.stat_path(&id, &tenant, &path).await?;
    Ok(Json(Existence {
        exists: stat.is_some(),
        kind: stat.map(|stat| stat.kind.into()),
    }))
}

/// Type, size, permission bits and modification time of a path.
///
/// The entry itself is described: a symlink is reported as one, not followed. Nothing is read.
#[utoipa::path(
    get,
    path = "/containers/{id}/stat/{*path}",
    tag = "files",
    params(
        ("id" = String, Path, description = "Container id"),
        ("path" = String, Path, description = "Path, relative to /workspace"),
    ),
    responses(
        (status = 200, description = "What is there", body = FileStat),
        (status = 400, description = "Path outside /workspace (also through a link)", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 403, description = "The sandbox user may not look there", body = ErrorBody),
        (status = 404, description = "No such container, or nothing at the path (`path_not_found`)", body = ErrorBody),
        (status = 422, description = "Invalid path", body = ErrorBody),
    )
)]
pub(crate) async fn stat(
    State(engine): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    ApiPath((id, path)): ApiPath<(String, String)>,
) -> Result<Json<FileStat>, ApiError> {
    match engine.stat_path(&id, &tenant, &path).await? {
        Some(stat) => Ok(Json(stat.into())),
        None => Err(EngineError::PathNotFound { path }.into()),
    }
}

/// Make a directory and its missing parents (like `mkdir -p`).
///
/// The directories belong to the sandbox user. A directory already there answers 200 with
/// `created: false`; a file there is 409.
#[utoipa::path(
    post,
    path = "/containers/{id}/mkdir/{*path}",
    tag = "files",
    params(
        ("id" = String, Path, description = "Container id"),
        ("path" = String, Path, description = "Directory, relative to /workspace"),
    ),
    responses(
        (status = 201, description = "Made", body = MadeDirectory),
        (status = 200, description = "The directory was there already", body = MadeDirectory),
        (status = 400, description = "Path outside /workspace (also through a link)", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 403, description = "The sandbox user may not write there", body = ErrorBody),
        (status = 404, description = "No such container", body = ErrorBody),
        (status = 409, description = "Something that is not a directory has the name (`path_exists`)", body = ErrorBody),
        (status = 422, description = "Invalid path", body = ErrorBody),
    )
)]
pub(crate) async fn mkdir(
    State(engine): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    ApiPath((id, path)): ApiPath<(String, String)>,
) -> Result<(StatusCode, Json<MadeDirectory>), ApiError> {
    let made = engine.make_dir(&id, &tenant, &path).await?;
    let status = if made.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(MadeDirectory {
            path: made.path,
            created: made.created,
        }),
    ))
}

async fn transfer(
    engine: AppState,
    tenant: Tenant,
    id: String,
    kind: TransferKind,
    request: TransferRequest,
) -> Result<Json<TransferDone>, ApiError> {
    let done = engine
        .transfer(
            &id,
            &tenant,
            kind,
            &request.source,
            &request.destination,
            request.overwrite,
        )
        .await?;
    Ok(Json(done.into()))
}

/// Copy a file, or a directory with its whole tree, inside `/workspace`.
///
/// `destination` is the new path itself. A final symlink of the source is followed (inside
/// /workspace only); links inside a tree are copied as links. The copy belongs to the sandbox
/// user; a file the sandbox user may not read is refused (403).
#[utoipa::path(
    post,
    path = "/containers/{id}/copy",
    tag = "files",
    params(("id" = String, Path, description = "Container id")),
    request_body = TransferRequest,
    responses(
        (status = 200, description = "Copied", body = TransferDone),
        (status = 400, description = "Source or destination outside /workspace (also through a link)", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 403, description = "The sandbox user may not read the source or write the destination", body = ErrorBody),
        (status = 404, description = "No such container or source (`path_not_found`)", body = ErrorBody),
        (status = 409, description = "The destination exists and `overwrite` is not set (`path_exists`)", body = ErrorBody),
        (status = 422, description = "Invalid body, or a directory copied into itself", body = ErrorBody),
    )
)]
pub(crate) async fn copy(
    State(engine): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    ApiPath(id): ApiPath<String>,
    ApiJson(request): ApiJson<TransferRequest>,
) -> Result<Json<TransferDone>, ApiError> {
    transfer(engine, tenant, id, TransferKind::Copy, request).await
}

/// Move (rename) a file, a directory or a symlink inside `/workspace`.
///
/// `destination` is the new path itself. The entry itself moves (a symlink leading out of
/// /workspace is refused). An entry the sandbox user may not write is refused (403).
#[utoipa::path(
    post,
    path = "/containers/{id}/move",
    tag = "files",
    params(("id" = String, Path, description = "Container id")),
    request_body = TransferRequest,
    responses(
        (status = 200, description = "Moved", body = TransferDone),
        (status = 400, description = "Source or destination outside /workspace (also through a link)", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 403, description = "The sandbox user may not move the source or write the destination", body = ErrorBody),
        (status = 404, description = "No such container or source (`path_not_found`)", body = ErrorBody),
        (status = 409, description = "The destination exists and `overwrite` is not set (`path_exists`)", body = ErrorBody),
        (status = 422, description = "Invalid body, or a directory moved into itself", body = ErrorBody),
    )
)]
pub(crate) async fn move_path(
    State(engine): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    ApiPath(id): ApiPath<String>,
    ApiJson(request): ApiJson<TransferRequest>,
) -> Result<Json<TransferDone>, ApiError> {
    transfer(engine, tenant, id, TransferKind::Move, request).await
}
