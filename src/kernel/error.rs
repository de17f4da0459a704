//! Errors talking to a kernel.

use std::sync::Arc;

use super::wire::WireError;
use super::zmtp::ZmtpError;

/// Why a channel could not be opened. The runtime's error is kept for the log.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// Nothing listens on the kernel's socket yet: a starting kernel, tried again until the
    /// caller's deadline.
    #[error("the kernel is not listening yet")]
    NotListening(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Anything else: final.
    #[error(transparent)]
    Failed(Box<dyn std::error::Error + Send + Sync>),
}

/// Errors talking to a kernel.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("could not open the kernel's {channel} channel")]
    Dial {
        channel: &'static str,
        #[source]
        source: DialError,
    },
    #[error("kernel did not become ready within {waited_ms} ms")]
    NotReady { waited_ms: u64 },
    #[error("kernel channel {channel} failed")]
    Channel {
        channel: &'static str,
        #[source]
        source: ZmtpError,
    },
    /// What came out of the sandbox broke the protocol or its bounds (a frame past the limit, a
    /// bad handshake): the connection was closed, and the kernel must be restarted.
    #[error("the kernel broke the protocol on its {channel} channel: {source}")]
    Violation {
        channel: &'static str,
        #[source]
        source: Arc<ZmtpError>,
    },
    #[error("kernel connection is closed")]
    Closed,
    #[error("kernel did not answer {request} within {waited_ms} ms")]
    NoReply {
        request: &'static str,
        waited_ms: u64,
    },
    #[error("malformed kernel message")]
    Wire(#[from] WireError),
}

impl KernelError {
    /// A channel error as a violation when it is the peer's fault (a broken bound), else as it
    /// is.
    pub(crate) fn from_channel(channel: &'static str, error: ZmtpError) -> Self {
        if is_violation(&error) {
            KernelError::Violation {
                channel,
                source: Arc::new(error),
            }
        } else {
            KernelError::Channel {
                channel,
                source: error,
            }
        }
    }
}

/// Whether a ZMTP failure is the peer breaking the protocol, rather than the stream ending.
pub(crate) fn is_violation(error: &ZmtpError) -> bool {
    !matches!(
        error,
        ZmtpError::Io(_) | ZmtpError::UnexpectedEof { .. } | ZmtpError::Broken
    )
}
