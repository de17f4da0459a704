//! API keys and the tenants they name, for every HTTP face (REST, `/mcp`, the guest proxy).
//!
//! When keys are configured, a request must carry one in `X-API-Key` or
//! `Authorization: Bearer`. Keys are compared in constant time through their SHA-256 digests.
//! Each key is a tenant: the sandboxes it creates are owned by the key's fingerprint, and other
//! tenants get "not found" for them. Without keys every caller is the same, unnamed tenant.

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::engine::Tenant;

/// Header for the API key.
pub const API_KEY_HEADER: &str = "x-api-key";

/// Why a request was not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("an API key is required: send it in X-API-Key or Authorization: Bearer")]
    Missing,
    #[error("the API key is not valid")]
    Invalid,
}

struct Key {
    digest: [u8; 32],
    fingerprint: String,
}

/// The configured API keys.
#[derive(Default)]
pub struct ApiKeys {
    keys: Vec<Key>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys")
            .field("count", &self.keys.len())
            .finish()
    }
}

impl ApiKeys {
    /// Keys from the command line; blank entries are ignored.
    pub fn new<I, S>(keys: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let keys = keys
            .into_iter()
            .map(|key| key.as_ref().trim().to_string())
            .filter(|key| !key.is_empty())
            .map(|key| {
                let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
                Key {
                    fingerprint: format!("key_{}", hex::encode(&digest[..8])),
                    digest,
                }
            })
            .collect();
        Self { keys }
    }

    pub fn is_enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The tenant the request's key belongs to.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Tenant, AuthError> {
        if !self.is_enabled() {
            return Ok(Tenant::Local);
        }
        let presented = presented_key(headers).ok_or(AuthError::Missing)?;
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Every key is compared, so the time taken does not tell which one matched.
        let mut matched: Option<&Key> = None;
        for key in &self.keys {
            if bool::from(key.digest.ct_eq(&digest)) {
                matched = Some(key);
            }
        }
        matched
            .map(|key| Tenant::Key(key.fingerprint.clone()))
            .ok_or(AuthError::Invalid)
    }
}

fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(API_KEY_HEADER) {
        return value.to_str().ok().map(str::trim);
    }
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_str(value).expect("header"));
        headers
    }

    #[test]
    fn without_keys_everyone_is_the_same_tenant() {
        let keys = ApiKeys::new(Vec::<String>::new());
        assert_eq!(keys.authenticate(&HeaderMap::new()), Ok(Tenant::Local));
    }

    #[test]
    fn either_header_carries_the_key() {
        let keys = ApiKeys::new(["alpha", " beta ", ""]);
        let by_header = keys
            .authenticate(&headers("x-api-key", "alpha"))
            .expect("x-api-key");
        let by_bearer = keys
            .authenticate(&headers("authorization", "Bearer alpha"))
            .expect("bearer");
        assert_eq!(by_header, by_bearer);
        let beta = keys
            .authenticate(&headers("authorization", "bearer beta"))
            .expect("beta");
        assert_ne!(beta, by_header, "each key is its own tenant");
        assert!(matches!(beta, Tenant::Key(ref fingerprint) if fingerprint.starts_with("key_")));
    }

    #[test]
    fn wrong_or_missing_keys_are_refused() {
        let keys = ApiKeys::new(["alpha"]);
        assert_eq!(
            keys.authenticate(&HeaderMap::new()),
            Err(AuthError::Missing)
        );
        assert_eq!(
            keys.authenticate(&headers("x-api-key", "alph")),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            keys.authenticate(&headers("authorization", "Basic alpha")),
            Err(AuthError::Missing)
        );
    }
}
