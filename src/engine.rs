//! The engine: the one place where sandbox logic lives. Every face (MCP, REST, the guest proxy)
//! parses its input, calls a method here and renders the result.
//!
//! | part               | what it does                                                        |
//! |--------------------|---------------------------------------------------------------------|
//! | [`lifecycle`]      | the [`Engine`]: the sandbox table, create, destroy, reattach, reaper |
//! | [`sandbox`]        | one sandbox: its container, its kernel connection, its exec lock    |
//! | [`tenant`]         | [`Tenant`]: who a call acts for                                     |
//! | [`defaults`]       | each tenant's default sandbox, for calls that name none             |
//! | [`execution`]      | what an execution is: requests, events, results, outcomes           |
//! | [`executor`]       | running code: event stream, timeouts, cancellation, interrupts      |
//! | [`collector`]      | an execution's output under its caps                                |
//! | [`history`]        | recent executions, looked up by id after they ended                 |
//! | [`files`]          | files and directory trees, confined to `/workspace`                 |
//! | [`firewall`]       | a sandbox's egress policy: the operator's, a client's, a model's    |
//! | [`network`]        | setting and reading a sandbox's firewall                            |
//! | [`paths`]          | where user files live, and the lexical path policy                  |
//! | [`commands`]       | shell commands and package installs                                 |
//! | [`dependencies`]   | a new sandbox's dependencies, installed before it is handed out     |
//! | [`create_progress`]| the steps a create reports as they happen                           |
//! | [`guest_servers`]  | guest servers (stdio MCP servers in a sandbox): registrations, tools |
//! | [`guest_sessions`] | proxy sessions to guest servers, and their idle expiry              |
//! | [`guest_registry`] | the tables both of those share                                      |
//! | [`processes`]      | background processes: start, signal, stdin, read output            |
//! | [`process_table`]  | their replay buffers, end states and per-sandbox tables             |
//! | [`validate`]       | input checks every face shares                                      |
//! | [`labels`]         | the container labels that let a restarted server reattach           |
//! | [`lifetimes`]      | per-sandbox lifetimes and caller metadata, and their checks         |
//! | [`expiry`]         | changing a lifetime; the timer that destroys expired sandboxes      |
//! | [`metrics`]        | counters and histograms for `GET /metrics`                          |
//! | [`readiness`]      | whether the engine can take work now (`GET /ready`)                 |
//! | [`error`]          | [`EngineError`] and its stable codes                                |
//!
//! This file only names the parts; each part imports its siblings directly, never this file.

pub mod admission;
pub mod collector;
pub mod commands;
pub mod create_progress;
pub mod defaults;
pub mod dependencies;
pub mod error;
pub mod execution;
pub mod executor;
pub mod expiry;
pub mod files;
pub mod firewall;
pub mod guest_registry;
pub mod guest_servers;
pub mod guest_sessions;
pub mod history;
pub mod labels;
pub mod lifecycle;
pub mod lifetimes;
pub mod metrics;
pub mod network;
pub mod paths;
pub mod pooling;
pub mod process_table;
pub mod processes;
mod quota;
pub mod readiness;
pub mod sandbox;
pub mod tenant;
pub mod validate;
pub mod warm_pool;

pub use admission::StartQueueState;
pub use create_progress::CreateProgress;
pub use error::{EngineError, GuestServerError};
pub use execution::{
    ExecEvent, ExecuteRequest, ExecutionOutcome, ExecutionResult, ExecutionStream, Output,
};
pub use files::{
    FileDownload, FileEntry, FileKind, MadeDirectory, PathStat, Transfer, TransferKind,
    UploadedFile,
};
pub use firewall::{AllowList, EgressRequest, Firewall, FirewallSource};
pub use guest_servers::{GuestServer, GuestServerParams};
pub use guest_sessions::ProxySession;
pub use history::ExecutionRecord;
pub use lifecycle::{CreateSandbox, Engine, IMAGE_VERSION};
pub use lifetimes::Metadata;
pub use paths::WORKSPACE;
pub use sandbox::{Sandbox, SandboxInfo, SandboxStatus};
pub use tenant::Tenant;
