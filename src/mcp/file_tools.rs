//! The MCP tools for file operations that move no content: stat_file (exists and stat in one),
//! make_directory, copy_file and move_file. A router of their own, joined to the main one in
//! [`super::tools`].

use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::CallToolResult;
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, tool, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

use super::handler::{KernelboxMcp, Target, ToolFailure};
use super::render;
use crate::engine::{FileKind, TransferKind};

type ToolResult = Result<CallToolResult, ErrorData>;

const STAT_FILE: &str = "Check whether a path exists in the sandbox's /workspace and what it is, \
without reading it: exists, type (file, directory, symlink, other), size in bytes, permission \
bits and modification time. A path that does not exist is not an error (exists: false). A \
symlink is reported as a symlink, not followed.";
const MAKE_DIRECTORY: &str = "Create a directory in the sandbox's /workspace, with its missing \
parents (like mkdir -p). A directory already there is fine.";
const COPY_FILE: &str = "Copy a file, or a directory with everything in it, to a new path inside \
the sandbox's /workspace. destination is the new path itself (not a directory to copy into); \
missing parent directories are created. An existing destination is refused unless overwrite is \
true, which replaces it.";
const MOVE_FILE: &str = "Move or rename a file, a directory or a symlink to a new path inside the \
sandbox's /workspace. destination is the new path itself (not a directory to move into); missing \
parent directories are created. An existing destination is refused unless overwrite is true, \
which replaces it.";

fn session_id_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": ["string", "null"],
        "description": "The sandbox session to use, from create_session. Optional: null or absent uses your default sandbox."
    })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilePathArgs {
    /// A path relative to /workspace, or absolute inside it.
    pub path: String,
    #[schemars(schema_with = "session_id_schema")]
    pub session_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferArgs {
    /// The file or directory to copy or move: relative to /workspace, or absolute inside it.
    pub source: String,
    /// The new path, relative to /workspace or absolute inside it.
    pub destination: String,
    /// Replace what is at destination (null: false, an existing destination is an error).
    pub overwrite: Option<bool>,
    #[schemars(schema_with = "session_id_schema")]
    pub session_id: Option<String>,
}

fn kind_name(kind: FileKind) -> &'static str {
    match kind {
        FileKind::File => "file",
        FileKind::Directory => "directory",
        FileKind::Symlink => "symlink",
        FileKind::Other => "other",
    }
}

/// A confirmation naming the session, with `extra` beside it in the structured content.
fn result(target: &Target, text: &str, extra: Value) -> CallToolResult {
    let mut result = render::message(target, text);
    if let (Some(Value::Object(structured)), Value::Object(extra)) =
        (result.structured_content.as_mut(), extra)
    {
        structured.extend(extra);
    }
    result
}

#[tool_router(router = file_tool_router, vis = "pub(crate)")]
impl KernelboxMcp {
    #[tool(description = STAT_FILE)]
    async fn stat_file(
        &self,
        Parameters(args): Parameters<FilePathArgs>,
        context: RequestContext<RoleServer>,
    ) -> ToolResult {
        let outcome = async {
            let target = self.target(args.session_id.as_deref(), &context).await?;
            let stat = self
                .engine
                .stat_path(&target.id, &target.tenant, &args.path)
                .await?;
            Ok::<_, ToolFailure>((target, stat))
        }
        .await;
        Ok(match outcome {
            Ok((target, None)) => result(
                &target,
                &format!("{} does not exist.", args.path),
                json!({ "exists": false }),
            ),
            Ok((target, Some(stat))) => {
                let kind = kind_name(stat.kind);
                let modified = chrono::DateTime::<chrono::Utc>::from_timestamp_micros(
                    (stat.modified * 1e6) as i64,
                )
                .unwrap_or_default()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                let text = format!(
                    "{}: {kind}, {} bytes, mode {:04o}, modified {modified}",
                    stat.path, stat.size, stat.mode
                );
                result(
                    &target,
                    &text,
                    json!({
                        "exists": true,
                        "path": stat.path,
                        "type": kind,
                        "size": stat.size,
                        "mode": format!("{:04o}", stat.mode),
                        "modified_at": modified,
                    }),
                )
            }
            Err(failure) => render::failure(&failure),
        })
    }

    #[tool(description = MAKE_DIRECTORY)]
    async fn make_directory(
        &self,
        Parameters(args): Parameters<FilePathArgs>,
        context: RequestContext<RoleServer>,
    ) -> ToolResult {
        let outcome = async {
            let target = self.target(args.session_id.as_deref(), &context).await?;
            let made = self
                .engine
                .make_dir(&target.id, &target.tenant, &args.path)
                .await?;
            Ok::<_, ToolFailure>((target, made))
        }
        .await;
        Ok(match outcome {
            Ok((target, made)) => {
                let text = if made.created {
                    format!("Created {}.", made.path)
                } else {
                    format!("{} was there already.", made.path)
                };
                result(
                    &target,
                    &text,
                    json!({ "path": made.path, "created": made.created }),
                )
            }
            Err(failure) => render::failure(&failure),
        })
    }

    #[tool(description = COPY_FILE)]
    async fn copy_file(
        &self,
        Parameters(args): Parameters<TransferArgs>,
        context: RequestContext<RoleServer>,
    ) -> ToolResult {
        self.transfer_tool(TransferKind::Copy, args, context).await
    }

    #[tool(description = MOVE_FILE)]
    async fn move_file(
        &self,
        Parameters(args): Parameters<TransferArgs>,
        context: RequestContext<RoleServer>,
    ) -> ToolResult {
        self.transfer_tool(TransferKind::Move, args, context).await
    }
}

impl KernelboxMcp {
    async fn transfer_tool(
        &self,
        kind: TransferKind,
        args: TransferArgs,
        context: RequestContext<RoleServer>,
    ) -> ToolResult {
        let outcome = async {
            let target = self.target(args.session_id.as_deref(), &context).await?;
            let done = self
                .engine
                .transfer(
                    &target.id,
                    &target.tenant,
                    kind,
                    &args.source,
                    &args.destination,
                    args.overwrite.unwrap_or(false),
                )
                .await?;
            Ok::<_, ToolFailure>((target, done))
        }
        .await;
        Ok(match outcome {
            Ok((target, done)) => {
                let verb = match kind {
                    TransferKind::Copy => "Copied",
                    TransferKind::Move => "Moved",
                };
                let what = kind_name(done.kind);
                result(
                    &target,
                    &format!("{verb} {what} {} to {}.", done.source, done.destination),
                    json!({
                        "source": done.source,
                        "destination": done.destination,
                        "type": what,
                    }),
                )
            }
            Err(failure) => render::failure(&failure),
        })
    }
}
