//! The MCP tools: documented arguments, and a thin call into the engine for each.
//!
//! Every tool takes an optional `session_id` (see the module docs of [`crate::mcp`] for which
//! sandbox a call without one uses). Failures come back as `isError` results whose text says
//! what to do; malformed arguments are JSON-RPC "invalid params" errors from rmcp.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ProgressNotificationParam, ProgressToken};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, Peer, RoleServer, tool, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;

use super::handler::{ConnectionSandbox, KernelboxMcp, ToolFailure, tenant};
use super::render;
use super::resources::READ_LIMIT;
use crate::engine::ExecEvent;
use crate::engine::ExecuteRequest;
use crate::engine::commands::CommandRequest;
use crate::engine::{AllowList, EgressRequest, Engine};

/// A silent execution still sends a progress notification this often, so clients that reset
/// their timeout on progress never give up on a long run.
const KEEPALIVE: Duration = Duration::from_secs(5);

const EXECUTE_CODE: &str = "Run Python code in a stateful IPython kernel (Python 3.11 with numpy, \
pandas, matplotlib and pillow; install more with install_packages). Variables, imports and \
files persist across calls in the same session, like notebook cells. Returns stdout, stderr and \
the value of the last expression; matplotlib figures and other images come back as images. A \
Python exception gives an error result with the traceback. The working directory is /workspace. \
Each call has a time limit (default 120 s, raise it with timeout_secs); on timeout the code is \
interrupted and, if it does not stop, the kernel is restarted (variables lost, files kept). \
Output past a few MiB is truncated. With a progress token, output streams as progress \
notifications while the code runs.";
const RESTART_KERNEL: &str = "Restart the Python kernel of a session: variables and imports are \
cleared, files in /workspace and installed packages are kept. Also stops code that is stuck.";
const RUN_COMMAND: &str = "Run a shell command (bash -c) in the sandbox as the unprivileged user \
`sandbox`, in /workspace unless cwd says otherwise. Returns stdout, stderr and the exit code; a \
non-zero exit code is reported as an error result. Has a time limit like execute_code.";
const INSTALL_PACKAGES: &str = "Install Python packages with pip into the session (user site), \
importable right away without a restart. Each entry is a pip requirement such as `requests` or \
`scikit-learn==1.5.2`, or the path of a wheel inside the sandbox. Needs network access to the \
package index unless you install a wheel file.";
const WRITE_FILE: &str = "Write a file in the sandbox (parent directories are created). Paths are \
relative to /workspace (or absolute inside it); nothing outside /workspace can be written. Use \
encoding \"base64\" for binary content.";
const READ_FILE: &str = "Read a file from the sandbox's /workspace. Text comes back as text, \
PNG/JPEG/GIF/WebP images as images, other binary files as base64. Files over 8 MiB are refused: \
read them in parts with execute_code or run_command.";
const LIST_FILES: &str = "List a directory in the sandbox's /workspace (default: /workspace \
itself): names, kinds, sizes and modification times.";
const DELETE_FILE: &str = "Delete a file or a directory (recursively) in the sandbox's /workspace.";
const CREATE_SESSION: &str = "Create a new sandbox session (its own container and kernel) and \
return its session_id; pass that id to the other tools to use it. Sessions are isolated from \
each other. Close it with close_session when done; idle sessions are removed automatically. \
`network` can restrict what the session's code may reach (only these domains and addresses); it \
can only narrow the server's network policy, never open anything the server does not allow.";
const LIST_SESSIONS: &str = "List the sandbox sessions you can use, with their status (running, \
busy, restarting, dead) and when they were created and last used.";
const CLOSE_SESSION: &str = "Close a sandbox session: its container, kernel and files are removed.";

/// `session_id` as the stateless revision routes it: mirrored into the `Mcp-Param-Session-Id`
/// header so gateways can route by sandbox without parsing the body.
#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct SessionArg {
    /// The sandbox session to use. Optional: without it the connection's default session is used
    /// (created on first use), or, for stateless HTTP clients, a new session is created and its
    /// id returned.
    // Typed as a plain string in the schema: `x-mcp-header` may only annotate a property whose
    // `type` is a single primitive, and the field is optional through `default` anyway.
    #[serde(default)]
    #[schemars(with = "String", extend("x-mcp-header" = "Session-Id"))]
    pub session_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ExecuteCodeArgs {
    /// Python source to run, like a notebook cell. The last expression's value is returned.
    pub code: String,
    /// Time limit in seconds (default 120; the server caps it).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    #[serde(flatten)]
    pub session: SessionArg,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct RestartKernelArgs {
    #[serde(flatten)]
    pub session: SessionArg,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct RunCommandArgs {
    /// The command line, run by `bash -c`.
    pub command: String,
    /// Working directory: relative to /workspace, or absolute.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Time limit in seconds (default 120; the server caps it).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    #[serde(flatten)]
    pub session: SessionArg,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct InstallPackagesArgs {
    /// pip requirements, e.g. ["requests", "polars==1.9.0"].
    pub packages: Vec<String>,
    #[serde(flatten)]
    pub session: SessionArg,
}

/// How `content` is encoded.
#[derive(Debug, Default, Clone, Copy, Deserialize, JsonSchema)]
pub enum FileEncoding {
    #[default]
    #[serde(rename = "utf-8")]
    Utf8,
    #[serde(rename = "base64")]
    Base64,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct WriteFileArgs {
    /// Where to write, relative to /workspace or absolute inside it.
    pub path: String,
    /// The file's content: text, or base64 when `encoding` is "base64".
    pub content: String,
    /// "utf-8" (default) or "base64".
    #[serde(default)]
    pub encoding: FileEncoding,
    #[serde(flatten)]
    pub session: SessionArg,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct PathArgs {
    /// A path relative to /workspace, or absolute inside it.
    pub path: String,
    #[serde(flatten)]
    pub session: SessionArg,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ListFilesArgs {
    /// The directory to list (default: /workspace).
    #[serde(default)]
    pub path: Option<String>,
    #[serde(flatten)]
    pub session: SessionArg,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct CreateSessionArgs {
    /// Environment variables for the kernel and commands of the new session.
    #[serde(default)]
    pub env: HashMap<String, String>,
    /// The image to run (default: the server's); the server only runs images its operator
    /// allows.
    #[serde(default)]
    pub image: Option<String>,
    /// Limit what the session's code may reach on the network. This can only narrow the
    /// server's own policy, never widen it: naming an address or domain the server does not
    /// allow is an error.
    #[serde(default)]
    pub network: Option<NetworkArgs>,
}

/// An egress allow-list for a new session.
#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct NetworkArgs {
    /// Domains the session may reach (each with its subdomains), e.g. ["pypi.org"].
    #[serde(default)]
    pub allowed_domains: Vec<String>,
    /// IP addresses or CIDRs the session may reach, e.g. ["93.184.215.14"].
    #[serde(default)]
    pub allowed_ips: Vec<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct ListSessionsArgs {}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct CloseSessionArgs {
    /// The session to close.
    pub session_id: String,
}

type ToolResult = Result<CallToolResult, ErrorData>;

impl KernelboxMcp {
    /// A handler for one connection (stdio), legacy HTTP session or stateless HTTP request.
    pub fn new(engine: Arc<Engine>) -> Self {
        Self {
            connection: Arc::new(ConnectionSandbox {
                engine: engine.clone(),
                default: tokio::sync::Mutex::new(None),
            }),
            engine,
            tool_router: Self::tool_router(),
        }
    }
}

#[tool_router(router = tool_router, vis = "pub(crate)")]
impl KernelboxMcp {
    #[tool(description = EXECUTE_CODE)]
    async fn execute_code(
        &self,
        Parameters(args): Parameters<ExecuteCodeArgs>,
        context: RequestContext<RoleServer>,
    ) -> ToolResult {
        let target = match self
            .target(args.session.session_id.as_deref(), &context)
            .await
        {
            Ok(target) => target,
            Err(failure) => return Ok(render::failure(&failure)),
        };
        let request = ExecuteRequest {
            code: args.code,
            timeout: args.timeout_secs.map(Duration::from_secs),
        };
        let mut stream = match self
            .engine
            .execute(&target.id, &target.tenant, request)
            .await
        {
            Ok(stream) => stream,
            Err(error) => return Ok(render::failure(&error.into())),
        };
        let mut progress = context
            .meta
            .get_progress_token()
            .map(|token| Progress::new(context.peer.clone(), token));
        let result = loop {
            let keepalive_at = progress
                .as_ref()
                .map_or_else(far_future, |progress| progress.last_sent + KEEPALIVE);
            tokio::select! {
                _ = context.ct.cancelled() => {
                    // Dropping the stream interrupts the kernel; the next call waits for that.
                    drop(stream);
                    return Ok(render::failure(&ToolFailure::Cancelled));
                }
                _ = tokio::time::sleep_until(keepalive_at.into()) => {
                    if let Some(progress) = progress.as_mut() {
                        progress.send(None).await;
                    }
                }
                event = stream.next() => match event {
                    Some(ExecEvent::Finished(result)) => break result,
                    Some(event) => {
                        if let Some(progress) = progress.as_mut() {
                            progress.send(render::progress_message(&event)).await;
                        }
                    }
                    None => {
                        return Ok(render::failure(&ToolFailure::Engine(
                            crate::engine::EngineError::ShuttingDown,
                        )))
                    }
                },
            }
        };
        Ok(render::execution(&result, &target))
    }

    #[tool(description = RESTART_KERNEL)]
    async fn restart_kernel(
        &self,
        Parameters(args): Parameters<RestartKernelArgs>,
        context: RequestContext<RoleServer>,
    ) -> ToolResult {
        let outcome = async {
            let target = self
                .target(args.session.session_id.as_deref(), &context)
                .await?;
            self.engine
                .restart_kernel(&target.id, &target.tenant)
                .await?;
            Ok::<_, ToolFailure>(target)
        }
        .await;
        Ok(match outcome {
            Ok(target) => render::message(
                &target,
                "The kernel was restarted: variables and imports are cleared; files and installed packages are kept.",
            ),
            Err(failure) => render::failure(&failure),
        })
    }

    #[tool(description = RUN_COMMAND)]
    async fn run_command(
        &self,
        Parameters(args): Parameters<RunCommandArgs>,
        context: RequestContext<RoleServer>,
    ) -> ToolResult {
        let outcome = async {
            let target = self
                .target(args.session.session_id.as_deref(), &context)
                .await?;
            let request = CommandRequest {
                command: args.command,
                cwd: args.cwd,
                timeout: args.timeout_secs.map(Duration::from_secs),
                env: HashMap::new(),
            };
            let result = self
                .engine
                .run_command(&target.id, &target.tenant, request)
                .await?;
            Ok::<_, ToolFailure>((target, result))
        }
        .await;
        Ok(match outcome {
            Ok((target, result)) => render::command(&result, &target),
            Err(failure) => render::failure(&failure),
        })
    }

    #[tool(description = INSTALL_PACKAGES)]
    async fn install_packages(
        &self,
        Parameters(args): Parameters<InstallPackagesArgs>,
        context: RequestContext<RoleServer>,
    ) -> ToolResult {
        let outcome = async {
            let target = self
                .target(args.session.session_id.as_deref(), &context)
                .await?;
            let result = self
                .engine
                .install_packages(&target.id, &target.tenant, &args.packages)
                .await?;
            Ok::<_, ToolFailure>((target, result))
        }
        .await;
        Ok(match outcome {
            Ok((target, result)) => render::command(&result, &target),
            Err(failure) => render::failure(&failure),
        })
    }

    #[tool(description = WRITE_FILE)]
    async fn write_file(
        &self,
        Parameters(args): Parameters<WriteFileArgs>,
        context: RequestContext<RoleServer>,
    ) -> ToolResult {
        let outcome = async {
            let content = match args.encoding {
                FileEncoding::Utf8 => bytes::Bytes::from(args.content),
                FileEncoding::Base64 => base64::engine::general_purpose::STANDARD
                    .decode(args.content.trim())
                    .map(bytes::Bytes::from)
                    .map_err(|error| ToolFailure::InvalidArgument {
                        field: "content",
                        reason: format!("not valid base64: {error}"),
                    })?,
            };
            let size = content.len();
            let target = self
                .target(args.session.session_id.as_deref(), &context)
                .await?;
            let path = self
                .engine
                .write_file(&target.id, &target.tenant, &args.path, content)
                .await?;
            Ok::<_, ToolFailure>((target, path, size))
        }
        .await;
        Ok(match outcome {
            Ok((target, path, size)) => {
                render::message(&target, &format!("Wrote {size} bytes to {path}."))
            }
            Err(failure) => render::failure(&failure),
        })
    }

    #[tool(description = READ_FILE)]
    async fn read_file(
        &self,
        Parameters(args): Parameters<PathArgs>,
        context: RequestContext<RoleServer>,
    ) -> ToolResult {
        let outcome = async {
            let target = self
                .target(args.session.session_id.as_deref(), &context)
                .await?;
            let content = self
                .engine
                .read_file(&target.id, &target.tenant, &args.path, READ_LIMIT)
                .await?;
            Ok::<_, ToolFailure>((target, content))
        }
        .await;
        Ok(match outcome {
            Ok((target, content)) => render::file(&target, &args.path, content),
            Err(failure) => render::failure(&failure),
        })
    }

    #[tool(description = LIST_FILES)]
    async fn list_files(
        &self,
        Parameters(args): Parameters<ListFilesArgs>,
        context: RequestContext<RoleServer>,
    ) -> ToolResult {
        let outcome = async {
            let target = self
                .target(args.session.session_id.as_deref(), &context)
                .await?;
            let path = args.path.unwrap_or_default();
            let entries = self
                .engine
                .list_files(&target.id, &target.tenant, &path)
                .await?;
            Ok::<_, ToolFailure>((target, entries))
        }
        .await;
        Ok(match outcome {
            Ok((target, entries)) => render::listing(&target, &entries),
            Err(failure) => render::failure(&failure),
        })
    }

    #[tool(description = DELETE_FILE)]
    async fn delete_file(
        &self,
        Parameters(args): Parameters<PathArgs>,
        context: RequestContext<RoleServer>,
    ) -> ToolResult {
        let outcome = async {
            let target = self
                .target(args.session.session_id.as_deref(), &context)
                .await?;
            self.engine
                .delete_path(&target.id, &target.tenant, &args.path)
                .await?;
            Ok::<_, ToolFailure>(target)
        }
        .await;
        Ok(match outcome {
            Ok(target) => render::message(&target, &format!("Deleted {}.", args.path)),
            Err(failure) => render::failure(&failure),
        })
    }

    #[tool(description = CREATE_SESSION)]
    async fn create_session(
        &self,
        Parameters(args): Parameters<CreateSessionArgs>,
        context: RequestContext<RoleServer>,
    ) -> ToolResult {
        let created = async {
            let network = args
                .network
                .map(|network| {
                    AllowList::parse(&network.allowed_domains, &network.allowed_ips)
                        .map(EgressRequest::Narrow)
                })
                .transpose()?;
            self.create_sandbox(&tenant(&context), args.env, args.image, network)
                .await
        };
        Ok(match created.await {
            Ok(info) => render::session_created(&info),
            Err(failure) => render::failure(&failure),
        })
    }

    #[tool(description = LIST_SESSIONS)]
    async fn list_sessions(
        &self,
        Parameters(_args): Parameters<ListSessionsArgs>,
        context: RequestContext<RoleServer>,
    ) -> ToolResult {
        let sessions = self.engine.list(&tenant(&context));
        Ok(render::sessions(&sessions))
    }

    #[tool(description = CLOSE_SESSION)]
    async fn close_session(
        &self,
        Parameters(args): Parameters<CloseSessionArgs>,
        context: RequestContext<RoleServer>,
    ) -> ToolResult {
        let tenant = tenant(&context);
        match self.engine.destroy(&args.session_id, &tenant).await {
            Ok(()) => {
                self.forget_default(&args.session_id).await;
                Ok(render::closed(&args.session_id))
            }
            Err(error) => Ok(render::failure(&error.into())),
        }
    }
}

/// Progress notifications for one call: output chunks as messages, and keep-alives.
struct Progress {
    peer: Peer<RoleServer>,
    token: ProgressToken,
    count: u64,
    last_sent: Instant,
}

impl Progress {
    fn new(peer: Peer<RoleServer>, token: ProgressToken) -> Self {
        Self {
            peer,
            token,
            count: 0,
            last_sent: Instant::now(),
        }
    }

    async fn send(&mut self, message: Option<String>) {
        self.count += 1;
        self.last_sent = Instant::now();
        let mut param = ProgressNotificationParam::new(self.token.clone(), self.count as f64);
        if let Some(message) = message {
            param = param.with_message(message);
        }
        if let Err(error) = self.peer.notify_progress(param).await {
            tracing::debug!(%error, "could not send a progress notification");
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}
