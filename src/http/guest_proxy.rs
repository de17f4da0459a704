//! The guest proxy face: `POST/DELETE /containers/{id}/mcp-proxy/{server}`, a JSON-RPC 2.0
//! forwarder that speaks Streamable HTTP to the client and stdio to a guest server's process in
//! the sandbox. rmcp's Streamable HTTP service owns a `ServerHandler`, so it cannot forward; this
//! face parses messages, asks the engine for the session's process and renders the answers. The
//! processes and the session table live in the engine (`engine::guest_sessions`).
//!
//! | part        | what it does                                                         |
//! |-------------|----------------------------------------------------------------------|
//! | [`message`] | JSON-RPC parsing: single, batch, shorthand, invalid messages         |
//! | [`routes`]  | the HTTP handlers: sessions, JSON or SSE answers, `DELETE`           |
//! | [`error`]   | [`ProxyError`], as an HTTP status and a JSON-RPC error               |

pub mod error;
pub mod message;
pub mod routes;

pub use error::ProxyError;
pub use routes::{SESSION_HEADER, routes};
