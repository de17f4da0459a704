//! The checks every HTTP request passes before a face sees it: the API key, which names the
//! request's [`Tenant`](crate::engine::Tenant), stored in the request's extensions for the faces.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::auth::ApiKeys;
use super::error::ApiError;

/// Middleware: authenticates the request and stores its tenant in the request extensions.
pub async fn require_api_key(
    State(keys): State<Arc<ApiKeys>>,
    mut request: Request,
    next: Next,
) -> Response {
    match keys.authenticate(request.headers()) {
        Ok(tenant) => {
            request.extensions_mut().insert(tenant);
            next.run(request).await
        }
        Err(error) => ApiError::from(error).into_response(),
    }
}
