//! kernelbox: stateful Python sandboxes (a Docker container running a stock IPython kernel each),
//! served over MCP and REST.
//!
//! | module      | what it holds                                                      |
//! |-------------|--------------------------------------------------------------------|
//! | [`config`]  | settings, every one a CLI flag and a `KERNELBOX_*` variable        |
//! | [`kernel`]  | the Jupyter messaging protocol over ZeroMQ                         |
//! | [`backend`] | where sandboxes run: the [`backend::Backend`] trait and Docker     |
//! | [`engine`]  | the sandbox table, executions, files and commands                  |
//! | [`image`]   | building the sandbox image                                         |
//! | [`http`]    | the HTTP surface: auth, errors, REST routes                        |
//! | [`mcp`]     | the MCP face: tools and resources over stdio and Streamable HTTP   |
//! | [`proxy`]   | the MCP proxy: Streamable HTTP to stdio MCP servers in a sandbox   |
//! | [`server`]  | `kernelbox serve`: the listener and the composed router            |

pub mod backend;
pub mod config;
pub mod engine;
pub mod http;
pub mod image;
pub mod kernel;
pub mod mcp;
pub mod proxy;
pub mod server;
