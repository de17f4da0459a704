//! The HTTP surface shared by the REST API, `/mcp` and the MCP proxy.
//!
//! | part      | what it does                                                    |
//! |-----------|-----------------------------------------------------------------|
//! | [`auth`]  | API keys and tenants, one check for every HTTP face             |
//! | [`error`] | the JSON error shape and the engine-error → status mapping      |

pub mod auth;
pub mod error;
