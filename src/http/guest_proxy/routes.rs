//! The proxy's HTTP handlers: `POST` forwards messages, `DELETE` ends a session.
//!
//! An `initialize` request (alone, without a session) opens a session: the engine starts the
//! registered server's process, the request goes to it, and the answer carries
//! `Mcp-Session-Id`. Every other POST names its session in that header. A body of
//! notifications and responses only is answered 202. Requests are answered as one JSON body,
//! or, when the client accepts `text/event-stream`, as an SSE stream carrying the server's
//! notifications for those requests and then the answer (a batch is answered as a batch).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::header::ACCEPT;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use serde_json::Value;
use tokio::sync::mpsc;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ProxyError;
use super::message::{self, Incoming, Message};
use crate::engine::guest_registry::GuestProcess;
use crate::engine::guest_servers::guest_error;
use crate::engine::{Engine, Tenant};
use crate::guest::EVENT_BUFFER;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{ApiPath, AppState};
use crate::http::guard::json;
use crate::json_budget::value_footprint;

/// The header that names a proxy session.
pub const SESSION_HEADER: &str = "mcp-session-id";
/// The most the answers to one POST may hold together (by [`value_footprint`]). One answer is
/// at most a guest server's line, within this; the answers of a batch that pass it are dropped
/// as they come, each replaced by an error that says so.
pub const MAX_BATCH_ANSWER_BYTES: usize = 32 * 1024 * 1024;

type Answer = Pin<Box<dyn Future<Output = Option<Value>> + Send>>;

/// The proxy's routes, with their OpenAPI description.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(json(routes!(post, delete)))
}

/// Forward JSON-RPC messages to an MCP server in the container (MCP Streamable HTTP).
///
/// Send `initialize` alone and without `Mcp-Session-Id` to start a session (a process of the
/// registered server); the answer's `Mcp-Session-Id` names it for every later message. Batches
/// are answered as batches. With `Accept: text/event-stream` the answer is an SSE stream: the
/// server's notifications for these requests, then the response.
#[utoipa::path(
    post,
    path = "/containers/{id}/mcp-proxy/{server}",
    tag = "mcp",
    params(
        ("id" = String, Path, description = "Container id"),
        ("server" = String, Path, description = "A registered MCP server's name"),
        ("Mcp-Session-Id" = Option<String>, Header, description = "The session, from the initialize answer"),
    ),
    request_body(content = serde_json::Value, description = "A JSON-RPC 2.0 message or batch", content_type = "application/json"),
    responses(
        (status = 200, description = "The JSON-RPC answer (JSON, or SSE with `Accept: text/event-stream`)", body = serde_json::Value),
        (status = 202, description = "Notifications or responses only: accepted"),
        (status = 400, description = "Not JSON (-32700), not JSON-RPC (-32600), or no session header", body = serde_json::Value),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such container, server or session", body = serde_json::Value),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 429, description = "Too many sessions in this container", body = serde_json::Value),
    )
)]
pub(crate) async fn post(
    State(engine): State<Arc<Engine>>,
    Extension(tenant): Extension<Tenant>,
    ApiPath((id, server)): ApiPath<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return ApiError::from(rejection).into_response(),
    };
    match forward(&engine, &tenant, &id, &server, &headers, &body).await {
        Ok(response) => response,
        Err(error) => failure(error),
    }
}

async fn forward(
    engine: &Engine,
    tenant: &Tenant,
    id: &str,
    server: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ProxyError> {
    // An unknown or foreign container is "not found" whatever the body holds.
    engine.get(id, tenant)?;
    let incoming = message::parse(body)?;
    let accepts = Accepts::of(headers);
    // Each request waits this long for its answer at most; then it is answered with a timeout
    // error and no longer keeps its session busy.
    let limit = engine.config().guest_request_timeout;
    let initialize = matches!(&incoming, Incoming::Single(message) if message.is_initialize());
    if initialize {
        let session = engine.open_proxy_session(id, tenant, server).await?;
        let answer = answer(session.process.clone(), incoming, None, limit).await;
        if answer
            .as_ref()
            .is_none_or(|answer| answer.get("error").is_some())
        {
            // The server refused (or died): no session to keep.
            let _ = engine
                .close_proxy_session(id, tenant, server, &session.session_id)
                .await;
            return Ok(Json(answer).into_response());
        }
        let mut response = if accepts.json || !accepts.event_stream {
            Json(answer).into_response()
        } else {
            sse(Box::pin(std::future::ready(answer)), None)
        };
        if let Ok(value) = HeaderValue::from_str(&session.session_id) {
            response.headers_mut().insert(SESSION_HEADER, value);
        }
        return Ok(response);
    }
    if incoming.messages().iter().any(Message::is_initialize) {
        return Err(ProxyError::InitializeInBatch);
    }
    let session_id = headers
        .get(SESSION_HEADER)
        .and_then(|value| value.to_str().ok())
        .ok_or(ProxyError::MissingSession)?;
    let process = engine.proxy_session(id, tenant, server, session_id)?;
    if !incoming.expects_answer() {
        answer(process, incoming, None, limit).await;
        return Ok(StatusCode::ACCEPTED.into_response());
    }
    if accepts.event_stream {
        let (events, receiver) = mpsc::channel(EVENT_BUFFER);
        Ok(sse(
            Box::pin(answer(process, incoming, Some(events), limit)),
            Some(receiver),
        ))
    } else {
        Ok(Json(answer(process, incoming, None, limit).await).into_response())
    }
}

/// Forwards every message and collects the answers: one value for a single request, an array
/// for a batch with requests, `None` when nothing expects an answer.
async fn answer(
    process: Arc<GuestProcess>,
    incoming: Incoming,
    events: Option<mpsc::Sender<Value>>,
    limit: Duration,
) -> Option<Value> {
    let single = matches!(incoming, Incoming::Single(_));
    let messages = match incoming {
        Incoming::Single(message) => vec![message],
        Incoming::Batch(messages) => messages,
    };
    let mut requests: Vec<Answer> = Vec::new();
    let held = Arc::new(AtomicUsize::new(0));
    for message in messages {
        match message {
            Message::Notification { body, .. } => {
                if let Err(error) = process.peer().notify(body).await {
                    tracing::debug!(%error, "notification not delivered");
                }
            }
            Message::Response { body } => {
                if let Err(error) = process.peer().respond(body).await {
                    tracing::debug!(%error, "response not delivered");
                }
            }
            Message::Request { id, body, .. } => {
                let process = process.clone();
                let events = events.clone();
                let held = held.clone();
                requests.push(Box::pin(async move {
                    Some(
                        match process.peer().request_within(body, events, limit).await {
                            Ok(answer) => {
                                let size = value_footprint(&answer);
                                if held.fetch_add(size, Ordering::SeqCst) + size
                                    > MAX_BATCH_ANSWER_BYTES
                                {
                                    ProxyError::BatchAnswersTooLarge {
                                        limit: MAX_BATCH_ANSWER_BYTES,
                                    }
                                    .response_for(id)
                                } else {
                                    answer
                                }
                            }
                            Err(error) => ProxyError::from(guest_error(process.server(), error))
                                .response_for(id),
                        },
                    )
                }));
            }
            Message::Invalid { id, reason } => {
                let error = ProxyError::InvalidRequest {
                    id: id.clone(),
                    reason,
                };
                requests.push(Box::pin(std::future::ready(Some(error.response_for(id)))));
            }
        }
    }
    drop(events);
    let answers: Vec<Value> = futures::future::join_all(requests)
        .await
        .into_iter()
        .flatten()
        .collect();
    match (single, answers.is_empty()) {
        (_, true) => None,
        (true, false) => answers.into_iter().next(),
        (false, false) => Some(Value::Array(answers)),
    }
}

/// What the client accepts.
struct Accepts {
    json: bool,
    event_stream: bool,
}

impl Accepts {
    fn of(headers: &HeaderMap) -> Self {
        let accept = headers
            .get_all(ACCEPT)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .collect::<Vec<_>>()
            .join(",")
            .to_ascii_lowercase();
        let event_stream = accept.contains("text/event-stream");
        let json = accept.trim().is_empty()
            || accept.contains("application/json")
            || accept.contains("*/*")
            || accept.contains("application/*");
        Self { json, event_stream }
    }
}

/// An SSE answer: events while `answer` runs, then the answer itself.
fn sse(answer: Answer, events: Option<mpsc::Receiver<Value>>) -> Response {
    Sse::new(sse_events(answer, events))
        .keep_alive(KeepAlive::default())
        .into_response()
}

enum Phase {
    Working(Answer),
    Draining(Option<Value>),
    Done,
}

fn sse_events(
    answer: Answer,
    events: Option<mpsc::Receiver<Value>>,
) -> impl Stream<Item = Result<Event, Infallible>> + Send {
    let events = events.unwrap_or_else(|| mpsc::channel(1).1);
    futures::stream::unfold(
        (Phase::Working(answer), events),
        |(phase, mut events)| async move {
            let answer = match phase {
                Phase::Done => return None,
                Phase::Draining(answer) => answer,
                Phase::Working(mut work) => {
                    tokio::select! {
                        biased;
                        Some(event) = events.recv() => {
                            return Some((message_event(&event), (Phase::Working(work), events)));
                        }
                        answer = &mut work => answer,
                    }
                }
            };
            // Notifications that arrived before the answer go out first.
            match events.try_recv() {
                Ok(event) => Some((message_event(&event), (Phase::Draining(answer), events))),
                Err(_) => answer.map(|answer| (message_event(&answer), (Phase::Done, events))),
            }
        },
    )
}

fn message_event(message: &Value) -> Result<Event, Infallible> {
    Ok(Event::default().event("message").data(message.to_string()))
}

/// End a proxy session and its server process.
#[utoipa::path(
    delete,
    path = "/containers/{id}/mcp-proxy/{server}",
    tag = "mcp",
    params(
        ("id" = String, Path, description = "Container id"),
        ("server" = String, Path, description = "A registered MCP server's name"),
        ("Mcp-Session-Id" = String, Header, description = "The session to end"),
    ),
    responses(
        (status = 204, description = "Ended; its process is gone"),
        (status = 400, description = "No session header", body = serde_json::Value),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such container, server or session", body = serde_json::Value),
    )
)]
pub(crate) async fn delete(
    State(engine): State<Arc<Engine>>,
    Extension(tenant): Extension<Tenant>,
    ApiPath((id, server)): ApiPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(error) = engine.get(&id, &tenant) {
        return failure(error.into());
    }
    let Some(session_id) = headers
        .get(SESSION_HEADER)
        .and_then(|value| value.to_str().ok())
    else {
        return failure(ProxyError::MissingSession);
    };
    match engine
        .close_proxy_session(&id, &tenant, &server, session_id)
        .await
    {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => failure(error.into()),
    }
}

/// A failure as its status and a JSON-RPC error body.
fn failure(error: ProxyError) -> Response {
    (error.status(), Json(error.response_for(error.id()))).into_response()
}
