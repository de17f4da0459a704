//! Running code. An execution is a stream of [`ExecEvent`]s ending in one
//! [`ExecEvent::Finished`] with the whole [`ExecutionResult`].
//!
//! One execution runs at a time per sandbox: a second request while one runs waits half a
//! second for it to end (a cancellation may be on its way), then gets [`EngineError::Busy`]; it is
//! never queued behind a long run. An execution ends in one of:
//! - completed or failed (a Python exception), as the kernel reported;
//! - timeout: the kernel is interrupted; when it does not answer again within a grace period it
//!   is restarted, and the result says so (state lost);
//! - cancelled: the caller dropped the stream; the kernel is interrupted the same way;
//! - kernel died (crash, `os._exit`, out of memory): the kernel is restarted automatically.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::OwnedMutexGuard;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::{Engine, EngineError, Sandbox};
use crate::backend::Backend;
use crate::kernel::{KernelClient, KernelEvent, KernelExecution, MimeBundle};

/// How long an interrupted kernel has to finish the execution before it is restarted.
const INTERRUPT_GRACE: Duration = Duration::from_secs(3);
/// Events buffered between the execution and its consumer.
const EVENT_BUFFER: usize = 64;

/// A request to run code.
#[derive(Debug, Clone)]
pub struct ExecuteRequest {
    pub code: String,
    /// `None` takes the configured default; more than the configured maximum is refused.
    pub timeout: Option<Duration>,
}

/// A Python exception.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PythonError {
    pub ename: String,
    pub evalue: String,
    /// Traceback lines, ANSI colour codes removed.
    pub traceback: Vec<String>,
}

/// A rich output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Output {
    /// `display` (display_data) or `result` (the value of the last expression).
    pub kind: OutputKind,
    /// MIME type → content (`image/png` is base64).
    pub data: MimeBundle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputKind {
    Display,
    Result,
}

/// How an execution ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ExecutionOutcome {
    Completed,
    /// The code raised an exception.
    Failed,
    /// The time limit passed. `kernel_restarted`: the interrupt did not stop the code, so the
    /// kernel was restarted and its variables are gone.
    Timeout {
        kernel_restarted: bool,
    },
    /// The caller went away; handled like a timeout.
    Cancelled {
        kernel_restarted: bool,
    },
    /// The kernel process died. It was restarted; variables are gone.
    KernelDied {
        out_of_memory: bool,
    },
}

impl ExecutionOutcome {
    /// The REST status word.
    pub fn status(&self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Failed | Self::KernelDied { .. } => "failed",
            Self::Timeout { .. } => "timeout",
            Self::Cancelled { .. } => "cancelled",
        }
    }
}

/// Everything an execution produced.
#[derive(Debug, Clone, Serialize)]
pub struct ExecutionResult {
    pub execution_id: String,
    pub sandbox_id: String,
    pub outcome: ExecutionOutcome,
    pub stdout: String,
    pub stderr: String,
    pub outputs: Vec<Output>,
    /// The exception (or a synthesized one for timeouts and kernel deaths).
    pub error: Option<PythonError>,
    pub execution_count: Option<i64>,
    pub started_at: DateTime<Utc>,
    pub duration_ms: u64,
    /// Some output was dropped because it passed the per-execution cap.
    pub truncated: bool,
}

impl ExecutionResult {
    /// The `text/plain` of the final expression's value, if any.
    pub fn result_text(&self) -> Option<&str> {
        self.outputs
            .iter()
            .find(|output| output.kind == OutputKind::Result)
            .and_then(|output| output.data.get("text/plain"))
            .and_then(|text| text.as_str())
    }
}

/// One step of an execution.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExecEvent {
    Stdout {
        text: String,
    },
    Stderr {
        text: String,
    },
    Display {
        data: MimeBundle,
    },
    Result {
        data: MimeBundle,
    },
    Error(PythonError),
    /// The last event.
    Finished(Arc<ExecutionResult>),
}

/// The events of a running execution. Dropping it cancels the execution.
pub struct ExecutionStream {
    pub execution_id: String,
    events: mpsc::Receiver<ExecEvent>,
}

impl ExecutionStream {
    pub async fn next(&mut self) -> Option<ExecEvent> {
        self.events.recv().await
    }

    /// Waits for the end and returns the result (shared with the engine's execution history,
    /// so a large result is held once).
    pub async fn finish(mut self) -> Result<Arc<ExecutionResult>, EngineError> {
        while let Some(event) = self.events.recv().await {
            if let ExecEvent::Finished(result) = event {
                return Ok(result);
            }
        }
        Err(EngineError::ShuttingDown)
    }
}

impl Engine {
    /// Starts running code in a sandbox.
    pub async fn execute(
        self: &Arc<Self>,
        id: &str,
        owner: Option<&str>,
        request: ExecuteRequest,
    ) -> Result<ExecutionStream, EngineError> {
        let sandbox = self.get(id, owner)?;
        if request.code.len() > super::MAX_CODE_BYTES {
            return Err(EngineError::TooLarge {
                what: "code",
                limit: super::MAX_CODE_BYTES as u64,
            });
        }
        let timeout = request.timeout.unwrap_or(self.config.exec_timeout);
        if timeout.is_zero() || timeout > self.config.max_exec_timeout {
            return Err(EngineError::InvalidInput {
                field: "timeout",
                reason: format!(
                    "must be between 1 and {} seconds",
                    self.config.max_exec_timeout.as_secs()
                ),
            });
        }
        let guard = sandbox
            .acquire_exec()
            .await
            .ok_or_else(|| EngineError::Busy { id: id.to_string() })?;
        sandbox.touch();
        let kernel = sandbox.kernel(self.config.kernel_ready_timeout).await?;
        let execution = kernel
            .execute(&request.code)
            .await
            .map_err(EngineError::Kernel)?;
        let execution_id = format!("exe_{}", uuid::Uuid::new_v4().simple());
        let (events, receiver) = mpsc::channel(EVENT_BUFFER);
        sandbox.set_running(Some(events.downgrade()));
        let started_at = Utc::now();
        self.history.started(super::ExecutionRecord {
            execution_id: execution_id.clone(),
            sandbox_id: id.to_string(),
            owner: sandbox.owner().map(str::to_string),
            started_at,
            result: None,
        });
        let run = Run {
            engine: self.clone(),
            sandbox: sandbox.clone(),
            kernel,
            execution,
            events,
            collector: Collector::new(
                self.config.output_limit_bytes,
                self.config.rich_output_limit_bytes,
            ),
            deadline: Instant::now() + timeout,
            timeout,
            execution_id: execution_id.clone(),
            started_at,
            started: Instant::now(),
        };
        let span = tracing::info_span!("execute", sandbox_id = %id, execution_id = %execution_id);
        self.tasks.spawn(run.drive(guard).instrument(span));
        Ok(ExecutionStream {
            execution_id,
            events: receiver,
        })
    }

    /// Restarts a sandbox's kernel: variables are lost, files stay. A restart is the way out of
    /// a stuck execution, so a running execution is not waited for: the kernel is killed, and
    /// that execution ends with "kernel died".
    pub async fn restart_kernel(&self, id: &str, owner: Option<&str>) -> Result<(), EngineError> {
        let sandbox = self.get(id, owner)?;
        sandbox.touch();
        if sandbox.is_busy() {
            sandbox.set_winding_down(true);
            sandbox.kill_kernel(self.backend()).await?;
        }
        let _guard = sandbox.exec_lock.clone().lock_owned().await;
        sandbox
            .restart_kernel(self.backend(), self.config.kernel_ready_timeout)
            .await
    }
}

enum Stop {
    Finished {
        status: String,
        execution_count: Option<i64>,
    },
    Timeout,
    Cancelled,
    KernelDied,
}

struct Run {
    engine: Arc<Engine>,
    sandbox: Arc<Sandbox>,
    kernel: Arc<KernelClient>,
    execution: KernelExecution,
    events: mpsc::Sender<ExecEvent>,
    collector: Collector,
    deadline: Instant,
    timeout: Duration,
    execution_id: String,
    started_at: DateTime<Utc>,
    started: Instant,
}

impl Run {
    async fn drive(mut self, guard: OwnedMutexGuard<()>) {
        let stop = self.pump().await;
        if !matches!(stop, Stop::Finished { .. }) {
            self.sandbox.set_winding_down(true);
        }
        let backend = self.engine.backend.clone();
        let ready_within = self.engine.config.kernel_ready_timeout;
        let mut execution_count = None;
        let outcome = match stop {
            Stop::Finished {
                status,
                execution_count: count,
            } => {
                execution_count = count;
                match status.as_str() {
                    "ok" => ExecutionOutcome::Completed,
                    "aborted" => {
                        self.collector.error.get_or_insert_with(aborted_error);
                        ExecutionOutcome::Failed
                    }
                    _ => ExecutionOutcome::Failed,
                }
            }
            Stop::Timeout => {
                let kernel_restarted = self.interrupt(backend.as_ref(), ready_within).await;
                self.collector.error = Some(timeout_error(self.timeout, kernel_restarted));
                ExecutionOutcome::Timeout { kernel_restarted }
            }
            Stop::Cancelled => {
                let kernel_restarted = self.interrupt(backend.as_ref(), ready_within).await;
                ExecutionOutcome::Cancelled { kernel_restarted }
            }
            Stop::KernelDied => {
                let out_of_memory = self
                    .recover_dead_kernel(backend.as_ref(), ready_within)
                    .await;
                self.collector.error = Some(kernel_died_error(out_of_memory));
                ExecutionOutcome::KernelDied { out_of_memory }
            }
        };
        self.sandbox.touch();
        self.sandbox.set_running(None);
        drop(guard);
        self.sandbox.set_winding_down(false);
        let result = self.collector.finish(ExecutionResult {
            execution_id: self.execution_id.clone(),
            sandbox_id: self.sandbox.id().to_string(),
            outcome,
            stdout: String::new(),
            stderr: String::new(),
            outputs: Vec::new(),
            error: None,
            execution_count,
            started_at: self.started_at,
            duration_ms: self.started.elapsed().as_millis() as u64,
            truncated: false,
        });
        tracing::debug!(outcome = ?result.outcome, duration_ms = result.duration_ms, "execution finished");
        self.engine
            .metrics
            .execution_finished(&result.outcome, self.started.elapsed());
        let result = Arc::new(result);
        self.engine.history.finished(result.clone());
        let _ = self.events.send(ExecEvent::Finished(result)).await;
    }

    /// Moves kernel events to the consumer until the execution ends or must be stopped.
    async fn pump(&mut self) -> Stop {
        let deadline = tokio::time::Instant::from_std(self.deadline);
        loop {
            let next = tokio::select! {
                _ = self.events.closed() => return Stop::Cancelled,
                _ = tokio::time::sleep_until(deadline) => return Stop::Timeout,
                _ = self.sandbox.cancelled() => return Stop::Cancelled,
                next = self.execution.next() => next,
            };
            let event = match next {
                Ok(Some(KernelEvent::Done {
                    status,
                    execution_count,
                })) => {
                    return Stop::Finished {
                        status,
                        execution_count,
                    };
                }
                Ok(Some(event)) => event,
                Ok(None) => {
                    return Stop::Finished {
                        status: "ok".into(),
                        execution_count: None,
                    };
                }
                Err(error) => {
                    tracing::info!(%error, "kernel connection lost during execution");
                    return Stop::KernelDied;
                }
            };
            if let Some(forward) = self.collector.take(event) {
                tokio::select! {
                    sent = self.events.send(forward) => if sent.is_err() { return Stop::Cancelled },
                    _ = tokio::time::sleep_until(deadline) => return Stop::Timeout,
                }
            }
        }
    }

    /// Interrupts the kernel and waits for the execution to end; restarts the kernel when it
    /// does not. Returns whether it restarted.
    async fn interrupt(&mut self, backend: &dyn Backend, ready_within: Duration) -> bool {
        if self.kernel.interrupt(INTERRUPT_GRACE).await.is_ok() {
            let settle = async {
                loop {
                    match self.execution.next().await {
                        Ok(Some(KernelEvent::Done { .. })) | Ok(None) => return true,
                        Ok(Some(_)) => {}
                        Err(_) => return false,
                    }
                }
            };
            if tokio::time::timeout(INTERRUPT_GRACE, settle).await == Ok(true) {
                return false;
            }
        }
        tracing::info!("kernel ignored the interrupt; restarting it");
        if let Err(error) = self.sandbox.restart_kernel(backend, ready_within).await {
            tracing::warn!(%error, "kernel restart failed");
        }
        true
    }

    /// After the kernel died: tell whether memory ran out, and reconnect to the fresh kernel
    /// the container's supervisor started.
    async fn recover_dead_kernel(&self, backend: &dyn Backend, ready_within: Duration) -> bool {
        let out_of_memory = self.sandbox.oom_killed_since_last_check(backend).await;
        if let Err(error) = self.sandbox.connect_kernel(ready_within).await {
            tracing::warn!(%error, "could not reconnect to the restarted kernel");
        }
        out_of_memory
    }
}

fn timeout_error(timeout: Duration, kernel_restarted: bool) -> PythonError {
    let what = if kernel_restarted {
        "the kernel did not respond to the interrupt and was restarted: variables and imports are lost (files are kept)"
    } else {
        "the kernel was interrupted; its state is kept"
    };
    PythonError {
        ename: "TimeoutError".into(),
        evalue: format!(
            "execution exceeded the {} s time limit; {what}",
            timeout.as_secs_f64()
        ),
        traceback: Vec::new(),
    }
}

fn aborted_error() -> PythonError {
    PythonError {
        ename: "Aborted".into(),
        evalue: "the kernel aborted the request without running it; run it again".into(),
        traceback: Vec::new(),
    }
}

fn kernel_died_error(out_of_memory: bool) -> PythonError {
    let evalue = if out_of_memory {
        "kernel died: out of memory. The kernel was restarted: variables and imports are lost (files are kept)"
    } else {
        "kernel died. The kernel was restarted: variables and imports are lost (files are kept)"
    };
    PythonError {
        ename: "KernelDied".into(),
        evalue: evalue.into(),
        traceback: Vec::new(),
    }
}

/// Accumulates an execution's output under the caps and decides what to forward.
struct Collector {
    text_limit: usize,
    rich_limit: usize,
    text_bytes: usize,
    rich_bytes: usize,
    dropped_bytes: usize,
    stdout: String,
    stderr: String,
    outputs: Vec<Output>,
    error: Option<PythonError>,
}

impl Collector {
    fn new(text_limit: usize, rich_limit: usize) -> Self {
        Self {
            text_limit,
            rich_limit,
            text_bytes: 0,
            rich_bytes: 0,
            dropped_bytes: 0,
            stdout: String::new(),
            stderr: String::new(),
            outputs: Vec::new(),
            error: None,
        }
    }

    /// Records an event; returns what to forward (nothing once past the cap).
    fn take(&mut self, event: KernelEvent) -> Option<ExecEvent> {
        match event {
            KernelEvent::Stdout { text } => self.take_text(text, false),
            KernelEvent::Stderr { text } => self.take_text(text, true),
            KernelEvent::Display { data } => self.take_rich(OutputKind::Display, data),
            KernelEvent::Result { data } => self.take_rich(OutputKind::Result, data),
            KernelEvent::Error {
                ename,
                evalue,
                traceback,
            } => {
                let error = PythonError {
                    ename,
                    evalue,
                    traceback: traceback.iter().map(|line| strip_ansi(line)).collect(),
                };
                self.error = Some(error.clone());
                Some(ExecEvent::Error(error))
            }
            KernelEvent::Done { .. } => None,
        }
    }

    fn take_text(&mut self, mut text: String, stderr: bool) -> Option<ExecEvent> {
        let room = self.text_limit.saturating_sub(self.text_bytes);
        if text.len() > room {
            let mut cut = room;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            self.dropped_bytes += text.len() - cut;
            text.truncate(cut);
        }
        if text.is_empty() {
            return None;
        }
        self.text_bytes += text.len();
        if stderr {
            self.stderr.push_str(&text);
            Some(ExecEvent::Stderr { text })
        } else {
            self.stdout.push_str(&text);
            Some(ExecEvent::Stdout { text })
        }
    }

    fn take_rich(&mut self, kind: OutputKind, data: MimeBundle) -> Option<ExecEvent> {
        let size: usize = data
            .values()
            .map(|value| value.as_str().map_or(64, str::len))
            .sum();
        if self.rich_bytes + size > self.rich_limit {
            self.dropped_bytes += size;
            return None;
        }
        self.rich_bytes += size;
        self.outputs.push(Output {
            kind,
            data: data.clone(),
        });
        Some(match kind {
            OutputKind::Display => ExecEvent::Display { data },
            OutputKind::Result => ExecEvent::Result { data },
        })
    }

    fn finish(mut self, mut result: ExecutionResult) -> ExecutionResult {
        if self.dropped_bytes > 0 {
            let marker = format!(
                "\n[kernelbox: output truncated, {} bytes dropped past the per-execution limit]\n",
                self.dropped_bytes
            );
            self.stdout.push_str(&marker);
            result.truncated = true;
        }
        result.stdout = self.stdout;
        result.stderr = self.stderr;
        result.outputs = self.outputs;
        result.error = result.error.or(self.error);
        result
    }
}

/// Removes ANSI escape sequences (IPython colours tracebacks).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // CSI: parameters and intermediates, then one final byte in @..~.
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ansi_colours_are_removed() {
        let coloured = "\u{1b}[0;31mZeroDivisionError\u{1b}[0m: division by zero";
        assert_eq!(strip_ansi(coloured), "ZeroDivisionError: division by zero");
        assert_eq!(strip_ansi("plain"), "plain");
    }

    #[test]
    fn text_past_the_cap_is_dropped_with_a_marker() {
        let mut collector = Collector::new(10, 100);
        assert!(
            collector
                .take(KernelEvent::Stdout {
                    text: "12345678".into()
                })
                .is_some()
        );
        let forwarded = collector.take(KernelEvent::Stdout {
            text: "abcdef".into(),
        });
        assert!(matches!(forwarded, Some(ExecEvent::Stdout { ref text }) if text == "ab"));
        assert!(
            collector
                .take(KernelEvent::Stderr {
                    text: "more".into()
                })
                .is_none()
        );
        let result = collector.finish(empty_result());
        assert!(result.truncated);
        assert!(
            result
                .stdout
                .starts_with("12345678ab\n[kernelbox: output truncated, 8 bytes")
        );
    }

    #[test]
    fn truncation_respects_utf8_boundaries() {
        let mut collector = Collector::new(3, 100);
        collector.take(KernelEvent::Stdout {
            text: "aé€".into()
        });
        let result = collector.finish(empty_result());
        assert!(result.stdout.starts_with("aé\n"));
    }

    fn empty_result() -> ExecutionResult {
        ExecutionResult {
            execution_id: "exe".into(),
            sandbox_id: "sbx".into(),
            outcome: ExecutionOutcome::Completed,
            stdout: String::new(),
            stderr: String::new(),
            outputs: Vec::new(),
            error: None,
            execution_count: None,
            started_at: Utc::now(),
            duration_ms: 0,
            truncated: false,
        }
    }
}
