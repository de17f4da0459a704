//! Files and directory trees under `/workspace`, streamed both ways: nothing is held whole in
//! memory. Files go up as multipart (field `file`) and come down as raw bytes; trees go up and
//! come down as tar.gz. Path checks, archive sanitizing and size limits are the engine's.

use std::io;

use async_compression::Level;
use async_compression::tokio::bufread::{GzipDecoder, GzipEncoder};
use axum::Extension;
use axum::Json;
use axum::body::Body;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, Request, State};
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use tokio_util::io::{ReaderStream, StreamReader};
use utoipa::ToSchema;

use crate::backend::ByteStream;
use crate::engine::Tenant;
use crate::engine::{EngineError, FileEntry, FileKind};
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{ApiPath, AppState};

/// The multipart field that carries an uploaded file.
pub const FILE_FIELD: &str = "file";

/// A multipart upload: one `file` part with a filename.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct FileUpload {
    /// The file; it is saved under its filename in the target directory.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}

/// A file written by an upload.
#[derive(Debug, Serialize, ToSchema)]
pub struct UploadedFile {
    /// Absolute path inside the container.
    pub path: String,
    pub size: u64,
}

/// A directory tree written by an upload.
#[derive(Debug, Serialize, ToSchema)]
pub struct UploadedTree {
    /// Absolute path of the directory inside the container.
    pub path: String,
}

/// One entry of a directory listing.
#[derive(Debug, Serialize, ToSchema)]
pub struct DirectoryEntry {
    pub name: String,
    pub path: String,
    /// `file`, `directory`, `symlink` or `other`.
    pub kind: String,
    pub size: u64,
    /// Seconds since the Unix epoch.
    pub modified: f64,
}

/// `GET …/files/{path}` on a directory.
#[derive(Debug, Serialize, ToSchema)]
pub struct DirectoryListing {
    pub entries: Vec<DirectoryEntry>,
}

impl From<FileEntry> for DirectoryEntry {
    fn from(entry: FileEntry) -> Self {
        Self {
            kind: match entry.kind {
                FileKind::File => "file",
                FileKind::Directory => "directory",
                FileKind::Symlink => "symlink",
                FileKind::Other => "other",
            }
            .to_string(),
            name: entry.name,
            path: entry.path,
            size: entry.size,
            modified: entry.modified,
        }
    }
}

/// A filename from a multipart part: one plain path component.
fn checked_filename(name: &str) -> Result<&str, ApiError> {
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && !name.chars().any(char::is_control);
    if plain {
        Ok(name)
    } else {
        Err(ApiError::invalid(format!(
            "the uploaded filename {name:?} must be a plain file name (no '/', not '.' or '..')"
        )))
    }
}

/// `attachment; filename="…"` when the name is plain ASCII; nothing otherwise.
fn attachment(name: &str) -> Option<HeaderValue> {
    let plain = name
        .chars()
        .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ');
    plain
        .then(|| HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")).ok())
        .flatten()
}

fn last_component(path: &str) -> &str {
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|name| !name.is_empty())
        .unwrap_or("workspace")
}

async fn save_upload(
    engine: AppState,
    tenant: Tenant,
    id: String,
    dir: &str,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<(StatusCode, Json<UploadedFile>), ApiError> {
    let mut multipart = multipart?;
    while let Some(field) = multipart.next_field().await? {
        if field.name() != Some(FILE_FIELD) {
            continue;
        }
        let filename = checked_filename(field.file_name().unwrap_or_default())?.to_string();
        let path = match dir.trim_end_matches('/') {
            "" => filename,
            dir => format!("{dir}/{filename}"),
        };
        let content = field.map_err(io::Error::other);
        let uploaded = engine.upload_file(&id, &tenant, &path, content).await?;
        return Ok((
            StatusCode::CREATED,
            Json(UploadedFile {
                path: uploaded.path,
                size: uploaded.size,
            }),
        ));
    }
    Err(no_file_part())
}

/// A multipart body without the `file` part that an upload needs.
fn no_file_part() -> ApiError {
    ApiError::invalid(format!("the multipart body has no `{FILE_FIELD}` part"))
}

/// Upload a file into `/workspace` (multipart, field `file`; saved under its filename).
#[utoipa::path(
    post,
    path = "/containers/{id}/files",
    tag = "files",
    params(("id" = String, Path, description = "Container id")),
    request_body(content = FileUpload, content_type = "multipart/form-data"),
    responses(
        (status = 201, description = "Written", body = UploadedFile),
        (status = 400, description = "The upload was interrupted", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such container", body = ErrorBody),
        (status = 403, description = "The sandbox user may not write there", body = ErrorBody),
        (status = 409, description = "A directory has that name", body = ErrorBody),
        (status = 413, description = "Larger than the server's upload limit", body = ErrorBody),
        (status = 422, description = "No `file` part, or a bad filename", body = ErrorBody),
    )
)]
pub(crate) async fn upload_to_workspace(
    State(engine): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    ApiPath(id): ApiPath<String>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<impl IntoResponse, ApiError> {
    save_upload(engine, tenant, id, "", multipart).await
}

/// Upload a file into directory `path` (multipart, field `file`; saved as `{path}/{filename}`;
/// missing directories are created). The body streams to the container; any size up to the
/// server's upload limit.
#[utoipa::path(
    post,
    path = "/containers/{id}/files/{*path}",
    tag = "files",
    params(
        ("id" = String, Path, description = "Container id"),
        ("path" = String, Path, description = "Directory, relative to /workspace"),
    ),
    request_body(content = FileUpload, content_type = "multipart/form-data"),
    responses(
        (status = 201, description = "Written", body = UploadedFile),
        (status = 400, description = "Path outside /workspace, or the upload was interrupted", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such container", body = ErrorBody),
        (status = 403, description = "The sandbox user may not write there", body = ErrorBody),
        (status = 409, description = "A directory has that name", body = ErrorBody),
        (status = 413, description = "Larger than the server's upload limit", body = ErrorBody),
        (status = 422, description = "No `file` part, or a bad filename or path", body = ErrorBody),
    )
)]
pub(crate) async fn upload_file(
    State(engine): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    ApiPath((id, dir)): ApiPath<(String, String)>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<impl IntoResponse, ApiError> {
    save_upload(engine, tenant, id, &dir, multipart).await
}

/// Download a file (streamed, with its length), or list a directory as JSON.
#[utoipa::path(
    get,
    path = "/containers/{id}/files/{*path}",
    tag = "files",
    params(
        ("id" = String, Path, description = "Container id"),
        ("path" = String, Path, description = "File or directory, relative to /workspace"),
    ),
    responses(
        (status = 200, description = "The file's bytes, or a directory's listing", content(
            (Vec<u8> = "application/octet-stream"),
            (DirectoryListing = "application/json"),
        )),
        (status = 400, description = "Path outside /workspace", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 403, description = "The sandbox user may not read or remove it", body = ErrorBody),
        (status = 404, description = "No such container or path", body = ErrorBody),
        (status = 422, description = "Invalid path", body = ErrorBody),
    )
)]
pub(crate) async fn download_file(
    State(engine): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    ApiPath((id, path)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    let download = match engine.open_file(&id, &tenant, &path).await {
        Ok(download) => download,
        Err(EngineError::IsADirectory { .. }) => {
            let entries = engine.list_files(&id, &tenant, &path).await?;
            return Ok(Json(DirectoryListing {
                entries: entries.into_iter().map(DirectoryEntry::from).collect(),
            })
            .into_response());
        }
        Err(error) => return Err(error.into()),
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(CONTENT_LENGTH, HeaderValue::from(download.size));
    if let Some(disposition) = attachment(last_component(&path)) {
        headers.insert(CONTENT_DISPOSITION, disposition);
    }
    Ok((headers, Body::from_stream(download.stream)).into_response())
}

/// The headers a download would have, without the bytes.
///
/// A file's `Content-Length` (a final link followed, as a download does), or
/// `Content-Type: application/json` for a directory, whose GET is a listing. Nothing is read.
#[utoipa::path(
    head,
    path = "/containers/{id}/files/{*path}",
    tag = "files",
    params(
        ("id" = String, Path, description = "Container id"),
        ("path" = String, Path, description = "File or directory, relative to /workspace"),
    ),
    responses(
        (status = 200, description = "It exists; for a file, `Content-Length` is its size"),
        (status = 400, description = "Path outside /workspace"),
        (status = 401, description = "Missing or wrong API key"),
        (status = 403, description = "The sandbox user may not read it"),
        (status = 404, description = "No such container or path"),
        (status = 422, description = "Invalid path"),
    )
)]
pub(crate) async fn head_file(
    State(engine): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    ApiPath((id, path)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    let mut headers = HeaderMap::new();
    match engine.file_size(&id, &tenant, &path).await {
        Ok(size) => {
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            headers.insert(CONTENT_LENGTH, HeaderValue::from(size));
            if let Some(disposition) = attachment(last_component(&path)) {
                headers.insert(CONTENT_DISPOSITION, disposition);
            }
        }
        Err(EngineError::IsADirectory { .. }) => {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        Err(error) => return Err(error.into()),
    }
    Ok((headers, Body::empty()).into_response())
}

/// Delete a file or a directory tree.
#[utoipa::path(
    delete,
    path = "/containers/{id}/files/{*path}",
    tag = "files",
    params(
        ("id" = String, Path, description = "Container id"),
        ("path" = String, Path, description = "File or directory, relative to /workspace"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Path outside /workspace", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 403, description = "The sandbox user may not read or remove it", body = ErrorBody),
        (status = 404, description = "No such container or path", body = ErrorBody),
        (status = 422, description = "Invalid path (the workspace itself cannot be deleted)", body = ErrorBody),
    )
)]
pub(crate) async fn delete_file(
    State(engine): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    ApiPath((id, path)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    engine.delete_path(&id, &tenant, &path).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The archive of a directory upload, as a tar stream. A raw body is a tar.gz, or a plain tar when
/// sent as `application/x-tar`. A `multipart/form-data` body (what `curl -F file=@tree.tar.gz`
/// sends) carries it in its `file` part, gzip or plain: the part's own type is whatever the
/// client guessed, so the gzip magic decides.
async fn tar_upload(request: Request) -> Result<ByteStream, ApiError> {
    let content_type = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = request.into_body().into_data_stream();
    if let Ok(boundary) = multer::parse_boundary(&content_type) {
        let mut form = multer::Multipart::new(body, boundary);
        while let Some(part) = form.next_field().await? {
            if part.name() == Some(FILE_FIELD) {
                return Ok(gunzip_if_gzip(Box::pin(part.map_err(io::Error::other))).await);
            }
        }
        return Err(no_file_part());
    }
    let body: ByteStream = Box::pin(body.map_err(io::Error::other));
    if content_type
        .trim()
        .eq_ignore_ascii_case("application/x-tar")
    {
        return Ok(body);
    }
    Ok(gunzip(body))
}

/// A gzip stream's content.
fn gunzip(stream: ByteStream) -> ByteStream {
    let mut decoder = GzipDecoder::new(StreamReader::new(stream));
    decoder.multiple_members(true);
    Box::pin(ReaderStream::new(decoder))
}

/// `stream` decompressed when it starts with the gzip magic, else as it is. A read error while
/// looking is handed on in the stream, where the engine reports it as for any other upload.
async fn gunzip_if_gzip(mut stream: ByteStream) -> ByteStream {
    const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
    let mut head = Vec::new();
    while head.len() < GZIP_MAGIC.len() {
        match stream.try_next().await {
            Ok(Some(chunk)) => head.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(error) => {
                return Box::pin(futures::stream::once(futures::future::ready(Err(error))));
            }
        }
    }
    let is_gzip = head.starts_with(&GZIP_MAGIC);
    let whole: ByteStream = Box::pin(
        futures::stream::once(futures::future::ready(Ok(Bytes::from(head)))).chain(stream),
    );
    if is_gzip { gunzip(whole) } else { whole }
}

async fn extract_tree(
    engine: AppState,
    tenant: Tenant,
    id: String,
    path: &str,
    request: Request,
) -> Result<(StatusCode, Json<UploadedTree>), ApiError> {
    let tar = tar_upload(request).await?;
    engine.upload_tree(&id, &tenant, path, tar).await?;
    let path = crate::engine::paths::workspace_path(path).map_err(EngineError::from)?;
    Ok((StatusCode::CREATED, Json(UploadedTree { path })))
}

async fn tree_response(
    engine: AppState,
    tenant: Tenant,
    id: String,
    path: &str,
) -> Result<Response, ApiError> {
    let tar = engine.download_dir(&id, &tenant, path).await?;
    let gzip = GzipEncoder::with_quality(StreamReader::new(tar), Level::Fastest);
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/gzip"));
    if let Some(disposition) = attachment(&format!("{}.tar.gz", last_component(path))) {
        headers.insert(CONTENT_DISPOSITION, disposition);
    }
    Ok((headers, Body::from_stream(ReaderStream::new(gzip))).into_response())
}

/// Upload a tar.gz (or, as `application/x-tar`, a plain tar) and extract it into `/workspace`,
/// with the sandbox user's rights. Entries with `..`, absolute names, links leaving the target,
/// devices and fifos are refused, and so is an entry that a link on disk would lead out.
#[utoipa::path(
    post,
    path = "/containers/{id}/directories",
    tag = "files",
    params(("id" = String, Path, description = "Container id")),
    request_body(description = "A tar.gz archive (or a plain tar sent as application/x-tar), or a multipart form whose `file` part is a tar.gz or a tar", content(
        (Vec<u8> = "application/gzip"),
        (Vec<u8> = "application/octet-stream"),
        (Vec<u8> = "application/x-tar"),
        (FileUpload = "multipart/form-data"),
    )),
    responses(
        (status = 201, description = "Extracted", body = UploadedTree),
        (status = 400, description = "An entry leads outside /workspace through a link", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 403, description = "The sandbox user may not write there", body = ErrorBody),
        (status = 404, description = "No such container", body = ErrorBody),
        (status = 413, description = "Larger (unpacked) than the server's upload limit", body = ErrorBody),
        (status = 422, description = "Not a tar.gz, no `file` part, or a refused entry", body = ErrorBody),
    )
)]
pub(crate) async fn upload_workspace_tree(
    State(engine): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    ApiPath(id): ApiPath<String>,
    request: Request,
) -> Result<impl IntoResponse, ApiError> {
    extract_tree(engine, tenant, id, "", request).await
}

/// Download all of `/workspace` as a tar.gz, entries relative to it (`./…`).
#[utoipa::path(
    get,
    path = "/containers/{id}/directories",
    tag = "files",
    params(("id" = String, Path, description = "Container id")),
    responses(
        (status = 200, description = "A tar.gz stream", body = Vec<u8>, content_type = "application/gzip"),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such container", body = ErrorBody),
    )
)]
pub(crate) async fn download_workspace_tree(
    State(engine): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    tree_response(engine, tenant, id, "").await
}

/// Upload a tar.gz (or, as `application/x-tar`, a plain tar) and extract it under directory
/// `path` (created when missing). Entries with `..`, absolute names, links leaving the target,
/// devices and fifos are refused.
#[utoipa::path(
    post,
    path = "/containers/{id}/directories/{*path}",
    tag = "files",
    params(
        ("id" = String, Path, description = "Container id"),
        ("path" = String, Path, description = "Directory, relative to /workspace"),
    ),
    request_body(description = "A tar.gz archive (or a plain tar sent as application/x-tar), or a multipart form whose `file` part is a tar.gz or a tar", content(
        (Vec<u8> = "application/gzip"),
        (Vec<u8> = "application/octet-stream"),
        (Vec<u8> = "application/x-tar"),
        (FileUpload = "multipart/form-data"),
    )),
    responses(
        (status = 201, description = "Extracted", body = UploadedTree),
        (status = 400, description = "Path outside /workspace (or an entry led out through a link)", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 403, description = "The sandbox user may not write there", body = ErrorBody),
        (status = 404, description = "No such container", body = ErrorBody),
        (status = 413, description = "Larger (unpacked) than the server's upload limit", body = ErrorBody),
        (status = 422, description = "Not a tar.gz, no `file` part, a refused entry, or a bad path", body = ErrorBody),
    )
)]
pub(crate) async fn upload_tree(
    State(engine): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    ApiPath((id, path)): ApiPath<(String, String)>,
    request: Request,
) -> Result<impl IntoResponse, ApiError> {
    extract_tree(engine, tenant, id, &path, request).await
}

/// Download directory `path` as a tar.gz, entries relative to it (`./…`): extracting it under
/// the same path gives the same tree.
#[utoipa::path(
    get,
    path = "/containers/{id}/directories/{*path}",
    tag = "files",
    params(
        ("id" = String, Path, description = "Container id"),
        ("path" = String, Path, description = "Directory, relative to /workspace"),
    ),
    responses(
        (status = 200, description = "A tar.gz stream", body = Vec<u8>, content_type = "application/gzip"),
        (status = 400, description = "Path outside /workspace", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 403, description = "The sandbox user may not read it", body = ErrorBody),
        (status = 404, description = "No such container or directory", body = ErrorBody),
        (status = 422, description = "Not a directory, or a bad path", body = ErrorBody),
    )
)]
pub(crate) async fn download_tree(
    State(engine): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    ApiPath((id, path)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    tree_response(engine, tenant, id, &path).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filenames_are_single_components() {
        assert!(checked_filename("data.csv").is_ok());
        assert!(checked_filename("with space.txt").is_ok());
        for bad in ["", ".", "..", "a/b", "../x", "a\\b", "nul\0", "line\nbreak"] {
            assert!(checked_filename(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn attachments_name_plain_files_only() {
        assert_eq!(
            attachment("a.txt").and_then(|value| value.to_str().ok().map(String::from)),
            Some("attachment; filename=\"a.txt\"".to_string())
        );
        assert!(attachment("quote\".txt").is_none());
        assert!(attachment("é.txt").is_none());
        assert_eq!(last_component("a/b/"), "b");
        assert_eq!(last_component(""), "workspace");
    }
}
