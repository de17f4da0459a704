//! The request context every HTTP request runs in: a request id (the client's `X-Request-Id`
//! when it is sane, else a new uuid) echoed in the response, and a `request` span carrying it,
//! the sandbox id a `/containers/{id}/…` path names and, once the key is checked, the tenant's
//! fingerprint, so every log line a request causes can be traced back to it.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

/// The header that carries the request id, both ways.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Longest request id taken from a client.
const MAX_REQUEST_ID_LEN: usize = 128;

/// The request's span, for the layers inside (the key check records the tenant in it).
#[derive(Debug, Clone)]
pub struct RequestSpan(pub tracing::Span);

impl RequestSpan {
    /// Records the tenant's fingerprint (`local` without keys) in the request's span.
    pub fn record_tenant(&self, tenant: &crate::engine::Tenant) {
        self.0.record("tenant", tenant.label().unwrap_or("local"));
    }
}

/// A client's request id, if it is one a log can carry as is: 1–128 characters from
/// `[A-Za-z0-9._:-]`. Anything else is replaced, not trusted.
fn sane(value: &HeaderValue) -> Option<String> {
    let text = value.to_str().ok()?;
    let ok = !text.is_empty()
        && text.len() <= MAX_REQUEST_ID_LEN
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    ok.then(|| text.to_string())
}

/// The sandbox id in a `/containers/{id}…` path, if it looks like one.
fn sandbox_in_path(path: &str) -> Option<&str> {
    let id = path.strip_prefix("/containers/")?.split('/').next()?;
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
    ok.then_some(id)
}

/// The outermost middleware: the id, the span, and the response header.
pub async fn request_context(mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(sane)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %request.method(),
        path = %request.uri().path(),
        sandbox_id = tracing::field::Empty,
        tenant = tracing::field::Empty,
    );
    if let Some(sandbox) = sandbox_in_path(request.uri().path()) {
        span.record("sandbox_id", sandbox);
    }
    request.extensions_mut().insert(RequestSpan(span.clone()));
    let started = std::time::Instant::now();
    let mut response = async move {
        let response = next.run(request).await;
        tracing::debug!(
            status = response.status().as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "request done"
        );
        response
    }
    .instrument(span)
    .await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sane_ids_are_taken() {
        let take = |text: &str| sane(&HeaderValue::from_str(text).expect("header"));
        assert_eq!(take("abc-123_x.y:z").as_deref(), Some("abc-123_x.y:z"));
        assert_eq!(take(""), None);
        assert_eq!(take("has space"), None);
        assert_eq!(take("quote\"json"), None);
        assert_eq!(take(&"a".repeat(129)), None);
        assert_eq!(take(&"a".repeat(128)).map(|id| id.len()), Some(128));
    }

    #[test]
    fn the_sandbox_id_comes_from_container_paths() {
        assert_eq!(sandbox_in_path("/containers/sbx_1/execute"), Some("sbx_1"));
        assert_eq!(sandbox_in_path("/containers/sbx_1"), Some("sbx_1"));
        assert_eq!(sandbox_in_path("/containers"), None);
        assert_eq!(sandbox_in_path("/containers/"), None);
        assert_eq!(sandbox_in_path("/mcp"), None);
        assert_eq!(sandbox_in_path("/containers/a%20b"), None);
    }
}
