//! kernelbox: stateful Python sandboxes (a Docker container running a stock IPython kernel each),
//! served over MCP and REST.
//!
//! | module      | what it holds                                                          |
//! |-------------|------------------------------------------------------------------------|
//! | [`config`]  | settings, every one a CLI flag and a `KERNELBOX_*` variable            |
//! | [`logging`] | the log formats: text, or one JSON object a line                       |
//! | [`egress`]  | egress policies: what a sandbox may reach, and narrowing them          |
//! | [`packages`]| the package policy: which Python packages installs may bring in        |
//! | [`json_budget`] | how much JSON from a sandbox the server parses and holds          |
//! | [`kernel`]  | the protocol client for kernels: Jupyter messaging                     |
//! | [`guest`]   | the protocol client for guest servers: JSON-RPC over a process's stdio |
//! | [`backend`] | where sandboxes run: the [`backend::Backend`] trait, and Docker        |
//! | [`engine`]  | the one place with the logic: sandboxes, executions, files, commands   |
//! | [`mcp`]     | the MCP face: tools and resources over stdio and Streamable HTTP       |
//! | [`http`]    | the HTTP server: the REST face, the guest proxy face, auth, errors     |
//!
//! Dependencies point down the table and never back: the faces ([`mcp`], and the REST and proxy
//! faces in [`http`]) call the [`engine`], which drives the [`backend`] and the protocol clients.

pub mod backend;
pub mod config;
pub mod egress;
pub mod engine;
pub mod guest;
pub mod http;
pub mod json_budget;
pub mod kernel;
pub mod logging;
pub mod mcp;
pub mod packages;
