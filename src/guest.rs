//! The protocol client for guest servers: third-party stdio MCP servers that run inside a
//! sandbox. It speaks JSON-RPC 2.0 over the process's stdio, as [`crate::kernel`] speaks the
//! Jupyter protocol to a kernel. Starting and stopping the process is the engine's business
//! (`engine::guest_servers`); this module only talks to it.
//!
//! | part      | what it does                                                          |
//! |-----------|-----------------------------------------------------------------------|
//! | [`peer`]  | [`GuestPeer`]: id rewriting, routing by progress token, `ping`, death |
//! | [`lines`] | bounded splitting of stdout into messages                             |

pub mod lines;
pub mod peer;

pub use peer::{EVENT_BUFFER, GuestPeer, PeerError};
