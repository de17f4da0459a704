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
use crate::engine::{AllowList, CreateSandbox, EgressRequest, Engine, Metadata};

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
notifications while the code runs. If a call answers that the session is busy, call interrupt to \
stop the running code (state kept). Clients that declare MCP Tasks get a task to poll.";
const RESTART_KERNEL: &str = "Restart the Python kernel of a session: variables and imports are \
cleared, files in /workspace and installed packages are kept. Also stops code that is stuck.";
const INTERRUPT: &str = "Stop the Python code running in a session (like Ctrl-C in a notebook) \
and keep its state: variables, imports and files stay. Use it when execute_code answers that the \
session is busy, for example after your client gave up waiting on a long call. Returns what was \
stopped, or says nothing was running. Shell commands (run_command, install_packages) end at \
their own time limit.";
const RUN_COMMAND: &str = "Run a shell command (bash -c) in the sandbox as the unprivileged user \
`sandbox`, in /workspace unless cwd says otherwise. Returns stdout, stderr and the exit code; a \
non-zero exit code is reported as an error result. Has a time limit like execute_code.";
const INSTALL_PACKAGES: &str = "Install Python packages with pip into the session (user site), \
importable right away without a restart. Each entry is a pip requirement such as `requests` or \
`scikit-learn==1.5.2` (no URLs or pip options), or, on a server without a package policy, the \
path of a wheel inside the sandbox. The server's package policy may refuse a package or a \
version: the error names the rule. Needs network access to the package index unless you install \
a wheel file.";
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
each other and from your default sandbox, which calls without a session_id share. You need this \
only for isolation or parallel work. Close it with close_session when done; idle sessions are removed automatically. \
`network` can restrict what the session's code may reach (only these domains and addresses); it \
can only narrow the server's network policy, never open anything the server does not allow. \
`dependencies` are pip requirements installed before the session is returned (with a progress \
token, each step arrives as a progress notification); one the server's package policy refuses, \
or one pip cannot install, fails the call and leaves no session behind. `timeout` gives the \
session a lifetime in seconds: it is destroyed then, busy or not (change it with \
set_session_timeout). `metadata` are your own name/value pairs, shown with the session and \
usable to filter list_sessions.";
const LIST_SESSIONS: &str = "List the sandbox sessions you can use, with their status (running, \
busy, restarting, dead), when they were created and last used, when they expire, and their \
metadata. With `metadata`, only the sessions that carry every one of those name/value pairs.";
const SET_SESSION_TIMEOUT: &str = "Set a session's lifetime to `timeout` seconds from now, \
shorter or longer than before: the session is destroyed then, busy or not. Use it to keep a \
session with a timeout alive longer. Returns the session with its new expiry.";
const CLOSE_SESSION: &str = "Close a sandbox session: its container, kernel and files are removed.";

// Every schema here passes strict function calling (OpenAI strict mode, Gemini's and
// Anthropic's validators): every object is closed (`deny_unknown_fields` gives
// `additionalProperties: false`), every optional argument is nullable (`Option`, null accepted)
// with no `default`, and no integer carries a `format`. `session_id` carries no `x-mcp-header`:
// the 2026-07-28 clients (the official Python SDK, rmcp) drop a tool whose annotated property has
// any `type` but one primitive, so a nullable `session_id` cannot carry it.

/// `session_id`, as every sandbox tool documents it.
const SESSION_ID_DOC: &str = "The sandbox session to use, from create_session (or from an \
earlier result). Optional: null or absent uses your default sandbox (over HTTP: one per API key, \
shared by all your connections and kept until it idles; over stdio: one per connection).";

fn session_id_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "type": ["string", "null"], "description": SESSION_ID_DOC })
}

/// A nullable number of seconds, without the `format` schemars gives `u64`.
fn timeout_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": ["integer", "null"],
        "description": "Time limit in seconds (null: 120; the server caps it)."
    })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteCodeArgs {
    /// Python source to run, like a notebook cell. The last expression's value is returned.
    pub code: String,
    #[schemars(schema_with = "timeout_schema")]
    pub timeout_secs: Option<u64>,
    #[schemars(schema_with = "session_id_schema")]
    pub session_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionOnlyArgs {
    #[schemars(schema_with = "session_id_schema")]
    pub session_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunCommandArgs {
    /// The command line, run by `bash -c`.
    pub command: String,
    /// Working directory: relative to /workspace, or absolute (null: /workspace).
    pub cwd: Option<String>,
    #[schemars(schema_with = "timeout_schema")]
    pub timeout_secs: Option<u64>,
    #[schemars(schema_with = "session_id_schema")]
    pub session_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InstallPackagesArgs {
    /// pip requirements, e.g. ["requests", "polars==1.9.0"].
    pub packages: Vec<String>,
    #[schemars(schema_with = "session_id_schema")]
    pub session_id: Option<String>,
}

/// How `content` is encoded.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
pub enum FileEncoding {
    #[default]
    #[serde(rename = "utf-8")]
    Utf8,
    #[serde(rename = "base64")]
    Base64,
}

fn encoding_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": ["string", "null"],
        "enum": ["utf-8", "base64", null],
        "description": "How content is encoded: \"utf-8\" (null means this) or \"base64\"."
    })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteFileArgs {
    /// Where to write, relative to /workspace or absolute inside it.
    pub path: String,
    /// The file's content: text, or base64 when `encoding` is "base64".
    pub content: String,
    #[schemars(schema_with = "encoding_schema")]
    pub encoding: Option<FileEncoding>,
    #[schemars(schema_with = "session_id_schema")]
    pub session_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PathArgs {
    /// A path relative to /workspace, or absolute inside it.
    pub path: String,
    #[schemars(schema_with = "session_id_schema")]
    pub session_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListFilesArgs {
    /// The directory to list (null: /workspace).
    pub path: Option<String>,
    #[schemars(schema_with = "session_id_schema")]
    pub session_id: Option<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSessionArgs {
    /// Environment variables for the kernel and commands of the new session, as a list of
    /// {name, value} (an object of names to values is accepted too).
    #[schemars(schema_with = "env_schema")]
    pub env: Option<EnvArg>,
    /// The image to run (null: the server's); the server only runs images its operator allows.
    pub image: Option<String>,
    #[schemars(schema_with = "network_schema")]
    pub network: Option<NetworkArgs>,
    /// pip requirements to install before the session is returned, e.g. ["numpy",
    /// "pandas==2.2.3"] (null: none).
    pub dependencies: Option<Vec<String>>,
    #[schemars(schema_with = "lifetime_schema")]
    pub timeout: Option<u64>,
    #[schemars(schema_with = "metadata_schema")]
    pub metadata: Option<MetadataArg>,
}

/// A nullable lifetime in seconds, without the `format` schemars gives `u64`.
fn lifetime_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": ["integer", "null"],
        "minimum": 1,
        "description": "The session's lifetime in seconds from now: it is destroyed then, busy or not (null: no limit but the idle one; the server caps it)."
    })
}

/// Metadata: the strict-schema list of pairs, or the object REST takes.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum MetadataArg {
    List(Vec<MetadataEntry>),
    Map(HashMap<String, String>),
}

/// One metadata entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataEntry {
    pub key: String,
    pub value: String,
}

fn metadata_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    metadata_list_schema(
        "Your own name/value pairs for the session, e.g. [{\"key\": \"task\", \"value\": \"report-7\"}] (null: none). At most 32; names of ASCII letters, digits and _-.:/ (at most 64), values of at most 512 bytes.",
    )
}

fn metadata_filter_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    metadata_list_schema(
        "Only sessions whose metadata has every one of these pairs, e.g. [{\"key\": \"task\", \"value\": \"report-7\"}] (null: all sessions).",
    )
}

fn metadata_list_schema(description: &str) -> schemars::Schema {
    schemars::json_schema!({
        "type": ["array", "null"],
        "description": description,
        "items": {
            "type": "object",
            "properties": {
                "key": { "type": "string" },
                "value": { "type": "string" }
            },
            "required": ["key", "value"],
            "additionalProperties": false
        }
    })
}

impl MetadataArg {
    /// The entries by name; a name given twice is an error (the engine validates the rest).
    fn into_metadata(self) -> Result<Metadata, ToolFailure> {
        match self {
            MetadataArg::Map(map) => Ok(map.into_iter().collect()),
            MetadataArg::List(list) => {
                let mut metadata = Metadata::new();
                for MetadataEntry { key, value } in list {
                    if metadata.contains_key(&key) {
                        return Err(ToolFailure::InvalidArgument {
                            field: "metadata",
                            reason: format!("{key:?} is given twice"),
                        });
                    }
                    metadata.insert(key, value);
                }
                Ok(metadata)
            }
        }
    }
}

/// Environment variables: the strict-schema list of pairs, or the map REST takes.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum EnvArg {
    List(Vec<EnvVar>),
    Map(HashMap<String, String>),
}

/// One environment variable.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvVar {
    pub name: String,
    pub value: String,
}

fn env_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": ["array", "null"],
        "description": "Environment variables for the kernel and commands of the new session, e.g. [{\"name\": \"GREETING\", \"value\": \"hi\"}].",
        "items": {
            "type": "object",
            "properties": {
                "name": { "type": "string", "description": "Letters, digits and _, not starting with a digit." },
                "value": { "type": "string" }
            },
            "required": ["name", "value"],
            "additionalProperties": false
        }
    })
}

impl EnvArg {
    /// The variables by name; a name given twice is an error (the engine validates the rest,
    /// as it does for REST).
    fn into_map(self) -> Result<HashMap<String, String>, ToolFailure> {
        match self {
            EnvArg::Map(map) => Ok(map),
            EnvArg::List(list) => {
                let mut map = HashMap::with_capacity(list.len());
                for EnvVar { name, value } in list {
                    if map.contains_key(&name) {
                        return Err(ToolFailure::InvalidArgument {
                            field: "env",
                            reason: format!("{name:?} is given twice"),
                        });
                    }
                    map.insert(name, value);
                }
                Ok(map)
            }
        }
    }
}

/// `network`, inline (strict converters refuse a `$ref` they did not validate).
fn network_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let list = |what: &str| {
        serde_json::json!({
            "type": ["array", "null"],
            "items": { "type": "string" },
            "description": what,
        })
    };
    schemars::json_schema!({
        "description": "Limit what the session's code may reach on the network (null: the server's policy). This can only narrow the server's own policy, never widen it: naming an address or domain the server does not allow is an error.",
        "anyOf": [
            {
                "type": "object",
                "properties": {
                    "allowed_domains": list("Domains the session may reach (each with its subdomains), e.g. [\"pypi.org\"]; null: none."),
                    "allowed_ips": list("IP addresses or CIDRs the session may reach, e.g. [\"93.184.215.14\"]; null: none."),
                },
                "additionalProperties": false
            },
            { "type": "null" }
        ]
    })
}

/// An egress allow-list for a new session.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkArgs {
    /// Domains the session may reach (each with its subdomains), e.g. ["pypi.org"]; null: none.
    pub allowed_domains: Option<Vec<String>>,
    /// IP addresses or CIDRs the session may reach, e.g. ["93.184.215.14"]; null: none.
    pub allowed_ips: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListSessionsArgs {
    #[schemars(schema_with = "metadata_filter_schema")]
    pub metadata: Option<MetadataArg>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetSessionTimeoutArgs {
    #[schemars(schema_with = "new_lifetime_schema")]
    pub timeout: u64,
    #[schemars(schema_with = "session_id_schema")]
    pub session_id: Option<String>,
}

fn new_lifetime_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "integer",
        "minimum": 1,
        "description": "The session's new lifetime in seconds from now (the server caps it)."
    })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CloseSessionArgs {
    /// The session to close.
    pub session_id: String,
}

type ToolResult = Result<CallToolResult, ErrorData>;

impl KernelboxMcp {
    /// A handler for one connection (stdio), with its own task table.
    pub fn new(engine: Arc<Engine>) -> Self {
        Self::with_tasks(engine, super::tasks::new_tasks())
    }

    /// A handler for one legacy HTTP session or stateless HTTP request, sharing the server's
    /// task table.
    pub(crate) fn with_tasks(engine: Arc<Engine>, tasks: Arc<super::handler::Tasks>) -> Self {
        Self {
            tasks,
            connection: Arc::new(ConnectionSandbox {
                engine: engine.clone(),
                default: tokio::sync::Mutex::new(None),
            }),
            engine,
            tool_router: Self::tool_router()
                + Self::process_tool_router()
                + Self::file_tool_router(),
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
        let target = match self.target(args.session_id.as_deref(), &context).await {
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
        Parameters(args): Parameters<SessionOnlyArgs>,
        context: RequestContext<RoleServer>,
    ) -> ToolResult {
        let outcome = async {
            let target = self.target(args.session_id.as_deref(), &context).await?;
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

    #[tool(description = INTERRUPT)]
    async fn interrupt(
        &self,
        Parameters(args): Parameters<SessionOnlyArgs>,
        context: RequestContext<RoleServer>,
    ) -> ToolResult {
        let outcome = async {
            let target = self.target(args.session_id.as_deref(), &context).await?;
            let stopped = self.engine.interrupt(&target.id, &target.tenant).await?;
            Ok::<_, ToolFailure>((target, stopped))
        }
        .await;
        Ok(match outcome {
            Ok((target, stopped)) => render::interrupted(&target, stopped.as_ref()),
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
            let target = self.target(args.session_id.as_deref(), &context).await?;
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
            let target = self.target(args.session_id.as_deref(), &context).await?;
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
            let content = match args.encoding.unwrap_or_default() {
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
            let target = self.target(args.session_id.as_deref(), &context).await?;
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
            let target = self.target(args.session_id.as_deref(), &context).await?;
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
            let target = self.target(args.session_id.as_deref(), &context).await?;
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
            let target = self.target(args.session_id.as_deref(), &context).await?;
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
                    AllowList::parse(
                        &network.allowed_domains.unwrap_or_default(),
                        &network.allowed_ips.unwrap_or_default(),
                    )
                    .map(EgressRequest::Narrow)
                })
                .transpose()?;
            let env = args
                .env
                .map(EnvArg::into_map)
                .transpose()?
                .unwrap_or_default();
            let request = CreateSandbox {
                tag: Some("mcp".into()),
                env,
                image: args.image,
                network,
                dependencies: args.dependencies.unwrap_or_default(),
                timeout: args.timeout,
                metadata: args
                    .metadata
                    .map(MetadataArg::into_metadata)
                    .transpose()?
                    .unwrap_or_default(),
                ..CreateSandbox::new(tenant(&context))
            };
            self.create_with_progress(request, &context).await
        };
        Ok(match created.await {
            Ok(info) => render::session_created(&info, self.engine.config().max_idle),
            Err(failure) => render::failure(&failure),
        })
    }

    #[tool(description = LIST_SESSIONS)]
    async fn list_sessions(
        &self,
        Parameters(args): Parameters<ListSessionsArgs>,
        context: RequestContext<RoleServer>,
    ) -> ToolResult {
        let listed = async {
            let filter = args
                .metadata
                .map(MetadataArg::into_metadata)
                .transpose()?
                .unwrap_or_default();
            Ok::<_, ToolFailure>(self.engine.list_filtered(&tenant(&context), &filter)?)
        };
        Ok(match listed.await {
            Ok(sessions) => render::sessions(&sessions),
            Err(failure) => render::failure(&failure),
        })
    }

    #[tool(description = SET_SESSION_TIMEOUT)]
    async fn set_session_timeout(
        &self,
        Parameters(args): Parameters<SetSessionTimeoutArgs>,
        context: RequestContext<RoleServer>,
    ) -> ToolResult {
        let outcome = async {
            let target = self.target(args.session_id.as_deref(), &context).await?;
            let info = self
                .engine
                .set_timeout(&target.id, &target.tenant, args.timeout)
                .await?;
            Ok::<_, ToolFailure>((target, info))
        }
        .await;
        Ok(match outcome {
            Ok((target, info)) => render::timeout_set(&target, &info),
            Err(failure) => render::failure(&failure),
        })
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

impl KernelboxMcp {
    /// Creates a sandbox, sending its steps (and keep-alives while pip runs) as progress
    /// notifications when the call carries a progress token.
    async fn create_with_progress(
        &self,
        request: CreateSandbox,
        context: &RequestContext<RoleServer>,
    ) -> Result<crate::engine::SandboxInfo, ToolFailure> {
        let mut progress = context
            .meta
            .get_progress_token()
            .map(|token| Progress::new(context.peer.clone(), token));
        let (steps, mut reported) = tokio::sync::mpsc::unbounded_channel();
        let creating = self.engine.create_reporting(request, Some(steps));
        tokio::pin!(creating);
        loop {
            let keepalive_at = progress
                .as_ref()
                .map_or_else(far_future, |progress| progress.last_sent + KEEPALIVE);
            tokio::select! {
                created = &mut creating => {
                    // Steps reported just before the end still go out, in order.
                    while let Ok(step) = reported.try_recv() {
                        if let Some(progress) = progress.as_mut() {
                            progress.send(Some(step.message())).await;
                        }
                    }
                    return Ok(created?);
                }
                Some(step) = reported.recv() => {
                    if let Some(progress) = progress.as_mut() {
                        progress.send(Some(step.message())).await;
                    }
                }
                _ = tokio::time::sleep_until(keepalive_at.into()) => {
                    if let Some(progress) = progress.as_mut() {
                        progress.send(None).await;
                    }
                }
            }
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

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    /// Checks one schema position against the strict-mode rules; returns what breaks them.
    fn strict_violations(path: &str, schema: &Value, out: &mut Vec<String>) {
        let Some(object) = schema.as_object() else {
            return;
        };
        if object.contains_key("default") {
            out.push(format!("{path}: has a default"));
        }
        if object.contains_key("format") {
            out.push(format!("{path}: has a format"));
        }
        let is_object = object.get("type").is_some_and(|kind| {
            kind == "object"
                || kind
                    .as_array()
                    .is_some_and(|kinds| kinds.contains(&"object".into()))
        });
        if is_object {
            if object.get("additionalProperties") != Some(&Value::Bool(false)) {
                out.push(format!("{path}: not closed"));
            }
            let properties = object.get("properties").and_then(Value::as_object);
            let Some(properties) = properties else {
                out.push(format!("{path}: no properties"));
                return;
            };
            let required: Vec<&str> = object
                .get("required")
                .and_then(Value::as_array)
                .map(|names| names.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            for (name, property) in properties {
                let nullable = property["type"]
                    .as_array()
                    .is_some_and(|kinds| kinds.contains(&Value::String("null".into())))
                    || property["anyOf"]
                        .as_array()
                        .is_some_and(|options| options.iter().any(|o| o["type"] == "null"));
                if !required.contains(&name.as_str()) && !nullable {
                    out.push(format!("{path}.{name}: optional but not nullable"));
                }
                strict_violations(&format!("{path}.{name}"), property, out);
            }
        }
        if let Some(items) = object.get("items") {
            strict_violations(&format!("{path}[]"), items, out);
        }
        for key in ["anyOf", "oneOf", "allOf"] {
            for option in object
                .get(key)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                strict_violations(&format!("{path}|{key}"), option, out);
            }
        }
        for definition in object
            .get("$defs")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            strict_violations(&format!("$defs.{}", definition.0), definition.1, out);
        }
    }

    #[test]
    fn every_tool_schema_is_strict() {
        let mut violations = Vec::new();
        let tools = KernelboxMcp::tool_router()
            + KernelboxMcp::process_tool_router()
            + KernelboxMcp::file_tool_router();
        for tool in tools.list_all() {
            let schema = Value::Object((*tool.input_schema).clone());
            strict_violations(&tool.name, &schema, &mut violations);
        }
        assert!(violations.is_empty(), "{violations:#?}");
    }

    #[test]
    fn null_is_accepted_for_every_optional_argument() {
        let args: WriteFileArgs = serde_json::from_value(serde_json::json!({
            "path": "a", "content": "b", "encoding": null, "session_id": null
        }))
        .expect("nulls");
        assert!(args.encoding.is_none() && args.session_id.is_none());
        let args: CreateSessionArgs = serde_json::from_value(serde_json::json!({
            "env": null, "image": null, "network": {"allowed_domains": null, "allowed_ips": null}
        }))
        .expect("nulls");
        assert!(args.env.is_none());
    }

    #[test]
    fn env_is_a_list_of_pairs_or_a_map() {
        let listed: CreateSessionArgs = serde_json::from_value(serde_json::json!({
            "env": [{"name": "A", "value": "1"}]
        }))
        .expect("list");
        let mapped: CreateSessionArgs =
            serde_json::from_value(serde_json::json!({"env": {"A": "1"}})).expect("map");
        for args in [listed, mapped] {
            let env = args.env.expect("env").into_map().expect("valid");
            assert_eq!(env.get("A").map(String::as_str), Some("1"));
        }
        let twice: CreateSessionArgs = serde_json::from_value(serde_json::json!({
            "env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]
        }))
        .expect("list");
        assert!(twice.env.expect("env").into_map().is_err());
    }

    #[test]
    fn metadata_is_a_list_of_pairs_or_a_map() {
        let listed: CreateSessionArgs = serde_json::from_value(serde_json::json!({
            "metadata": [{"key": "a", "value": "1"}], "timeout": 60
        }))
        .expect("list");
        assert_eq!(listed.timeout, Some(60));
        let mapped: CreateSessionArgs =
            serde_json::from_value(serde_json::json!({"metadata": {"a": "1"}})).expect("map");
        for args in [listed, mapped] {
            let metadata = args
                .metadata
                .expect("metadata")
                .into_metadata()
                .expect("valid");
            assert_eq!(metadata.get("a").map(String::as_str), Some("1"));
        }
        let twice: ListSessionsArgs = serde_json::from_value(serde_json::json!({
            "metadata": [{"key": "a", "value": "1"}, {"key": "a", "value": "2"}]
        }))
        .expect("list");
        assert!(twice.metadata.expect("metadata").into_metadata().is_err());
        assert!(
            serde_json::from_value::<SetSessionTimeoutArgs>(serde_json::json!({"timeout": -1}))
                .is_err()
        );
    }

    #[test]
    fn unknown_arguments_are_refused() {
        assert!(
            serde_json::from_value::<ExecuteCodeArgs>(
                serde_json::json!({"code": "1", "sesion_id": "x"})
            )
            .is_err()
        );
    }
}
