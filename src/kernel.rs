//! Jupyter messaging protocol client: talks to a stock ipykernel over ZeroMQ.
//!
//! | part            | what it does                                                       |
//! |-----------------|--------------------------------------------------------------------|
//! | [`connection`]  | connection info (ports, HMAC key) shared with the kernel            |
//! | [`wire`]        | message framing and HMAC-SHA256 signing/verification               |
//! | [`routing`]     | delivering each reply to the request that caused it                |
//! | [`client`]      | sockets, readiness, interrupts, shutdown                           |
//! | [`execution`]   | turns one `execute_request`'s replies into a stream of events      |
//! | [`error`]       | [`KernelError`]                                                    |

pub mod client;
pub mod connection;
pub mod error;
pub mod execution;
pub mod routing;
pub mod wire;

pub use client::KernelClient;
pub use connection::{ConnectionInfo, KernelEndpoint, KernelPorts};
pub use error::KernelError;
pub use execution::{KernelEvent, KernelExecution, MimeBundle};
