//! Engine results as MCP tool results: text for the model, images as image content (or resource
//! links past a size cap), `isError` for failures, and `structuredContent` for programs.
//!
//! This is also the one place where engine errors become what an MCP client sees.

use base64::Engine as _;
use rmcp::model::{CallToolResult, ContentBlock, Resource};
use serde_json::{Value, json};

use super::handler::{Made, Target, ToolFailure};
use super::resources;
use crate::engine::commands::CommandResult;
use crate::engine::execution::{ExecutionOutcome, OutputKind};
use crate::engine::sandbox::RunningInfo;
use crate::engine::{EngineError, ExecEvent, ExecutionResult, FileEntry, FileKind, SandboxInfo};

/// Base64 characters of images sent inline per result; images past this budget become resource
/// links. Together with [`TEXT_LIMIT`] this keeps a result under the 1 MiB per-message limit of
/// common clients (the official Python SDK refuses larger SSE events).
pub(crate) const INLINE_IMAGE_BUDGET: usize = 512 * 1024;
/// Bytes of stdout and of stderr shown in a result; the whole output stays readable as a
/// resource.
pub(crate) const TEXT_LIMIT: usize = 96 * 1024;
/// Image types clients render inline.
const INLINE_IMAGE_TYPES: [&str; 4] = ["image/png", "image/jpeg", "image/gif", "image/webp"];

fn with_structured(mut result: CallToolResult, structured: Value) -> CallToolResult {
    result.structured_content = Some(structured);
    result
}

fn error_result(text: String) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(text)])
}

/// A failed call, as the model should read it, with `structuredContent.error` holding the stable
/// `code` (the one REST uses) and the message. Internal details are logged, not shown.
pub(crate) fn failure(failure: &ToolFailure) -> CallToolResult {
    let text = match failure {
        ToolFailure::Engine(EngineError::Backend(error)) => {
            tracing::error!(%error, detail = ?error, "tool call failed in the container runtime");
            "the sandbox runtime failed; try again, or restart the kernel or the session"
                .to_string()
        }
        ToolFailure::Engine(EngineError::Kernel(error)) => {
            tracing::warn!(%error, "kernel unreachable during a tool call");
            "the sandbox's kernel is not reachable; call restart_kernel, or close the session and create a new one".to_string()
        }
        ToolFailure::Engine(error) if error.is_internal() => {
            tracing::error!(%error, detail = ?error, "tool call failed");
            "internal error; see the server log".to_string()
        }
        other => other.to_string(),
    };
    let structured = json!({ "error": { "code": failure.code(), "message": text } });
    with_structured(error_result(text), structured)
}

/// A short confirmation, naming the session.
pub(crate) fn message(target: &Target, text: &str) -> CallToolResult {
    with_structured(
        CallToolResult::success(vec![ContentBlock::text(with_session_note(target, text))]),
        json!({ "session_id": target.id, "session_idle_timeout_secs": target.idle_timeout.as_secs(), "message": text }),
    )
}

/// Tells a client which default sandbox a call made, and for how long its id stays valid.
fn with_session_note(target: &Target, text: &str) -> String {
    let idle = target.idle_timeout.as_secs();
    match target.made {
        Some(Made::TenantDefault) => format!(
            "[session_id: {} (your new default sandbox: every call without a session_id uses it, \
             on any connection; it is kept until it has been idle for {idle} s)]\n{text}",
            target.id
        ),
        Some(Made::ConnectionDefault) => format!(
            "[session_id: {} (this connection's default sandbox: calls without a session_id use \
             it until the connection ends)]\n{text}",
            target.id
        ),
        None => text.to_string(),
    }
}

/// What a running execution's event says, as a progress message.
pub(crate) fn progress_message(event: &ExecEvent) -> Option<String> {
    match event {
        ExecEvent::Stdout { text } | ExecEvent::Stderr { text } => Some(text.clone()),
        ExecEvent::Display { data } | ExecEvent::Result { data } => Some(
            data.get("text/plain")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| {
                    let kinds: Vec<&str> = data.keys().map(String::as_str).collect();
                    format!("[output: {}]", kinds.join(", "))
                }),
        ),
        ExecEvent::Error(error) => Some(format!("{}: {}", error.ename, error.evalue)),
        ExecEvent::Finished(_) => None,
    }
}

/// The result of `execute_code`.
pub(crate) fn execution(result: &ExecutionResult, target: &Target) -> CallToolResult {
    let mut text = String::new();
    let mut content = Vec::new();
    let mut outputs = Vec::new();
    let mut image_budget = INLINE_IMAGE_BUDGET;
    let stdout = clip(
        &result.stdout,
        TEXT_LIMIT,
        &resources::stream_uri(result, "stdout"),
    );
    let stderr = clip(
        &result.stderr,
        TEXT_LIMIT,
        &resources::stream_uri(result, "stderr"),
    );
    text.push_str(&stdout);
    if !stderr.is_empty() {
        push_section(&mut text, "[stderr]\n");
        text.push_str(&stderr);
    }
    for (index, output) in result.outputs.iter().enumerate() {
        let mut bundle = serde_json::Map::new();
        for (mime, value) in &output.data {
            let inline_image = INLINE_IMAGE_TYPES.contains(&mime.as_str());
            match value.as_str() {
                Some(data) if inline_image && data.len() <= image_budget => {
                    image_budget -= data.len();
                    content.push(ContentBlock::image(data, mime.clone()));
                    bundle.insert(mime.clone(), json!({ "inline_image": true }));
                }
                Some(data) if inline_image || mime == "image/svg+xml" => {
                    let uri = resources::output_uri(
                        &result.sandbox_id,
                        &result.execution_id,
                        index,
                        mime,
                    );
                    content.push(ContentBlock::resource_link(
                        Resource::new(&uri, format!("output {index} ({mime})"))
                            .with_mime_type(mime.clone())
                            .with_size(data.len() as u64),
                    ));
                    bundle.insert(mime.clone(), json!({ "resource": uri }));
                }
                _ => {
                    bundle.insert(mime.clone(), value.clone());
                }
            }
        }
        if let Some(plain) = output.data.get("text/plain").and_then(Value::as_str) {
            match output.kind {
                OutputKind::Result => {
                    push_section(&mut text, "");
                    match result.execution_count {
                        Some(count) => text.push_str(&format!("Out[{count}]: {plain}")),
                        None => text.push_str(plain),
                    }
                }
                OutputKind::Display
                    if !output.data.keys().any(|mime| mime.starts_with("image/")) =>
                {
                    push_section(&mut text, "");
                    text.push_str(plain);
                }
                OutputKind::Display => {}
            }
        }
        outputs.push(json!({ "kind": output.kind, "data": bundle }));
    }
    if let Some(error) = &result.error {
        push_section(&mut text, "");
        if error.traceback.is_empty() {
            text.push_str(&format!("{}: {}", error.ename, error.evalue));
        } else {
            text.push_str(&error.traceback.join("\n"));
            if !error
                .traceback
                .iter()
                .any(|line| line.contains(&error.ename))
            {
                text.push_str(&format!("\n{}: {}", error.ename, error.evalue));
            }
        }
    }
    if let ExecutionOutcome::Cancelled { .. } = result.outcome {
        push_section(&mut text, "The execution was cancelled.");
    }
    if text.is_empty() && content.is_empty() {
        text.push_str("(no output)");
    }
    let text = with_session_note(target, &text);
    let mut blocks = vec![ContentBlock::text(text)];
    blocks.extend(content);
    let structured = json!({
        "session_id": target.id, "session_idle_timeout_secs": target.idle_timeout.as_secs(),
        "execution_id": result.execution_id,
        "status": result.outcome.status(),
        "execution_count": result.execution_count,
        "stdout": stdout,
        "stderr": stderr,
        "result": result.result_text().map(|text| clip(text, TEXT_LIMIT, "the execution's outputs")),
        "outputs": outputs,
        "error": result.error.as_ref().map(|error| json!({
            "ename": error.ename,
            "evalue": error.evalue,
            "traceback": error.traceback.join("\n"),
        })),
        "truncated": result.truncated,
        "duration_ms": result.duration_ms,
    });
    let failed = !matches!(result.outcome, ExecutionOutcome::Completed);
    let base = if failed {
        CallToolResult::error(blocks)
    } else {
        CallToolResult::success(blocks)
    };
    with_structured(base, structured)
}

/// `text` cut to about `limit` bytes (its head and its tail, on character boundaries), with a
/// marker saying where the rest is.
fn clip<'a>(text: &'a str, limit: usize, rest_at: &str) -> std::borrow::Cow<'a, str> {
    if text.len() <= limit {
        return text.into();
    }
    let mut head_end = limit / 2;
    while !text.is_char_boundary(head_end) {
        head_end -= 1;
    }
    let mut tail_start = text.len() - limit / 2;
    while !text.is_char_boundary(tail_start) {
        tail_start += 1;
    }
    format!(
        "{}\n[kernelbox: {} bytes omitted here; the whole output is at {rest_at}]\n{}",
        &text[..head_end],
        tail_start - head_end,
        &text[tail_start..]
    )
    .into()
}

fn push_section(text: &mut String, header: &str) {
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(header);
}

/// The result of `run_command` and `install_packages`: an error when the exit code is not 0.
pub(crate) fn command(result: &CommandResult, target: &Target) -> CallToolResult {
    let stdout = clip(
        &result.stdout,
        TEXT_LIMIT,
        "run the command again with its output redirected to a file",
    );
    let stderr = clip(
        &result.stderr,
        TEXT_LIMIT,
        "run the command again with its output redirected to a file",
    );
    let mut text = String::new();
    text.push_str(&stdout);
    if !stderr.is_empty() {
        push_section(&mut text, "[stderr]\n");
        text.push_str(&stderr);
    }
    push_section(&mut text, "");
    if result.timed_out {
        text.push_str("[the command ran past its time limit and was killed]");
    } else {
        text.push_str(&format!("[exit code {}]", result.exit_code));
    }
    let structured = json!({
        "session_id": target.id, "session_idle_timeout_secs": target.idle_timeout.as_secs(),
        "stdout": stdout,
        "stderr": stderr,
        "exit_code": result.exit_code,
        "timed_out": result.timed_out,
        "truncated": result.truncated,
        "duration_ms": result.duration_ms,
    });
    let blocks = vec![ContentBlock::text(with_session_note(target, &text))];
    let base = if result.exit_code == 0 && !result.timed_out {
        CallToolResult::success(blocks)
    } else {
        CallToolResult::error(blocks)
    };
    with_structured(base, structured)
}

/// A file's content: text as text, common images as images, anything else as base64.
pub(crate) fn file(target: &Target, path: &str, content: Vec<u8>) -> CallToolResult {
    let size = content.len();
    let mime = image_type(&content);
    let (blocks, encoding) = match (mime, String::from_utf8(content)) {
        (None, Ok(text)) => (
            vec![ContentBlock::text(with_session_note(target, &text))],
            "utf-8",
        ),
        (Some(mime), Err(error)) => {
            let data = base64::engine::general_purpose::STANDARD.encode(error.as_bytes());
            (
                vec![
                    ContentBlock::text(with_session_note(
                        target,
                        &format!("{path} ({size} bytes, {mime})"),
                    )),
                    ContentBlock::image(data, mime),
                ],
                "base64",
            )
        }
        (_, Ok(text)) => (
            vec![ContentBlock::text(with_session_note(target, &text))],
            "utf-8",
        ),
        (None, Err(error)) => {
            let data = base64::engine::general_purpose::STANDARD.encode(error.as_bytes());
            (
                vec![ContentBlock::text(with_session_note(
                    target,
                    &format!("{path} is binary ({size} bytes); base64:\n{data}"),
                ))],
                "base64",
            )
        }
    };
    with_structured(
        CallToolResult::success(blocks),
        json!({ "session_id": target.id, "session_idle_timeout_secs": target.idle_timeout.as_secs(), "path": path, "size": size, "encoding": encoding }),
    )
}

/// The image type of a file, from its first bytes.
fn image_type(content: &[u8]) -> Option<&'static str> {
    if content.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if content.starts_with(&[0xff, 0xd8, 0xff]) {
        Some("image/jpeg")
    } else if content.starts_with(b"GIF87a") || content.starts_with(b"GIF89a") {
        Some("image/gif")
    } else if content.len() > 12 && &content[..4] == b"RIFF" && &content[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

/// A directory listing.
pub(crate) fn listing(target: &Target, entries: &[FileEntry]) -> CallToolResult {
    let mut text = String::new();
    for entry in entries {
        let marker = match entry.kind {
            FileKind::Directory => "/",
            FileKind::Symlink => "@",
            FileKind::File | FileKind::Other => "",
        };
        text.push_str(&format!("{}{marker}\t{} bytes\n", entry.path, entry.size));
    }
    if entries.is_empty() {
        text.push_str("(empty directory)");
    }
    with_structured(
        CallToolResult::success(vec![ContentBlock::text(with_session_note(target, &text))]),
        json!({ "session_id": target.id, "session_idle_timeout_secs": target.idle_timeout.as_secs(), "entries": entries }),
    )
}

/// The answer of `interrupt`: what it stopped, if anything.
pub(crate) fn interrupted(target: &Target, stopped: Option<&RunningInfo>) -> CallToolResult {
    let text = match stopped {
        Some(running) => format!("Stopped {running}. The kernel's state is kept."),
        None => "Nothing was running.".to_string(),
    };
    with_structured(
        CallToolResult::success(vec![ContentBlock::text(with_session_note(target, &text))]),
        json!({
            "session_id": target.id,
            "session_idle_timeout_secs": target.idle_timeout.as_secs(),
            "interrupted": stopped.map(|running| json!({
                "execution_id": running.execution_id,
                "code": running.code_start,
                "ran_for_secs": running.elapsed.as_secs_f64(),
            })),
        }),
    )
}

/// A new session.
pub(crate) fn session_created(
    info: &SandboxInfo,
    idle_timeout: std::time::Duration,
) -> CallToolResult {
    let idle = idle_timeout.as_secs();
    let expiry = info
        .expires_at
        .map(|at| format!(" It expires at {} whatever it is doing.", at.to_rfc3339()))
        .unwrap_or_default();
    with_structured(
        CallToolResult::success(vec![ContentBlock::text(format!(
            "Created session {}. Pass session_id \"{}\" to the other tools to use it; it is kept \
             until you close it or it has been idle for {idle} s.{expiry}",
            info.id, info.id
        ))]),
        json!({ "session_id": info.id, "session_idle_timeout_secs": idle, "session": info }),
    )
}

/// The sessions a caller can use.
pub(crate) fn sessions(sessions: &[SandboxInfo]) -> CallToolResult {
    let mut text = String::new();
    for session in sessions {
        text.push_str(&format!(
            "{}\t{}\tcreated {}\tlast used {}",
            session.id,
            session.status.as_str(),
            session.created_at.to_rfc3339(),
            session.last_used_at.to_rfc3339()
        ));
        if let Some(expires_at) = session.expires_at {
            text.push_str(&format!("\texpires {}", expires_at.to_rfc3339()));
        }
        for (key, value) in &session.metadata {
            text.push_str(&format!("\t{key}={value}"));
        }
        text.push('\n');
    }
    if sessions.is_empty() {
        text.push_str("(no sessions)");
    }
    with_structured(
        CallToolResult::success(vec![ContentBlock::text(text)]),
        json!({ "sessions": sessions }),
    )
}

/// A session whose lifetime was set.
pub(crate) fn timeout_set(target: &Target, info: &SandboxInfo) -> CallToolResult {
    let text = match info.expires_at {
        Some(at) => format!(
            "Session {} now expires at {} ({} s from now), whatever it is doing.",
            info.id,
            at.to_rfc3339(),
            info.timeout.unwrap_or_default()
        ),
        None => format!("Session {} has no lifetime limit.", info.id),
    };
    with_structured(
        CallToolResult::success(vec![ContentBlock::text(with_session_note(target, &text))]),
        json!({ "session_id": info.id, "timeout": info.timeout, "expires_at": info.expires_at, "session": info }),
    )
}

/// A closed session.
pub(crate) fn closed(id: &str) -> CallToolResult {
    with_structured(
        CallToolResult::success(vec![ContentBlock::text(format!("Closed session {id}."))]),
        json!({ "session_id": id, "closed": true }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_kept_whole() {
        assert_eq!(clip("hello", 10, "x"), "hello");
    }

    #[test]
    fn long_text_keeps_head_and_tail_with_a_marker() {
        let text = format!("{}{}", "a".repeat(100), "é".repeat(100));
        let clipped = clip(&text, 50, "session://s/executions/e/stdout");
        assert!(clipped.starts_with("aaaa"));
        assert!(clipped.ends_with("é"));
        assert!(clipped.contains(
            "bytes omitted here; the whole output is at session://s/executions/e/stdout"
        ));
        assert!(clipped.len() < 200);
    }
}
