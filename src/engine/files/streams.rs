//! Moving bytes between the server and a sandbox without holding them: a size-capped stream,
//! and spooling an upload of any length to an anonymous temporary file, within a budget that
//! all uploads in progress share.

use std::io::{self, Seek};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;

use super::super::error::EngineError;
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

/// The bytes that all uploads in progress may hold in temporary files together.
#[derive(Debug)]
pub struct SpoolBudget {
    limit: u64,
    held: AtomicU64,
}

/// What one upload holds of the budget; given back when dropped (with its temporary file).
#[derive(Debug)]
pub(super) struct SpoolShare<'a> {
    budget: &'a SpoolBudget,
    held: u64,
}

impl SpoolBudget {
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            held: AtomicU64::new(0),
        }
    }

    /// Bytes held now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::SeqCst)
    }

    fn share(&self) -> SpoolShare<'_> {
        SpoolShare {
            budget: self,
            held: 0,
        }
    }
}

impl SpoolShare<'_> {
    /// Takes `bytes` more, or refuses when the budget would pass its limit.
    fn grow(&mut self, bytes: u64) -> Result<(), EngineError> {
        let limit = self.budget.limit;
        self.budget
            .held
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |held| {
                held.checked_add(bytes).filter(|total| *total <= limit)
            })
            .map_err(|_| EngineError::SpoolFull { limit })?;
        self.held += bytes;
        Ok(())
    }
}

impl Drop for SpoolShare<'_> {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.held, Ordering::SeqCst);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_share_one_spool_budget() {
        let budget = SpoolBudget::new(100);
        let mut first = budget.share();
        first.grow(60).expect("60 of 100");
        let mut second = budget.share();
        assert!(matches!(
            second.grow(50),
            Err(EngineError::SpoolFull { limit: 100 })
        ));
        second.grow(40).expect("the rest");
        drop(first);
        second.grow(60).expect("given back");
        drop(second);
        assert_eq!(budget.held.load(Ordering::SeqCst), 0);
    }
}
