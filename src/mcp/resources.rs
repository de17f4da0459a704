//! Sessions, their files and their large outputs as MCP resources.
//!
//! | URI                                               | content                              |
//! |---------------------------------------------------|--------------------------------------|
//! | `sessions://`                                     | the caller's sessions (JSON)         |
//! | `session://{session_id}`                          | one session (JSON)                   |
//! | `session://{session_id}/files/{path}`             | a file in /workspace (text or blob)  |
//! | `session://{session_id}/executions/{id}/outputs/{n}.{ext}` | an image too large to inline |
//! | `session://{session_id}/executions/{id}/stdout` (or `stderr`) | an execution's whole output |

use base64::Engine as _;
use rmcp::ErrorData;
use rmcp::model::{
    ListResourceTemplatesResult, ListResourcesResult, ReadResourceResult, Resource,
    ResourceContents, ResourceTemplate,
};
use serde_json::Value;

use crate::engine::{Engine, EngineError, Tenant};

/// The largest file `read_file` and file resources return (larger ones are read in parts with
/// code or commands).
pub(crate) const READ_LIMIT: u64 = 8 * 1024 * 1024;

const SESSIONS_URI: &str = "sessions://";
const SESSION_SCHEME: &str = "session://";

/// The resources a caller can see: the session list and each session.
pub(crate) fn list(engine: &Engine, tenant: &Tenant) -> ListResourcesResult {
    let mut resources = vec![
        Resource::new(SESSIONS_URI, "sessions")
            .with_description("Your sandbox sessions")
            .with_mime_type("application/json"),
    ];
    for session in engine.list(tenant) {
        resources.push(
            Resource::new(
                format!("{SESSION_SCHEME}{}", session.id),
                session.id.clone(),
            )
            .with_description(format!("Sandbox session ({})", session.status.as_str()))
            .with_mime_type("application/json"),
        );
    }
    ListResourcesResult::with_all_items(resources)
}

/// The URI templates for sessions and their files.
pub(crate) fn templates() -> ListResourceTemplatesResult {
    ListResourceTemplatesResult::with_all_items(vec![
        ResourceTemplate::new("session://{session_id}", "session")
            .with_description("A sandbox session: status, creation and last use")
            .with_mime_type("application/json"),
        ResourceTemplate::new("session://{session_id}/files/{+path}", "session file")
            .with_description(
                "A file in a session's /workspace (path relative to /workspace); text as text, binary as a blob",
            ),
    ])
}

/// The URI of an execution's whole stdout or stderr.
pub(crate) fn stream_uri(result: &crate::engine::ExecutionResult, stream: &str) -> String {
    format!(
        "{SESSION_SCHEME}{}/executions/{}/{stream}",
        result.sandbox_id, result.execution_id
    )
}

/// The URI of a rich output too large to send inline.
pub(crate) fn output_uri(session_id: &str, execution_id: &str, index: usize, mime: &str) -> String {
    let extension = match mime {
        "image/png" => "png",
        "image/jpeg" => "jpeg",
        "image/gif" => "gif",
        "image/webp" => "webp",
        "image/svg+xml" => "svg",
        _ => "bin",
    };
    format!("{SESSION_SCHEME}{session_id}/executions/{execution_id}/outputs/{index}.{extension}")
}

/// Reads one resource.
pub(crate) async fn read(
    engine: &Engine,
    tenant: &Tenant,
    uri: &str,
) -> Result<ReadResourceResult, ErrorData> {
    if uri == SESSIONS_URI {
        return json_contents(uri, &engine.list(tenant));
    }
    let rest = uri
        .strip_prefix(SESSION_SCHEME)
        .ok_or_else(|| not_found(uri))?;
    let (session_id, path) = rest.split_once('/').unwrap_or((rest, ""));
    if path.is_empty() {
        let info = engine
            .info(session_id, tenant)
            .map_err(|_| not_found(uri))?;
        return json_contents(uri, &info);
    }
    if let Some(file) = path.strip_prefix("files/") {
        return read_file(engine, tenant, uri, session_id, file).await;
    }
    if let Some(output) = path.strip_prefix("executions/") {
        return read_output(engine, tenant, uri, session_id, output);
    }
    Err(not_found(uri))
}

async fn read_file(
    engine: &Engine,
    tenant: &Tenant,
    uri: &str,
    session_id: &str,
    path: &str,
) -> Result<ReadResourceResult, ErrorData> {
    let content = engine
        .read_file(session_id, tenant, path, READ_LIMIT)
        .await
        .map_err(|error| match error {
            EngineError::NotFound { .. } | EngineError::PathNotFound { .. } => not_found(uri),
            EngineError::PathOutsideWorkspace { .. } | EngineError::IsADirectory { .. } => {
                ErrorData::invalid_params(error.to_string(), None)
            }
            EngineError::TooLarge { .. } => ErrorData::invalid_params(
                format!("{error}; read it with run_command or execute_code"),
                None,
            ),
            other => {
                tracing::warn!(error = %other, "reading a file resource failed");
                ErrorData::internal_error("the file could not be read", None)
            }
        })?;
    let contents = match String::from_utf8(content) {
        Ok(text) => ResourceContents::text(text, uri),
        Err(error) => ResourceContents::blob(
            base64::engine::general_purpose::STANDARD.encode(error.as_bytes()),
            uri,
        )
        .with_mime_type("application/octet-stream"),
    };
    Ok(ReadResourceResult::new(vec![contents]))
}

/// `{execution_id}/outputs/{index}.{ext}` or `{execution_id}/stdout|stderr`: output of a
/// remembered execution.
fn read_output(
    engine: &Engine,
    tenant: &Tenant,
    uri: &str,
    session_id: &str,
    output: &str,
) -> Result<ReadResourceResult, ErrorData> {
    let finished = |execution_id: &str| {
        engine
            .execution(execution_id, tenant)
            .ok()
            .and_then(|record| record.result)
            .filter(|result| result.sandbox_id == session_id)
            .ok_or_else(|| not_found(uri))
    };
    if let Some((execution_id, stream)) = output.split_once('/')
        && (stream == "stdout" || stream == "stderr")
    {
        let result = finished(execution_id)?;
        let text = if stream == "stdout" {
            &result.stdout
        } else {
            &result.stderr
        };
        return Ok(ReadResourceResult::new(vec![ResourceContents::text(
            text.as_str(),
            uri,
        )]));
    }
    let (execution_id, rest) = output
        .split_once("/outputs/")
        .ok_or_else(|| not_found(uri))?;
    let (index, extension) = rest.split_once('.').ok_or_else(|| not_found(uri))?;
    let index: usize = index.parse().map_err(|_| not_found(uri))?;
    let mime = match extension {
        "png" => "image/png",
        "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "svg" => "image/svg+xml",
        _ => return Err(not_found(uri)),
    };
    let result = finished(execution_id)?;
    let data = result
        .outputs
        .get(index)
        .and_then(|output| output.data.get(mime))
        .and_then(Value::as_str)
        .ok_or_else(|| not_found(uri))?;
    let contents = if mime == "image/svg+xml" {
        ResourceContents::text(data, uri).with_mime_type(mime)
    } else {
        ResourceContents::blob(data, uri).with_mime_type(mime)
    };
    Ok(ReadResourceResult::new(vec![contents]))
}

fn json_contents(
    uri: &str,
    value: &impl serde::Serialize,
) -> Result<ReadResourceResult, ErrorData> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|error| ErrorData::internal_error(error.to_string(), None))?;
    Ok(ReadResourceResult::new(vec![
        ResourceContents::text(text, uri).with_mime_type("application/json"),
    ]))
}

fn not_found(uri: &str) -> ErrorData {
    ErrorData::resource_not_found(
        format!("no resource {uri} (unknown session, file or output)"),
        None,
    )
}
