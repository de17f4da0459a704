//! Running code: a whole result (`POST …/execute`), or at once its id (`"wait": false`, 202) to
//! poll; a live stream (`POST …/execute/stream`) as Server-Sent Events or as NDJSON; recent
//! executions by id (`GET /executions/{id}`) and their cancellation (`POST …/cancel`).
//!
//! The SSE events are `stdout`, `stderr` (`{"text"}`), `display`, `result` (`{"data"}`, a MIME
//! bundle), `error` (`{"name","value","traceback"}`) and a last `done` carrying the whole
//! [`ExecutionResult`]. With `Accept: application/x-ndjson` the same steps are JSON lines in the
//! shapes of the Python sandbox MCP server: `{"text","stream"}`, `{"image","format"}`,
//! `{"error","traceback"}`, then a last `{"status", …}` line. Each is sent as soon as the kernel
//! produces it. Closing the connection cancels the execution (the engine interrupts the kernel
//! when its stream is dropped); an execution started with `"wait": false` has no connection to
//! lose and runs to its end or its cancellation.

use std::convert::Infallible;

use futures::StreamExt;

use axum::Extension;
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header::{ACCEPT, CONTENT_TYPE, LOCATION};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::engine::execution::{ExecutionResult as EngineResult, OutputKind, PythonError};
use crate::engine::{ExecEvent, ExecuteRequest, ExecutionOutcome, ExecutionStream};
use crate::engine::{ExecutionRecord, Tenant};
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{ApiJson, ApiPath, AppState, seconds};
use crate::kernel::MimeBundle;

/// The response header that names the execution of an SSE stream.
pub const EXECUTION_ID_HEADER: &str = "x-execution-id";

/// `POST /containers/{id}/execute` and `…/execute/stream`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Execute {
    /// Python (IPython) source.
    pub code: String,
    /// Seconds before the kernel is interrupted (default: the server's `--exec-timeout-secs`).
    #[schema(exclusive_minimum = 0)]
    pub timeout: Option<f64>,
    /// `false`: answer 202 at once with the execution's id, and let it run; poll
    /// `GET /executions/{id}` for its status and result. Only for `…/execute` (default `true`).
    pub wait: Option<bool>,
}

/// The media type of the NDJSON stream.
pub const NDJSON: &str = "application/x-ndjson";

/// How an execution stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionStatus {
    Running,
    Completed,
    /// The code raised, or the kernel died (then `error.name` is `KernelDied`).
    Failed,
    /// The time limit passed and the kernel was interrupted.
    Timeout,
    /// The client went away and the kernel was interrupted.
    Cancelled,
}

/// A Python exception (or a synthesized `TimeoutError` / `KernelDied`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecutionError {
    pub name: String,
    pub value: String,
    /// Traceback lines, without colour codes.
    pub traceback: Vec<String>,
}

impl From<PythonError> for ExecutionError {
    fn from(error: PythonError) -> Self {
        Self {
            name: error.ename,
            value: error.evalue,
            traceback: error.traceback,
        }
    }
}

/// A rich output: a display (`display_data`) or the value of the last expression.
#[derive(Debug, Serialize, ToSchema)]
pub struct RichOutput {
    /// `display` or `result`.
    pub kind: String,
    /// MIME type → content (`image/png` is base64).
    #[schema(value_type = Object)]
    pub data: serde_json::Map<String, serde_json::Value>,
}

/// Everything an execution produced.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecutionResult {
    pub execution_id: String,
    pub container_id: String,
    pub status: ExecutionStatus,
    /// All text output: stdout, then stderr, then the last expression's `text/plain`.
    pub text: String,
    pub stdout: String,
    pub stderr: String,
    /// Every `image/png` output, base64.
    pub images: Vec<String>,
    pub outputs: Vec<RichOutput>,
    pub error: Option<ExecutionError>,
    pub execution_count: Option<i64>,
    pub started_at: DateTime<Utc>,
    pub duration_ms: u64,
    /// Output past the per-execution cap was dropped (a marker says how much).
    pub truncated: bool,
    /// The kernel was restarted (timeout not honoured, or the kernel died): variables are gone.
    pub kernel_restarted: bool,
}

fn status_of(outcome: &ExecutionOutcome) -> ExecutionStatus {
    match outcome {
        ExecutionOutcome::Completed => ExecutionStatus::Completed,
        ExecutionOutcome::Failed | ExecutionOutcome::KernelDied { .. } => ExecutionStatus::Failed,
        ExecutionOutcome::Timeout { .. } => ExecutionStatus::Timeout,
        ExecutionOutcome::Cancelled { .. } => ExecutionStatus::Cancelled,
    }
}

impl From<EngineResult> for ExecutionResult {
    fn from(result: EngineResult) -> Self {
        let mut text = String::with_capacity(result.stdout.len() + result.stderr.len());
        text.push_str(&result.stdout);
        text.push_str(&result.stderr);
        if let Some(value) = result.result_text() {
            text.push_str(value);
        }
        let images = result
            .outputs
            .iter()
            .filter_map(|output| output.data.get("image/png")?.as_str())
            .map(|png| png.split_whitespace().collect())
            .collect();
        let kernel_restarted = matches!(
            result.outcome,
            ExecutionOutcome::Timeout {
                kernel_restarted: true
            } | ExecutionOutcome::Cancelled {
                kernel_restarted: true
            } | ExecutionOutcome::KernelDied { .. }
        );
        Self {
            status: status_of(&result.outcome),
            execution_id: result.execution_id,
            container_id: result.sandbox_id,
            text,
            stdout: result.stdout,
            stderr: result.stderr,
            images,
            outputs: result
                .outputs
                .into_iter()
                .map(|output| RichOutput {
                    kind: match output.kind {
                        OutputKind::Display => "display",
                        OutputKind::Result => "result",
                    }
                    .to_string(),
                    data: output.data,
                })
                .collect(),
            error: result.error.map(ExecutionError::from),
            execution_count: result.execution_count,
            started_at: result.started_at,
            duration_ms: result.duration_ms,
            truncated: result.truncated,
            kernel_restarted,
        }
    }
}

/// `GET /executions/{execution_id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecutionState {
    pub execution_id: String,
    pub container_id: String,
    pub status: ExecutionStatus,
    pub started_at: DateTime<Utc>,
    /// `null` while running.
    pub finished_at: Option<DateTime<Utc>>,
    /// `null` while running.
    pub duration_ms: Option<u64>,
    /// `null` while running.
    pub result: Option<ExecutionResult>,
}

fn engine_request(request: Execute) -> Result<ExecuteRequest, ApiError> {
    Ok(ExecuteRequest {
        timeout: seconds("timeout", request.timeout)?,
        code: request.code,
    })
}

async fn start(
    engine: &AppState,
    tenant: &Tenant,
    id: &str,
    request: Execute,
) -> Result<ExecutionStream, ApiError> {
    if request.wait == Some(false) {
        return Err(ApiError::invalid(
            "\"wait\": false is for POST /containers/{id}/execute; a stream always follows its execution",
        ));
    }
    Ok(engine.execute(id, tenant, engine_request(request)?).await?)
}

/// Run code and answer with the whole result. A timeout is a result too (`status: timeout`,
/// with the output so far); closing the connection cancels the execution. With `"wait": false`
/// the answer is 202 at once, the execution's state (`running`) with a `Location` to poll.
#[utoipa::path(
    post,
    path = "/containers/{id}/execute",
    tag = "execution",
    params(("id" = String, Path, description = "Container id")),
    request_body = Execute,
    responses(
        (status = 200, description = "The execution ended (see `status`)", body = ExecutionResult),
        (status = 202, description = "Started (`\"wait\": false`): poll `Location`", body = ExecutionState,
            headers(("location" = String, description = "`/executions/{execution_id}`"))),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such container", body = ErrorBody),
        (status = 409, description = "Another execution is running in this container", body = ErrorBody),
        (status = 413, description = "Code too large", body = ErrorBody),
        (status = 422, description = "Invalid body", body = ErrorBody),
        (status = 503, description = "Kernel or Docker unreachable", body = ErrorBody),
    )
)]
pub(crate) async fn execute(
    State(engine): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    ApiPath(id): ApiPath<String>,
    ApiJson(request): ApiJson<Execute>,
) -> Result<Response, ApiError> {
    if request.wait == Some(false) {
        let record = engine
            .execute_detached(&id, &tenant, engine_request(request)?)
            .await?;
        let location = HeaderValue::from_str(&format!("/executions/{}", record.execution_id)).ok();
        let mut response =
            (StatusCode::ACCEPTED, Json(ExecutionState::from(record))).into_response();
        if let Some(location) = location {
            response.headers_mut().insert(LOCATION, location);
        }
        return Ok(response);
    }
    let stream = engine
        .execute(&id, &tenant, engine_request(request)?)
        .await?;
    Ok(Json(ExecutionResult::from(std::sync::Arc::unwrap_or_clone(
        stream.finish().await?,
    )))
    .into_response())
}

fn sse_event(name: &'static str, data: &impl Serialize) -> Event {
    let json = serde_json::to_string(data).unwrap_or_else(|_| "{}".to_string());
    Event::default().event(name).data(json)
}

fn to_sse(event: ExecEvent) -> Event {
    match event {
        ExecEvent::Stdout { text } => sse_event("stdout", &serde_json::json!({ "text": text })),
        ExecEvent::Stderr { text } => sse_event("stderr", &serde_json::json!({ "text": text })),
        ExecEvent::Display { data } => sse_event("display", &serde_json::json!({ "data": data })),
        ExecEvent::Result { data } => sse_event("result", &serde_json::json!({ "data": data })),
        ExecEvent::Error(error) => sse_event("error", &ExecutionError::from(error)),
        ExecEvent::Finished(result) => sse_event(
            "done",
            &ExecutionResult::from(std::sync::Arc::unwrap_or_clone(result)),
        ),
    }
}

/// The NDJSON lines of one event: output as `{"text","stream"}`, each image of a display or a
/// result as `{"image","format"}` (its `text/plain` then left out, it only names the figure),
/// other results as `{"text"}` (or `{"data"}` when there is no text), an exception as
/// `{"error","traceback"}`, and the end as `{"status", …}` without the output already sent.
fn to_ndjson(event: ExecEvent) -> Vec<serde_json::Value> {
    use serde_json::json;
    match event {
        ExecEvent::Stdout { text } => vec![json!({ "text": text, "stream": "stdout" })],
        ExecEvent::Stderr { text } => vec![json!({ "text": text, "stream": "stderr" })],
        ExecEvent::Display { data } | ExecEvent::Result { data } => bundle_lines(data),
        ExecEvent::Error(error) => vec![json!({
            "error": format!("{}: {}", error.ename, error.evalue),
            "name": error.ename,
            "value": error.evalue,
            "traceback": error.traceback,
        })],
        ExecEvent::Finished(result) => {
            let result = ExecutionResult::from(std::sync::Arc::unwrap_or_clone(result));
            vec![json!({
                "status": result.status,
                "execution_id": result.execution_id,
                "execution_count": result.execution_count,
                "duration_ms": result.duration_ms,
                "truncated": result.truncated,
                "kernel_restarted": result.kernel_restarted,
            })]
        }
    }
}

/// The image MIME types an NDJSON `image` line carries, with their `format`.
const IMAGE_FORMATS: [(&str, &str); 4] = [
    ("image/png", "png"),
    ("image/jpeg", "jpeg"),
    ("image/gif", "gif"),
    ("image/svg+xml", "svg"),
];

fn bundle_lines(data: MimeBundle) -> Vec<serde_json::Value> {
    let images: Vec<serde_json::Value> = IMAGE_FORMATS
        .iter()
        .filter_map(|(mime, format)| {
            let image = data.get(*mime)?.as_str()?;
            // PNG and JPEG are base64, which the kernel may wrap; SVG is text.
            let image: String = if *format == "svg" {
                image.to_string()
            } else {
                image.split_whitespace().collect()
            };
            Some(serde_json::json!({ "image": image, "format": format }))
        })
        .collect();
    if !images.is_empty() {
        return images;
    }
    match data.get("text/plain").and_then(|text| text.as_str()) {
        Some(text) => vec![serde_json::json!({ "text": text })],
        None => vec![serde_json::json!({ "data": data })],
    }
}

/// Whether the client asked for NDJSON rather than SSE.
fn wants_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|range| range.split(';').next().unwrap_or("").trim())
        .any(|range| {
            range.eq_ignore_ascii_case(NDJSON) || range.eq_ignore_ascii_case("application/ndjson")
        })
}

/// Run code and stream its events as Server-Sent Events, each as soon as it is produced:
/// `stdout`, `stderr` (`{"text"}`), `display`, `result` (`{"data"}`), `error`
/// (`{"name","value","traceback"}`), then `done` with the whole result. With
/// `Accept: application/x-ndjson`, one JSON object per line instead: `{"text","stream"}`,
/// `{"image","format"}`, `{"error","traceback"}`, then `{"status","execution_id",…}`. The
/// execution id is in the `X-Execution-Id` header. Closing the connection cancels the execution.
#[utoipa::path(
    post,
    path = "/containers/{id}/execute/stream",
    tag = "execution",
    params(("id" = String, Path, description = "Container id")),
    request_body = Execute,
    responses(
        (status = 200, description = "An event stream (SSE, or NDJSON with `Accept: application/x-ndjson`)",
            content((String = "text/event-stream"), (String = "application/x-ndjson")),
            headers(("x-execution-id" = String, description = "The execution's id"))),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such container", body = ErrorBody),
        (status = 409, description = "Another execution is running in this container", body = ErrorBody),
        (status = 413, description = "Code too large", body = ErrorBody),
        (status = 422, description = "Invalid body", body = ErrorBody),
        (status = 503, description = "Kernel or Docker unreachable", body = ErrorBody),
    )
)]
pub(crate) async fn execute_stream(
    State(engine): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<Execute>,
) -> Result<Response, ApiError> {
    let stream = start(&engine, &tenant, &id, request).await?;
    let execution_id = HeaderValue::from_str(&stream.execution_id).ok();
    // The stream owns the execution: when the client goes away the body is dropped, and with
    // it the execution stream, which cancels the run.
    let events = futures::stream::unfold(Some(stream), |state| async move {
        let mut stream = state?;
        let event = stream.next().await?;
        let last = matches!(event, ExecEvent::Finished(_));
        Some((event, (!last).then_some(stream)))
    });
    let mut response = if wants_ndjson(&headers) {
        // An error the kernel did not raise (a timeout, a cancellation, a dead kernel) is known
        // only at the end: it gets its `error` line then, before the status.
        let mut error_sent = false;
        let lines = events.map(move |event| {
            let mut chunk = Vec::new();
            let lines = match event {
                ExecEvent::Error(_) => {
                    error_sent = true;
                    to_ndjson(event)
                }
                ExecEvent::Finished(result) if !error_sent && result.error.is_some() => {
                    let mut lines = result
                        .error
                        .clone()
                        .map(|error| to_ndjson(ExecEvent::Error(error)))
                        .unwrap_or_default();
                    lines.extend(to_ndjson(ExecEvent::Finished(result)));
                    lines
                }
                event => to_ndjson(event),
            };
            for line in lines {
                // A `Value` always serializes.
                let _ = serde_json::to_writer(&mut chunk, &line);
                chunk.push(b'\n');
            }
            Ok::<_, Infallible>(Bytes::from(chunk))
        });
        let mut response = Body::from_stream(lines).into_response();
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(NDJSON));
        response
    } else {
        Sse::new(events.map(|event| Ok::<_, Infallible>(to_sse(event))))
            .keep_alive(KeepAlive::default())
            .into_response()
    };
    let headers = response.headers_mut();
    if let Some(execution_id) = execution_id {
        headers.insert(EXECUTION_ID_HEADER, execution_id);
    }
    // Reverse proxies (nginx) must not buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

impl From<ExecutionRecord> for ExecutionState {
    fn from(record: ExecutionRecord) -> Self {
        let result = record
            .result
            .map(|result| ExecutionResult::from(std::sync::Arc::unwrap_or_clone(result)));
        ExecutionState {
            execution_id: record.execution_id,
            container_id: record.sandbox_id,
            status: result
                .as_ref()
                .map_or(ExecutionStatus::Running, |result| result.status),
            started_at: record.started_at,
            finished_at: result.as_ref().map(|result| {
                result.started_at + chrono::Duration::milliseconds(result.duration_ms as i64)
            }),
            duration_ms: result.as_ref().map(|result| result.duration_ms),
            result,
        }
    }
}

/// A recent execution: running, or ended with its result. Only a bounded number of recent
/// executions are kept.
#[utoipa::path(
    get,
    path = "/executions/{execution_id}",
    tag = "execution",
    params(("execution_id" = String, Path, description = "Execution id (`exe_…`)")),
    responses(
        (status = 200, description = "The execution", body = ExecutionState),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "Unknown, forgotten, or another tenant's execution", body = ErrorBody),
    )
)]
pub(crate) async fn execution(
    State(engine): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    ApiPath(execution_id): ApiPath<String>,
) -> Result<Json<ExecutionState>, ApiError> {
    Ok(Json(engine.execution(&execution_id, &tenant)?.into()))
}

/// Cancel a running execution: the kernel is interrupted (its state kept, as for a timeout) and
/// the answer, once it has stopped, is its state (`cancelled`, with the output so far). An
/// execution that already ended is answered as it is.
#[utoipa::path(
    post,
    path = "/executions/{execution_id}/cancel",
    tag = "execution",
    params(("execution_id" = String, Path, description = "Execution id (`exe_…`)")),
    responses(
        (status = 200, description = "The execution, ended", body = ExecutionState),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "Unknown, forgotten, or another tenant's execution", body = ErrorBody),
        (status = 409, description = "The kernel did not stop in time", body = ErrorBody),
    )
)]
pub(crate) async fn cancel(
    State(engine): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    ApiPath(execution_id): ApiPath<String>,
) -> Result<Json<ExecutionState>, ApiError> {
    Ok(Json(
        engine
            .cancel_execution(&execution_id, &tenant)
            .await?
            .into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Output;

    #[test]
    fn text_gathers_every_text_output_and_images_are_collected() {
        let mut bundle = serde_json::Map::new();
        bundle.insert("text/plain".into(), "2".into());
        let mut image = serde_json::Map::new();
        image.insert("image/png".into(), "iVBO\nRw0K\n".into());
        let result = ExecutionResult::from(EngineResult {
            execution_id: "exe_1".into(),
            sandbox_id: "sbx_1".into(),
            outcome: ExecutionOutcome::Timeout {
                kernel_restarted: true,
            },
            stdout: "hi\n".into(),
            stderr: "warn\n".into(),
            outputs: vec![
                Output {
                    kind: OutputKind::Display,
                    data: image,
                },
                Output {
                    kind: OutputKind::Result,
                    data: bundle,
                },
            ],
            error: None,
            execution_count: Some(3),
            started_at: Utc::now(),
            duration_ms: 5,
            truncated: false,
        });
        assert_eq!(result.text, "hi\nwarn\n2");
        assert_eq!(result.images, vec!["iVBORw0K".to_string()]);
        assert_eq!(result.status, ExecutionStatus::Timeout);
        assert!(result.kernel_restarted);
        assert_eq!(result.outputs[1].kind, "result");
    }
}
