//! What an execution is: the request, the events it streams ([`ExecEvent`]), and the
//! [`ExecutionResult`] it ends with, including how it ended ([`ExecutionOutcome`]).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::mpsc;

use super::error::EngineError;
use crate::kernel::MimeBundle;

/// The largest code string one execution accepts.
pub const MAX_CODE_BYTES: usize = 2 * 1024 * 1024;

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
    pub(super) events: mpsc::Receiver<ExecEvent>,
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
