//! Input checks every face shares: whatever face a request came through, the same bad input gets
//! the same [`EngineError::InvalidInput`], before anything reaches a sandbox.

use std::collections::HashMap;
use std::time::Duration;

use super::error::EngineError;

/// The longest sandbox tag accepted, in characters.
pub const MAX_TAG_CHARS: usize = 256;
/// The longest guest server name accepted, in characters.
pub const MAX_SERVER_NAME_CHARS: usize = 64;

/// `Ok` when `valid`, else the invalid-input error for `field` with the reason `reason` gives.
pub(super) fn check(
    valid: bool,
    field: &'static str,
    reason: impl FnOnce() -> String,
) -> Result<(), EngineError> {
    if valid {
        Ok(())
    } else {
        Err(EngineError::InvalidInput {
            field,
            reason: reason(),
        })
    }
}

/// A time limit a request asks for (`None`: the default), which may not pass `max`.
pub fn timeout(
    requested: Option<Duration>,
    default: Duration,
    max: Duration,
) -> Result<Duration, EngineError> {
    let timeout = requested.unwrap_or(default);
    check(!timeout.is_zero() && timeout <= max, "timeout", || {
        format!("must be between 1 and {} seconds", max.as_secs())
    })?;
    Ok(timeout)
}

/// A guest server name: letters, digits, `-`, `_`, `.`; not empty, not `.` or `..`; at most
/// [`MAX_SERVER_NAME_CHARS`] characters.
pub fn server_name(name: &str) -> Result<(), EngineError> {
    let valid = !name.is_empty()
        && name.chars().count() <= MAX_SERVER_NAME_CHARS
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name != "."
        && name != "..";
    check(valid, "server", || {
        format!(
            "{name:?} is not a server name (1 to {MAX_SERVER_NAME_CHARS} letters, digits, '-', '_', '.')"
        )
    })
}

/// Refuses strings the container runtime cannot carry (NUL bytes).
pub fn no_nul(field: &'static str, value: &str) -> Result<(), EngineError> {
    check(!value.contains('\0'), field, || {
        "must not contain NUL bytes".into()
    })
}

/// A shell command to run in a sandbox: not blank, and carried by the runtime (no NUL bytes).
pub fn command(command: &str) -> Result<(), EngineError> {
    check(!command.trim().is_empty(), "command", || {
        "must not be empty".into()
    })?;
    no_nul("command", command)
}

/// A sandbox tag: at most [`MAX_TAG_CHARS`] characters, no control characters.
pub fn tag(tag: &str) -> Result<(), EngineError> {
    let valid = tag.chars().count() <= MAX_TAG_CHARS && !tag.chars().any(char::is_control);
    check(valid, "tag", || {
        format!("must be at most {MAX_TAG_CHARS} characters, without control characters")
    })
}

/// Environment variables as `KEY=value` pairs, sorted: names of letters, digits and `_` (not
/// starting with a digit, not `KERNELBOX_*`), values without NUL bytes.
pub fn env(env: &HashMap<String, String>) -> Result<Vec<String>, EngineError> {
    let mut pairs = Vec::with_capacity(env.len());
    for (name, value) in env {
        env_name(name)?;
        no_nul("env", value)?;
        pairs.push(format!("{name}={value}"));
    }
    pairs.sort();
    Ok(pairs)
}

/// An environment variable name.
pub fn env_name(name: &str) -> Result<(), EngineError> {
    let valid = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("KERNELBOX_");
    check(valid, "env", || {
        format!("{name:?} is not a valid variable name (letters, digits, '_'; not KERNELBOX_*)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_are_checked() {
        assert!(env_name("MY_VAR1").is_ok());
        for bad in ["1BAD", "A=B", "KERNELBOX_CONNECTION", ""] {
            assert!(env_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn server_names_are_plain() {
        for good in ["time", "mcp-server-time", "a.b_c", "X1"] {
            assert!(server_name(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "é", &"x".repeat(65)] {
            assert!(server_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn timeouts_stay_within_the_maximum() {
        let (default, max) = (Duration::from_secs(120), Duration::from_secs(600));
        assert_eq!(timeout(None, default, max).ok(), Some(default));
        assert_eq!(timeout(Some(max), default, max).ok(), Some(max));
        for bad in [Duration::ZERO, max + Duration::from_secs(1)] {
            assert!(timeout(Some(bad), default, max).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn env_values_and_strings_refuse_nul() {
        let with = |value: &str| HashMap::from([("A".to_string(), value.to_string())]);
        assert_eq!(env(&with("x")).ok(), Some(vec!["A=x".to_string()]));
        assert!(env(&with("a\0b")).is_err());
        assert!(no_nul("command", "ls\0").is_err());
        assert!(no_nul("command", "ls").is_ok());
    }

    #[test]
    fn tags_are_short_and_printable() {
        assert!(tag("my project").is_ok());
        assert!(tag(&"x".repeat(MAX_TAG_CHARS)).is_ok());
        assert!(tag(&"x".repeat(MAX_TAG_CHARS + 1)).is_err());
        assert!(tag("line\nbreak").is_err());
    }
}
