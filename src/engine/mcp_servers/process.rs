//! One stdio MCP server process inside a sandbox, started with an attached `docker exec`.
//!
//! The process speaks newline-delimited JSON-RPC on stdin/stdout. Many requests may be in flight
//! at once: each gets a fresh numeric id on the way in (so two callers using the same id never
//! collide) and its own id back on the way out. Notifications the server sends while a request
//! runs (progress by its token, logs and others to the oldest request that listens) reach that
//! request's event channel. The process is gone when its output stream ends: every waiting
//! request then fails with [`McpServerError::ProcessExited`] at once, without any polling.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use super::McpServerError;
use crate::backend::{Backend, BackendError, ExecChunk, ExecSpec};

/// The first line the wrapper prints: the process's pid inside the container (it is the leader
/// of its own session, so killing `-pid` takes its children along).
const PID_MARKER: &str = "kernelbox-mcp-pid ";
/// Prints the pid marker, then becomes the server (`exec` keeps the pid).
const WRAPPER: &str = r#"printf 'kernelbox-mcp-pid %s\n' "$$"; exec "$@""#;
/// The longest line accepted from a server; a longer one ends the process.
pub(crate) const MAX_LINE_BYTES: usize = 64 * 1024 * 1024;
/// How much of the server's stderr is kept to explain a failed start.
const STDERR_TAIL_BYTES: usize = 4096;
/// How long `docker exec` may take to show the wrapper's first line.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server may take to exit after its stdin closed, before it is killed.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Events buffered per listening request; more are dropped (they are advisory).
pub const EVENT_BUFFER: usize = 256;

/// What a process is started with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Launch {
    pub(crate) command: String,
    pub(crate) args: Vec<String>,
    /// `KEY=value` pairs.
    pub(crate) env: Vec<String>,
    pub(crate) workdir: String,
}

/// A request waiting for its response.
struct InFlight {
    /// The id the caller used; put back on the response.
    caller_id: Value,
    progress_token: Option<Value>,
    reply: oneshot::Sender<Value>,
    /// Where notifications and server requests for this request go, when the caller listens.
    events: Option<mpsc::Sender<Value>>,
}

/// The state the reader task shares with callers.
struct Shared {
    sandbox_id: String,
    server: String,
    stdin: tokio::sync::Mutex<Pin<Box<dyn AsyncWrite + Send>>>,
    in_flight: Mutex<HashMap<u64, InFlight>>,
    exited: CancellationToken,
    stderr_tail: Mutex<Vec<u8>>,
    last_used: Mutex<Instant>,
}

/// A running stdio MCP server. Dropping it stops reading its output; [`ServerProcess::close`]
/// ends the process itself.
pub struct ServerProcess {
    shared: Arc<Shared>,
    container_id: String,
    /// The process's pid inside the container.
    pid: u32,
    next_id: AtomicU64,
    _reader: AbortOnDropHandle<()>,
}

impl std::fmt::Debug for ServerProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerProcess")
            .field("sandbox_id", &self.shared.sandbox_id)
            .field("server", &self.shared.server)
            .field("pid", &self.pid)
            .finish()
    }
}

type Output = Pin<Box<dyn Stream<Item = Result<ExecChunk, BackendError>> + Send>>;

impl ServerProcess {
    /// Starts `launch` in the container as the sandbox user and waits for the wrapper's pid line
    /// (not for the server to answer: the first request does that).
    pub(crate) async fn start(
        backend: &dyn Backend,
        container_id: &str,
        sandbox_id: &str,
        server: &str,
        launch: &Launch,
    ) -> Result<Self, McpServerError> {
        let mut argv: Vec<String> = ["sh", "-c", WRAPPER, "sh", &launch.command]
            .map(String::from)
            .to_vec();
        argv.extend(launch.args.iter().cloned());
        let spec = ExecSpec {
            argv,
            workdir: launch.workdir.clone(),
            env: launch.env.clone(),
            user: None,
            output_limit: 0,
        };
        let attached = backend
            .exec_attached(container_id, spec)
            .await
            .map_err(McpServerError::Backend)?;
        let shared = Arc::new(Shared {
            sandbox_id: sandbox_id.to_string(),
            server: server.to_string(),
            stdin: tokio::sync::Mutex::new(attached.stdin),
            in_flight: Mutex::new(HashMap::new()),
            exited: CancellationToken::new(),
            stderr_tail: Mutex::new(Vec::new()),
            last_used: Mutex::new(Instant::now()),
        });
        let mut output = attached.output;
        let mut lines = LineBuffer::default();
        let first = tokio::time::timeout(START_TIMEOUT, async {
            loop {
                match output.next().await {
                    Some(Ok(ExecChunk::Stdout(bytes))) => {
                        lines.push(&bytes);
                        if let Some(line) = lines.next_line() {
                            return Some(line);
                        }
                    }
                    Some(Ok(ExecChunk::Stderr(bytes))) => shared.note_stderr(&bytes),
                    Some(Err(_)) | None => return None,
                }
            }
        })
        .await
        .map_err(|_| McpServerError::NotAnswering {
            server: server.to_string(),
            waited: START_TIMEOUT,
        })?;
        let pid = first
            .as_deref()
            .and_then(|line| std::str::from_utf8(line).ok())
            .and_then(|line| line.trim().strip_prefix(PID_MARKER))
            .and_then(|pid| pid.parse::<u32>().ok())
            .ok_or_else(|| McpServerError::Exited {
                server: server.to_string(),
                stderr: shared.stderr_tail(),
            })?;
        let span =
            tracing::info_span!("mcp_server", sandbox_id = %sandbox_id, server = %server, pid);
        let reader = tokio::spawn(read_output(shared.clone(), output, lines).instrument(span));
        tracing::info!(sandbox_id = %sandbox_id, server = %server, pid, "MCP server process started");
        Ok(Self {
            shared,
            container_id: container_id.to_string(),
            pid,
            next_id: AtomicU64::new(1),
            _reader: AbortOnDropHandle::new(reader),
        })
    }

    /// The process's pid inside the container.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn has_exited(&self) -> bool {
        self.shared.exited.is_cancelled()
    }

    /// Resolves once the process is gone (its output stream ended).
    pub async fn exited(&self) {
        self.shared.exited.cancelled().await
    }

    /// The end of what the process printed on stderr (for errors about a failed start).
    pub fn stderr_tail(&self) -> String {
        self.shared.stderr_tail()
    }

    /// How long since a message last went in or out.
    pub fn idle_for(&self) -> Duration {
        self.shared
            .last_used
            .lock()
            .map(|last| last.elapsed())
            .unwrap_or_default()
    }

    /// When the process became idle last.
    pub fn last_used(&self) -> Instant {
        self.shared
            .last_used
            .lock()
            .map(|last| *last)
            .unwrap_or_else(|_| Instant::now())
    }

    /// Requests waiting for their response.
    pub fn in_flight(&self) -> usize {
        self.shared
            .in_flight
            .lock()
            .map(|in_flight| in_flight.len())
            .unwrap_or(0)
    }

    /// Sends a request (an object with `id` and `method`) and waits for its response, which
    /// carries the caller's id again. Notifications and server requests for it go to `events`.
    /// Dropping the future forgets the request.
    pub async fn request(
        &self,
        mut message: Value,
        events: Option<mpsc::Sender<Value>>,
    ) -> Result<Value, McpServerError> {
        let internal = self.next_id.fetch_add(1, Ordering::Relaxed);
        let caller_id = message.get("id").cloned().unwrap_or(Value::Null);
        let progress_token = message
            .pointer("/params/_meta/progressToken")
            .filter(|token| !token.is_null())
            .cloned();
        message["id"] = json!(internal);
        let (reply, response) = oneshot::channel();
        self.shared.lock_in_flight().insert(
            internal,
            InFlight {
                caller_id,
                progress_token,
                reply,
                events,
            },
        );
        let _forget = ForgetOnDrop {
            shared: &self.shared,
            id: internal,
        };
        if self.has_exited() {
            return Err(self.exited_error());
        }
        self.shared.write(&message).await?;
        tokio::select! {
            response = response => response.map_err(|_| self.exited_error()),
            () = self.shared.exited.cancelled() => Err(self.exited_error()),
        }
    }

    /// Sends a notification. `notifications/cancelled` names the caller's request id; it is
    /// rewritten to the id the server saw.
    pub async fn notify(&self, mut message: Value) -> Result<(), McpServerError> {
        if message.get("method").and_then(Value::as_str) == Some("notifications/cancelled")
            && let Some(caller_id) = message.pointer("/params/requestId").cloned()
            && let Some(internal) = self.shared.internal_id_of(&caller_id)
        {
            message["params"]["requestId"] = json!(internal);
        }
        self.shared.write(&message).await
    }

    /// Passes the caller's answer to a request the server made, unchanged (server ids are the
    /// server's own).
    pub async fn respond(&self, message: Value) -> Result<(), McpServerError> {
        self.shared.write(&message).await
    }

    /// Ends the process: closes its stdin, gives it a moment to exit, then kills its process
    /// group. Returns once its output stream ended (or the kill was sent and did not help).
    pub async fn close(&self, backend: &dyn Backend) {
        if self.has_exited() {
            return;
        }
        {
            let mut stdin = self.shared.stdin.lock().await;
            let _ = stdin.shutdown().await;
        }
        if tokio::time::timeout(CLOSE_GRACE, self.exited())
            .await
            .is_ok()
        {
            return;
        }
        self.kill(backend).await;
        if tokio::time::timeout(CLOSE_GRACE, self.exited())
            .await
            .is_err()
        {
            tracing::warn!(sandbox_id = %self.shared.sandbox_id, server = %self.shared.server, pid = self.pid, "MCP server process did not exit after SIGKILL");
        }
    }

    /// Sends SIGKILL to the process's group (it leads its own session).
    pub async fn kill(&self, backend: &dyn Backend) {
        let kill = ExecSpec {
            argv: ["kill", "-KILL", "--", &format!("-{}", self.pid)]
                .map(String::from)
                .to_vec(),
            workdir: "/".into(),
            env: Vec::new(),
            user: None,
            output_limit: 4096,
        };
        if let Err(error) = backend.exec(&self.container_id, kill).await {
            tracing::debug!(sandbox_id = %self.shared.sandbox_id, %error, "could not kill the MCP server process");
        }
    }

    fn exited_error(&self) -> McpServerError {
        McpServerError::ProcessExited {
            server: self.shared.server.clone(),
        }
    }
}

/// Removes a request from the in-flight table when its caller stops waiting.
struct ForgetOnDrop<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        self.shared.lock_in_flight().remove(&self.id);
    }
}

impl Shared {
    fn lock_in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<u64, InFlight>> {
        self.in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn touch(&self) {
        if let Ok(mut last) = self.last_used.lock() {
            *last = Instant::now();
        }
    }

    fn internal_id_of(&self, caller_id: &Value) -> Option<u64> {
        self.lock_in_flight()
            .iter()
            .filter(|(_, request)| &request.caller_id == caller_id)
            .map(|(id, _)| *id)
            .max()
    }

    async fn write(&self, message: &Value) -> Result<(), McpServerError> {
        let mut line = serde_json::to_vec(message).map_err(|_| McpServerError::InvalidMessage)?;
        line.push(b'\n');
        self.touch();
        let mut stdin = self.stdin.lock().await;
        let written = async {
            stdin.write_all(&line).await?;
            stdin.flush().await
        }
        .await;
        written.map_err(|_| McpServerError::ProcessExited {
            server: self.server.clone(),
        })
    }

    fn note_stderr(&self, bytes: &[u8]) {
        tracing::debug!(sandbox_id = %self.sandbox_id, server = %self.server, stderr = %String::from_utf8_lossy(bytes).trim_end(), "MCP server stderr");
        if let Ok(mut tail) = self.stderr_tail.lock() {
            tail.extend_from_slice(bytes);
            if tail.len() > STDERR_TAIL_BYTES {
                let cut = tail.len() - STDERR_TAIL_BYTES;
                tail.drain(..cut);
            }
        }
    }

    fn stderr_tail(&self) -> String {
        self.stderr_tail
            .lock()
            .map(|tail| String::from_utf8_lossy(&tail).trim().to_string())
            .unwrap_or_default()
    }

    /// Handles one message the server printed.
    async fn dispatch(&self, message: Value) {
        self.touch();
        let has_method = message.get("method").is_some();
        let id = message.get("id").filter(|id| !id.is_null()).cloned();
        match (has_method, id) {
            // A response to one of ours.
            (false, Some(id)) => {
                let Some(internal) = id.as_u64() else {
                    tracing::debug!(%id, "response with an id the proxy never sent");
                    return;
                };
                let Some(request) = self.lock_in_flight().remove(&internal) else {
                    return;
                };
                let mut message = message;
                message["id"] = request.caller_id;
                let _ = request.reply.send(message);
            }
            // The server asks the client something.
            (true, Some(id)) => {
                if message.get("method").and_then(Value::as_str) == Some("ping") {
                    let _ = self
                        .write(&json!({"jsonrpc": "2.0", "id": id, "result": {}}))
                        .await;
                } else if !self.deliver(&message, None) {
                    let refusal = json!({
                        "jsonrpc": "2.0",
                        "id": id,
                        "error": {"code": -32601, "message": "the client has no open stream to receive server requests"},
                    });
                    let _ = self.write(&refusal).await;
                }
            }
            (true, None) => {
                let token = message
                    .pointer("/params/progressToken")
                    .filter(|token| !token.is_null())
                    .cloned();
                self.deliver(&message, token.as_ref());
            }
            (false, None) => tracing::debug!(
                "ignoring a message that is neither request, response nor notification"
            ),
        }
    }

    /// Sends a message to the request that owns `progress_token`, or else to the oldest request
    /// that listens. Returns whether someone took it.
    fn deliver(&self, message: &Value, progress_token: Option<&Value>) -> bool {
        let in_flight = self.lock_in_flight();
        let target = match progress_token {
            Some(token) => in_flight
                .values()
                .find(|request| request.progress_token.as_ref() == Some(token)),
            None => in_flight
                .iter()
                .filter(|(_, request)| request.events.is_some())
                .min_by_key(|(id, _)| **id)
                .map(|(_, request)| request),
        };
        match target.and_then(|request| request.events.as_ref()) {
            Some(events) => events.try_send(message.clone()).is_ok(),
            None => false,
        }
    }
}

/// Reads the process's output until it ends, then fails every waiting request.
async fn read_output(shared: Arc<Shared>, mut output: Output, mut lines: LineBuffer) {
    let mut ended_by = "the process exited";
    'read: loop {
        while let Some(line) = lines.next_line() {
            match serde_json::from_slice::<Value>(&line) {
                Ok(Value::Array(batch)) => {
                    for message in batch {
                        shared.dispatch(message).await;
                    }
                }
                Ok(message) => shared.dispatch(message).await,
                Err(_) => {
                    tracing::debug!(line = %String::from_utf8_lossy(&line), "non-JSON line on stdout")
                }
            }
        }
        if lines.overflowed() {
            ended_by = "a line longer than the limit";
            break 'read;
        }
        match output.next().await {
            Some(Ok(ExecChunk::Stdout(bytes))) => lines.push(&bytes),
            Some(Ok(ExecChunk::Stderr(bytes))) => shared.note_stderr(&bytes),
            Some(Err(error)) => {
                tracing::debug!(%error, "MCP server output failed");
                ended_by = "its output failed";
                break 'read;
            }
            None => break 'read,
        }
    }
    tracing::info!(reason = ended_by, "MCP server process ended");
    shared.exited.cancel();
    // Dropping the reply senders wakes every waiting request with an error.
    shared.lock_in_flight().clear();
}

/// Splits stdout into lines, refusing lines beyond [`MAX_LINE_BYTES`].
#[derive(Default)]
pub(crate) struct LineBuffer {
    buffer: Vec<u8>,
    /// Where to continue looking for a newline.
    scanned: usize,
    overflowed: bool,
}

impl LineBuffer {
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete line, without its `\n` (or `\r\n`); blank lines are skipped.
    pub(crate) fn next_line(&mut self) -> Option<Vec<u8>> {
        loop {
            let Some(offset) = self.buffer[self.scanned..].iter().position(|b| *b == b'\n') else {
                self.scanned = self.buffer.len();
                if self.buffer.len() > MAX_LINE_BYTES {
                    self.overflowed = true;
                }
                return None;
            };
            let end = self.scanned + offset;
            let mut line: Vec<u8> = self.buffer.drain(..=end).collect();
            self.scanned = 0;
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if !line.iter().all(u8::is_ascii_whitespace) {
                return Some(line);
            }
        }
    }

    pub(crate) fn overflowed(&self) -> bool {
        self.overflowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_across_chunks_and_blank_lines_skipped() {
        let mut lines = LineBuffer::default();
        lines.push(b"{\"a\":");
        assert_eq!(lines.next_line(), None);
        lines.push(b"1}\r\n\n  \n{\"b\":2}\n{\"c\"");
        assert_eq!(lines.next_line().as_deref(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(lines.next_line().as_deref(), Some(&b"{\"b\":2}"[..]));
        assert_eq!(lines.next_line(), None);
        lines.push(b":3}\n");
        assert_eq!(lines.next_line().as_deref(), Some(&b"{\"c\":3}"[..]));
        assert!(!lines.overflowed());
    }

    #[test]
    fn a_line_beyond_the_limit_overflows() {
        let mut lines = LineBuffer::default();
        lines.push(&vec![b'x'; MAX_LINE_BYTES + 1]);
        assert_eq!(lines.next_line(), None);
        assert!(lines.overflowed());
    }

    fn shared() -> Arc<Shared> {
        Arc::new(Shared {
            sandbox_id: "sbx_test".into(),
            server: "time".into(),
            stdin: tokio::sync::Mutex::new(Box::pin(tokio::io::sink())),
            in_flight: Mutex::new(HashMap::new()),
            exited: CancellationToken::new(),
            stderr_tail: Mutex::new(Vec::new()),
            last_used: Mutex::new(Instant::now()),
        })
    }

    fn waiting(
        shared: &Shared,
        internal: u64,
        caller_id: Value,
        token: Option<Value>,
        listens: bool,
    ) -> (oneshot::Receiver<Value>, Option<mpsc::Receiver<Value>>) {
        let (reply, response) = oneshot::channel();
        let (events, receiver) = if listens {
            let (sender, receiver) = mpsc::channel(8);
            (Some(sender), Some(receiver))
        } else {
            (None, None)
        };
        shared.lock_in_flight().insert(
            internal,
            InFlight {
                caller_id,
                progress_token: token,
                reply,
                events,
            },
        );
        (response, receiver)
    }

    #[tokio::test]
    async fn responses_get_the_callers_id_back_even_when_callers_collide() {
        let shared = shared();
        // Two callers both used id 1; the server saw 7 and 8.
        let (first, _) = waiting(&shared, 7, json!(1), None, false);
        let (second, _) = waiting(&shared, 8, json!(1), None, false);
        shared
            .dispatch(json!({"jsonrpc": "2.0", "id": 8, "result": {"n": "second"}}))
            .await;
        shared
            .dispatch(json!({"jsonrpc": "2.0", "id": 7, "result": {"n": "first"}}))
            .await;
        let first = first.await.expect("first answered");
        let second = second.await.expect("second answered");
        assert_eq!(
            first,
            json!({"jsonrpc": "2.0", "id": 1, "result": {"n": "first"}})
        );
        assert_eq!(second["result"]["n"], "second");
        assert_eq!(second["id"], 1);
        assert!(shared.lock_in_flight().is_empty());
    }

    #[tokio::test]
    async fn progress_goes_to_its_request_and_logs_to_the_oldest_listener() {
        let shared = shared();
        let (_a, a_events) = waiting(&shared, 3, json!("a"), Some(json!("tok-a")), true);
        let (_b, b_events) = waiting(&shared, 4, json!("b"), Some(json!(99)), true);
        let (mut a_events, mut b_events) = (a_events.expect("a"), b_events.expect("b"));
        let progress = json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 99, "progress": 1}});
        shared.dispatch(progress.clone()).await;
        assert_eq!(b_events.try_recv().ok(), Some(progress));
        assert!(a_events.try_recv().is_err());
        let log = json!({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "x"}});
        shared.dispatch(log.clone()).await;
        assert_eq!(a_events.try_recv().ok(), Some(log));
        assert!(b_events.try_recv().is_err());
    }

    #[test]
    fn cancellation_names_the_latest_request_with_that_caller_id() {
        let shared = shared();
        let _first = waiting(&shared, 5, json!("x"), None, false);
        let _second = waiting(&shared, 6, json!("x"), None, false);
        assert_eq!(shared.internal_id_of(&json!("x")), Some(6));
        assert_eq!(shared.internal_id_of(&json!("y")), None);
    }

    #[tokio::test]
    async fn an_ended_process_fails_every_waiting_request() {
        let shared = shared();
        let (response, _) = waiting(&shared, 1, json!(1), None, false);
        read_output(
            shared.clone(),
            Box::pin(futures::stream::empty()),
            LineBuffer::default(),
        )
        .await;
        assert!(shared.exited.is_cancelled());
        assert!(response.await.is_err(), "the waiter must see the end");
    }
}
