//! The MCP face: one rmcp [`ServerHandler`] serving the sandbox tools and resources, over stdio
//! (`kernelbox stdio`) and Streamable HTTP (`/mcp` in `kernelbox serve`).
//!
//! | part            | what it does                                                     |
//! |-----------------|------------------------------------------------------------------|
//! | [`handler`]     | the handler: which sandbox a call uses, resources, server info   |
//! | [`tools`]       | the tools, their documented arguments, and what each one calls   |
//! | [`process_tools`] | the background-process tools (start, list, read output, kill)  |
//! | [`file_tools`]  | stat_file, make_directory, copy_file, move_file                  |
//! | [`render`]      | engine results as MCP content, `isError` and structured content  |
//! | [`resources`]   | sessions, files and large outputs as readable resources          |
//! | [`transport`]   | the stdio loop and the Streamable HTTP service                   |
//! | [`session_owners`] | which tenant opened each HTTP session; others get 404 for it  |
//! | [`tasks`]       | MCP Tasks for the long tools: `tasks/get`, `tasks/cancel`       |
//!
//! **Which sandbox a call uses**: the one its `session_id` names; without one, over HTTP (either
//! protocol era, any number of MCP sessions), the tenant's default sandbox, which the engine keeps
//! until it idles (`engine::defaults`); over stdio, a default sandbox bound to the connection:
//! created on first use, destroyed when the connection ends.

pub mod file_tools;
pub mod handler;
pub mod process_tools;
mod render;
mod resources;
pub mod session_owners;
mod tasks;
pub mod tools;
pub mod transport;

pub use handler::KernelboxMcp;
