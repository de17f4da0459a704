//! Where user files live in a sandbox, and the lexical half of the path policy: a user path is
//! resolved against `/workspace` without touching the sandbox, and anything that climbs out
//! (`..`, an absolute path elsewhere) is refused. Symlinks are the sandbox's business and are
//! checked where the path is used.

use std::path::{Component, Path, PathBuf};

/// Why a user path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path {path} is outside {WORKSPACE}")]
    OutsideWorkspace { path: String },
    #[error("path contains a NUL byte")]
    Nul,
}

/// Where user files live inside a sandbox.
pub const WORKSPACE: &str = "/workspace";

/// Resolves a user path lexically against `/workspace`; refuses anything outside it.
pub fn workspace_path(path: &str) -> Result<String, PathError> {
    let outside = || PathError::OutsideWorkspace {
        path: path.to_string(),
    };
    if path.contains('\0') {
        return Err(PathError::Nul);
    }
    let relative = match path.strip_prefix('/') {
        Some(_) => Path::new(path)
            .strip_prefix(WORKSPACE)
            .map_err(|_| outside())?,
        None => Path::new(path),
    };
    let mut resolved = PathBuf::from(WORKSPACE);
    let mut depth = 0usize;
    for component in relative.components() {
        match component {
            Component::Normal(part) => {
                resolved.push(part);
                depth += 1;
            }
            Component::ParentDir => {
                if depth == 0 {
                    return Err(outside());
                }
                resolved.pop();
                depth -= 1;
            }
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return Err(outside()),
        }
    }
    Ok(resolved.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_paths_stay_inside() {
        assert_eq!(
            workspace_path("a/b.txt").ok().as_deref(),
            Some("/workspace/a/b.txt")
        );
        assert_eq!(workspace_path("").ok().as_deref(), Some("/workspace"));
        assert_eq!(
            workspace_path("/workspace/x/../y").ok().as_deref(),
            Some("/workspace/y")
        );
        for outside in ["../x", "/etc/passwd", "/workspacex", "a/../../x"] {
            assert!(
                matches!(
                    workspace_path(outside),
                    Err(PathError::OutsideWorkspace { .. })
                ),
                "{outside}"
            );
        }
        assert_eq!(workspace_path("a\0b"), Err(PathError::Nul));
    }
}
