//! Request extractors for every HTTP face, whose rejections use the one error shape (422, 413,
//! 415), and small parsing helpers the faces share.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequest, FromRequestParts};

use super::error::ApiError;
use crate::engine::Engine;

/// The largest JSON body a route accepts (code is at most 2 MiB, and JSON escapes grow it).
pub const JSON_BODY_LIMIT: usize = 8 * 1024 * 1024;

/// The router state every face shares: the engine.
pub type AppState = Arc<Engine>;

/// A JSON body whose rejections use the one error shape (422, 413, 415).
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// Path parameters whose rejections use the one error shape.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// Seconds from a request (`timeout`) as a duration; `None` when absent.
pub fn seconds(field: &'static str, value: Option<f64>) -> Result<Option<Duration>, ApiError> {
    value
        .map(|secs| {
            Duration::try_from_secs_f64(secs)
                .ok()
                .filter(|duration| !duration.is_zero())
                .ok_or_else(|| {
                    ApiError::invalid(format!("{field} must be a positive number of seconds"))
                })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_must_be_positive_and_finite() {
        assert_eq!(seconds("timeout", None).ok(), Some(None));
        assert_eq!(
            seconds("timeout", Some(1.5)).ok(),
            Some(Some(Duration::from_millis(1500)))
        );
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e300] {
            assert!(seconds("timeout", Some(bad)).is_err(), "{bad}");
        }
    }
}
