//! Moving bytes between the server and a sandbox without holding them: a size-capped stream,
//! and spooling an upload of any length to an anonymous temporary file, within the spool budget
//! that all uploads in progress share.

use std::io::{self, Seek};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;

use super::super::error::EngineError;
use super::super::quota::{SpoolBudget, SpoolShare};
use crate::backend::ByteStream;

/// Bytes buffered between the blocking tar code and the async side of a stream.
pub(super) const PIPE_BUFFER: usize = 256 * 1024;

/// Cuts a stream with an error once more than `limit` bytes went through, and raises `exceeded`.
pub(super) fn limit_stream(input: ByteStream, limit: u64, exceeded: Arc<AtomicBool>) -> ByteStream {
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
/// rewound, its size, and the share of `budget` it holds (keep it as long as the file). More
/// than `limit` bytes, or more than the budget has left, is refused.
pub(super) async fn spool<'a, S>(
    content: S,
    limit: u64,
    budget: &'a SpoolBudget,
) -> Result<(std::fs::File, u64, SpoolShare<'a>), EngineError>
where
    S: Stream<Item = io::Result<Bytes>> + Send,
{
    let mut share = budget.share();
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
        share.grow(chunk.len() as u64)?;
        file.write_all(&chunk).await.map_err(EngineError::Spool)?;
    }
    file.flush().await.map_err(EngineError::Spool)?;
    let mut file = file.into_std().await;
    file.rewind().map_err(EngineError::Spool)?;
    Ok((file, size, share))
}
