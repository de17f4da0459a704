//! `GET /metrics`: the engine's counters in the Prometheus text format (OpenMetrics flavour).

use std::sync::Arc;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;

use crate::engine::Engine;

/// The content type of the OpenMetrics text format.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Live sandboxes, executions by outcome, execution and sandbox-creation durations.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "metrics",
    responses(
        (status = 200, description = "Metrics in the Prometheus/OpenMetrics text format", body = String, content_type = "application/openmetrics-text"),
        (status = 401, description = "Missing or wrong API key", body = super::error::ErrorBody),
    )
)]
pub(crate) async fn metrics(State(engine): State<Arc<Engine>>) -> impl IntoResponse {
    ([(CONTENT_TYPE, OPENMETRICS)], engine.metrics_text())
}
