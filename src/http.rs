//! The HTTP server behind `kernelbox serve`: the REST face, the guest proxy face, and the pieces
//! every HTTP face shares. The MCP face's Streamable HTTP transport is mounted here too.
//!
//! | part              | what it does                                                       |
//! |-------------------|--------------------------------------------------------------------|
//! | [`server`]        | composes the faces into one router, binds, serves, shuts down      |
//! | [`listener`]      | the accept loop: header-read and keep-alive timeouts, connection cap |
//! | [`rest`]          | the REST face: containers, executions, files, commands, guests     |
//! | [`guest_proxy`]   | the guest proxy face: Streamable HTTP to a guest server's process  |
//! | [`auth`]          | API keys and the tenants they name                                 |
//! | [`guard`]         | the checks every request passes before a face sees it              |
//! | [`request_id`]    | the request id, and the span every request's log lines carry        |
//! | [`error`]         | the JSON error shape, and engine errors as HTTP and JSON-RPC codes |
//! | [`extract`]       | request extractors whose rejections use the error shape            |
//! | [`metrics`]       | `GET /metrics`                                                     |
//! | [`openapi`]       | the OpenAPI document and the `/docs` page                          |
//! | [`probes`]        | `GET /ready`, the readiness probe                                  |
//!
//! The faces import the shared pieces, never each other; only [`server`] knows them all.

pub mod auth;
pub mod error;
pub mod extract;
pub mod guard;
pub mod guest_proxy;
pub mod listener;
pub mod metrics;
pub mod openapi;
pub mod probes;
pub mod request_id;
pub mod rest;
pub mod server;
