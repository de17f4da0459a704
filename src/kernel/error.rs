//! Errors talking to a kernel.

/// Errors talking to a kernel.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("could not connect to the kernel's {channel} channel")]
    Connect {
        channel: &'static str,
        #[source]
        source: zeromq::ZmqError,
    },
    #[error("kernel did not become ready within {waited_ms} ms")]
    NotReady { waited_ms: u64 },
    #[error("kernel channel {channel} failed")]
    Channel {
        channel: &'static str,
        #[source]
        source: zeromq::ZmqError,
    },
    #[error("kernel connection is closed")]
    Closed,
    #[error("kernel did not answer {request} within {waited_ms} ms")]
    NoReply {
        request: &'static str,
        waited_ms: u64,
    },
    #[error("malformed kernel message")]
    Wire(#[from] super::wire::WireError),
}
