//! Jupyter messaging protocol client: talks to a stock ipykernel over ZeroMQ.
//!
//! | part            | what it does                                                       |
//! |-----------------|--------------------------------------------------------------------|
//! | [`connection`]  | connection info (ports, HMAC key) shared with the kernel            |
//! | [`wire`]        | message framing and HMAC-SHA256 signing/verification               |
//! | [`client`]      | sockets, readiness, request routing by `parent_header.msg_id`      |
//! | [`execution`]   | turns one `execute_request`'s replies into a stream of events      |

pub mod client;
pub mod connection;
pub mod execution;
pub mod wire;

pub use client::KernelClient;
pub use connection::{ConnectionInfo, KernelEndpoint, KernelPorts};
pub use execution::{KernelEvent, KernelExecution, MimeBundle};

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
    Wire(#[from] wire::WireError),
}
