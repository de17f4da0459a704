//! The MCP tools for background processes: start, list, read output (tail, optionally waiting)
//! and kill. A router of their own, joined to the main one in [`super::tools`].

use std::time::Duration;

use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, tool, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

use super::handler::{KernelboxMcp, Target, ToolFailure};
use super::render;
use crate::engine::processes::{MAX_READ_WAIT, OutputTail, ProcessInfo, StartProcess};

type ToolResult = Result<CallToolResult, ErrorData>;

/// Bytes of each stream read_process_output shows unless asked otherwise, and at most.
const DEFAULT_TAIL: usize = 8 * 1024;
const MAX_TAIL: usize = 96 * 1024;

const START_PROCESS: &str = "Start a shell command (bash -c) in the background in the sandbox, as \
the unprivileged user `sandbox`, and return at once with its pid: for a web server, a watcher or \
a long job you come back to. cwd must be inside /workspace (default /workspace). Give it a tag to \
address it by name. Read what it prints with read_process_output, stop it with kill_process. A \
session runs at most 16 background processes; they end with the session.";
const LIST_PROCESSES: &str = "List the session's background processes (running and recently \
ended): pid, tag, command, state (running, exited, killed), exit code and signal.";
const READ_PROCESS_OUTPUT: &str = "Read what a background process printed: the last tail_bytes \
of its stdout and stderr (default 8192), from cursor `since` (from an earlier result's next_seq, \
to get only newer output). With wait_secs (at most 60), first waits for output past `since` or \
for the process to end: use it to wait for a server's 'listening' line. Also returns the \
process's state and exit code.";
const KILL_PROCESS: &str = "Send a signal to a background process and its children: SIGTERM \
(default), SIGKILL, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGSTOP or SIGCONT.";

fn session_id_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": ["string", "null"],
        "description": "The sandbox session to use, from create_session. Optional: null or absent uses your default sandbox."
    })
}

fn nullable_integer(description: &'static str) -> schemars::Schema {
    schemars::json_schema!({ "type": ["integer", "null"], "minimum": 0, "description": description })
}

fn tail_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    nullable_integer("Bytes of each stream to show, from the end (null: 8192; at most 98304).")
}

fn since_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    nullable_integer(
        "Only output after this cursor: next_seq from an earlier result (null: all that is kept).",
    )
}

fn wait_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    nullable_integer("Seconds to wait for new output or the exit first (null: 0; at most 60).")
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StartProcessArgs {
    /// The command line, run by `bash -c`.
    pub command: String,
    /// Working directory inside /workspace: relative to it or absolute (null: /workspace).
    pub cwd: Option<String>,
    /// A name to address the process by (letters, digits, '.', '_', '-'; not only digits).
    pub tag: Option<String>,
    #[schemars(schema_with = "session_id_schema")]
    pub session_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListProcessesArgs {
    #[schemars(schema_with = "session_id_schema")]
    pub session_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadProcessOutputArgs {
    /// The process: its pid (as a string of digits) or its tag.
    pub process: String,
    #[schemars(schema_with = "tail_schema")]
    pub tail_bytes: Option<u64>,
    #[schemars(schema_with = "since_schema")]
    pub since: Option<u64>,
    #[schemars(schema_with = "wait_schema")]
    pub wait_secs: Option<u64>,
    #[schemars(schema_with = "session_id_schema")]
    pub session_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KillProcessArgs {
    /// The process: its pid (as a string of digits) or its tag.
    pub process: String,
    /// The signal name (null: SIGTERM).
    pub signal: Option<String>,
    #[schemars(schema_with = "session_id_schema")]
    pub session_id: Option<String>,
}

/// One line about a process.
fn describe(info: &ProcessInfo) -> String {
    let tag = info
        .tag
        .as_deref()
        .map(|tag| format!(" [{tag}]"))
        .unwrap_or_default();
    let state = match (info.state, info.exit_code, info.signal) {
        (_, _, Some(signal)) => format!("killed by {signal}"),
        (crate::engine::processes::ProcessState::Running, ..) => "running".to_string(),
        (_, Some(code), None) => format!("exited with code {code}"),
        (_, None, None) => "ended (no exit code: the sandbox went away)".to_string(),
    };
    format!("pid {}{tag}: {state} — {}", info.pid, info.command)
}

fn info_json(info: &ProcessInfo) -> Value {
    serde_json::to_value(info).unwrap_or(Value::Null)
}

fn result(target: &Target, text: String, mut structured: Value) -> CallToolResult {
    let text = match target.made {
        Some(_) => format!("[session_id: {}]\n{text}", target.id),
        None => text,
    };
    if let Some(object) = structured.as_object_mut() {
        object.insert("session_id".into(), json!(target.id));
    }
    let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
    result.structured_content = Some(structured);
    result
}

fn output_text(info: &ProcessInfo, tail: &OutputTail) -> String {
    let mut text = format!("{}\n", describe(info));
    if tail.truncated {
        text.push_str("[older output not shown]\n");
    }
    text.push_str(&tail.stdout);
    if !tail.stderr.is_empty() {
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str("[stderr]\n");
        text.push_str(&tail.stderr);
    }
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!(
        "[next_seq {}: pass it as since to read only newer output]",
        tail.next_seq
    ));
    text
}

#[tool_router(router = process_tool_router, vis = "pub(crate)")]
impl KernelboxMcp {
    #[tool(description = START_PROCESS)]
    async fn start_process(
        &self,
        Parameters(args): Parameters<StartProcessArgs>,
        context: RequestContext<RoleServer>,
    ) -> ToolResult {
        let outcome = async {
            let target = self.target(args.session_id.as_deref(), &context).await?;
            let info = self
                .engine
                .start_process(
                    &target.id,
                    &target.tenant,
                    StartProcess {
                        command: args.command,
                        cwd: args.cwd,
                        env: Default::default(),
                        tag: args.tag,
                    },
                )
                .await?;
            Ok::<_, ToolFailure>((target, info))
        }
        .await;
        Ok(match outcome {
            Ok((target, info)) => result(
                &target,
                format!("Started {}", describe(&info)),
                json!({ "process": info_json(&info) }),
            ),
            Err(failure) => render::failure(&failure),
        })
    }

    #[tool(description = LIST_PROCESSES)]
    async fn list_processes(
        &self,
        Parameters(args): Parameters<ListProcessesArgs>,
        context: RequestContext<RoleServer>,
    ) -> ToolResult {
        let outcome = async {
            let target = self.target(args.session_id.as_deref(), &context).await?;
            let processes = self.engine.list_processes(&target.id, &target.tenant)?;
            Ok::<_, ToolFailure>((target, processes))
        }
        .await;
        Ok(match outcome {
            Ok((target, processes)) => {
                let text = if processes.is_empty() {
                    "No background processes.".to_string()
                } else {
                    processes
                        .iter()
                        .map(describe)
                        .collect::<Vec<_>>()
                        .join("\n")
                };
                let listed: Vec<Value> = processes.iter().map(info_json).collect();
                result(&target, text, json!({ "processes": listed }))
            }
            Err(failure) => render::failure(&failure),
        })
    }

    #[tool(description = READ_PROCESS_OUTPUT)]
    async fn read_process_output(
        &self,
        Parameters(args): Parameters<ReadProcessOutputArgs>,
        context: RequestContext<RoleServer>,
    ) -> ToolResult {
        let outcome = async {
            let tail = args.tail_bytes.unwrap_or(DEFAULT_TAIL as u64);
            if tail > MAX_TAIL as u64 {
                return Err(ToolFailure::InvalidArgument {
                    field: "tail_bytes",
                    reason: format!("at most {MAX_TAIL}"),
                });
            }
            let wait = match args.wait_secs {
                Some(secs) if secs > MAX_READ_WAIT.as_secs() => {
                    return Err(ToolFailure::InvalidArgument {
                        field: "wait_secs",
                        reason: format!("at most {}", MAX_READ_WAIT.as_secs()),
                    });
                }
                Some(secs) if secs > 0 => Some(Duration::from_secs(secs)),
                _ => None,
            };
            let target = self.target(args.session_id.as_deref(), &context).await?;
            let read = self.engine.read_process_output(
                &target.id,
                &target.tenant,
                &args.process,
                args.since,
                tail as usize,
                wait,
            );
            let (info, output) = tokio::select! {
                read = read => read?,
                () = context.ct.cancelled() => return Err(ToolFailure::Cancelled),
            };
            Ok::<_, ToolFailure>((target, info, output))
        }
        .await;
        Ok(match outcome {
            Ok((target, info, output)) => result(
                &target,
                output_text(&info, &output),
                json!({
                    "process": info_json(&info),
                    "stdout": output.stdout,
                    "stderr": output.stderr,
                    "truncated": output.truncated,
                    "next_seq": output.next_seq,
                }),
            ),
            Err(failure) => render::failure(&failure),
        })
    }

    #[tool(description = KILL_PROCESS)]
    async fn kill_process(
        &self,
        Parameters(args): Parameters<KillProcessArgs>,
        context: RequestContext<RoleServer>,
    ) -> ToolResult {
        let outcome = async {
            let target = self.target(args.session_id.as_deref(), &context).await?;
            let info = self
                .engine
                .kill_process(
                    &target.id,
                    &target.tenant,
                    &args.process,
                    args.signal.as_deref(),
                )
                .await?;
            Ok::<_, ToolFailure>((target, info))
        }
        .await;
        Ok(match outcome {
            Ok((target, info)) => result(
                &target,
                format!(
                    "Signal sent to pid {}; read_process_output or list_processes shows when it ends.",
                    info.pid
                ),
                json!({ "process": info_json(&info) }),
            ),
            Err(failure) => render::failure(&failure),
        })
    }
}
