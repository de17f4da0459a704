//! What the file operations run inside a sandbox: small shell scripts that resolve a path,
//! list a directory and delete a path, and the parsing of their answers.

use super::super::error::EngineError;
use super::super::paths::workspace_path;
use super::super::sandbox::Sandbox;
use serde::Serialize;

use crate::backend::{Backend, ExecOutput, ExecSpec};

/// Resolves a path inside the container: prints the kind (`d`, `f` or `n` for none) and the
/// real path; exits 3 when the real path leaves the workspace. With `mkdir` as `$2`, creates the
/// parent directory (for writes) or the directory itself (for tree uploads).
const RESOLVE_SCRIPT: &str = r#"p=$(realpath -m -- "$1") || exit 2
case "$p" in /workspace|/workspace/*) ;; *) printf '%s' "$p"; exit 3;; esac
case "$2" in parent) mkdir -p -- "$(dirname -- "$p")" || exit 4;; dir) mkdir -p -- "$p" || exit 4;; esac
if [ -d "$p" ]; then k=d; elif [ -e "$p" ]; then k=f; else k=n; fi
printf '%s\n%s' "$k" "$p""#;

/// Lists a directory: type, size, mtime and name, one per line, NUL-free.
const LIST_SCRIPT: &str = r#"find "$1" -mindepth 1 -maxdepth 1 -printf '%y\t%s\t%T@\t%f\n' | sort -t "$(printf '\t')" -k4"#;

/// Deletes `$1` (a file, a tree or a link, never a link's target); exits 3 when nothing is there.
const DELETE_SCRIPT: &str = r#"[ -e "$1" ] || [ -L "$1" ] || exit 3; rm -rf -- "$1""#;

/// Kind of a directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    File,
    Directory,
    Symlink,
    Other,
}

/// One entry of a directory listing.
#[derive(Debug, Clone, Serialize)]
pub struct FileEntry {
    pub name: String,
    /// Absolute path inside the sandbox.
    pub path: String,
    pub kind: FileKind,
    pub size: u64,
    /// Seconds since the Unix epoch.
    pub modified: f64,
}

/// What a path resolved to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Existing {
    File,
    Directory,
    Nothing,
}

/// What to create while resolving.
#[derive(Debug, Clone, Copy)]
pub(super) enum Create {
    Nothing,
    Parent,
    Directory,
}

/// Runs `script` with `args` as its positional parameters, keeping up to `output_limit` bytes
/// of each output stream.
async fn run_script(
    backend: &dyn Backend,
    sandbox: &Sandbox,
    script: &str,
    args: &[&str],
    output_limit: usize,
) -> Result<ExecOutput, EngineError> {
    let mut argv: Vec<String> = ["sh", "-c", script, "kernelbox"].map(String::from).to_vec();
    argv.extend(args.iter().map(|arg| arg.to_string()));
    let spec = ExecSpec {
        argv,
        workdir: "/".into(),
        env: Vec::new(),
        user: None,
        output_limit,
    };
    Ok(backend.exec(sandbox.container_id(), spec).await?)
}

/// Resolves `path` inside the sandbox: lexically first, then with the sandbox's own
/// `realpath`, so a symlink pointing outside the workspace is refused too.
pub(super) async fn resolve(
    backend: &dyn Backend,
    sandbox: &Sandbox,
    path: &str,
    create: Create,
) -> Result<(Existing, String), EngineError> {
    let lexical = workspace_path(path)?;
    let mode = match create {
        Create::Nothing => "",
        Create::Parent => "parent",
        Create::Directory => "dir",
    };
    let output = run_script(
        backend,
        sandbox,
        RESOLVE_SCRIPT,
        &[&lexical, mode],
        64 * 1024,
    )
    .await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    match output.exit_code {
        0 => {}
        3 => {
            return Err(EngineError::PathOutsideWorkspace {
                path: path.to_string(),
            });
        }
        4 => {
            return Err(EngineError::InvalidInput {
                field: "path",
                reason: format!("cannot create the directory for {path}"),
            });
        }
        _ => {
            return Err(EngineError::PathNotFound {
                path: path.to_string(),
            });
        }
    }
    let (kind, real) = stdout.split_once('\n').unwrap_or(("n", &lexical));
    let existing = match kind {
        "d" => Existing::Directory,
        "f" => Existing::File,
        _ => Existing::Nothing,
    };
    Ok((existing, real.to_string()))
}

/// The entries of directory `real` (a resolved path).
pub(super) async fn list(
    backend: &dyn Backend,
    sandbox: &Sandbox,
    real: &str,
) -> Result<Vec<FileEntry>, EngineError> {
    let output = run_script(backend, sandbox, LIST_SCRIPT, &[real], 16 * 1024 * 1024).await?;
    let listing = String::from_utf8_lossy(&output.stdout);
    Ok(listing
        .lines()
        .filter_map(|line| {
            let mut fields = line.splitn(4, '\t');
            let kind = match fields.next()? {
                "f" => FileKind::File,
                "d" => FileKind::Directory,
                "l" => FileKind::Symlink,
                _ => FileKind::Other,
            };
            let size = fields.next()?.parse().unwrap_or(0);
            let modified = fields.next()?.parse().unwrap_or(0.0);
            let name = fields.next()?.to_string();
            Some(FileEntry {
                path: format!("{}/{}", real.trim_end_matches('/'), name),
                name,
                kind,
                size,
                modified,
            })
        })
        .collect())
}

/// Deletes `target` (a path whose parent is resolved); `path` is the caller's name for it.
pub(super) async fn delete(
    backend: &dyn Backend,
    sandbox: &Sandbox,
    target: &str,
    path: &str,
) -> Result<(), EngineError> {
    let output = run_script(backend, sandbox, DELETE_SCRIPT, &[target], 64 * 1024).await?;
    match output.exit_code {
        0 => Ok(()),
        3 => Err(EngineError::PathNotFound {
            path: path.to_string(),
        }),
        _ => Err(EngineError::InvalidInput {
            field: "path",
            reason: format!(
                "cannot delete {path}: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        }),
    }
}
