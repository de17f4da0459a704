//! Guest servers: third-party stdio MCP servers running inside a sandbox, as the sandbox user.
//!
//! A registration (`PUT /containers/{id}/mcp/{server}`) names a command. The engine starts it in
//! `/workspace`, performs the MCP handshake and keeps that process as the server's *helper*, used
//! by the plain tool routes (and started again when it exited). Proxy sessions, each with a
//! process of its own, are in `guest_sessions`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tracing::Instrument;

use super::error::{EngineError, GuestServerError};
use super::guest_registry::{GuestProcess, Helper, Launch, Registration};
use super::lifecycle::Engine;
use super::paths::WORKSPACE;
use super::tenant::Tenant;
use super::validate;
use crate::guest::{GuestPeer, PeerError};

/// The protocol revision the engine uses for its own handshake with a server.
const HANDSHAKE_PROTOCOL: &str = "2025-06-18";
/// How long a server may take to answer `initialize` (the first start of a Python server that
/// imports a lot takes a few seconds on a loaded machine).
const INITIALIZE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `tools/list` may take.
const LIST_TIMEOUT: Duration = Duration::from_secs(30);
/// Pages of `tools/list` followed at most.
const MAX_TOOL_PAGES: usize = 64;
/// Registered servers per sandbox at most.
pub const MAX_SERVERS_PER_SANDBOX: usize = 32;

/// How to start a guest server: a command, its arguments and extra environment variables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestServerParams {
    pub command: String,
    pub args: Vec<String>,
    pub env: HashMap<String, String>,
}

/// A registered guest server as the faces show it.
#[derive(Debug, Clone)]
pub struct GuestServer {
    pub name: String,
    /// The server's `initialize` result (`serverInfo`, `capabilities`, `protocolVersion`).
    pub initialize: Value,
    /// Every tool, as the server lists them.
    pub tools: Vec<Value>,
}

fn launch_for(params: &GuestServerParams) -> Result<Launch, EngineError> {
    validate::command(&params.command)?;
    for arg in &params.args {
        validate::no_nul("args", arg)?;
    }
    let env = validate::env(&params.env)?;
    Ok(Launch {
        command: params.command.clone(),
        args: params.args.clone(),
        env,
        workdir: WORKSPACE.to_string(),
    })
}

/// The `result` of a response, or the server's error as [`GuestServerError::Remote`].
pub fn result_of(server: &str, response: Value) -> Result<Value, GuestServerError> {
    let mut response = response;
    if let Some(error) = response.get("error") {
        return Err(GuestServerError::Remote {
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
        .ok_or_else(|| GuestServerError::InvalidResponse {
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
    work: impl std::future::Future<Output = Result<T, GuestServerError>>,
) -> Result<T, GuestServerError> {
    tokio::time::timeout(waited, work)
        .await
        .map_err(|_| GuestServerError::NotAnswering {
            server: server.to_string(),
            waited,
        })?
}

impl Engine {
    /// Registers (or replaces) a server in a sandbox: starts it, performs the MCP handshake and
    /// lists its tools. The process stays up to serve the tool routes.
    pub async fn register_guest_server(
        &self,
        sandbox_id: &str,
        tenant: &Tenant,
        server: &str,
        params: GuestServerParams,
    ) -> Result<GuestServer, EngineError> {
        validate::server_name(server)?;
        let launch = launch_for(&params)?;
        self.on_live(sandbox_id, tenant, async |sandbox| {
            let key = (sandbox_id.to_string(), server.to_string());
            let registered_here = self
                .guests
                .registrations
                .iter()
                .filter(|entry| entry.key().0 == sandbox_id)
                .count();
            if !self.guests.registrations.contains_key(&key)
                && registered_here >= MAX_SERVERS_PER_SANDBOX
            {
                return Err(GuestServerError::TooMany {
                    sandbox_id: sandbox_id.to_string(),
                    what: "registered MCP servers",
                    limit: MAX_SERVERS_PER_SANDBOX,
                }
                .into());
            }
            let span =
                tracing::info_span!("guest_register", sandbox_id = %sandbox_id, server = %server);
            async {
                let helper = self
                    .start_helper(sandbox.container_id(), sandbox_id, server, &launch)
                    .await?;
                let tools = match list_tools(server, helper.process.peer()).await {
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
                if let Some(old) = self.guests.registrations.insert(key, registration)
                    && let Some(old) = old.helper.lock().await.take()
                {
                    old.process.close(self.backend()).await;
                }
                tracing::info!(tools = tools.len(), "guest server registered");
                Ok(GuestServer {
                    name: server.to_string(),
                    initialize: helper.initialize,
                    tools,
                })
            }
            .instrument(span)
            .await
        })
        .await
    }

    /// A registered server and its tools, listed now by its helper process.
    pub async fn guest_server(
        &self,
        sandbox_id: &str,
        tenant: &Tenant,
        server: &str,
    ) -> Result<GuestServer, EngineError> {
        let helper = self.helper(sandbox_id, tenant, server).await?;
        let tools = list_tools(server, helper.process.peer()).await?;
        Ok(GuestServer {
            name: server.to_string(),
            initialize: helper.initialize,
            tools,
        })
    }

    /// Calls one tool through the server's helper process; returns the `CallToolResult` (a
    /// tool's own failure is a result with `isError`, not an error). Bounded by the guest request
    /// timeout, as proxied requests are.
    pub async fn call_guest_tool(
        &self,
        sandbox_id: &str,
        tenant: &Tenant,
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
        let helper = self.helper(sandbox_id, tenant, server).await?;
        let call = request(
            "call",
            "tools/call",
            json!({"name": tool, "arguments": arguments}),
        );
        let response = within(
            server,
            self.config.guest_request_timeout,
            guest_request(server, helper.process.peer(), call),
        )
        .await?;
        let result = result_of(server, response)?;
        if let Ok(sandbox) = self.get(sandbox_id, tenant) {
            sandbox.touch();
        }
        Ok(result)
    }

    /// The helper process of a registered server, started again when it exited.
    async fn helper(
        &self,
        sandbox_id: &str,
        tenant: &Tenant,
        server: &str,
    ) -> Result<Helper, EngineError> {
        self.on_live(sandbox_id, tenant, async |sandbox| {
            let registration = self.guests.registration(sandbox_id, server)?;
            let mut helper = registration.helper.lock().await;
            if let Some(running) = helper.as_ref()
                && !running.process.peer().has_exited()
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
        })
        .await
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
            GuestProcess::start(&self.backend, container_id, sandbox_id, server, launch).await?,
        );
        match handshake(server, process.peer()).await {
            Ok(initialize) => Ok(Helper {
                process,
                initialize,
            }),
            Err(error) => {
                process.close(self.backend()).await;
                // A server that died at start explains itself on stderr.
                Err(match error {
                    GuestServerError::ProcessExited { server } => GuestServerError::Exited {
                        server,
                        stderr: process.peer().stderr_tail(),
                    },
                    other => other,
                }
                .into())
            }
        }
    }
}

/// One request to a guest server, waiting for its response (no events are listened to).
async fn guest_request(
    server: &str,
    peer: &GuestPeer,
    message: Value,
) -> Result<Value, GuestServerError> {
    peer.request(message, None)
        .await
        .map_err(|error| guest_error(server, error))
}

/// A peer failure as the guest-server error it is.
pub(crate) fn guest_error(server: &str, error: PeerError) -> GuestServerError {
    match error {
        PeerError::Exited { .. } => GuestServerError::ProcessExited {
            server: server.to_string(),
        },
        PeerError::LineTooLong { server, limit } => GuestServerError::LineTooLong { server, limit },
        PeerError::LineTooComplex { server, limit } => {
            GuestServerError::LineTooComplex { server, limit }
        }
        PeerError::Timeout { server, waited } => GuestServerError::NotAnswering { server, waited },
        PeerError::InvalidMessage => GuestServerError::InvalidMessage,
    }
}

/// `initialize`, then `notifications/initialized`; returns the initialize result.
async fn handshake(server: &str, peer: &GuestPeer) -> Result<Value, GuestServerError> {
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
        guest_request(server, peer, initialize),
    )
    .await?;
    let result = result_of(server, response)?;
    peer.notify(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .await
        .map_err(|error| guest_error(server, error))?;
    Ok(result)
}

/// Every tool, following `nextCursor`.
async fn list_tools(server: &str, peer: &GuestPeer) -> Result<Vec<Value>, GuestServerError> {
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
            guest_request(server, peer, request("tools", "tools/list", params)),
        )
        .await?;
        let mut result = result_of(server, response)?;
        match result.get_mut("tools").map(Value::take) {
            Some(Value::Array(page)) => tools.extend(page),
            _ => {
                return Err(GuestServerError::InvalidResponse {
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
    fn launch_checks_command_and_env() {
        let params = |command: &str, env: &[(&str, &str)]| GuestServerParams {
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
            Err(GuestServerError::Remote { code: -32602, .. })
        ));
        assert!(matches!(
            result_of("s", json!({"jsonrpc": "2.0", "id": 1})),
            Err(GuestServerError::InvalidResponse { .. })
        ));
    }
}
