//! Per-sandbox lifetimes and caller metadata: what they are and the checks on both. Setting a
//! lifetime and the timer that ends it are in [`super::expiry`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::error::EngineError;
use super::validate;

/// A caller's metadata: names to values, sorted by name.
pub type Metadata = BTreeMap<String, String>;

/// Most metadata entries a sandbox may carry.
pub const MAX_METADATA_ENTRIES: usize = 32;
/// The longest metadata name, in bytes.
pub const MAX_METADATA_KEY_BYTES: usize = 64;
/// The longest metadata value, in bytes.
pub const MAX_METADATA_VALUE_BYTES: usize = 512;
/// The most bytes all names and values may take together.
pub const MAX_METADATA_BYTES: usize = 4096;
/// The name of the record a changed lifetime is kept in.
pub(super) const LIFETIME_RECORD: &str = "lifetime";

/// How long a sandbox lives: `timeout_secs` from when it was last set, until `expires_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lifetime {
    pub timeout_secs: u64,
    pub expires_at: DateTime<Utc>,
}

impl Lifetime {
    /// A lifetime of `timeout` from now.
    pub fn from_now(timeout: Duration) -> Self {
        let expires_at = Utc::now()
            + chrono::Duration::from_std(timeout).unwrap_or_else(|_| chrono::Duration::days(1));
        Self {
            timeout_secs: timeout.as_secs(),
            expires_at,
        }
    }

    /// Whether it has ended at `now`.
    pub fn expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at <= now
    }
}

/// A requested lifetime in seconds: positive and at most `max`.
pub fn timeout(secs: u64, max: Duration) -> Result<Duration, EngineError> {
    validate::check(secs >= 1 && secs <= max.as_secs(), "timeout", || {
        format!(
            "{secs} is not a lifetime this server gives: between 1 and {} seconds (--max-sandbox-timeout-secs)",
            max.as_secs()
        )
    })?;
    Ok(Duration::from_secs(secs))
}

/// Caller metadata: at most [`MAX_METADATA_ENTRIES`] entries; names of 1 to
/// [`MAX_METADATA_KEY_BYTES`] ASCII letters, digits and `_-.:/`; values of at most
/// [`MAX_METADATA_VALUE_BYTES`] bytes without control characters; [`MAX_METADATA_BYTES`] in all.
pub fn metadata(metadata: &Metadata) -> Result<(), EngineError> {
    validate::check(metadata.len() <= MAX_METADATA_ENTRIES, "metadata", || {
        format!(
            "{} entries; at most {MAX_METADATA_ENTRIES} are kept",
            metadata.len()
        )
    })?;
    let mut total = 0;
    for (key, value) in metadata {
        metadata_key(key)?;
        validate::check(
            value.len() <= MAX_METADATA_VALUE_BYTES && !value.chars().any(char::is_control),
            "metadata",
            || {
                format!(
                    "the value of {key:?} must be at most {MAX_METADATA_VALUE_BYTES} bytes, without control characters"
                )
            },
        )?;
        total += key.len() + value.len();
    }
    validate::check(total <= MAX_METADATA_BYTES, "metadata", || {
        format!("{total} bytes of names and values; at most {MAX_METADATA_BYTES} are kept")
    })
}

/// A metadata name (in metadata and in a list filter).
pub fn metadata_key(key: &str) -> Result<(), EngineError> {
    let valid = !key.is_empty()
        && key.len() <= MAX_METADATA_KEY_BYTES
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.:/".contains(c));
    validate::check(valid, "metadata", || {
        format!(
            "{key:?} is not a metadata name (1 to {MAX_METADATA_KEY_BYTES} ASCII letters, digits, '_', '-', '.', ':', '/')"
        )
    })
}

/// Whether `metadata` has every entry of `filter`.
pub fn matches(metadata: &Metadata, filter: &Metadata) -> bool {
    filter
        .iter()
        .all(|(key, value)| metadata.get(key) == Some(value))
}

/// The lifetime a sandbox's record keeps, when the record is one: the record is only ever
/// written by the server, in the sidecar, but is parsed as strictly as anything else.
pub(super) fn parse_record(record: &[u8]) -> Option<Lifetime> {
    serde_json::from_slice(record).ok()
}

/// The expiry timer's state: whether its task runs, and how to wake it when a lifetime changes.
#[derive(Default)]
pub(super) struct ExpiryTimer {
    pub(super) started: AtomicBool,
    pub(super) rearm: Arc<Notify>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_positive_and_bounded() {
        let max = Duration::from_secs(3600);
        assert_eq!(timeout(5, max).ok(), Some(Duration::from_secs(5)));
        assert_eq!(timeout(3600, max).ok(), Some(max));
        assert!(timeout(0, max).is_err());
        assert!(timeout(3601, max).is_err());
        assert!(timeout(u64::MAX, max).is_err());
    }

    #[test]
    fn metadata_is_bounded() {
        let ok = Metadata::from([
            ("owner".into(), "alice".into()),
            ("run:id".into(), "7".into()),
        ]);
        assert!(metadata(&ok).is_ok());
        let many: Metadata = (0..=MAX_METADATA_ENTRIES)
            .map(|i| (format!("k{i}"), "v".into()))
            .collect();
        assert!(metadata(&many).is_err());
        for key in [
            "",
            "has space",
            "é",
            &"k".repeat(MAX_METADATA_KEY_BYTES + 1),
        ] {
            assert!(
                metadata(&Metadata::from([(key.to_string(), "v".into())])).is_err(),
                "{key:?}"
            );
        }
        for value in ["a\nb", "\0", &"v".repeat(MAX_METADATA_VALUE_BYTES + 1)] {
            assert!(
                metadata(&Metadata::from([("k".into(), value.to_string())])).is_err(),
                "{value:?}"
            );
        }
        let big: Metadata = (0..10)
            .map(|i| (format!("k{i}"), "v".repeat(MAX_METADATA_VALUE_BYTES)))
            .collect();
        assert!(metadata(&big).is_err());
    }

    #[test]
    fn a_filter_matches_when_every_entry_is_there() {
        let metadata = Metadata::from([("a".into(), "1".into()), ("b".into(), "2".into())]);
        assert!(matches(&metadata, &Metadata::new()));
        assert!(matches(
            &metadata,
            &Metadata::from([("a".into(), "1".into())])
        ));
        assert!(!matches(
            &metadata,
            &Metadata::from([("a".into(), "2".into())])
        ));
        assert!(!matches(
            &metadata,
            &Metadata::from([("c".into(), "1".into())])
        ));
    }

    #[test]
    fn records_parse_strictly() {
        let lifetime = Lifetime::from_now(Duration::from_secs(60));
        let record = serde_json::to_vec(&lifetime).expect("json");
        assert_eq!(parse_record(&record), Some(lifetime));
        assert_eq!(parse_record(b"{\"timeout_secs\": -1}"), None);
        assert_eq!(parse_record(b"garbage"), None);
    }
}
