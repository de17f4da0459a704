//! Files and directory trees in a sandbox, confined to `/workspace`, handled with the sandbox
//! user's rights.
//!
//! A path is checked lexically first (no `..` climbing out, no absolute path elsewhere). Then
//! every operation runs inside the container as one call of a helper program, as uid 1000 with
//! a root-owned interpreter: it walks the path from a directory fd of the workspace with
//! `O_NOFOLLOW` opens, resolving symlinks itself (a link leading out is refused) and acting on
//! the fds it holds, so the check and the use are one step and a link swapped in between
//! redirects nothing. Docker's archive API (which reads and writes as root) is not used.
//! Archives coming in are checked entry by entry here (`..`, absolute names, links leaving the
//! target, devices are refused), then extracted by the helper entry by entry, each walked like
//! any path.
//!
//! | part           | what it does                                                   |
//! |----------------|----------------------------------------------------------------|
//! | this file      | the operations: write, read, list, delete, upload, download,   |
//! |                | stat, mkdir, copy, move                                        |
//! | [`in_sandbox`] | running the helper (`helper.py`) and reading its answers       |
//! | [`archive`]    | the sanitizer every uploaded archive passes through            |
//! | [`streams`]    | size-capped streams and upload spooling                        |

mod archive;
mod in_sandbox;
mod streams;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use serde::Serialize;
use tokio_util::io::{ReaderStream, StreamReader, SyncIoBridge};

use super::error::EngineError;
pub use super::error::HelperFailure;
use super::lifecycle::Engine;
use super::paths::{WORKSPACE, workspace_path};
use super::sandbox::Sandbox;
use super::tenant::Tenant;
use crate::backend::ByteStream;
use archive::sanitize_archive;
use in_sandbox::{
    ANSWER_LIMIT, Done, Helper, IDLE_TIMEOUT, LISTING_LIMIT, Listing, Made, Moved,
    OPERATION_TIMEOUT, Opened, Refusal, Refused, Side, Stated, Written, relative, run, start,
};
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

/// What is at a path: the entry itself (a symlink is reported as one, not followed).
#[derive(Debug, Clone, Serialize)]
pub struct PathStat {
    /// Absolute path inside the sandbox.
    pub path: String,
    pub kind: FileKind,
    pub size: u64,
    /// Permission bits (`0o7777` at most).
    pub mode: u32,
    /// Seconds since the Unix epoch.
    pub modified: f64,
}

/// A directory made by [`Engine::make_dir`].
#[derive(Debug, Clone, Serialize)]
pub struct MadeDirectory {
    /// Absolute path inside the sandbox.
    pub path: String,
    /// False when the directory was there already.
    pub created: bool,
}

/// A copy or a move done.
#[derive(Debug, Clone, Serialize)]
pub struct Transfer {
    /// Absolute paths inside the sandbox.
    pub source: String,
    pub destination: String,
    /// What went: a file, a directory tree, or (moved) a symlink.
    pub kind: FileKind,
}

/// Copy or move, as [`Engine::transfer`] does them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferKind {
    Copy,
    Move,
}

/// Bounds a step of the helper that waits for its answer.
async fn within<T>(
    waited: std::time::Duration,
    step: impl std::future::Future<Output = Result<T, EngineError>>,
) -> Result<T, EngineError> {
    tokio::time::timeout(waited, step)
        .await
        .map_err(|_| HelperFailure::Timeout { waited })?
}

impl Engine {
    /// Starts the helper reading `path` (refused past `limit` bytes) and waits for its answer:
    /// the opened file's size, before any of its bytes.
    async fn open_for_read(
        &self,
        sandbox: &Sandbox,
        path: &str,
        limit: u64,
    ) -> Result<(Helper, Opened), EngineError> {
        let lexical = workspace_path(path)?;
        let limit_arg = limit.to_string();
        let mut helper = start(
            self.backend(),
            sandbox,
            "read",
            &[relative(&lexical), &limit_arg],
        )
        .await?;
        let opened = within(OPERATION_TIMEOUT, helper.answer::<Opened>(ANSWER_LIMIT))
            .await?
            .map_err(|refused| refused.into_error(path))?;
        Ok((helper, opened))
    }

    /// Writes a file (creating parent directories), owned by the sandbox user.
    pub async fn write_file(
        &self,
        id: &str,
        tenant: &Tenant,
        path: &str,
        content: Bytes,
    ) -> Result<String, EngineError> {
        self.on_live(id, tenant, async |sandbox| {
            let size = content.len() as u64;
            let input: ByteStream = Box::pin(futures::stream::once(async move { Ok(content) }));
            let written = self.write_in(&sandbox, path, size, input).await?;
            Ok(written.path)
        })
        .await
    }

    /// Writes `size` bytes of `input` to `path` through the helper: into a temporary file in
    /// the target directory, renamed over the target once complete.
    async fn write_in(
        &self,
        sandbox: &Sandbox,
        path: &str,
        size: u64,
        input: ByteStream,
    ) -> Result<Written, EngineError> {
        let lexical = workspace_path(path)?;
        let size_arg = size.to_string();
        let mut helper = start(
            self.backend(),
            sandbox,
            "write",
            &[relative(&lexical), &size_arg],
        )
        .await?;
        // The helper answers success only once it has read all `size` bytes and renamed the
        // file into place; the feed's closing of stdin may fail after that, harmlessly.
        let (_fed, answer) = helper.feed_and_answer::<Written>(input, ANSWER_LIMIT).await;
        let written = answer?.map_err(|refused| refused.into_error(path))?;
        within(OPERATION_TIMEOUT, helper.finish()).await?;
        Ok(written)
    }

    /// Reads a whole file of at most `limit` bytes; a larger one is refused before it is read.
    pub async fn read_file(
        &self,
        id: &str,
        tenant: &Tenant,
        path: &str,
        limit: u64,
    ) -> Result<Vec<u8>, EngineError> {
        self.on_live(id, tenant, async |sandbox| {
            let (helper, opened) = self.open_for_read(&sandbox, path, limit).await?;
            if opened.size > limit {
                return Err(EngineError::TooLarge {
                    what: "the file",
                    limit,
                });
            }
            let mut content = Vec::with_capacity(opened.size.min(1 << 20) as usize);
            let mut bytes = helper.payload(Some(opened.size));
            while let Some(chunk) = bytes.next().await {
                let chunk = chunk.map_err(|error| EngineError::InvalidInput {
                    field: "path",
                    reason: format!("cannot read {path}: {error}"),
                })?;
                content.extend_from_slice(&chunk);
            }
            Ok(content)
        })
        .await
    }

    /// Lists a directory (default `/workspace`).
    pub async fn list_files(
        &self,
        id: &str,
        tenant: &Tenant,
        path: &str,
    ) -> Result<Vec<FileEntry>, EngineError> {
        self.on_live(id, tenant, async |sandbox| {
            let lexical = workspace_path(path)?;
            let listing = run::<Listing>(
                self.backend(),
                &sandbox,
                "list",
                &[relative(&lexical)],
                LISTING_LIMIT,
            )
            .await?
            .map_err(|refused| match refused.kind {
                Refusal::NotDir => EngineError::InvalidInput {
                    field: "path",
                    reason: format!("{path} is a file, not a directory"),
                },
                _ => refused.into_error(path),
            })?;
            let base = listing.path.trim_end_matches('/').to_string();
            Ok(listing
                .entries
                .into_iter()
                .map(|entry| FileEntry {
                    path: format!("{base}/{}", entry.name),
                    name: entry.name,
                    kind: entry.kind,
                    size: entry.size,
                    modified: entry.modified,
                })
                .collect())
        })
        .await
    }

    /// Deletes a file or a directory tree. The workspace itself cannot be deleted. A symlink
    /// as the last component is removed itself, never its target.
    pub async fn delete_path(
        &self,
        id: &str,
        tenant: &Tenant,
        path: &str,
    ) -> Result<(), EngineError> {
        self.on_live(id, tenant, async |sandbox| {
            let lexical = workspace_path(path)?;
            if lexical == WORKSPACE {
                return Err(EngineError::InvalidInput {
                    field: "path",
                    reason: "the workspace itself cannot be deleted".into(),
                });
            }
            run::<Done>(
                self.backend(),
                &sandbox,
                "delete",
                &[relative(&lexical)],
                ANSWER_LIMIT,
            )
            .await?
            .map_err(|refused| match refused.kind {
                Refusal::Invalid | Refusal::Io | Refusal::Interrupted => {
                    EngineError::InvalidInput {
                        field: "path",
                        reason: format!("cannot delete {path}: {}", refused.message),
                    }
                }
                _ => refused.into_error(path),
            })?;
            Ok(())
        })
        .await
    }

    /// A tar stream of the helper's `tar` on `path` in `mode` (`tree` or `dir`).
    async fn tar_of(
        &self,
        sandbox: &Sandbox,
        path: &str,
        mode: &str,
    ) -> Result<ByteStream, EngineError> {
        let lexical = workspace_path(path)?;
        let mut helper = start(self.backend(), sandbox, "tar", &[relative(&lexical), mode]).await?;
        within(OPERATION_TIMEOUT, helper.answer::<Done>(ANSWER_LIMIT))
            .await?
            .map_err(|refused| match refused.kind {
                Refusal::NotDir => EngineError::InvalidInput {
                    field: "path",
                    reason: format!("{path} is a file, not a directory"),
                },
                _ => refused.into_error(path),
            })?;
        Ok(helper.payload(None))
    }

    /// A tar stream of a file or directory; entries are named relative to its parent.
    pub async fn download_tree(
        &self,
        id: &str,
        tenant: &Tenant,
        path: &str,
    ) -> Result<ByteStream, EngineError> {
        self.on_live(id, tenant, async |sandbox| {
            self.tar_of(&sandbox, path, "tree").await
        })
        .await
    }

    /// Writes a file from a stream of any length (up to the configured upload limit) without
    /// holding it in memory: the bytes are spooled to an anonymous temporary file (so nothing
    /// is written when the upload breaks off or passes the limit), then streamed into the
    /// helper's stdin. Parent directories are created.
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
        self.on_live(id, tenant, async |sandbox| {
            workspace_path(path)?;
            let (spooled, size, _spool_share) =
                spool(content, self.config.max_upload_bytes, &self.spool).await?;
            sandbox.touch();
            let input: ByteStream = Box::pin(ReaderStream::with_capacity(
                tokio::fs::File::from_std(spooled),
                PIPE_BUFFER,
            ));
            let written = self.write_in(&sandbox, path, size, input).await?;
            sandbox.touch();
            Ok(UploadedFile {
                path: written.path,
                size: written.size,
            })
        })
        .await
    }

    /// Opens a file for a streamed read of any size.
    pub async fn open_file(
        &self,
        id: &str,
        tenant: &Tenant,
        path: &str,
    ) -> Result<FileDownload, EngineError> {
        self.on_live(id, tenant, async |sandbox| {
            let (helper, opened) = self.open_for_read(&sandbox, path, u64::MAX).await?;
            Ok(FileDownload {
                size: opened.size,
                stream: helper.payload(Some(opened.size)),
            })
        })
        .await
    }

    /// A tar stream of a directory's contents, entries named relative to it (`./a/b.txt`), so
    /// extracting it under the same path with [`Engine::upload_tree`] gives the same tree.
    pub async fn download_dir(
        &self,
        id: &str,
        tenant: &Tenant,
        path: &str,
    ) -> Result<ByteStream, EngineError> {
        self.on_live(id, tenant, async |sandbox| {
            self.tar_of(&sandbox, path, "dir").await
        })
        .await
    }

    /// Extracts a tar stream under directory `path` (created when missing). Entries with `..`,
    /// absolute names, links that leave the target, devices and fifos are refused; the helper
    /// extracts the rest entry by entry, walking each like any path, so a link planted before
    /// or by an earlier entry cannot lead an entry out of the workspace.
    pub async fn upload_tree(
        &self,
        id: &str,
        tenant: &Tenant,
        path: &str,
        tar: ByteStream,
    ) -> Result<(), EngineError> {
        self.on_live(id, tenant, async |sandbox| {
            let lexical = workspace_path(path)?;
            let mut helper =
                start(self.backend(), &sandbox, "untar", &[relative(&lexical)]).await?;
            let limit = self.config.max_upload_bytes;
            let exceeded = Arc::new(AtomicBool::new(false));
            let tar = limit_stream(tar, limit, exceeded.clone());
            let (writer, reader) = tokio::io::duplex(PIPE_BUFFER);
            let input = SyncIoBridge::new(StreamReader::new(tar));
            let output = SyncIoBridge::new(writer);
            let sanitizer = tokio::task::spawn_blocking(move || sanitize_archive(input, output));
            let sanitized: ByteStream =
                Box::pin(ReaderStream::new(reader).map_err(io::Error::other).boxed());
            let (_fed, answer) = helper
                .feed_and_answer::<Done>(sanitized, ANSWER_LIMIT)
                .await;
            let checked = sanitizer.await.map_err(|_| EngineError::ShuttingDown)?;
            sandbox.touch();
            if exceeded.load(Ordering::SeqCst) {
                return Err(EngineError::TooLarge {
                    what: "archive",
                    limit,
                });
            }
            let answer = answer?;
            // A refusal about the target itself comes first: the sanitizer only failed then because
            // the helper stopped reading. So does an entry led out of the workspace on disk.
            if let Err(refused) = answer {
                return Err(match (refused.kind, refused.entry.clone()) {
                    (Refusal::Invalid | Refusal::Io | Refusal::Interrupted, _) => {
                        checked.err().map_or_else(
                            || EngineError::InvalidInput {
                                field: "archive",
                                reason: refused.message,
                            },
                            |reason| EngineError::InvalidInput {
                                field: "archive",
                                reason,
                            },
                        )
                    }
                    (Refusal::NotDir, None) => EngineError::InvalidInput {
                        field: "path",
                        reason: format!("{path} is not a directory"),
                    },
                    (_, None) => refused.into_error(path),
                    (_, Some(entry)) => {
                        let entry_path = format!("{}/{entry}", lexical.trim_end_matches('/'));
                        refused.into_error(&entry_path)
                    }
                });
            }
            checked.map_err(|reason| EngineError::InvalidInput {
                field: "archive",
                reason,
            })?;
            within(IDLE_TIMEOUT, helper.finish()).await
        })
        .await
    }

    /// The size of the file a download of `path` would send (a final link followed, as a read
    /// does), without sending it: the helper opens the file, answers its size and sends none of
    /// it. A directory is [`EngineError::IsADirectory`].
    pub async fn file_size(
        &self,
        id: &str,
        tenant: &Tenant,
        path: &str,
    ) -> Result<u64, EngineError> {
        self.on_live(id, tenant, async |sandbox| {
            // With a limit of 0 the helper sends no byte after its answer (an empty file has none).
            let (helper, opened) = self.open_for_read(&sandbox, path, 0).await?;
            within(OPERATION_TIMEOUT, helper.finish()).await?;
            Ok(opened.size)
        })
        .await
    }

    /// What is at `path`, without reading it: `None` when nothing is (or a parent is missing or
    /// not a directory). The entry itself is described; a link is not followed, but one that
    /// leads out of the workspace is refused like any path through it.
    pub async fn stat_path(
        &self,
        id: &str,
        tenant: &Tenant,
        path: &str,
    ) -> Result<Option<PathStat>, EngineError> {
        self.on_live(id, tenant, async |sandbox| {
            let lexical = workspace_path(path)?;
            let stated = run::<Stated>(
                self.backend(),
                &sandbox,
                "stat",
                &[relative(&lexical)],
                ANSWER_LIMIT,
            )
            .await?
            .map_err(|refused| refused.into_error(path))?;
            if !stated.exists {
                return Ok(None);
            }
            let (Some(kind), Some(size), Some(mode), Some(modified)) =
                (stated.kind, stated.size, stated.mode, stated.modified)
            else {
                return Err(HelperFailure::NoAnswer.into());
            };
            Ok(Some(PathStat {
                path: lexical,
                kind,
                size,
                mode: mode & 0o7777,
                modified: if modified.is_finite() { modified } else { 0.0 },
            }))
        })
        .await
    }

    /// Makes directory `path` and its missing parents, owned by the sandbox user; a directory
    /// already there is no error, anything else with the name is [`EngineError::PathExists`].
    pub async fn make_dir(
        &self,
        id: &str,
        tenant: &Tenant,
        path: &str,
    ) -> Result<MadeDirectory, EngineError> {
        self.on_live(id, tenant, async |sandbox| {
            let lexical = workspace_path(path)?;
            let made = run::<Made>(
                self.backend(),
                &sandbox,
                "mkdir",
                &[relative(&lexical)],
                ANSWER_LIMIT,
            )
            .await?
            .map_err(|refused| refused.into_error(path))?;
            Ok(MadeDirectory {
                path: lexical,
                created: made.created,
            })
        })
        .await
    }

    /// Copies or moves `source` to `destination` inside the workspace (the destination's missing
    /// parents are made). The destination is the new path itself, never a directory to go into;
    /// an existing one is [`EngineError::PathExists`] unless `overwrite`, which replaces it
    /// (only when the sandbox user may write it). A copy follows a final link of the source
    /// (inside the workspace only) and copies a directory's tree, links in it as links; a move
    /// renames the entry itself. A directory cannot go into itself.
    pub async fn transfer(
        &self,
        id: &str,
        tenant: &Tenant,
        kind: TransferKind,
        source: &str,
        destination: &str,
        overwrite: bool,
    ) -> Result<Transfer, EngineError> {
        self.on_live(id, tenant, async |sandbox| {
            let from = workspace_path(source)?;
            let to = workspace_path(destination)?;
            if to == WORKSPACE {
                return Err(EngineError::InvalidInput {
                    field: "destination",
                    reason: "the workspace itself cannot be replaced".into(),
                });
            }
            if kind == TransferKind::Move && from == WORKSPACE {
                return Err(EngineError::InvalidInput {
                    field: "source",
                    reason: "the workspace itself cannot be moved".into(),
                });
            }
            let op = match kind {
                TransferKind::Copy => "copy",
                TransferKind::Move => "move",
            };
            let overwrite = if overwrite { "1" } else { "0" };
            let moved = run::<Moved>(
                self.backend(),
                &sandbox,
                op,
                &[relative(&from), relative(&to), overwrite],
                ANSWER_LIMIT,
            )
            .await?
            .map_err(|refused| transfer_error(refused, source, destination))?;
            sandbox.touch();
            Ok(Transfer {
                source: from,
                destination: to,
                kind: moved.kind,
            })
        })
        .await
    }
}

/// The engine error for a refused copy or move: about the path the helper names.
fn transfer_error(refused: Refused, source: &str, destination: &str) -> EngineError {
    match (refused.side, refused.kind) {
        (_, Refusal::Invalid | Refusal::Interrupted | Refusal::Io) => EngineError::InvalidInput {
            field: "path",
            reason: refused.message,
        },
        (Some(Side::Destination), _) => refused.into_error(destination),
        (None, _) => refused.into_error(source),
    }
}
