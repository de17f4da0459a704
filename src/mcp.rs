//! The MCP face: one rmcp [`ServerHandler`] serving the sandbox tools and resources, over stdio
//! (`kernelbox stdio`) and Streamable HTTP (`/mcp` in `kernelbox serve`).
//!
//! | part            | what it does                                                     |
//! |-----------------|------------------------------------------------------------------|
//! | [`handler`]     | the handler: which sandbox a call uses, resources, server info   |
//! | [`tools`]       | the tools, their documented arguments, and what each one calls   |
//! | [`render`]      | engine results as MCP content, `isError` and structured content  |
//! | [`resources`]   | sessions, files and large outputs as readable resources          |
//! | [`transport`]   | the stdio loop and the Streamable HTTP service                   |
//! | [`session_owners`] | which tenant opened each HTTP session; others get 404 for it  |
//!
//! **Which sandbox a call uses** (DESIGN decision 3): a stdio connection, and an HTTP client on a
//! protocol revision with the initialize handshake (2024-11-05 to 2025-11-25), get a default
//! sandbox bound to their connection: created on first use, destroyed when the connection ends.
//! HTTP clients on 2026-07-28 are stateless: a call without `session_id` creates a sandbox and
//! returns its id. Every tool also takes an explicit `session_id`.

pub mod handler;
mod render;
mod resources;
pub mod session_owners;
pub mod tools;
pub mod transport;

pub use handler::KernelboxMcp;
