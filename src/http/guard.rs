//! The checks every HTTP request passes before a face sees it: the `Host` and `Origin` checks
//! that stop DNS rebinding and cross-site requests, the JSON content type of JSON routes, and
//! the API key, which names the request's [`Tenant`](crate::engine::Tenant), stored in the
//! request's extensions for the faces.
//!
//! | check      | applies to                                             | refusal |
//! |------------|--------------------------------------------------------|---------|
//! | `Host`     | every request, when the accepted hosts are restricted  | 403     |
//! | `Origin`   | every state-changing request, and every `/mcp` request | 403     |
//! | JSON body  | a request with a body to a JSON route                  | 415     |
//! | API key    | everything but `/health`, when keys are set            | 401     |

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, ORIGIN, TRANSFER_ENCODING};
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::UtoipaMethodRouter;

use super::auth::ApiKeys;
use super::error::{ApiError, GuardError};
use super::extract::{AppState, JSON_BODY_LIMIT};
use super::request_id::RequestSpan;

/// Which `Host` and `Origin` values the server accepts.
#[derive(Debug, Clone, Default)]
pub struct RequestPolicy {
    /// Host names accepted, lower case, without port; empty accepts any.
    hosts: Vec<String>,
    /// Page origins accepted besides loopback pages, lower case, without a trailing slash.
    origins: Vec<String>,
}

impl RequestPolicy {
    /// `hosts` as configured (empty: any host); `origins` are the CORS origins, where `*` only
    /// opens CORS for reads and accepts no foreign origin for a state-changing request.
    pub fn new(hosts: &[String], origins: &[String]) -> Self {
        let normalize = |value: &String| value.trim().trim_end_matches('/').to_ascii_lowercase();
        Self {
            hosts: hosts
                .iter()
                .map(|host| host_name(&normalize(host)).to_string())
                .filter(|host| !host.is_empty())
                .collect(),
            origins: origins
                .iter()
                .map(normalize)
                .filter(|origin| !origin.is_empty() && origin != "*")
                .collect(),
        }
    }

    /// Checks the request's `Host` (or HTTP/2 authority).
    fn check_host(&self, request: &Request) -> Result<(), GuardError> {
        if self.hosts.is_empty() {
            return Ok(());
        }
        // A `Host` header that is there decides, even when it is not text; only without one
        // (HTTP/2) does the request's authority stand in.
        let presented = match request.headers().get(HOST) {
            Some(value) => String::from_utf8_lossy(value.as_bytes()).into_owned(),
            None => request
                .uri()
                .authority()
                .map(|authority| authority.as_str().to_string())
                .unwrap_or_default(),
        };
        let name = presented.trim().to_ascii_lowercase();
        if self.hosts.iter().any(|host| host == host_name(&name)) {
            Ok(())
        } else {
            Err(GuardError::HostNotAllowed { host: presented })
        }
    }

    /// Checks the `Origin` of a request that a page could use to change state (or, for `/mcp`,
    /// to open a stream): loopback pages and the configured origins pass, others are refused.
    /// A request without `Origin` does not come from a page's script and passes.
    fn check_origin(&self, request: &Request) -> Result<(), GuardError> {
        let method = request.method();
        let is_mcp = request.uri().path() == "/mcp" || request.uri().path().starts_with("/mcp/");
        let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
        if *method == Method::OPTIONS || (safe && !is_mcp) {
            return Ok(());
        }
        let Some(origin) = request.headers().get(ORIGIN) else {
            return Ok(());
        };
        let origin = String::from_utf8_lossy(origin.as_bytes()).to_string();
        let normalized = origin.trim().trim_end_matches('/').to_ascii_lowercase();
        if is_loopback_page(&normalized) || self.origins.contains(&normalized) {
            Ok(())
        } else {
            Err(GuardError::OriginNotAllowed { origin })
        }
    }
}

/// The host part of a `Host` value: without port, IPv6 without brackets.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // `[addr]` or `[addr]:port`; anything else after `]` names no host we accept.
        return match rest.split_once(']') {
            Some((address, "")) => address,
            Some((address, port))
                if port.strip_prefix(':').is_some_and(|port| {
                    !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
                }) =>
            {
                address
            }
            _ => host,
        };
    }
    match host.rsplit_once(':') {
        // One colon: name:port. More would be a bare IPv6 address.
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

/// An origin served from this machine's loopback (MCP Inspector runs on localhost).
fn is_loopback_page(origin: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    matches!(scheme, "http" | "https")
        && !authority.contains(['/', '@'])
        && matches!(host_name(authority), "localhost" | "127.0.0.1" | "::1")
}

/// Middleware on the whole router: the `Host` and `Origin` checks.
pub async fn check_host_and_origin(
    State(policy): State<Arc<RequestPolicy>>,
    request: Request,
    next: Next,
) -> Response {
    let checked = policy
        .check_host(&request)
        .and_then(|()| policy.check_origin(&request));
    match checked {
        Ok(()) => next.run(request).await,
        Err(error) => ApiError::from(error).into_response(),
    }
}

/// Whether a request carries a body.
fn has_body(headers: &HeaderMap) -> bool {
    let length = headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok());
    length.is_some_and(|length| length > 0) || headers.contains_key(TRANSFER_ENCODING)
}

/// Whether a `Content-Type` names JSON: `application/json` or `application/*+json`.
fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|subtype| subtype.ends_with("+json"))
}

/// Route middleware for JSON routes (REST, `/mcp`, the guest proxy): a body must be declared
/// JSON, and a declared length above the one JSON body limit is refused before anything parses
/// it. A form post, which a page can send to any site without asking, is refused unread.
pub async fn require_json_body(request: Request, next: Next) -> Response {
    if has_body(request.headers()) {
        let content_type = request
            .headers()
            .get(CONTENT_TYPE)
            .map(|value| String::from_utf8_lossy(value.as_bytes()).to_string())
            .unwrap_or_default();
        if !is_json(&content_type) {
            return ApiError::from(GuardError::NotJson { content_type }).into_response();
        }
    }
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok());
    if let Some(declared) = declared.filter(|length| *length > JSON_BODY_LIMIT as u64) {
        // Read (and drop) a moderately oversized body first: a client that writes its whole
        // body before it reads would otherwise see a reset instead of this answer.
        if declared <= DRAIN_LIMIT {
            drain(request.into_body()).await;
        }
        return ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the body is larger than the limit of {JSON_BODY_LIMIT} bytes"),
        )
        .into_response();
    }
    next.run(request).await
}

/// The largest oversized body read to its end before it is refused.
const DRAIN_LIMIT: u64 = 64 * 1024 * 1024;
/// How long draining an oversized body may take.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads a body to its end (at most [`DRAIN_LIMIT`] bytes, within [`DRAIN_TIMEOUT`]), keeping
/// nothing.
async fn drain(body: axum::body::Body) {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut read = 0u64;
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while let Some(Ok(chunk)) = stream.next().await {
            read += chunk.len() as u64;
            if read > DRAIN_LIMIT {
                break;
            }
        }
    })
    .await;
}

/// A JSON route: a body that is not declared JSON is refused ([`require_json_body`]).
pub fn json(
    (schemas, paths, method_router): UtoipaMethodRouter<AppState>,
) -> UtoipaMethodRouter<AppState> {
    (
        schemas,
        paths,
        method_router.layer(axum::middleware::from_fn(require_json_body)),
    )
}

/// Route middleware: authenticates the request and stores its tenant in the request extensions.
pub async fn require_api_key(
    State(keys): State<Arc<ApiKeys>>,
    mut request: Request,
    next: Next,
) -> Response {
    match keys.authenticate(request.headers()) {
        Ok(tenant) => {
            if let Some(span) = request.extensions().get::<RequestSpan>() {
                span.record_tenant(&tenant);
            }
            request.extensions_mut().insert(tenant);
            next.run(request).await
        }
        Err(error) => ApiError::from(error).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn request(method: Method, path: &str, headers: &[(&str, &str)]) -> Request {
        let mut builder = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(Body::empty()).expect("request")
    }

    fn loopback_policy(origins: &[&str]) -> RequestPolicy {
        let hosts = ["localhost", "127.0.0.1", "::1"].map(String::from);
        let origins: Vec<String> = origins.iter().map(|o| o.to_string()).collect();
        RequestPolicy::new(&hosts, &origins)
    }

    #[test]
    fn host_names_lose_their_port_and_brackets() {
        assert_eq!(host_name("127.0.0.1:8000"), "127.0.0.1");
        assert_eq!(host_name("localhost"), "localhost");
        assert_eq!(host_name("[::1]:8000"), "::1");
        assert_eq!(host_name("::1"), "::1");
        assert_eq!(host_name("a.example:x"), "a.example:x");
        assert_eq!(host_name("[::1]evil"), "[::1]evil");
        assert_eq!(host_name("[::1]:"), "[::1]:");
    }

    #[test]
    fn only_accepted_hosts_pass() {
        let policy = loopback_policy(&[]);
        for host in ["127.0.0.1:8000", "localhost", "[::1]:1", "LOCALHOST:80"] {
            assert!(
                policy
                    .check_host(&request(Method::GET, "/", &[("host", host)]))
                    .is_ok(),
                "{host}"
            );
        }
        for host in [
            "attacker.example",
            "127.0.0.1.attacker.example",
            "localhost.:80",
            "",
        ] {
            assert!(
                policy
                    .check_host(&request(Method::GET, "/", &[("host", host)]))
                    .is_err(),
                "{host}"
            );
        }
        assert!(
            policy.check_host(&request(Method::GET, "/", &[])).is_err(),
            "no Host at all"
        );
        assert!(
            RequestPolicy::new(&[], &[])
                .check_host(&request(Method::GET, "/", &[("host", "any.example")]))
                .is_ok()
        );
    }

    #[test]
    fn foreign_origins_cannot_change_state_even_with_cors_star() {
        let policy = loopback_policy(&["*", "https://app.example/"]);
        let post = |origin: &str| request(Method::POST, "/containers", &[("origin", origin)]);
        assert!(
            policy
                .check_origin(&post("http://attacker.example"))
                .is_err()
        );
        assert!(policy.check_origin(&post("null")).is_err());
        assert!(
            policy
                .check_origin(&post("http://localhost.attacker.example"))
                .is_err()
        );
        assert!(
            policy
                .check_origin(&post("http://localhost@attacker.example"))
                .is_err()
        );
        assert!(policy.check_origin(&post("http://localhost:6274")).is_ok());
        assert!(policy.check_origin(&post("http://[::1]:3000")).is_ok());
        assert!(policy.check_origin(&post("https://APP.example")).is_ok());
        assert!(
            policy
                .check_origin(&request(Method::POST, "/containers", &[]))
                .is_ok(),
            "no Origin: not a page"
        );
        let get = |path: &str| request(Method::GET, path, &[("origin", "http://attacker.example")]);
        assert!(
            policy.check_origin(&get("/containers")).is_ok(),
            "reads are CORS's business"
        );
        assert!(
            policy.check_origin(&get("/mcp")).is_err(),
            "/mcp streams are checked"
        );
    }

    #[test]
    fn json_content_types() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json("application/problem+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json("application/x-www-form-urlencoded"));
        assert!(!is_json("multipart/form-data; boundary=x"));
        assert!(!is_json(""));
    }
}
