//! The protocol client for kernels: the Jupyter messaging protocol, spoken to a stock ipykernel
//! over ZMTP on byte streams the backend opens to the kernel's unix sockets.
//!
//! | part            | what it does                                                       |
//! |-----------------|--------------------------------------------------------------------|
//! | [`connection`]  | connection info (ipc sockets, HMAC key) shared with the kernel      |
//! | [`zmtp`]        | ZMTP 3.0 over a byte stream, every length the peer sends bounded   |
//! | [`wire`]        | message framing and HMAC-SHA256 signing/verification               |
//! | [`routing`]     | delivering each reply to the request that caused it                |
//! | [`client`]      | channels, readiness, interrupts, shutdown                          |
//! | [`execution`]   | turns one `execute_request`'s replies into a stream of events      |
//! | [`error`]       | [`KernelError`]                                                    |

pub mod client;
pub mod connection;
pub mod error;
pub mod execution;
pub mod routing;
pub mod wire;
pub mod zmtp;

pub use client::{ChannelStream, Dialer, KernelClient};
pub use connection::{ConnectionInfo, KernelChannel};
pub use error::{DialError, KernelError};
pub use execution::{KernelEvent, KernelExecution, MimeBundle};
pub use routing::{CloseReason, KernelCounters};
pub use zmtp::Limits;
