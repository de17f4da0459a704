//! The engine's errors: one variant per thing a caller can act on, each with a stable code.
//!
//! Every face shows the same failure the same way: the message is the [`std::fmt::Display`] text
//! and the machine-readable code is [`EngineError::code`]. HTTP statuses and JSON-RPC codes are
//! mapped from these in `http::error`, the one place that knows them.

use std::time::Duration;

use serde_json::Value;

use super::paths::{PathError, WORKSPACE};
use crate::backend::BackendError;
use crate::kernel::KernelError;
use crate::packages::PackageRefusal;

/// Engine failures.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no sandbox with id {id}")]
    NotFound { id: String },
    /// The sandbox was removed (its lifetime ended, or its owner or the idle reaper closed it)
    /// while a request was using it: whatever broke inside broke because of that.
    #[error(
        "sandbox {id} was destroyed while the request ran (its lifetime ended, or it was closed)"
    )]
    Destroyed { id: String },
    #[error("no execution with id {id} (only recent executions are kept)")]
    ExecutionNotFound { id: String },
    #[error(
        "sandbox {id} is busy: {running}; wait for it to finish, or stop it with the interrupt tool (its state is kept)"
    )]
    Busy { id: String, running: String },
    #[error(
        "the server's limit of {limit} live sandboxes (--max-sandboxes) is reached; close one first"
    )]
    TooManySandboxes { limit: usize },
    #[error(
        "your quota of {limit} live sandboxes (--max-sandboxes-per-tenant) is reached; close one first"
    )]
    TenantQuotaReached { limit: usize },
    #[error(
        "no sandbox could start within {secs} s: the server starts at most {starts} at once (--max-concurrent-starts) and others were ahead; try again"
    )]
    StartQueueTimeout { secs: u64, starts: usize },
    #[error("the caller stopped waiting before the sandbox's turn to start came")]
    StartAbandoned,
    #[error("a warm-pool sandbox of another image or configuration, or beyond the pool's size")]
    PoolMemberStale,
    #[error("a warm-pool sandbox was claimed but its binding was never stored")]
    PoolClaimUnbound,
    #[error("invalid {field}: {reason}")]
    InvalidInput { field: &'static str, reason: String },
    #[error("path {path} is outside {WORKSPACE}")]
    PathOutsideWorkspace { path: String },
    #[error("no such file or directory: {path}")]
    PathNotFound { path: String },
    #[error("{path} is a directory")]
    IsADirectory { path: String },
    /// Something already has the name (a copy's or a move's destination without `overwrite`).
    #[error("{path} already exists")]
    PathExists { path: String },
    /// The sandbox user may not do this to the path (the server acts with that user's rights).
    #[error("permission denied: the sandbox user may not use {path} this way")]
    PermissionDenied { path: String },
    /// The in-sandbox file helper failed; the detail is for the log.
    #[error("the file operation failed inside the sandbox")]
    FileHelper(#[source] HelperFailure),
    #[error("{what} is larger than the limit of {limit} bytes")]
    TooLarge { what: &'static str, limit: u64 },
    #[error("command did not finish within {secs} s and was killed")]
    CommandTimeout { secs: u64 },
    #[error("sandbox image {image} is missing or outdated; run `kernelbox image build`")]
    ImageMissing { image: String },
    #[error("the sandbox's kernel is not reachable")]
    Kernel(#[source] KernelError),
    #[error(
        "the kernel of sandbox {id} broke the protocol {limit} times within {window_secs} s and is left stopped; restart its kernel or destroy it"
    )]
    KernelQuarantined {
        id: String,
        limit: usize,
        window_secs: u64,
    },
    #[error(transparent)]
    Backend(BackendError),
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The sandbox is closed (gone from the server), but its containers could not be removed
    /// yet; the engine keeps trying.
    #[error(
        "sandbox {id} is closed, but removing its containers failed ({source}); the server keeps trying"
    )]
    RemovalPending {
        id: String,
        #[source]
        source: BackendError,
    },
    /// A model asked for egress the operator's policy does not allow.
    #[error("network policy refused: {reason}; a session may only narrow the server's policy")]
    EgressWidening { reason: String },
    #[error("the upload was interrupted before it ended")]
    UploadInterrupted(#[source] std::io::Error),
    #[error("cannot buffer the upload on the server")]
    Spool(#[source] std::io::Error),
    #[error(
        "uploads in progress hold the server's spool limit of {limit} bytes (--max-spool-bytes); try again when they finish"
    )]
    SpoolFull { limit: u64 },
    #[error(transparent)]
    GuestServer(#[from] GuestServerError),
    /// The package policy refuses a requirement (or it is not one).
    #[error(transparent)]
    PackageRefused(#[from] PackageRefusal),
    /// pip could not install a new sandbox's `dependencies`; the sandbox was removed.
    #[error(
        "could not install the dependencies {packages} (pip exited with {exit_code}); no sandbox was created. pip's last lines:\n{output}"
    )]
    DependencyInstallFailed {
        /// The requirements pip's errors name, quoted (all requested ones when it names none).
        packages: String,
        exit_code: i64,
        /// The end of pip's output.
        output: String,
    },
    #[error(transparent)]
    Process(#[from] ProcessError),
}

impl From<BackendError> for EngineError {
    fn from(error: BackendError) -> Self {
        match error {
            BackendError::ImageMissing { image } => EngineError::ImageMissing { image },
            other => EngineError::Backend(other),
        }
    }
}

impl From<PathError> for EngineError {
    fn from(error: PathError) -> Self {
        match error {
            PathError::OutsideWorkspace { path } => EngineError::PathOutsideWorkspace { path },
            PathError::Nul => EngineError::InvalidInput {
                field: "path",
                reason: "contains a NUL byte".into(),
            },
        }
    }
}

impl EngineError {
    /// The stable, machine-readable code of this failure: the same on every face.
    pub fn code(&self) -> &'static str {
        use EngineError as E;
        match self {
            E::NotFound { .. } | E::Destroyed { .. } | E::ExecutionNotFound { .. } => "not_found",
            E::PathNotFound { .. } => "path_not_found",
            E::Busy { .. } => "busy",
            E::TooManySandboxes { .. } => "too_many_sandboxes",
            E::TenantQuotaReached { .. } => "tenant_quota_reached",
            E::InvalidInput { .. } => "invalid_request",
            E::PathOutsideWorkspace { .. } => "path_outside_workspace",
            E::IsADirectory { .. } => "is_a_directory",
            E::PathExists { .. } => "path_exists",
            E::PermissionDenied { .. } => "permission_denied",
            // Killed under way (the sandbox stopping or restarting, its memory limit, or its own
            // code): not the server's failure, and worth trying again.
            E::FileHelper(HelperFailure::Exit {
                code: 137 | 143, ..
            }) => "operation_interrupted",
            E::FileHelper(_) => "internal",
            E::TooLarge { .. } => "too_large",
            E::CommandTimeout { .. } => "timeout",
            E::ImageMissing { .. } => "image_missing",
            E::ShuttingDown => "shutting_down",
            E::RemovalPending { .. } => "removal_pending",
            E::StartQueueTimeout { .. } => "start_queue_timeout",
            E::StartAbandoned => "start_abandoned",
            E::EgressWidening { .. } => "network_not_allowed",
            E::Kernel(_) | E::KernelQuarantined { .. } => "kernel_unavailable",
            E::UploadInterrupted(_) => "upload_interrupted",
            E::Backend(error) => backend_code(error),
            E::Spool(_) => "internal",
            // Only the engine's own reattach sees these.
            E::PoolMemberStale | E::PoolClaimUnbound => "internal",
            E::SpoolFull { .. } => "spool_full",
            E::GuestServer(error) => error.code(),
            E::PackageRefused(PackageRefusal::NotARequirement { .. }) => "invalid_request",
            E::PackageRefused(_) => "package_not_allowed",
            E::DependencyInstallFailed { .. } => "dependency_install_failed",
            E::Process(error) => error.code(),
        }
    }

    /// Whether this is the server's own failure rather than something about the request: its
    /// detail belongs in the log, and the caller gets a generic message.
    pub fn is_internal(&self) -> bool {
        self.code() == "internal"
    }
}

fn backend_code(error: &BackendError) -> &'static str {
    match error {
        BackendError::Unavailable { .. } => "docker_unreachable",
        // The runtime refused what the request asked for (say, more CPUs than the host has).
        BackendError::Invalid { .. } => "invalid_request",
        _ => "internal",
    }
}

/// Failures of guest servers: third-party stdio MCP servers running inside a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum GuestServerError {
    #[error("no MCP server named {server:?} is registered in sandbox {sandbox_id}")]
    ServerNotFound { sandbox_id: String, server: String },
    #[error("no proxy session {session_id} (it ended, expired, or its server process exited)")]
    SessionNotFound { session_id: String },
    #[error("sandbox {sandbox_id} already has {limit} {what}; close one first")]
    TooMany {
        sandbox_id: String,
        what: &'static str,
        limit: usize,
    },
    #[error("MCP server {server:?} exited before it answered; its stderr ends with: {stderr}")]
    Exited { server: String, stderr: String },
    #[error("MCP server {server:?} did not answer within {waited:?}")]
    NotAnswering { server: String, waited: Duration },
    #[error("the MCP server process of {server:?} exited")]
    ProcessExited { server: String },
    #[error("MCP server {server:?} answered with error {code}: {message}")]
    Remote {
        server: String,
        code: i64,
        message: String,
        data: Option<Value>,
    },
    #[error("MCP server {server:?} printed a line longer than {limit} bytes, and was stopped")]
    LineTooLong { server: String, limit: usize },
    #[error(
        "MCP server {server:?} printed a line of more than {limit} JSON values, and was stopped"
    )]
    LineTooComplex { server: String, limit: usize },
    #[error("MCP server {server:?} sent a response without {missing}")]
    InvalidResponse {
        server: String,
        missing: &'static str,
    },
    #[error("the message cannot be encoded as JSON")]
    InvalidMessage,
    #[error("cannot start the MCP server process")]
    Backend(#[source] BackendError),
}

impl GuestServerError {
    /// The stable code of this failure.
    pub fn code(&self) -> &'static str {
        use GuestServerError as G;
        match self {
            G::ServerNotFound { .. } => "mcp_server_not_found",
            G::SessionNotFound { .. } => "session_not_found",
            G::TooMany { .. } => "too_many",
            // The command the caller registered does not start or does not speak MCP.
            G::Exited { .. } => "mcp_server_failed",
            G::Remote { .. } => "mcp_error",
            G::InvalidMessage => "invalid_request",
            G::NotAnswering { .. } => "timeout",
            G::ProcessExited { .. } => "mcp_server_exited",
            G::InvalidResponse { .. } | G::LineTooLong { .. } | G::LineTooComplex { .. } => {
                "mcp_server_invalid_response"
            }
            G::Backend(error) => backend_code(error),
        }
    }
}

/// Why the helper could not be used: the server's side of things, logged, not shown.
#[derive(Debug, thiserror::Error)]
pub enum HelperFailure {
    #[error("the helper ended without an answer")]
    NoAnswer,
    #[error("the helper's answer is not what it should be: {0}")]
    BadAnswer(#[source] serde_json::Error),
    #[error("the helper's answer passed {limit} bytes")]
    AnswerTooLong { limit: usize },
    #[error("the helper exited with {code}; stderr: {stderr}")]
    Exit { code: i64, stderr: String },
    #[error("the helper took no byte for {waited:?}")]
    Stalled { waited: Duration },
    #[error("the helper did not finish within {waited:?}")]
    Timeout { waited: Duration },
}

impl From<HelperFailure> for EngineError {
    fn from(failure: HelperFailure) -> Self {
        EngineError::FileHelper(failure)
    }
}

/// Failures particular to background processes.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("no process {key} in sandbox {sandbox_id} (list them with GET …/processes)")]
    NotFound { sandbox_id: String, key: String },
    #[error(
        "sandbox {sandbox_id} already runs {limit} background processes; kill one or wait for one to end"
    )]
    TooMany { sandbox_id: String, limit: usize },
    #[error("a running process already has the tag {tag:?}")]
    TagTaken { tag: String },
    #[error("process {pid} has ended")]
    Ended { pid: u64 },
    #[error("the stdin of process {pid} is closed")]
    StdinClosed { pid: u64 },
    #[error("process {pid} did not take its stdin within {waited:?}")]
    StdinBlocked { pid: u64, waited: Duration },
}

impl ProcessError {
    /// The stable code of this failure.
    pub fn code(&self) -> &'static str {
        match self {
            ProcessError::NotFound { .. } => "process_not_found",
            ProcessError::TooMany { .. } => "too_many",
            ProcessError::TagTaken { .. } => "tag_taken",
            ProcessError::Ended { .. } => "process_ended",
            ProcessError::StdinClosed { .. } => "stdin_closed",
            ProcessError::StdinBlocked { .. } => "timeout",
        }
    }
}
