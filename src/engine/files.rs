//! Files and directory trees in a sandbox, confined to `/workspace`.
//!
//! A path is checked twice: lexically (no `..` climbing out, no absolute path elsewhere), then
//! inside the container with `realpath`, so a symlink pointing outside is refused too. Archives
//! coming in are rewritten entry by entry: `..`, absolute names and links leaving the target are
//! rejected, and every entry is owned by the sandbox user.

//!
//! | part        | what it does                                                   |
//! |-------------|----------------------------------------------------------------|
//! | this file   | the operations: write, read, list, delete, upload, download    |
//! | [`in_sandbox`] | what runs inside the sandbox: resolve a path, list, delete  |
//! | [`archive`] | tar archives: one-file archives, the first file, the sanitizer |
//! | [`streams`] | size-capped streams and upload spooling                        |

mod archive;
mod in_sandbox;
mod streams;

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use serde::Serialize;
use tokio_util::io::{ReaderStream, StreamReader, SyncIoBridge};

use super::error::EngineError;
use super::lifecycle::Engine;
use super::paths::{WORKSPACE, workspace_path};
use super::sandbox::Sandbox;
use super::tenant::Tenant;
use crate::backend::ByteStream;
use archive::{copy_first_file, file_header, first_file, sanitize_archive};
use in_sandbox::{Create, Existing, delete, list, resolve};
pub use in_sandbox::{FileEntry, FileKind};
use streams::{PIPE_BUFFER, limit_stream, spool};

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

impl Engine {
    /// Writes a file (creating parent directories), owned by the sandbox user.
    pub async fn write_file(
        &self,
        id: &str,
        tenant: &Tenant,
        path: &str,
        content: Bytes,
    ) -> Result<String, EngineError> {
        let sandbox = self.use_sandbox(id, tenant)?;
        let (existing, real) = resolve(self.backend(), &sandbox, path, Create::Parent).await?;
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
        let (existing, real) = resolve(self.backend(), sandbox, path, Create::Nothing).await?;
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
        let sandbox = self.use_sandbox(id, tenant)?;
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
        let sandbox = self.use_sandbox(id, tenant)?;
        let (existing, real) = resolve(self.backend(), &sandbox, path, Create::Nothing).await?;
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
        list(self.backend(), &sandbox, &real).await
    }

    /// Deletes a file or a directory tree. The workspace itself cannot be deleted.
    pub async fn delete_path(
        &self,
        id: &str,
        tenant: &Tenant,
        path: &str,
    ) -> Result<(), EngineError> {
        let sandbox = self.use_sandbox(id, tenant)?;
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
        let (_, real_parent) = resolve(self.backend(), &sandbox, &parent, Create::Nothing).await?;
        let name = lexical_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let target = format!("{}/{}", real_parent.trim_end_matches('/'), name);
        delete(self.backend(), &sandbox, &target, path).await
    }

    /// A tar stream of a file or directory; entries are named relative to its parent.
    pub async fn download_tree(
        &self,
        id: &str,
        tenant: &Tenant,
        path: &str,
    ) -> Result<ByteStream, EngineError> {
        let sandbox = self.use_sandbox(id, tenant)?;
        let (existing, real) = resolve(self.backend(), &sandbox, path, Create::Nothing).await?;
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
        let sandbox = self.use_sandbox(id, tenant)?;
        let (existing, real) = resolve(self.backend(), &sandbox, path, Create::Parent).await?;
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
        let sandbox = self.use_sandbox(id, tenant)?;
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
        let sandbox = self.use_sandbox(id, tenant)?;
        let (existing, real) = resolve(self.backend(), &sandbox, path, Create::Nothing).await?;
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
        let sandbox = self.use_sandbox(id, tenant)?;
        let (existing, real) = resolve(self.backend(), &sandbox, path, Create::Directory).await?;
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
