//! The MCP server handler: [`KernelboxMcp`], which sandbox each call uses, and the resources.
//! The tools themselves are in `tools`.

use std::sync::Arc;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::ToolCallContext;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CancelTaskParams, GetTaskParams, GetTaskResult,
    Implementation, ListResourceTemplatesResult, ListResourcesResult, PaginatedRequestParams,
    ReadResourceRequestParams, ReadResourceResponse, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, tool_handler};

use super::resources;
use crate::engine::{CreateSandbox, EgressRequest, Engine, EngineError, SandboxInfo, Tenant};

/// What the server tells a model about itself at initialize.
pub(crate) const INSTRUCTIONS: &str = "kernelbox runs Python in sandboxes: each is a Docker container with a \
stateful IPython kernel (Python 3.11; numpy, pandas, matplotlib and pillow preinstalled). Variables, \
imports and files persist between calls in the same session. Use execute_code to run Python (plots \
come back as images), run_command for shell commands, install_packages for pip packages, and the \
file tools to move files in and out of /workspace. Calls without a session_id share your default \
sandbox (over HTTP: one per API key, kept across connections until it idles; over stdio: one per \
connection); create_session makes an isolated one whose session_id you pass to every tool.";

/// Failures of a tool call, shown to the model as an `isError` result.
#[derive(Debug, thiserror::Error)]
pub enum ToolFailure {
    #[error(
        "unknown session_id {id}: it does not exist or belongs to someone else; call list_sessions to see yours or create_session for a new one"
    )]
    UnknownSession { id: String },
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("the call was cancelled")]
    Cancelled,
    #[error(transparent)]
    Engine(EngineError),
}

impl ToolFailure {
    /// The stable code of the failure: the same code REST answers with for the same input.
    pub fn code(&self) -> &'static str {
        match self {
            ToolFailure::UnknownSession { .. } => "not_found",
            ToolFailure::InvalidArgument { .. } => "invalid_request",
            ToolFailure::Cancelled => "cancelled",
            ToolFailure::Engine(error) => error.code(),
        }
    }
}

impl From<EngineError> for ToolFailure {
    fn from(error: EngineError) -> Self {
        match error {
            EngineError::NotFound { id } => ToolFailure::UnknownSession { id },
            other => ToolFailure::Engine(other),
        }
    }
}

/// The MCP server. One value per connection (stdio), per legacy HTTP session, or per stateless
/// HTTP request; clones share the connection's default sandbox (used over stdio only: HTTP
/// calls use the tenant's default sandbox, which the engine keeps).
#[derive(Clone)]
pub struct KernelboxMcp {
    pub(crate) engine: Arc<Engine>,
    pub(crate) connection: Arc<ConnectionSandbox>,
    pub(crate) tool_router: ToolRouter<Self>,
    /// The server's MCP tasks (shared by every HTTP request).
    pub(crate) tasks: Arc<Tasks>,
}

impl KernelboxMcp {
    /// Destroys the connection's default sandbox now (at stdio EOF), rather than in the
    /// background when the last clone is dropped.
    pub async fn close(&self) {
        let default = self.connection.default.lock().await.take();
        if let Some((id, tenant)) = default
            && let Err(error) = self.engine.destroy(&id, &tenant).await
        {
            tracing::debug!(sandbox_id = %id, %error, "default sandbox already gone");
        }
    }

    /// The sandbox a call runs in: the one named, else (over HTTP, in either protocol era) the
    /// tenant's default sandbox, else (stdio) the connection's default sandbox.
    pub(crate) async fn target(
        &self,
        session_id: Option<&str>,
        context: &RequestContext<RoleServer>,
    ) -> Result<Target, ToolFailure> {
        let tenant = tenant(context);
        if let Some(id) = session_id.filter(|id| !id.is_empty()) {
            let sandbox = self.engine.get(id, &tenant)?;
            return Ok(Target {
                id: id.to_string(),
                made: None,
                idle_timeout: self.engine.idle_limit(&sandbox),
                tenant,
            });
        }
        if over_http(context) {
            let default = self.engine.default_sandbox(&tenant).await?;
            return Ok(Target {
                id: default.info.id,
                made: default.created.then_some(Made::TenantDefault),
                idle_timeout: self.engine.config().default_sandbox_idle,
                tenant,
            });
        }
        let idle_timeout = self.engine.config().max_idle;
        let mut default = self.connection.default.lock().await;
        if let Some((id, _)) = default.as_ref()
            && self.engine.get(id, &tenant).is_ok()
        {
            return Ok(Target {
                id: id.clone(),
                made: None,
                idle_timeout,
                tenant,
            });
        }
        let info = self
            .create_sandbox(&tenant, Default::default(), None, None)
            .await?;
        *default = Some((info.id.clone(), tenant.clone()));
        Ok(Target {
            id: info.id,
            made: Some(Made::ConnectionDefault),
            idle_timeout,
            tenant,
        })
    }

    pub(crate) async fn create_sandbox(
        &self,
        tenant: &Tenant,
        env: std::collections::HashMap<String, String>,
        image: Option<String>,
        network: Option<EgressRequest>,
    ) -> Result<SandboxInfo, ToolFailure> {
        Ok(self
            .engine
            .create(CreateSandbox {
                tag: Some("mcp".into()),
                env,
                image,
                network,
                ..CreateSandbox::new(tenant.clone())
            })
            .await?)
    }

    /// Forgets the default sandbox when it is closed explicitly.
    pub(crate) async fn forget_default(&self, id: &str) {
        let mut default = self.connection.default.lock().await;
        if default.as_ref().is_some_and(|(default, _)| default == id) {
            *default = None;
        }
    }
}

/// The MCP tasks of one server (all HTTP requests share it; a stdio connection has its own),
/// and the tenant each belongs to. What they do is in `tasks`.
#[derive(Default)]
pub(crate) struct Tasks {
    pub(crate) manager: rmcp::task_manager::TaskManager,
    pub(crate) owners: dashmap::DashMap<String, Tenant>,
}

/// A resolved sandbox for one call.
pub(crate) struct Target {
    pub(crate) id: String,
    /// Which default sandbox this call made, if it made one: the result tells its id and rule.
    pub(crate) made: Option<Made>,
    /// The sandbox is destroyed after idling this long: the result says so.
    pub(crate) idle_timeout: std::time::Duration,
    pub(crate) tenant: Tenant,
}

/// The kind of default sandbox a call made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Made {
    /// The tenant's default sandbox (HTTP): shared by every call of the tenant without a
    /// `session_id`, on any connection.
    TenantDefault,
    /// The stdio connection's default sandbox: it ends with the connection.
    ConnectionDefault,
}

/// The default sandbox of one connection (its id, and the tenant it was made for); destroyed
/// when the connection's last handler goes.
pub(crate) struct ConnectionSandbox {
    pub(crate) engine: Arc<Engine>,
    pub(crate) default: tokio::sync::Mutex<Option<(String, Tenant)>>,
}

impl Drop for ConnectionSandbox {
    fn drop(&mut self) {
        if let Some((id, tenant)) = self.default.get_mut().take() {
            self.engine.destroy_in_background(id, tenant);
        }
    }
}

/// The tenant of the HTTP request behind a call; a stdio connection is the local tenant.
pub(crate) fn tenant(context: &RequestContext<RoleServer>) -> Tenant {
    context
        .extensions
        .get::<axum::http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<Tenant>())
        .cloned()
        .unwrap_or(Tenant::Local)
}

/// A call over HTTP (`/mcp`), in either protocol era; otherwise stdio.
fn over_http(context: &RequestContext<RoleServer>) -> bool {
    context
        .extensions
        .get::<axum::http::request::Parts>()
        .is_some()
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for KernelboxMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .enable_tasks()
                .build(),
        )
        .with_server_info(
            Implementation::new("kernelbox", env!("CARGO_PKG_VERSION"))
                .with_title("kernelbox Python sandboxes"),
        )
        .with_instructions(INSTRUCTIONS)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if self.wants_task(&request, &context) {
            return self.call_as_task(request, context);
        }
        let call = ToolCallContext::new(self, request, context);
        self.tool_router.call(call).await
    }

    async fn get_task(
        &self,
        request: GetTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, ErrorData> {
        self.task_status(&request, &context)
    }

    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.cancel_task_of(&request, &context)
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        Ok(resources::list(&self.engine, &tenant(&context)))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        Ok(resources::templates())
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        resources::read(&self.engine, &tenant(&context), &request.uri)
            .await
            .map(Into::into)
    }
}
