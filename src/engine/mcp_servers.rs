//! Third-party stdio MCP servers running inside a sandbox: their registrations, the processes
//! that serve them and the proxy sessions that reach them from outside.
//!
//! | part        | what it does                                                              |
//! |-------------|---------------------------------------------------------------------------|
//! | [`process`] | one server process: attached `docker exec`, id rewriting, death detection  |
//! | this file   | registrations, the helper process per server, the proxy session table      |
//!
//! A registration (`PUT /containers/{id}/mcp/{server}`) names a command. The engine starts it as
//! the sandbox user in `/workspace`, performs the MCP handshake and keeps that process as the
//! server's *helper*, used by the plain tool routes. Each proxy session gets a process of its
//! own, started by the client's `initialize` and ended by `DELETE`, by idling past
//! `max_idle`, or by its own death (a watcher waits for the output stream to end). A session of
//! a process that died is gone: its id is "not found", and a new `initialize` starts afresh.

pub mod process;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use rand::RngCore;
use serde_json::{Value, json};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::Instrument;

use super::{Engine, EngineError, WORKSPACE, validate_env_name};
use crate::backend::{Backend, BackendError};
use process::Launch;
pub use process::{EVENT_BUFFER, ServerProcess};

/// The protocol revision the engine uses for its own handshake with a server.
const HANDSHAKE_PROTOCOL: &str = "2025-06-18";
/// How long a server may take to answer `initialize` (the first start of a Python server that
/// imports a lot takes a few seconds on a loaded machine).
const INITIALIZE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `tools/list` may take.
const LIST_TIMEOUT: Duration = Duration::from_secs(30);
/// Pages of `tools/list` followed at most.
const MAX_TOOL_PAGES: usize = 64;
/// Live proxy sessions per sandbox at most (each is a process inside the sandbox).
pub const MAX_SESSIONS_PER_SANDBOX: usize = 32;
/// Registered servers per sandbox at most.
pub const MAX_SERVERS_PER_SANDBOX: usize = 32;
/// Longest server name.
const MAX_NAME_CHARS: usize = 64;

/// Failures of MCP servers in a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum McpServerError {
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

/// How to start a server: a command, its arguments and extra environment variables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerParams {
    pub command: String,
    pub args: Vec<String>,
    pub env: HashMap<String, String>,
}

/// A registered server as the faces show it.
#[derive(Debug, Clone)]
pub struct RegisteredServer {
    pub name: String,
    /// The server's `initialize` result (`serverInfo`, `capabilities`, `protocolVersion`).
    pub initialize: Value,
    /// Every tool, as the server lists them.
    pub tools: Vec<Value>,
}

/// A new proxy session: its id and the process serving it.
#[derive(Debug, Clone)]
pub struct ProxySession {
    pub session_id: String,
    pub process: Arc<ServerProcess>,
}

/// A registration and its helper process.
struct Registration {
    launch: Launch,
    helper: tokio::sync::Mutex<Option<Helper>>,
}

#[derive(Clone)]
struct Helper {
    process: Arc<ServerProcess>,
    initialize: Value,
}

/// A proxy session in the table. Dropping it stops its watcher.
struct SessionEntry {
    sandbox_id: String,
    server: String,
    process: Arc<ServerProcess>,
    _watcher: DropGuard,
}

/// Registrations and sessions of every sandbox.
#[derive(Default)]
pub(crate) struct McpServers {
    /// Keyed by (sandbox id, server name).
    registrations: DashMap<(String, String), Arc<Registration>>,
    sessions: Arc<DashMap<String, SessionEntry>>,
}

impl McpServers {
    /// Forgets a destroyed sandbox's servers and sessions (their processes died with it).
    pub(crate) fn forget_sandbox(&self, sandbox_id: &str) {
        self.registrations
            .retain(|(sandbox, _), _| sandbox != sandbox_id);
        self.sessions
            .retain(|_, session| session.sandbox_id != sandbox_id);
    }

    /// Every process, for shutdown.
    async fn all_processes(&self) -> Vec<Arc<ServerProcess>> {
        let mut processes: Vec<Arc<ServerProcess>> = self
            .sessions
            .iter()
            .map(|entry| entry.value().process.clone())
            .collect();
        let registrations: Vec<Arc<Registration>> = self
            .registrations
            .iter()
            .map(|entry| entry.value().clone())
            .collect();
        for registration in registrations {
            if let Some(helper) = registration.helper.lock().await.as_ref() {
                processes.push(helper.process.clone());
            }
        }
        processes
    }
}

/// Checks a server name: letters, digits, `-`, `_`, `.`; not empty; at most 64 characters.
pub fn validate_server_name(name: &str) -> Result<(), EngineError> {
    let valid = !name.is_empty()
        && name.chars().count() <= MAX_NAME_CHARS
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name != "."
        && name != "..";
    if valid {
        Ok(())
    } else {
        Err(EngineError::InvalidInput {
            field: "server",
            reason: format!(
                "{name:?} is not a server name (1 to {MAX_NAME_CHARS} letters, digits, '-', '_', '.')"
            ),
        })
    }
}

fn launch_for(params: &ServerParams) -> Result<Launch, EngineError> {
    let invalid = |field: &'static str, reason: &str| EngineError::InvalidInput {
        field,
        reason: reason.to_string(),
    };
    if params.command.trim().is_empty() {
        return Err(invalid("command", "must not be empty"));
    }
    if params.command.contains('\0') || params.args.iter().any(|arg| arg.contains('\0')) {
        return Err(invalid("command", "must not contain NUL bytes"));
    }
    let mut env = Vec::with_capacity(params.env.len());
    for (name, value) in &params.env {
        validate_env_name(name)?;
        if value.contains('\0') {
            return Err(invalid("env", "values must not contain NUL bytes"));
        }
        env.push(format!("{name}={value}"));
    }
    env.sort();
    Ok(Launch {
        command: params.command.clone(),
        args: params.args.clone(),
        env,
        workdir: WORKSPACE.to_string(),
    })
}

/// A random session id: 128 bits, hex, visible ASCII as the Streamable HTTP spec asks.
fn new_session_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    format!("mcp_{}", hex::encode(bytes))
}

/// The `result` of a response, or the server's error as [`McpServerError::Remote`].
pub fn result_of(server: &str, response: Value) -> Result<Value, McpServerError> {
    let mut response = response;
    if let Some(error) = response.get("error") {
        return Err(McpServerError::Remote {
            server: server.to_string(),
            code: error.get("code").and_then(Value::as_i64).unwrap_or(-32603),
            message: error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            data: error.get("data").cloned(),
        });
    }
    response
        .get_mut("result")
        .map(Value::take)
        .ok_or_else(|| McpServerError::InvalidResponse {
            server: server.to_string(),
            missing: "result",
        })
}

fn request(id: &str, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

async fn within<T>(
    server: &str,
    waited: Duration,
    work: impl std::future::Future<Output = Result<T, McpServerError>>,
) -> Result<T, McpServerError> {
    tokio::time::timeout(waited, work)
        .await
        .map_err(|_| McpServerError::NotAnswering {
            server: server.to_string(),
            waited,
        })?
}

impl Engine {
    /// Registers (or replaces) a server in a sandbox: starts it, performs the MCP handshake and
    /// lists its tools. The process stays up to serve the tool routes.
    pub async fn register_mcp_server(
        &self,
        sandbox_id: &str,
        owner: Option<&str>,
        server: &str,
        params: ServerParams,
    ) -> Result<RegisteredServer, EngineError> {
        validate_server_name(server)?;
        let launch = launch_for(&params)?;
        let sandbox = self.get(sandbox_id, owner)?;
        sandbox.touch();
        let key = (sandbox_id.to_string(), server.to_string());
        let registered_here = self
            .mcp
            .registrations
            .iter()
            .filter(|entry| entry.key().0 == sandbox_id)
            .count();
        if !self.mcp.registrations.contains_key(&key) && registered_here >= MAX_SERVERS_PER_SANDBOX
        {
            return Err(McpServerError::TooMany {
                sandbox_id: sandbox_id.to_string(),
                what: "registered MCP servers",
                limit: MAX_SERVERS_PER_SANDBOX,
            }
            .into());
        }
        let span = tracing::info_span!("mcp_register", sandbox_id = %sandbox_id, server = %server);
        async {
            let helper = self
                .start_helper(sandbox.container_id(), sandbox_id, server, &launch)
                .await?;
            let tools = match list_tools(server, &helper.process).await {
                Ok(tools) => tools,
                Err(error) => {
                    helper.process.close(self.backend()).await;
                    return Err(error.into());
                }
            };
            let registration = Arc::new(Registration {
                launch,
                helper: tokio::sync::Mutex::new(Some(helper.clone())),
            });
            if let Some(old) = self.mcp.registrations.insert(key, registration)
                && let Some(old) = old.helper.lock().await.take()
            {
                old.process.close(self.backend()).await;
            }
            tracing::info!(tools = tools.len(), "MCP server registered");
            Ok(RegisteredServer {
                name: server.to_string(),
                initialize: helper.initialize,
                tools,
            })
        }
        .instrument(span)
        .await
    }

    /// A registered server and its tools, listed now by its helper process.
    pub async fn mcp_server(
        &self,
        sandbox_id: &str,
        owner: Option<&str>,
        server: &str,
    ) -> Result<RegisteredServer, EngineError> {
        let helper = self.helper(sandbox_id, owner, server).await?;
        let tools = list_tools(server, &helper.process).await?;
        Ok(RegisteredServer {
            name: server.to_string(),
            initialize: helper.initialize,
            tools,
        })
    }

    /// Calls one tool through the server's helper process; returns the `CallToolResult` (a
    /// tool's own failure is a result with `isError`, not an error). Bounded by the execution
    /// timeout.
    pub async fn call_mcp_tool(
        &self,
        sandbox_id: &str,
        owner: Option<&str>,
        server: &str,
        tool: &str,
        arguments: Value,
    ) -> Result<Value, EngineError> {
        if !arguments.is_object() {
            return Err(EngineError::InvalidInput {
                field: "params",
                reason: "must be an object of tool arguments".into(),
            });
        }
        let helper = self.helper(sandbox_id, owner, server).await?;
        let call = request(
            "call",
            "tools/call",
            json!({"name": tool, "arguments": arguments}),
        );
        let response = within(
            server,
            self.config.exec_timeout,
            helper.process.request(call, None),
        )
        .await?;
        let result = result_of(server, response)?;
        if let Ok(sandbox) = self.get(sandbox_id, owner) {
            sandbox.touch();
        }
        Ok(result)
    }

    /// The helper process of a registered server, started again when it exited.
    async fn helper(
        &self,
        sandbox_id: &str,
        owner: Option<&str>,
        server: &str,
    ) -> Result<Helper, EngineError> {
        let sandbox = self.get(sandbox_id, owner)?;
        sandbox.touch();
        let registration = self.registration(sandbox_id, server)?;
        let mut helper = registration.helper.lock().await;
        if let Some(running) = helper.as_ref()
            && !running.process.has_exited()
        {
            return Ok(running.clone());
        }
        let started = self
            .start_helper(
                sandbox.container_id(),
                sandbox_id,
                server,
                &registration.launch,
            )
            .await?;
        *helper = Some(started.clone());
        Ok(started)
    }

    fn registration(
        &self,
        sandbox_id: &str,
        server: &str,
    ) -> Result<Arc<Registration>, EngineError> {
        self.mcp
            .registrations
            .get(&(sandbox_id.to_string(), server.to_string()))
            .map(|entry| entry.value().clone())
            .ok_or_else(|| {
                McpServerError::ServerNotFound {
                    sandbox_id: sandbox_id.to_string(),
                    server: server.to_string(),
                }
                .into()
            })
    }

    /// Starts a process and performs the handshake on it.
    async fn start_helper(
        &self,
        container_id: &str,
        sandbox_id: &str,
        server: &str,
        launch: &Launch,
    ) -> Result<Helper, EngineError> {
        let process = Arc::new(
            ServerProcess::start(self.backend(), container_id, sandbox_id, server, launch).await?,
        );
        match handshake(server, &process).await {
            Ok(initialize) => Ok(Helper {
                process,
                initialize,
            }),
            Err(error) => {
                process.close(self.backend()).await;
                // A server that died at start explains itself on stderr.
                Err(match error {
                    McpServerError::ProcessExited { server } => McpServerError::Exited {
                        server,
                        stderr: process.stderr_tail(),
                    },
                    other => other,
                }
                .into())
            }
        }
    }

    /// Starts a process for a new proxy session of a registered server. The client's own
    /// `initialize` goes to it next.
    pub async fn open_proxy_session(
        &self,
        sandbox_id: &str,
        owner: Option<&str>,
        server: &str,
    ) -> Result<ProxySession, EngineError> {
        let sandbox = self.get(sandbox_id, owner)?;
        sandbox.touch();
        let registration = self.registration(sandbox_id, server)?;
        let live = self
            .mcp
            .sessions
            .iter()
            .filter(|entry| entry.value().sandbox_id == sandbox_id)
            .count();
        if live >= MAX_SESSIONS_PER_SANDBOX {
            return Err(McpServerError::TooMany {
                sandbox_id: sandbox_id.to_string(),
                what: "MCP proxy sessions",
                limit: MAX_SESSIONS_PER_SANDBOX,
            }
            .into());
        }
        let process = Arc::new(
            ServerProcess::start(
                self.backend(),
                sandbox.container_id(),
                sandbox_id,
                server,
                &registration.launch,
            )
            .await?,
        );
        let session_id = new_session_id();
        let watcher = CancellationToken::new();
        self.spawn_session_watcher(session_id.clone(), process.clone(), watcher.clone());
        self.mcp.sessions.insert(
            session_id.clone(),
            SessionEntry {
                sandbox_id: sandbox_id.to_string(),
                server: server.to_string(),
                process: process.clone(),
                _watcher: watcher.drop_guard(),
            },
        );
        tracing::info!(sandbox_id = %sandbox_id, server = %server, session_id = %session_id, pid = process.pid(), "MCP proxy session opened");
        Ok(ProxySession {
            session_id,
            process,
        })
    }

    /// The process of a live proxy session of this sandbox and server. A session whose process
    /// exited is not found.
    pub fn proxy_session(
        &self,
        sandbox_id: &str,
        owner: Option<&str>,
        server: &str,
        session_id: &str,
    ) -> Result<Arc<ServerProcess>, EngineError> {
        let sandbox = self.get(sandbox_id, owner)?;
        let not_found = || McpServerError::SessionNotFound {
            session_id: session_id.to_string(),
        };
        let session = self.mcp.sessions.get(session_id).ok_or_else(not_found)?;
        if session.sandbox_id != sandbox_id
            || session.server != server
            || session.process.has_exited()
        {
            return Err(not_found().into());
        }
        sandbox.touch();
        Ok(session.process.clone())
    }

    /// Ends a proxy session and its process.
    pub async fn close_proxy_session(
        &self,
        sandbox_id: &str,
        owner: Option<&str>,
        server: &str,
        session_id: &str,
    ) -> Result<(), EngineError> {
        let process = self.proxy_session(sandbox_id, owner, server, session_id)?;
        self.mcp.sessions.remove(session_id);
        process.close(self.backend()).await;
        tracing::info!(sandbox_id = %sandbox_id, server = %server, session_id = %session_id, "MCP proxy session closed");
        Ok(())
    }

    /// Watches a session: removes it when its process exits, and ends it once it has been idle
    /// (nothing in flight) for `max_idle`.
    fn spawn_session_watcher(
        &self,
        session_id: String,
        process: Arc<ServerProcess>,
        stop: CancellationToken,
    ) {
        let sessions = Arc::downgrade(&self.mcp.sessions);
        let backend: Arc<dyn Backend> = self.backend.clone();
        let max_idle = self.config.max_idle;
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            loop {
                let deadline = tokio::time::Instant::from_std(process.last_used() + max_idle);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = shutdown.cancelled() => return,
                    () = process.exited() => {
                        tracing::info!(session_id = %session_id, "MCP server process exited; session ended");
                        break;
                    }
                    () = tokio::time::sleep_until(deadline) => {
                        if process.in_flight() == 0 && process.idle_for() >= max_idle {
                            tracing::info!(session_id = %session_id, idle_secs = max_idle.as_secs(), "MCP proxy session idle; ending it");
                            // Out of the table first: from now on the session is not found.
                            if let Some(sessions) = sessions.upgrade() {
                                sessions.remove(&session_id);
                            }
                            process.close(backend.as_ref()).await;
                            return;
                        }
                        if process.in_flight() > 0 {
                            // Busy: look again after another idle period.
                            tokio::select! {
                                () = stop.cancelled() => return,
                                () = shutdown.cancelled() => return,
                                () = process.exited() => break,
                                () = tokio::time::sleep(max_idle) => {}
                            }
                        }
                    }
                }
            }
            if let Some(sessions) = sessions.upgrade() {
                sessions.remove(&session_id);
            }
        });
    }

    /// Ends every MCP server process (at shutdown): proxy sessions and helpers.
    pub(crate) async fn close_mcp_servers(&self) {
        let processes = self.mcp.all_processes().await;
        let backend = self.backend();
        futures::future::join_all(processes.iter().map(|process| process.close(backend))).await;
        self.mcp.sessions.clear();
        self.mcp.registrations.clear();
    }
}

/// `initialize`, then `notifications/initialized`; returns the initialize result.
async fn handshake(server: &str, process: &ServerProcess) -> Result<Value, McpServerError> {
    let initialize = request(
        "initialize",
        "initialize",
        json!({
            "protocolVersion": HANDSHAKE_PROTOCOL,
            "capabilities": {},
            "clientInfo": {"name": "kernelbox", "version": env!("CARGO_PKG_VERSION")},
        }),
    );
    let response = within(
        server,
        INITIALIZE_TIMEOUT,
        process.request(initialize, None),
    )
    .await?;
    let result = result_of(server, response)?;
    process
        .notify(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .await?;
    Ok(result)
}

/// Every tool, following `nextCursor`.
async fn list_tools(server: &str, process: &ServerProcess) -> Result<Vec<Value>, McpServerError> {
    let mut tools = Vec::new();
    let mut cursor: Option<Value> = None;
    for _ in 0..MAX_TOOL_PAGES {
        let params = match &cursor {
            Some(cursor) => json!({"cursor": cursor}),
            None => json!({}),
        };
        let response = within(
            server,
            LIST_TIMEOUT,
            process.request(request("tools", "tools/list", params), None),
        )
        .await?;
        let mut result = result_of(server, response)?;
        match result.get_mut("tools").map(Value::take) {
            Some(Value::Array(page)) => tools.extend(page),
            _ => {
                return Err(McpServerError::InvalidResponse {
                    server: server.to_string(),
                    missing: "tools",
                });
            }
        }
        cursor = result
            .get("nextCursor")
            .filter(|cursor| !cursor.is_null())
            .cloned();
        if cursor.is_none() {
            break;
        }
    }
    Ok(tools)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_are_plain() {
        for good in ["time", "mcp-server-time", "a.b_c", "X1"] {
            assert!(validate_server_name(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "é", &"x".repeat(65)] {
            assert!(validate_server_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn launch_checks_command_and_env() {
        let params = |command: &str, env: &[(&str, &str)]| ServerParams {
            command: command.into(),
            args: vec!["--flag".into()],
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let launch = launch_for(&params("python3", &[("TZ", "UTC")])).expect("valid");
        assert_eq!(launch.env, vec!["TZ=UTC".to_string()]);
        assert_eq!(launch.workdir, WORKSPACE);
        assert!(launch_for(&params(" ", &[])).is_err());
        assert!(launch_for(&params("a\0b", &[])).is_err());
        assert!(launch_for(&params("x", &[("1BAD", "v")])).is_err());
        assert!(launch_for(&params("x", &[("KERNELBOX_X", "v")])).is_err());
    }

    #[test]
    fn results_and_remote_errors_are_told_apart() {
        let ok = result_of(
            "s",
            json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": []}}),
        );
        assert_eq!(ok.ok(), Some(json!({"tools": []})));
        let remote = result_of(
            "s",
            json!({"jsonrpc": "2.0", "id": 1, "error": {"code": -32602, "message": "bad tool"}}),
        );
        assert!(matches!(
            remote,
            Err(McpServerError::Remote { code: -32602, .. })
        ));
        assert!(matches!(
            result_of("s", json!({"jsonrpc": "2.0", "id": 1})),
            Err(McpServerError::InvalidResponse { .. })
        ));
    }

    #[test]
    fn session_ids_are_random_visible_ascii() {
        let id = new_session_id();
        assert!(id.starts_with("mcp_") && id.len() == 36);
        assert!(id.chars().all(|c| c.is_ascii_graphic()));
        assert_ne!(id, new_session_id());
    }
}
