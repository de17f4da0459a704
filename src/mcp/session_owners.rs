//! Which tenant opened each legacy `/mcp` session. A session id is a bearer of that tenant's
//! sandboxes and streams: for any other tenant it does not exist, on every method (POST, GET and
//! its resumption with `Last-Event-ID`, DELETE), with the same 404 rmcp gives an unknown id.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use dashmap::DashMap;
use rmcp::transport::streamable_http_server::SessionManager;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;

use crate::engine::Tenant;

/// The header naming a legacy MCP session.
const SESSION_HEADER: &str = "mcp-session-id";

/// Session ids and the tenants that opened them.
#[derive(Clone)]
pub struct SessionOwners {
    owners: Arc<DashMap<String, Tenant>>,
    sessions: Arc<LocalSessionManager>,
}

impl std::fmt::Debug for SessionOwners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionOwners")
            .field("sessions", &self.owners.len())
            .finish()
    }
}

/// The answer for a session id the caller may not use: the one rmcp gives for an unknown id,
/// so another tenant's session cannot be told from one that never existed.
fn unknown_session() -> Response {
    (StatusCode::NOT_FOUND, "Not Found: Session not found").into_response()
}

impl SessionOwners {
    pub(super) fn new(sessions: Arc<LocalSessionManager>) -> Self {
        Self {
            owners: Arc::new(DashMap::new()),
            sessions,
        }
    }

    /// Forgets sessions rmcp no longer has (expired or closed).
    async fn prune(&self) {
        let ids: Vec<String> = self
            .owners
            .iter()
            .map(|entry| entry.key().clone())
            .collect();
        for id in ids {
            if !matches!(
                self.sessions.has_session(&id.as_str().into()).await,
                Ok(true)
            ) {
                self.owners.remove(&id);
            }
        }
    }
}

/// Middleware for `/mcp`, inside the API-key check: a request naming a session must come from
/// the tenant that opened it; a new session is recorded as its tenant's.
pub async fn bind_sessions_to_tenants(
    State(owners): State<SessionOwners>,
    request: Request,
    next: Next,
) -> Response {
    let Some(tenant) = request.extensions().get::<Tenant>().cloned() else {
        // The API-key check runs first and always names a tenant; without one, refuse.
        return unknown_session();
    };
    let presented = request
        .headers()
        .get(SESSION_HEADER)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
    if let Some(id) = &presented {
        // Every session is recorded as it opens, so an id we do not know is unknown (rmcp
        // itself would close it with a 204 on DELETE; the spec says 404).
        let owner = owners.owners.get(id).map(|owner| owner.value().clone());
        if owner.as_ref() != Some(&tenant) {
            if owner.is_some() {
                tracing::info!(%tenant, "refused an MCP session id of another tenant");
            }
            return unknown_session();
        }
    }
    let is_delete = request.method() == Method::DELETE;
    let response = next.run(request).await;
    match presented {
        None => {
            if let Some(created) = response.headers().get(SESSION_HEADER) {
                let created = String::from_utf8_lossy(created.as_bytes()).into_owned();
                owners.prune().await;
                owners.owners.insert(created, tenant);
            }
        }
        Some(id) => {
            if is_delete && response.status().is_success() {
                owners.owners.remove(&id);
            }
        }
    }
    response
}
