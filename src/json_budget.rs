//! How much JSON from a sandbox the server parses and holds: a bound on the values in one text,
//! checked before parsing, and the bytes a parsed value holds. A parsed value takes at least 32
//! bytes however short its text, so a frame of `[[],[],…]` within every byte limit (16 MiB)
//! parsed to about 180 MB, twice that with the arrays' slack. Kernel messages and guest
//! servers' lines are checked against it.

/// Most JSON values one text from a sandbox may hold: at this bound it parses to at most about
/// 16 MiB of values beside its strings. Real output (text, HTML, images, tool results) is a
/// few values; a longer list of numbers still fits.
pub const MAX_JSON_VALUES: usize = 256 * 1024;

/// About how many values JSON text holds, counted without parsing it: every value but the
/// first follows a `[`, a `,` or a `:` outside strings (so an empty array counts one it lacks,
/// and an object's first key none). Invalid JSON counts as anything; the parser refuses it.
pub fn json_value_count(text: &[u8]) -> usize {
    let mut values = 1;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in text {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
        } else {
            match byte {
                b'"' => in_string = true,
                b'[' | b',' | b':' => values += 1,
                _ => {}
            }
        }
    }
    values
}

/// Whether JSON text is within [`MAX_JSON_VALUES`]; `Err` carries the count.
pub fn within_budget(text: &[u8]) -> Result<(), usize> {
    match json_value_count(text) {
        values if values > MAX_JSON_VALUES => Err(values),
        _ => Ok(()),
    }
}

/// About the bytes a parsed JSON value holds: its text, and a `Value` (32 bytes) for every
/// value in it, so that countless tiny values (`[[],[],…]`, about ten times their text once
/// parsed) count as what they cost.
pub fn value_footprint(value: &serde_json::Value) -> usize {
    use serde_json::Value;
    const NODE: usize = std::mem::size_of::<Value>();
    match value {
        Value::Null | Value::Bool(_) | Value::Number(_) => NODE,
        Value::String(text) => NODE + text.len(),
        Value::Array(items) => NODE + items.iter().map(value_footprint).sum::<usize>(),
        Value::Object(fields) => {
            NODE + fields
                .iter()
                .map(|(key, item)| NODE + key.len() + value_footprint(item))
                .sum::<usize>()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_counted_outside_strings_only() {
        assert_eq!(json_value_count(b"{}"), 1);
        assert_eq!(json_value_count(br#"{"a": [1, 2], "b": "x,y:[z"}"#), 6);
        assert_eq!(json_value_count(br#"["a\"[,", 3]"#), 3);
        assert_eq!(json_value_count(b"[[],[],[]]"), 7);
    }

    #[test]
    fn the_budget_holds_a_long_list_and_refuses_countless_tiny_values() {
        let numbers: Vec<u32> = (0..100_000).collect();
        let numbers = serde_json::to_vec(&numbers).expect("JSON");
        assert!(within_budget(&numbers).is_ok());
        let tiny = "[]".repeat(MAX_JSON_VALUES);
        let tiny = format!("[{}]", tiny.replace("][", "],["));
        assert!(within_budget(tiny.as_bytes()).is_err());
    }
}
