//! `GET /ready`: the readiness probe, open without a key like `/health`. `/health` says the
//! process is alive (restart it when that fails); `/ready` says whether it can take new work now
//! (send it none while that fails).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::engine::Engine;
use crate::engine::readiness::NotReady;

/// The readiness answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadyBody {
    /// `ready` or `not_ready`.
    pub status: &'static str,
    /// Why not: `docker_unreachable`, `image_missing` or `shutting_down`; absent when ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub reason: Option<NotReady>,
    /// What an operator reads: the reason in words, naming the fix where there is one.
    pub message: String,
}

/// Ready when Docker answers, the sandbox image is present and no shutdown is under way. The
/// check takes at most 2 s and its answer is reused for 2 s.
#[utoipa::path(
    get,
    path = "/ready",
    tag = "probes",
    security(()),
    responses(
        (status = 200, description = "Ready for new work", body = ReadyBody),
        (status = 503, description = "Not ready: Docker unreachable, the image missing, or shutting down", body = ReadyBody),
    )
)]
pub(crate) async fn ready(State(engine): State<Arc<Engine>>) -> Response {
    let readiness = engine.readiness().await;
    let ready = readiness.is_ready();
    let body = ReadyBody {
        status: if ready { "ready" } else { "not_ready" },
        reason: readiness.not_ready,
        message: readiness.message,
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}
