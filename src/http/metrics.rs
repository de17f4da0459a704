//! `GET /metrics`: the engine's counters, and the HTTP accept loop's, in the Prometheus text
//! format (OpenMetrics flavour).

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;

use super::listener::ConnectionMetrics;
use crate::engine::Engine;

/// The content type of the OpenMetrics text format.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Live sandboxes, executions by outcome, execution and sandbox-creation durations, open and
/// accepted HTTP connections and header-read timeouts.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "metrics",
    responses(
        (status = 200, description = "Metrics in the Prometheus/OpenMetrics text format", body = String, content_type = "application/openmetrics-text"),
        (status = 401, description = "Missing or wrong API key", body = super::error::ErrorBody),
    )
)]
pub(crate) async fn metrics(
    State(engine): State<Arc<Engine>>,
    connections: Option<Extension<ConnectionMetrics>>,
) -> impl IntoResponse {
    let mut text = engine.metrics_text();
    // The accept loop's counters, when the request came through it (not through `oneshot`).
    if let Some(Extension(connections)) = connections {
        let engine_part = text.strip_suffix("# EOF\n").map(str::len);
        if let Some(length) = engine_part {
            text.truncate(length);
            text.push_str(&connections.render());
        }
    }
    ([(CONTENT_TYPE, OPENMETRICS)], text)
}
