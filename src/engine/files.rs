//! Files and directory trees in a sandbox, confined to `/workspace`.
//!
//! A path is checked twice: lexically (no `..` climbing out, no absolute path elsewhere), then
//! inside the container with `realpath`, so a symlink pointing outside is refused too. Archives
//! coming in are rewritten entry by entry: `..`, absolute names and links leaving the target are
//! rejected, and every entry is owned by the sandbox user.

use std::io::{self, Read, Seek};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio_util::io::{ReaderStream, StreamReader, SyncIoBridge};

use super::error::EngineError;
use super::lifecycle::Engine;
use super::paths::{WORKSPACE, workspace_path};
use super::sandbox::Sandbox;
use super::tenant::Tenant;
use crate::backend::{ByteStream, ExecSpec};

/// The sandbox user's uid/gid: files written in get this owner.
const SANDBOX_UID: u64 = 1000;

/// Bytes buffered between the blocking tar code and the async side of a stream.
const PIPE_BUFFER: usize = 256 * 1024;

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

/// A file coming out of a sandbox: its size, then its bytes as they are read.
pub struct FileDownload {
    pub size: u64,
    /// Ends with an error item when reading fails part way.
    pub stream: ByteStream,
}

/// A file written by a streamed upload.
#[derive(Debug, Clone, Serialize)]
pub struct UploadedFile {
    /// Absolute path inside the sandbox.
    pub path: String,
    pub size: u64,
}

/// What a path resolved to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Existing {
    File,
    Directory,
    Nothing,
}

/// What to create while resolving.
#[derive(Debug, Clone, Copy)]
enum Create {
    Nothing,
    Parent,
    Directory,
}

impl Engine {
    async fn resolve(
        &self,
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
        let spec = ExecSpec {
            argv: ["sh", "-c", RESOLVE_SCRIPT, "resolve", &lexical, mode]
                .map(String::from)
                .to_vec(),
            workdir: "/".into(),
            env: Vec::new(),
            user: None,
            output_limit: 64 * 1024,
        };
        let output = self.backend.exec(sandbox.container_id(), spec).await?;
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

    /// Writes a file (creating parent directories), owned by the sandbox user.
    pub async fn write_file(
        &self,
        id: &str,
        tenant: &Tenant,
        path: &str,
        content: Bytes,
    ) -> Result<String, EngineError> {
        let sandbox = self.get(id, tenant)?;
        sandbox.touch();
        let (existing, real) = self.resolve(&sandbox, path, Create::Parent).await?;
        if existing == Existing::Directory {
            return Err(EngineError::IsADirectory {
                path: path.to_string(),
            });
        }
        let real_path = Path::new(&real);
        let (Some(parent), Some(name)) = (real_path.parent(), real_path.file_name()) else {
            return Err(EngineError::IsADirectory {
                path: path.to_string(),
            });
        };
        let mut header = file_header(content.len() as u64);
        let mut builder = tar::Builder::new(Vec::with_capacity(content.len() + 2048));
        builder
            .append_data(&mut header, name, content.as_ref())
            .map_err(|error| EngineError::InvalidInput {
                field: "path",
                reason: error.to_string(),
            })?;
        let archive = builder
            .into_inner()
            .map_err(|error| EngineError::InvalidInput {
                field: "path",
                reason: error.to_string(),
            })?;
        let stream: ByteStream =
            Box::pin(futures::stream::once(
                async move { Ok(Bytes::from(archive)) },
            ));
        self.backend
            .put_archive(sandbox.container_id(), &parent.to_string_lossy(), stream)
            .await?;
        Ok(real)
    }

    /// The real path of an existing regular file in the workspace.
    async fn resolve_file(&self, sandbox: &Sandbox, path: &str) -> Result<String, EngineError> {
        let (existing, real) = self.resolve(sandbox, path, Create::Nothing).await?;
        match existing {
            Existing::File => Ok(real),
            Existing::Nothing => Err(EngineError::PathNotFound {
                path: path.to_string(),
            }),
            Existing::Directory => Err(EngineError::IsADirectory {
                path: path.to_string(),
            }),
        }
    }

    /// Reads a whole file of at most `limit` bytes; a larger one is refused before it is read.
    pub async fn read_file(
        &self,
        id: &str,
        tenant: &Tenant,
        path: &str,
        limit: u64,
    ) -> Result<Vec<u8>, EngineError> {
        let sandbox = self.get(id, tenant)?;
        sandbox.touch();
        let real = self.resolve_file(&sandbox, path).await?;
        let tar_stream = self.backend.get_archive(sandbox.container_id(), &real);
        let reader = SyncIoBridge::new(StreamReader::new(tar_stream));
        let path_owned = path.to_string();
        tokio::task::spawn_blocking(move || first_file(reader, limit))
            .await
            .map_err(|_| EngineError::ShuttingDown)?
            .map_err(|error| match error.kind() {
                io::ErrorKind::NotFound => EngineError::PathNotFound { path: path_owned },
                io::ErrorKind::FileTooLarge => EngineError::TooLarge {
                    what: "the file",
                    limit,
                },
                _ => EngineError::InvalidInput {
                    field: "path",
                    reason: format!("cannot read {path_owned}: {error}"),
                },
            })
    }

    /// Lists a directory (default `/workspace`).
    pub async fn list_files(
        &self,
        id: &str,
        tenant: &Tenant,
        path: &str,
    ) -> Result<Vec<FileEntry>, EngineError> {
        let sandbox = self.get(id, tenant)?;
        sandbox.touch();
        let (existing, real) = self.resolve(&sandbox, path, Create::Nothing).await?;
        match existing {
            Existing::Nothing => {
                return Err(EngineError::PathNotFound {
                    path: path.to_string(),
                });
            }
            Existing::File => {
                return Err(EngineError::InvalidInput {
                    field: "path",
                    reason: format!("{path} is a file, not a directory"),
                });
            }
            Existing::Directory => {}
        }
        let spec = ExecSpec {
            argv: ["sh", "-c", LIST_SCRIPT, "list", &real]
                .map(String::from)
                .to_vec(),
            workdir: "/".into(),
            env: Vec::new(),
            user: None,
            output_limit: 16 * 1024 * 1024,
        };
        let output = self.backend.exec(sandbox.container_id(), spec).await?;
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

    /// Deletes a file or a directory tree. The workspace itself cannot be deleted.
    pub async fn delete_path(
        &self,
        id: &str,
        tenant: &Tenant,
        path: &str,
    ) -> Result<(), EngineError> {
        let sandbox = self.get(id, tenant)?;
        sandbox.touch();
        let lexical = workspace_path(path)?;
        if lexical == WORKSPACE {
            return Err(EngineError::InvalidInput {
                field: "path",
                reason: "the workspace itself cannot be deleted".into(),
            });
        }
        // The parent must really be inside the workspace; the last component itself may be a
        // symlink, and deleting a link never touches its target.
        let lexical_path = Path::new(&lexical);
        let parent = lexical_path
            .parent()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (_, real_parent) = self.resolve(&sandbox, &parent, Create::Nothing).await?;
        let name = lexical_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let target = format!("{}/{}", real_parent.trim_end_matches('/'), name);
        let spec = ExecSpec {
            argv: [
                "sh",
                "-c",
                r#"[ -e "$1" ] || [ -L "$1" ] || exit 3; rm -rf -- "$1""#,
                "delete",
                &target,
            ]
            .map(String::from)
            .to_vec(),
            workdir: "/".into(),
            env: Vec::new(),
            user: None,
            output_limit: 64 * 1024,
        };
        let output = self.backend.exec(sandbox.container_id(), spec).await?;
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

    /// A tar stream of a file or directory; entries are named relative to its parent.
    pub async fn download_tree(
        &self,
        id: &str,
        tenant: &Tenant,
        path: &str,
    ) -> Result<ByteStream, EngineError> {
        let sandbox = self.get(id, tenant)?;
        sandbox.touch();
        let (existing, real) = self.resolve(&sandbox, path, Create::Nothing).await?;
        if existing == Existing::Nothing {
            return Err(EngineError::PathNotFound {
                path: path.to_string(),
            });
        }
        Ok(self.backend.get_archive(sandbox.container_id(), &real))
    }

    /// Writes a file from a stream of any length (up to the configured upload limit) without
    /// holding it in memory: the bytes are spooled to an anonymous temporary file, then streamed
    /// into the container as a one-entry tar archive. Parent directories are created.
    pub async fn upload_file<S>(
        &self,
        id: &str,
        tenant: &Tenant,
        path: &str,
        content: S,
    ) -> Result<UploadedFile, EngineError>
    where
        S: Stream<Item = io::Result<Bytes>> + Send,
    {
        let sandbox = self.get(id, tenant)?;
        sandbox.touch();
        let (existing, real) = self.resolve(&sandbox, path, Create::Parent).await?;
        if existing == Existing::Directory {
            return Err(EngineError::IsADirectory {
                path: path.to_string(),
            });
        }
        let real_path = Path::new(&real);
        let (Some(parent), Some(name)) = (real_path.parent(), real_path.file_name()) else {
            return Err(EngineError::IsADirectory {
                path: path.to_string(),
            });
        };
        let (spooled, size) = spool(content, self.config.max_upload_bytes).await?;
        sandbox.touch();
        let (writer, reader) = tokio::io::duplex(PIPE_BUFFER);
        let name = name.to_os_string();
        let output = SyncIoBridge::new(writer);
        let archiver = tokio::task::spawn_blocking(move || -> io::Result<()> {
            let mut header = file_header(size);
            let mut builder = tar::Builder::new(output);
            builder.append_data(&mut header, name, spooled)?;
            builder.into_inner().map(drop)
        });
        let archive: ByteStream = Box::pin(ReaderStream::new(reader));
        let uploaded = self
            .backend
            .put_archive(sandbox.container_id(), &parent.to_string_lossy(), archive)
            .await;
        let archived = archiver.await.map_err(|_| EngineError::ShuttingDown)?;
        uploaded?;
        archived.map_err(EngineError::Spool)?;
        sandbox.touch();
        Ok(UploadedFile { path: real, size })
    }

    /// Opens a file for a streamed read of any size.
    pub async fn open_file(
        &self,
        id: &str,
        tenant: &Tenant,
        path: &str,
    ) -> Result<FileDownload, EngineError> {
        let sandbox = self.get(id, tenant)?;
        sandbox.touch();
        let real = self.resolve_file(&sandbox, path).await?;
        let input = SyncIoBridge::new(StreamReader::new(
            self.backend.get_archive(sandbox.container_id(), &real),
        ));
        let (writer, reader) = tokio::io::duplex(PIPE_BUFFER);
        let output = SyncIoBridge::new(writer);
        let (size_sender, size_receiver) = tokio::sync::oneshot::channel();
        let copier =
            tokio::task::spawn_blocking(move || copy_first_file(input, size_sender, output));
        let Ok(size) = size_receiver.await else {
            // The copier ended before it found the file: report why.
            let error = match copier.await {
                Ok(Err(error)) => error,
                _ => io::Error::new(io::ErrorKind::NotFound, "no regular file in the archive"),
            };
            return Err(match error.kind() {
                io::ErrorKind::NotFound => EngineError::PathNotFound {
                    path: path.to_string(),
                },
                _ => EngineError::InvalidInput {
                    field: "path",
                    reason: format!("cannot read {path}: {error}"),
                },
            });
        };
        // After the bytes, the copier's own result: a failure part way ends the stream with an
        // error rather than a silently short file.
        let outcome = futures::stream::once(async move {
            match copier.await {
                Ok(Ok(())) => None,
                Ok(Err(error)) => Some(Err(error)),
                Err(_) => Some(Err(io::Error::other("the file reader stopped"))),
            }
        })
        .filter_map(futures::future::ready);
        Ok(FileDownload {
            size,
            stream: Box::pin(ReaderStream::new(reader).chain(outcome)),
        })
    }

    /// A tar stream of a directory's contents, entries named relative to it (`./a/b.txt`), so
    /// extracting it under the same path with [`Engine::upload_tree`] gives the same tree.
    pub async fn download_dir(
        &self,
        id: &str,
        tenant: &Tenant,
        path: &str,
    ) -> Result<ByteStream, EngineError> {
        let sandbox = self.get(id, tenant)?;
        sandbox.touch();
        let (existing, real) = self.resolve(&sandbox, path, Create::Nothing).await?;
        match existing {
            Existing::Nothing => Err(EngineError::PathNotFound {
                path: path.to_string(),
            }),
            Existing::File => Err(EngineError::InvalidInput {
                field: "path",
                reason: format!("{path} is a file, not a directory"),
            }),
            Existing::Directory => Ok(self.backend.get_archive(
                sandbox.container_id(),
                &format!("{}/.", real.trim_end_matches('/')),
            )),
        }
    }

    /// Extracts a tar stream under directory `path` (created when missing). Entries with `..`,
    /// absolute names, links that leave the target, devices and fifos are refused.
    pub async fn upload_tree(
        &self,
        id: &str,
        tenant: &Tenant,
        path: &str,
        tar: ByteStream,
    ) -> Result<(), EngineError> {
        let sandbox = self.get(id, tenant)?;
        sandbox.touch();
        let (existing, real) = self.resolve(&sandbox, path, Create::Directory).await?;
        if existing != Existing::Directory {
            return Err(EngineError::InvalidInput {
                field: "path",
                reason: format!("{path} is not a directory"),
            });
        }
        let limit = self.config.max_upload_bytes;
        let exceeded = Arc::new(AtomicBool::new(false));
        let tar = limit_stream(tar, limit, exceeded.clone());
        let (writer, reader) = tokio::io::duplex(PIPE_BUFFER);
        let input = SyncIoBridge::new(StreamReader::new(tar));
        let output = SyncIoBridge::new(writer);
        let sanitizer = tokio::task::spawn_blocking(move || sanitize_archive(input, output));
        let sanitized: ByteStream =
            Box::pin(ReaderStream::new(reader).map_err(io::Error::other).boxed());
        let uploaded = self
            .backend
            .put_archive(sandbox.container_id(), &real, sanitized)
            .await;
        let checked = sanitizer.await.map_err(|_| EngineError::ShuttingDown)?;
        if exceeded.load(Ordering::SeqCst) {
            return Err(EngineError::TooLarge {
                what: "archive",
                limit,
            });
        }
        checked.map_err(|reason| EngineError::InvalidInput {
            field: "archive",
            reason,
        })?;
        uploaded?;
        Ok(())
    }
}

/// Cuts a stream with an error once more than `limit` bytes went through, and raises `exceeded`.
fn limit_stream(input: ByteStream, limit: u64, exceeded: Arc<AtomicBool>) -> ByteStream {
    let mut total = 0u64;
    Box::pin(input.map(move |chunk| {
        let chunk = chunk?;
        total += chunk.len() as u64;
        if total > limit {
            exceeded.store(true, Ordering::SeqCst);
            return Err(io::Error::other("the upload passed its size limit"));
        }
        Ok(chunk)
    }))
}

/// Writes a stream to an anonymous temporary file (gone when closed); returns the file,
/// rewound, and its size. More than `limit` bytes is refused.
async fn spool<S>(content: S, limit: u64) -> Result<(std::fs::File, u64), EngineError>
where
    S: Stream<Item = io::Result<Bytes>> + Send,
{
    let file = tokio::task::spawn_blocking(tempfile::tempfile)
        .await
        .map_err(|_| EngineError::ShuttingDown)?
        .map_err(EngineError::Spool)?;
    let mut file = tokio::fs::File::from_std(file);
    let mut size = 0u64;
    let mut content = std::pin::pin!(content);
    while let Some(chunk) = content.next().await {
        let chunk = chunk.map_err(EngineError::UploadInterrupted)?;
        size += chunk.len() as u64;
        if size > limit {
            return Err(EngineError::TooLarge {
                what: "upload",
                limit,
            });
        }
        file.write_all(&chunk).await.map_err(EngineError::Spool)?;
    }
    file.flush().await.map_err(EngineError::Spool)?;
    let mut file = file.into_std().await;
    file.rewind().map_err(EngineError::Spool)?;
    Ok((file, size))
}

/// The tar header of a regular file written into a sandbox: owned by the sandbox user.
fn file_header(size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_uid(SANDBOX_UID);
    header.set_gid(SANDBOX_UID);
    header.set_mtime(chrono::Utc::now().timestamp().max(0) as u64);
    header.set_entry_type(tar::EntryType::Regular);
    header
}

/// Finds the first regular file of a tar archive, sends its size, then copies its bytes.
fn copy_first_file(
    input: impl Read,
    size: tokio::sync::oneshot::Sender<u64>,
    mut output: impl io::Write,
) -> io::Result<()> {
    let mut archive = tar::Archive::new(input);
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.header().entry_type().is_file() {
            if size.send(entry.size()).is_err() {
                return Ok(());
            }
            io::copy(&mut entry, &mut output)?;
            return output.flush();
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        "no regular file in the archive",
    ))
}

/// Reads the first regular file of a tar archive, up to `limit` bytes.
fn first_file(reader: impl Read, limit: u64) -> io::Result<Vec<u8>> {
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.header().entry_type().is_file() {
            if entry.size() > limit {
                return Err(io::Error::new(
                    io::ErrorKind::FileTooLarge,
                    "file too large",
                ));
            }
            let mut content = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut content)?;
            return Ok(content);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        "no regular file in the archive",
    ))
}

/// Normalizes an archive entry name; `None` when it is absolute or climbs out with `..`.
fn safe_entry_path(name: &Path) -> Option<PathBuf> {
    let mut clean = PathBuf::new();
    for component in name.components() {
        match component {
            Component::Normal(part) => clean.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                if !clean.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(clean)
}

/// Copies a tar archive entry by entry, refusing unsafe entries and giving every entry to the
/// sandbox user. Returns a reason on refusal.
pub fn sanitize_archive(input: impl Read, output: impl io::Write) -> Result<(), String> {
    let mut archive = tar::Archive::new(input);
    let mut builder = tar::Builder::new(output);
    let entries = archive
        .entries()
        .map_err(|error| format!("not a tar archive: {error}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|error| format!("corrupt tar archive: {error}"))?;
        let raw_name = entry
            .path()
            .map_err(|error| format!("bad entry name: {error}"))?
            .into_owned();
        let name = safe_entry_path(&raw_name)
            .ok_or_else(|| format!("entry {} leaves the target directory", raw_name.display()))?;
        if name.as_os_str().is_empty() {
            continue;
        }
        let entry_type = entry.header().entry_type();
        let mut header = entry.header().clone();
        header.set_uid(SANDBOX_UID);
        header.set_gid(SANDBOX_UID);
        match entry_type {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::Directory => {}
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|error| format!("bad link in {}: {error}", raw_name.display()))?
                    .ok_or_else(|| format!("link {} has no target", raw_name.display()))?
                    .into_owned();
                let base = if entry_type == tar::EntryType::Symlink {
                    name.parent().map(Path::to_path_buf).unwrap_or_default()
                } else {
                    PathBuf::new()
                };
                if safe_entry_path(&base.join(&target)).is_none() {
                    return Err(format!(
                        "link {} points outside the target directory ({})",
                        raw_name.display(),
                        target.display()
                    ));
                }
                builder
                    .append_link(&mut header, &name, &target)
                    .map_err(|error| format!("upload failed: {error}"))?;
                continue;
            }
            // PAX and GNU long-name records are consumed by the reader.
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => continue,
            other => {
                return Err(format!(
                    "entry {} has unsupported type {other:?}",
                    raw_name.display()
                ));
            }
        }
        builder
            .append_data(&mut header, &name, &mut entry)
            .map_err(|error| format!("upload failed: {error}"))?;
    }
    builder
        .finish()
        .map_err(|error| format!("upload failed: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive_with(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        build(&mut builder);
        builder.into_inner().expect("archive")
    }

    fn file(builder: &mut tar::Builder<Vec<u8>>, name: &str) {
        let mut header = tar::Header::new_gnu();
        header.set_size(2);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        // Write the name bytes directly so hostile names survive the builder's own checks.
        let bytes = name.as_bytes();
        header.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
        header.set_cksum();
        builder.append(&header, &b"hi"[..]).expect("append");
    }

    fn link(builder: &mut tar::Builder<Vec<u8>>, name: &str, target: &str) {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        builder
            .append_link(&mut header, name, target)
            .expect("link");
    }

    #[test]
    fn clean_archives_pass_and_are_reowned() {
        let input = archive_with(|b| {
            file(b, "dir/a.txt");
            link(b, "dir/l", "a.txt");
        });
        let mut output = Vec::new();
        sanitize_archive(&input[..], &mut output).expect("clean archive");
        let mut archive = tar::Archive::new(&output[..]);
        for entry in archive.entries().expect("entries") {
            let entry = entry.expect("entry");
            assert_eq!(entry.header().uid().expect("uid"), SANDBOX_UID);
        }
    }

    #[test]
    fn hostile_archives_are_refused() {
        let cases: Vec<Vec<u8>> = vec![
            archive_with(|b| file(b, "../evil")),
            archive_with(|b| file(b, "/etc/x")),
            archive_with(|b| link(b, "root", "/")),
            archive_with(|b| link(b, "up", "../../etc")),
            archive_with(|b| link(b, "a/b", "../../x")),
        ];
        for input in cases {
            let mut output = Vec::new();
            assert!(sanitize_archive(&input[..], &mut output).is_err());
        }
    }
}
