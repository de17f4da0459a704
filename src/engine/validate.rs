//! Input checks every face shares: whatever face a request came through, the same bad input gets
//! the same [`EngineError::InvalidInput`], before anything reaches a sandbox.

use std::collections::HashMap;

use super::error::EngineError;

/// The longest sandbox tag accepted, in characters.
pub const MAX_TAG_CHARS: usize = 256;

/// Refuses strings the container runtime cannot carry (NUL bytes).
pub fn no_nul(field: &'static str, value: &str) -> Result<(), EngineError> {
    if value.contains('\0') {
        Err(EngineError::InvalidInput {
            field,
            reason: "must not contain NUL bytes".into(),
        })
    } else {
        Ok(())
    }
}

/// A sandbox tag: at most [`MAX_TAG_CHARS`] characters, no control characters.
pub fn tag(tag: &str) -> Result<(), EngineError> {
    if tag.chars().count() > MAX_TAG_CHARS || tag.chars().any(char::is_control) {
        return Err(EngineError::InvalidInput {
            field: "tag",
            reason: format!(
                "must be at most {MAX_TAG_CHARS} characters, without control characters"
            ),
        });
    }
    Ok(())
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
    if valid {
        Ok(())
    } else {
        Err(EngineError::InvalidInput {
            field: "env",
            reason: format!(
                "{name:?} is not a valid variable name (letters, digits, '_'; not KERNELBOX_*)"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_are_checked() {
        assert!(env_name("MY_VAR1").is_ok());
        assert!(env_name("1BAD").is_err());
        assert!(env_name("A=B").is_err());
        assert!(env_name("KERNELBOX_CONNECTION").is_err());
        assert!(env_name("").is_err());
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
