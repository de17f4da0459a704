//! Background processes: `POST/GET /containers/{id}/processes`, `GET …/processes/{pid}`,
//! `POST …/{pid}/kill`, `POST …/{pid}/stdin`, and the output as SSE (`GET …/{pid}/events`) or
//! WebSocket (`GET …/{pid}/ws`) in the E2B/Colima message shapes. `{pid}` is the kernelbox pid
//! or the process's tag.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::Extension;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::header::HeaderMap;
use axum::http::{HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use utoipa::{IntoParams, ToSchema};

use crate::engine::Tenant;
use crate::engine::processes::{ProcessEvents, ProcessInfo, ProcessMessage, StartProcess};
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{ApiJson, ApiPath, AppState};

/// How often an idle WebSocket is pinged.
const WS_PING: Duration = Duration::from_secs(15);

/// A process to start in the background.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartBody {
    /// Run by `bash -c` as the sandbox user (`command` is accepted too).
    #[serde(alias = "command")]
    pub cmd: String,
    /// Working directory under `/workspace` (relative paths are resolved against it; default
    /// `/workspace`). A path outside `/workspace` is refused.
    pub cwd: Option<String>,
    /// Extra environment variables.
    pub env: Option<HashMap<String, String>>,
    /// A name to address the process by instead of its pid: letters, digits, `.`, `_`, `-`,
    /// not only digits; unique among the running processes.
    pub tag: Option<String>,
}

/// A background process.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProcessView {
    /// The kernelbox process id (per sandbox, from 1, never reused in it).
    pub pid: u64,
    /// The pid inside the sandbox's own pid namespace (the process leads its process group).
    pub os_pid: u32,
    pub tag: Option<String>,
    pub command: String,
    pub cwd: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub ended_at: Option<chrono::DateTime<chrono::Utc>>,
    /// `running`, `exited` or `killed` (ended by a signal).
    pub state: String,
    /// Set once ended; null if no exit code could be read (the sandbox went away).
    pub exit_code: Option<i64>,
    /// The signal that ended it (`SIGTERM`…), read from an exit code of 128 + n as a shell does.
    pub signal: Option<String>,
    pub stdin_open: bool,
    /// Bytes printed so far (stdout and stderr).
    pub output_bytes: u64,
    /// The cursor (`since`) of the next output event.
    pub next_seq: u64,
    /// Output events dropped from the replay buffer so far (it keeps the last
    /// `--output-limit-bytes`).
    pub dropped_events: u64,
}

impl From<ProcessInfo> for ProcessView {
    fn from(info: ProcessInfo) -> Self {
        Self {
            pid: info.pid,
            os_pid: info.os_pid,
            tag: info.tag,
            command: info.command,
            cwd: info.cwd,
            started_at: info.started_at,
            ended_at: info.ended_at,
            state: serde_json::to_value(info.state)
                .ok()
                .and_then(|state| state.as_str().map(String::from))
                .unwrap_or_default(),
            exit_code: info.exit_code,
            signal: info.signal.map(String::from),
            stdin_open: info.stdin_open,
            output_bytes: info.output_bytes,
            next_seq: info.next_seq,
            dropped_events: info.dropped_events,
        }
    }
}

/// The processes of a container.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProcessList {
    pub processes: Vec<ProcessView>,
}

/// A signal to send.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KillBody {
    /// One of SIGTERM (default), SIGKILL, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGSTOP,
    /// SIGCONT (with or without `SIG`).
    pub signal: Option<String>,
}

/// Input for a process.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StdinBody {
    /// Text written to the process's stdin (nothing when absent).
    pub data: Option<String>,
    /// Close stdin after writing (the process sees end of file).
    pub close: Option<bool>,
}

/// Where a stream starts.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// The cursor to start from: the `seq` after the last message seen (default 0: all the
    /// buffer holds). For SSE, a `Last-Event-ID` header does the same.
    pub since: Option<u64>,
}

fn query(query: Result<Query<StreamQuery>, QueryRejection>) -> Result<Option<u64>, ApiError> {
    Ok(query?.0.since)
}

/// Start a background process.
#[utoipa::path(
    post,
    path = "/containers/{id}/processes",
    tag = "processes",
    params(("id" = String, Path, description = "Container id")),
    request_body = StartBody,
    responses(
        (status = 201, description = "The process runs", body = ProcessView),
        (status = 400, description = "cwd outside /workspace", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such container", body = ErrorBody),
        (status = 409, description = "A running process has the tag", body = ErrorBody),
        (status = 422, description = "Invalid body", body = ErrorBody),
        (status = 429, description = "The container runs its limit of background processes", body = ErrorBody),
        (status = 503, description = "Docker unreachable", body = ErrorBody),
    )
)]
pub(crate) async fn start(
    State(engine): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<StartBody>,
) -> Result<(StatusCode, Json<ProcessView>), ApiError> {
    let info = engine
        .start_process(
            &id,
            &tenant,
            StartProcess {
                command: body.cmd,
                cwd: body.cwd,
                env: body.env.unwrap_or_default(),
                tag: body.tag,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(info.into())))
}

/// List a container's background processes, running and recently ended, oldest first.
#[utoipa::path(
    get,
    path = "/containers/{id}/processes",
    tag = "processes",
    params(("id" = String, Path, description = "Container id")),
    responses(
        (status = 200, description = "The processes", body = ProcessList),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such container", body = ErrorBody),
    )
)]
pub(crate) async fn list(
    State(engine): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ProcessList>, ApiError> {
    let processes = engine.list_processes(&id, &tenant)?;
    Ok(Json(ProcessList {
        processes: processes.into_iter().map(ProcessView::from).collect(),
    }))
}

/// One background process's status.
#[utoipa::path(
    get,
    path = "/containers/{id}/processes/{pid}",
    tag = "processes",
    params(
        ("id" = String, Path, description = "Container id"),
        ("pid" = String, Path, description = "The process's pid or tag"),
    ),
    responses(
        (status = 200, description = "The process", body = ProcessView),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such container or process", body = ErrorBody),
    )
)]
pub(crate) async fn get_one(
    State(engine): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    ApiPath((id, pid)): ApiPath<(String, String)>,
) -> Result<Json<ProcessView>, ApiError> {
    Ok(Json(engine.process(&id, &tenant, &pid)?.info().into()))
}

/// Send a signal to a running process (and its process group).
#[utoipa::path(
    post,
    path = "/containers/{id}/processes/{pid}/kill",
    tag = "processes",
    params(
        ("id" = String, Path, description = "Container id"),
        ("pid" = String, Path, description = "The process's pid or tag"),
    ),
    request_body = KillBody,
    responses(
        (status = 200, description = "The signal was sent; the status shows the process as it is now", body = ProcessView),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such container or process", body = ErrorBody),
        (status = 409, description = "The process has ended", body = ErrorBody),
        (status = 422, description = "Unknown signal", body = ErrorBody),
        (status = 503, description = "Docker unreachable", body = ErrorBody),
    )
)]
pub(crate) async fn kill(
    State(engine): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    ApiPath((id, pid)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<KillBody>,
) -> Result<Json<ProcessView>, ApiError> {
    let info = engine
        .kill_process(&id, &tenant, &pid, body.signal.as_deref())
        .await?;
    Ok(Json(info.into()))
}

/// Write to a process's stdin, and close it if asked.
#[utoipa::path(
    post,
    path = "/containers/{id}/processes/{pid}/stdin",
    tag = "processes",
    params(
        ("id" = String, Path, description = "Container id"),
        ("pid" = String, Path, description = "The process's pid or tag"),
    ),
    request_body = StdinBody,
    responses(
        (status = 200, description = "Written", body = ProcessView),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such container or process", body = ErrorBody),
        (status = 409, description = "The process has ended or its stdin is closed", body = ErrorBody),
        (status = 422, description = "Invalid body", body = ErrorBody),
        (status = 504, description = "The process does not read its stdin", body = ErrorBody),
    )
)]
pub(crate) async fn stdin(
    State(engine): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    ApiPath((id, pid)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<StdinBody>,
) -> Result<Json<ProcessView>, ApiError> {
    let data = body.data.unwrap_or_default();
    let info = engine
        .write_process_stdin(
            &id,
            &tenant,
            &pid,
            data.as_bytes(),
            body.close.unwrap_or(false),
        )
        .await?;
    Ok(Json(info.into()))
}

/// A message as an SSE event: named by its type, with its cursor as the event id.
fn sse_event(message: &ProcessMessage) -> Event {
    let name = match message {
        ProcessMessage::Stdout { .. } => "stdout",
        ProcessMessage::Stderr { .. } => "stderr",
        ProcessMessage::Exit { .. } => "exit",
        ProcessMessage::Dropped { .. } => "dropped",
        ProcessMessage::Error { .. } => "error",
    };
    let data = serde_json::to_string(message).unwrap_or_default();
    let event = Event::default().event(name);
    let event = match message.next_seq() {
        Some(next) => event.id((next - 1).to_string()),
        None => event,
    };
    event.data(data)
}

/// The cursor a `Last-Event-ID` header asks to resume after.
fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|value| value.trim().parse::<u64>().ok())
        .and_then(|seq| seq.checked_add(1))
        .map(Some)
        .ok_or_else(|| ApiError::invalid("Last-Event-ID must be an event id this stream sent"))
}

/// Stream a process's output as server-sent events: what the replay buffer holds from `since`
/// (or after `Last-Event-ID`), then live output, then `exit`. Each event's data is the message
/// JSON (`{"type":"stdout","data":…,"seq":…}`), its id the message's `seq`.
#[utoipa::path(
    get,
    path = "/containers/{id}/processes/{pid}/events",
    tag = "processes",
    params(
        ("id" = String, Path, description = "Container id"),
        ("pid" = String, Path, description = "The process's pid or tag"),
        StreamQuery,
    ),
    responses(
        (status = 200, description = "An event stream", content_type = "text/event-stream", body = String),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such container or process", body = ErrorBody),
        (status = 422, description = "Invalid cursor", body = ErrorBody),
    )
)]
pub(crate) async fn events(
    State(engine): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    ApiPath((id, pid)): ApiPath<(String, String)>,
    headers: HeaderMap,
    since: Result<Query<StreamQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let since = query(since)?;
    let resume = last_event_id(&headers)?;
    let process = engine.process(&id, &tenant, &pid)?;
    let stream = process
        .events(resume.or(since).unwrap_or(0), CancellationToken::new())
        .map(|message| Ok::<_, Infallible>(sse_event(&message)));
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response();
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// Stream a process's output over a WebSocket: one JSON text message per event, in the
/// E2B/Colima shapes (`{"type":"stdout"|"stderr","data"}`, `{"type":"exit","code"}`,
/// `{"type":"error","message"}`), replaying the buffer from `since` first. The server closes
/// the socket after `exit`.
#[utoipa::path(
    get,
    path = "/containers/{id}/processes/{pid}/ws",
    tag = "processes",
    params(
        ("id" = String, Path, description = "Container id"),
        ("pid" = String, Path, description = "The process's pid or tag"),
        StreamQuery,
    ),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "Not a WebSocket handshake", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such container or process", body = ErrorBody),
        (status = 405, description = "Not a GET", body = ErrorBody),
        (status = 426, description = "Upgrade required: not a WebSocket handshake", body = ErrorBody),
    )
)]
pub(crate) async fn websocket(
    State(engine): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    ApiPath((id, pid)): ApiPath<(String, String)>,
    since: Result<Query<StreamQuery>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let since = query(since)?.unwrap_or(0);
    let process = engine.process(&id, &tenant, &pid)?;
    let upgrade = upgrade.map_err(|rejection| {
        let status = rejection.status();
        let code = if status == StatusCode::UPGRADE_REQUIRED {
            "upgrade_required"
        } else {
            "invalid_request"
        };
        ApiError::new(status, code, rejection.body_text())
    })?;
    let events = process.events(since, CancellationToken::new());
    Ok(upgrade.on_upgrade(move |socket| relay(socket, events)))
}

/// Sends each message as JSON text until the process's stream ends or the client goes.
async fn relay(mut socket: WebSocket, mut events: ProcessEvents) {
    loop {
        tokio::select! {
            message = events.next() => {
                let Some(message) = message else { break };
                let text = serde_json::to_string(&message).unwrap_or_default();
                if socket.send(Message::Text(text.into())).await.is_err() {
                    return;
                }
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
            () = tokio::time::sleep(WS_PING) => {
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}
