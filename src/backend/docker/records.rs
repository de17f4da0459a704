//! Records: small documents the server keeps with a sandbox, as root-only files in its network
//! sidecar (the sandbox's code shares only the sidecar's network, never its files). They go when
//! the sidecar goes, with the sandbox.

use std::time::Duration;

/// Where the records live in the sidecar.
pub const DIR: &str = "/var/lib/kernelbox/records";
/// How long writing or reading one may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Whether `name` may name a record: 1 to 64 lowercase letters, digits and `-`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// The file of record `name` (a valid name).
pub fn path(name: &str) -> String {
    format!("{DIR}/{name}.json")
}

/// Writes stdin to the record's file, root-only, replacing it at once (a reader sees the old
/// document or the new one, never part of one). The path is an argument, not part of the script.
pub fn write_argv(name: &str) -> Vec<String> {
    [
        "/bin/sh",
        "-c",
        "PATH=/usr/bin:/bin && umask 077 && mkdir -p \"$1\" && cat > \"$2.new\" && mv -f \"$2.new\" \"$2\"",
        "sh",
        DIR,
        &path(name),
    ]
    .map(String::from)
    .to_vec()
}

/// Prints the record's file, or exits 3 without a word when there is none.
pub fn read_argv(name: &str) -> Vec<String> {
    [
        "/bin/sh",
        "-c",
        "PATH=/usr/bin:/bin; if [ -e \"$1\" ]; then exec cat \"$1\"; else exit 3; fi",
        "sh",
        &path(name),
    ]
    .map(String::from)
    .to_vec()
}

/// The exit code of [`read_argv`] when there is no record.
pub const MISSING: i64 = 3;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_leave_the_directory() {
        assert!(valid_name("lifetime"));
        for bad in ["", "../x", "a/b", "A", "a b", "a.json", &"a".repeat(65)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert_eq!(path("lifetime"), "/var/lib/kernelbox/records/lifetime.json");
    }
}
