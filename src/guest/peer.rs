//! A JSON-RPC 2.0 peer over a guest server's stdio: newline-delimited messages on stdin and
//! stdout, the way stdio MCP servers speak.
//!
//! Many requests may be in flight at once: each gets a fresh numeric id on the way in (so two
//! callers using the same id never collide) and its own id back on the way out. Notifications the
//! server sends while a request runs (progress by its token, logs and others to the oldest request
//! that listens) reach that request's event channel; `ping` is answered here, and other server
//! requests go to a listening caller or are refused. The process is gone when its output stream
//! ends: every waiting request then fails with [`PeerError::Exited`] at once, without polling.

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

use super::lines::{LineBuffer, MAX_LINE_BYTES};
use crate::backend::{BackendError, ExecChunk};
use crate::json_budget::{MAX_JSON_VALUES, value_footprint, within_budget};

/// How much of the server's stderr is kept to explain a failed start.
const STDERR_TAIL_BYTES: usize = 4096;
/// Events buffered per listening request; more are dropped (they are advisory).
pub const EVENT_BUFFER: usize = 32;
/// The largest event forwarded to a listening request (by [`value_footprint`]); larger ones
/// are dropped. With [`EVENT_BUFFER`], a request whose client does not read holds at most
/// 32 MiB of events.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;
/// How long a cancellation for a timed-out request may wait for the server's stdin.
const CANCEL_WRITE_TIMEOUT: Duration = Duration::from_millis(500);

/// Why a message did not reach the guest server, or its answer did not come back.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    #[error("the MCP server process of {server:?} exited")]
    Exited { server: String },
    #[error("the MCP server {server:?} printed a line longer than {limit} bytes, and was stopped")]
    LineTooLong { server: String, limit: usize },
    #[error(
        "the MCP server {server:?} printed a line of more than {limit} JSON values, and was stopped"
    )]
    LineTooComplex { server: String, limit: usize },
    #[error("the MCP server {server:?} did not answer within {waited:?}")]
    Timeout { server: String, waited: Duration },
    #[error("the message cannot be encoded as JSON")]
    InvalidMessage,
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

/// Which limit a line passed.
#[derive(Debug, Clone, Copy)]
enum Overflow {
    /// Longer than [`MAX_LINE_BYTES`].
    TooLong,
    /// Within the byte limit, but more JSON values than [`MAX_JSON_VALUES`]: parsed, it would
    /// take many times its size.
    TooManyValues,
}

/// The state the reader task shares with callers.
struct Shared {
    sandbox_id: String,
    server: String,
    stdin: tokio::sync::Mutex<Pin<Box<dyn AsyncWrite + Send>>>,
    /// A write was abandoned (its caller timed out) before its line was complete: the next write
    /// ends that line first, so the server's framing stays intact.
    torn: std::sync::atomic::AtomicBool,
    in_flight: Mutex<HashMap<u64, InFlight>>,
    exited: CancellationToken,
    /// The process printed a line past a limit: its output is no longer read, though it may
    /// still run.
    overflow: std::sync::OnceLock<Overflow>,
    stderr_tail: Mutex<Vec<u8>>,
    last_used: Mutex<Instant>,
}

/// The client side of a running guest server. Dropping it stops reading the server's output;
/// ending the process itself is the caller's business (it knows how it was started).
pub struct GuestPeer {
    shared: Arc<Shared>,
    next_id: AtomicU64,
    _reader: AbortOnDropHandle<()>,
}

impl std::fmt::Debug for GuestPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestPeer")
            .field("sandbox_id", &self.shared.sandbox_id)
            .field("server", &self.shared.server)
            .finish()
    }
}

/// What the process prints, as the backend delivers it.
pub type Output = Pin<Box<dyn Stream<Item = Result<ExecChunk, BackendError>> + Send>>;

impl GuestPeer {
    /// Starts reading a guest server's output (stdout: JSON-RPC lines; stderr: kept for errors)
    /// and takes its stdin for writing. The peer is closed when `output` ends.
    pub fn new(
        stdin: Pin<Box<dyn AsyncWrite + Send>>,
        output: Output,
        sandbox_id: &str,
        server: &str,
    ) -> Self {
        let shared = Arc::new(Shared {
            sandbox_id: sandbox_id.to_string(),
            server: server.to_string(),
            stdin: tokio::sync::Mutex::new(stdin),
            torn: std::sync::atomic::AtomicBool::new(false),
            in_flight: Mutex::new(HashMap::new()),
            exited: CancellationToken::new(),
            overflow: std::sync::OnceLock::new(),
            stderr_tail: Mutex::new(Vec::new()),
            last_used: Mutex::new(Instant::now()),
        });
        let span = tracing::info_span!("guest_server", sandbox_id = %sandbox_id, server = %server);
        let reader = tokio::spawn(
            read_output(shared.clone(), output, LineBuffer::default()).instrument(span),
        );
        Self {
            shared,
            next_id: AtomicU64::new(1),
            _reader: AbortOnDropHandle::new(reader),
        }
    }

    /// Whether the process is gone for its client: its output ended, or it broke a bound.
    pub fn has_exited(&self) -> bool {
        self.shared.exited.is_cancelled()
    }

    /// Resolves once the output stream ended, with whether it ended because the process printed
    /// a line past the limit. Owns what it needs, so it can be awaited by a task of its own.
    pub fn ended(&self) -> impl std::future::Future<Output = bool> + Send + 'static {
        let shared = self.shared.clone();
        async move {
            shared.exited.cancelled().await;
            shared.overflow.get().is_some()
        }
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
        message: Value,
        events: Option<mpsc::Sender<Value>>,
    ) -> Result<Value, PeerError> {
        let internal = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.request_as(internal, message, events).await
    }

    /// [`GuestPeer::request`], waiting at most `limit` (writing the request included: a server
    /// that stopped reading its stdin blocks the write). Then the request is forgotten, the
    /// server is sent `notifications/cancelled` for it (when its stdin takes it at once), and
    /// the caller gets [`PeerError::Timeout`].
    pub async fn request_within(
        &self,
        message: Value,
        events: Option<mpsc::Sender<Value>>,
        limit: Duration,
    ) -> Result<Value, PeerError> {
        let internal = self.next_id.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(limit, self.request_as(internal, message, events)).await {
            Ok(answered) => answered,
            Err(_) => {
                tracing::info!(sandbox_id = %self.shared.sandbox_id, server = %self.shared.server, waited_ms = limit.as_millis() as u64, "guest server request timed out");
                let cancelled = json!({
                    "jsonrpc": "2.0",
                    "method": "notifications/cancelled",
                    "params": {"requestId": internal, "reason": "timed out"},
                });
                if tokio::time::timeout(CANCEL_WRITE_TIMEOUT, self.shared.write(&cancelled))
                    .await
                    .is_err()
                {
                    tracing::debug!("the guest server's stdin is blocked; no cancellation sent");
                }
                Err(PeerError::Timeout {
                    server: self.shared.server.clone(),
                    waited: limit,
                })
            }
        }
    }

    async fn request_as(
        &self,
        internal: u64,
        mut message: Value,
        events: Option<mpsc::Sender<Value>>,
    ) -> Result<Value, PeerError> {
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
    pub async fn notify(&self, mut message: Value) -> Result<(), PeerError> {
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
    pub async fn respond(&self, message: Value) -> Result<(), PeerError> {
        self.shared.write(&message).await
    }

    /// Closes the process's stdin: a well-behaved server exits then.
    pub async fn close_stdin(&self) {
        let mut stdin = self.shared.stdin.lock().await;
        let _ = stdin.shutdown().await;
    }

    fn exited_error(&self) -> PeerError {
        self.shared.exited_error()
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

    async fn write(&self, message: &Value) -> Result<(), PeerError> {
        let mut line = serde_json::to_vec(message).map_err(|_| PeerError::InvalidMessage)?;
        line.push(b'\n');
        self.touch();
        // A process that is gone may leave a write blocked for good (its stdin is nobody's to
        // drain any more): its end ends the write too.
        let write = async {
            let mut stdin = self.stdin.lock().await;
            let torn = self.torn.swap(true, Ordering::SeqCst);
            if torn {
                stdin.write_all(b"\n").await?;
            }
            stdin.write_all(&line).await?;
            stdin.flush().await?;
            self.torn.store(false, Ordering::SeqCst);
            Ok::<(), std::io::Error>(())
        };
        tokio::select! {
            written = write => written.map_err(|_| self.exited_error()),
            () = self.exited.cancelled() => Err(self.exited_error()),
        }
    }

    /// Why the process is gone for its callers.
    fn exited_error(&self) -> PeerError {
        let server = self.server.clone();
        match self.overflow.get() {
            Some(Overflow::TooLong) => PeerError::LineTooLong {
                server,
                limit: MAX_LINE_BYTES,
            },
            Some(Overflow::TooManyValues) => PeerError::LineTooComplex {
                server,
                limit: MAX_JSON_VALUES,
            },
            None => PeerError::Exited { server },
        }
    }

    fn note_stderr(&self, bytes: &[u8]) {
        tracing::debug!(sandbox_id = %self.sandbox_id, server = %self.server, stderr = %String::from_utf8_lossy(bytes).trim_end(), "guest server stderr");
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
            Some(_) if value_footprint(message) > MAX_EVENT_BYTES => {
                tracing::debug!(
                    limit = MAX_EVENT_BYTES,
                    "dropping a guest server's event larger than the limit"
                );
                false
            }
            Some(events) => events.try_send(message.clone()).is_ok(),
            None => false,
        }
    }
}

/// Reads the process's output until it ends, then fails every waiting request. A process that
/// prints a line past the limit is gone for its callers at once; what it prints after that is
/// read and dropped until its stream ends (an unread stream would stall the Docker daemon's
/// copy of it, and with it every other exec in the container, until the owner kills it).
async fn read_output(shared: Arc<Shared>, mut output: Output, mut lines: LineBuffer) {
    let mut ended_by = "the process exited";
    'read: loop {
        while let Some(line) = lines.next_line() {
            // Like a line past the byte limit: parsed, it would take many times its size.
            if let Err(values) = within_budget(&line) {
                tracing::warn!(
                    values,
                    limit = MAX_JSON_VALUES,
                    "a guest server printed a line of more JSON values than the limit"
                );
                ended_by = "a line of more JSON values than the limit";
                let _ = shared.overflow.set(Overflow::TooManyValues);
                break 'read;
            }
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
            let _ = shared.overflow.set(Overflow::TooLong);
            break 'read;
        }
        match output.next().await {
            Some(Ok(ExecChunk::Stdout(bytes))) => lines.push(&bytes),
            Some(Ok(ExecChunk::Stderr(bytes))) => shared.note_stderr(&bytes),
            Some(Err(error)) => {
                tracing::debug!(%error, "guest server output failed");
                ended_by = "its output failed";
                break 'read;
            }
            None => break 'read,
        }
    }
    tracing::info!(reason = ended_by, "guest server process ended");
    shared.exited.cancel();
    // Dropping the reply senders wakes every waiting request with an error.
    shared.lock_in_flight().clear();
    if shared.overflow.get().is_some() {
        while let Some(Ok(_)) = output.next().await {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Arc<Shared> {
        Arc::new(Shared {
            sandbox_id: "sbx_test".into(),
            server: "time".into(),
            stdin: tokio::sync::Mutex::new(Box::pin(tokio::io::sink())),
            torn: std::sync::atomic::AtomicBool::new(false),
            in_flight: Mutex::new(HashMap::new()),
            exited: CancellationToken::new(),
            overflow: std::sync::OnceLock::new(),
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
    async fn a_timed_out_request_is_forgotten_and_a_torn_line_is_ended() {
        // A stdin that takes 16 bytes and is then read by nobody, like a server that stopped
        // reading.
        let (stdin, mut server_side) = tokio::io::duplex(16);
        let peer = GuestPeer::new(
            Box::pin(stdin),
            Box::pin(futures::stream::pending()),
            "sbx_test",
            "stuck",
        );
        let big =
            json!({"jsonrpc": "2.0", "id": "a", "method": "m", "params": {"x": "y".repeat(64)}});
        let waited = Duration::from_millis(50);
        match peer.request_within(big, None, waited).await {
            Err(PeerError::Timeout { server, waited: w }) => {
                assert_eq!(server, "stuck");
                assert_eq!(w, waited);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            peer.in_flight(),
            0,
            "the request no longer counts as waiting"
        );
        // The server reads again: the next message starts on a line of its own.
        let reader = tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut buffer = [0u8; 256];
            while !String::from_utf8_lossy(&seen).contains("notifications/initialized") {
                let read = tokio::io::AsyncReadExt::read(&mut server_side, &mut buffer)
                    .await
                    .expect("read");
                seen.extend_from_slice(&buffer[..read]);
            }
            String::from_utf8_lossy(&seen).into_owned()
        });
        peer.notify(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await
            .expect("written");
        let seen = reader.await.expect("reader");
        let last = seen.lines().last().unwrap_or_default();
        assert_eq!(
            serde_json::from_str::<Value>(last).ok(),
            Some(json!({"jsonrpc": "2.0", "method": "notifications/initialized"})),
            "{seen:?}"
        );
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
