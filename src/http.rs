//! The HTTP surface shared by the REST API, `/mcp` and the MCP proxy.
//!
//! | part        | what it does                                                    |
//! |-------------|-----------------------------------------------------------------|
//! | [`auth`]    | API keys and tenants, one check for every HTTP face             |
//! | [`error`]   | the JSON error shape and the engine-error → status mapping      |
//! | [`rest`]    | the REST routes over the engine                                 |
//! | [`metrics`] | `GET /metrics`                                                  |
//! | [`openapi`] | the OpenAPI document and the `/docs` page                       |

pub mod auth;
pub mod error;
pub mod metrics;
pub mod openapi;
pub mod rest;
