//! Running code: the engine starts an execution and a task drives it to its end, moving kernel
//! events to the consumer as [`ExecEvent`]s and ending with one [`ExecEvent::Finished`].
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
use tokio::sync::OwnedMutexGuard;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::collector::Collector;
use super::error::EngineError;
use super::execution::{
    ExecEvent, ExecuteRequest, ExecutionOutcome, ExecutionResult, ExecutionStream, MAX_CODE_BYTES,
    PythonError,
};
use super::history::ExecutionRecord;
use super::lifecycle::Engine;
use super::sandbox::{Running, RunningInfo, Sandbox};
use super::tenant::Tenant;
use super::validate;
use crate::backend::Backend;
use crate::kernel::{CloseReason, KernelClient, KernelError, KernelEvent, KernelExecution};

/// How long an interrupted kernel has to finish the execution before it is restarted.
const INTERRUPT_GRACE: Duration = Duration::from_secs(3);
/// Events buffered between the execution and its consumer.
const EVENT_BUFFER: usize = 64;

impl Engine {
    /// Starts running code in a sandbox.
    pub async fn execute(
        self: &Arc<Self>,
        id: &str,
        tenant: &Tenant,
        request: ExecuteRequest,
    ) -> Result<ExecutionStream, EngineError> {
        let sandbox = self.get(id, tenant)?;
        if request.code.len() > MAX_CODE_BYTES {
            return Err(EngineError::TooLarge {
                what: "code",
                limit: MAX_CODE_BYTES as u64,
            });
        }
        let timeout = validate::timeout(
            request.timeout,
            self.config.exec_timeout,
            self.config.max_exec_timeout,
        )?;
        let Some(guard) = sandbox.acquire_exec().await else {
            let running = sandbox.running().map_or_else(
                || "another call holds it".to_string(),
                |running| running.to_string(),
            );
            return Err(EngineError::Busy {
                id: id.to_string(),
                running,
            });
        };
        sandbox.touch();
        let kernel = sandbox.kernel(self.config.kernel_ready_timeout).await?;
        let execution = kernel
            .execute(&request.code)
            .await
            .map_err(EngineError::Kernel)?;
        let execution_id = format!("exe_{}", uuid::Uuid::new_v4().simple());
        let (events, receiver) = mpsc::channel(EVENT_BUFFER);
        let stop = CancellationToken::new();
        sandbox.set_running(Some(Running {
            events: events.downgrade(),
            stop: stop.clone(),
            execution_id: execution_id.clone(),
            code_start: code_start(&request.code),
            started: Instant::now(),
        }));
        let started_at = Utc::now();
        self.history.started(ExecutionRecord {
            execution_id: execution_id.clone(),
            sandbox_id: id.to_string(),
            tenant: sandbox.tenant().clone(),
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
            stop,
        };
        let span = tracing::info_span!("execute", sandbox_id = %id, execution_id = %execution_id);
        self.tasks.spawn(run.drive(guard).instrument(span));
        Ok(ExecutionStream {
            execution_id,
            events: receiver,
        })
    }

    /// Starts running code and returns at once, with the execution as the log records it
    /// (running). The engine drives it to its end whatever the caller does; its result is then
    /// in [`Engine::execution`], and [`Engine::cancel_execution`] stops it.
    pub async fn execute_detached(
        self: &Arc<Self>,
        id: &str,
        tenant: &Tenant,
        request: ExecuteRequest,
    ) -> Result<ExecutionRecord, EngineError> {
        let stream = self.execute(id, tenant, request).await?;
        let record = self.execution(&stream.execution_id, tenant)?;
        let span =
            tracing::info_span!("detached", sandbox_id = %id, execution_id = %record.execution_id);
        self.tasks.spawn(
            async move {
                // The result goes to the execution log; the events themselves have no reader.
                if let Err(error) = stream.finish().await {
                    tracing::debug!(%error, "detached execution ended without a result");
                }
            }
            .instrument(span),
        );
        Ok(record)
    }

    /// Stops an execution by id, keeping the kernel's state as [`Engine::interrupt`] does, and
    /// returns it once it has ended. An execution that already ended is returned as it is.
    pub async fn cancel_execution(
        &self,
        execution_id: &str,
        tenant: &Tenant,
    ) -> Result<ExecutionRecord, EngineError> {
        let record = self.execution(execution_id, tenant)?;
        if record.result.is_some() {
            return Ok(record);
        }
        if let Ok(sandbox) = self.use_sandbox(&record.sandbox_id, tenant) {
            sandbox.interrupt_execution(execution_id);
        }
        // A sandbox that is gone cancels its execution itself; either way it ends soon.
        let ended =
            tokio::time::timeout(self.stop_within(), self.history.wait_finished(execution_id))
                .await;
        match ended {
            Ok(Some(record)) => Ok(record),
            Ok(None) => Err(EngineError::ExecutionNotFound {
                id: execution_id.to_string(),
            }),
            Err(_) => Err(EngineError::Busy {
                id: record.sandbox_id,
                running: format!(
                    "execution {execution_id}, which did not stop after the interrupt"
                ),
            }),
        }
    }

    /// How long a stopped execution may take to end: the wait for its start, the interrupt's
    /// reply and the wait for the end, each within the grace, then perhaps a kernel restart.
    fn stop_within(&self) -> Duration {
        INTERRUPT_GRACE * 3 + self.config.kernel_ready_timeout
    }

    /// Stops the execution running in a sandbox, keeping the kernel's state: the kernel is
    /// interrupted (and restarted only if it ignores that, as on a timeout). Returns what was
    /// running, once it has stopped, or `None` when nothing ran.
    pub async fn interrupt(
        &self,
        id: &str,
        tenant: &Tenant,
    ) -> Result<Option<RunningInfo>, EngineError> {
        let sandbox = self.use_sandbox(id, tenant)?;
        let Some(running) = sandbox.interrupt_running() else {
            return Ok(None);
        };
        // The execution's task interrupts the kernel and ends; its lock is free then.
        let stopped =
            tokio::time::timeout(self.stop_within(), sandbox.exec_lock.clone().lock_owned()).await;
        if stopped.is_err() {
            return Err(EngineError::Busy {
                id: id.to_string(),
                running: format!("{running}, which did not stop after the interrupt"),
            });
        }
        Ok(Some(running))
    }

    /// Restarts a sandbox's kernel: variables are lost, files stay. A restart is the way out of
    /// a stuck execution, so a running execution is not waited for: the kernel is killed, and
    /// that execution ends with "kernel died".
    pub async fn restart_kernel(&self, id: &str, tenant: &Tenant) -> Result<(), EngineError> {
        let sandbox = self.use_sandbox(id, tenant)?;
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
    /// [`Engine::interrupt`] asked it to stop.
    Interrupted,
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
    /// Cancelled by [`Engine::interrupt`].
    stop: CancellationToken,
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
            Stop::Interrupted => {
                let kernel_restarted = self.interrupt(backend.as_ref(), ready_within).await;
                self.collector.error = Some(interrupted_error(kernel_restarted));
                ExecutionOutcome::Cancelled { kernel_restarted }
            }
            Stop::KernelDied => match self.kernel.close_reason() {
                Some(CloseReason::Violation { channel, error }) => {
                    let violation = KernelError::Violation {
                        channel,
                        source: error,
                    };
                    self.collector.error = Some(violation_error(&violation));
                    if let Err(error) = self.sandbox.kernel(ready_within).await {
                        tracing::warn!(%error, "could not restart the sandbox after a violation");
                    }
                    ExecutionOutcome::KernelDied {
                        out_of_memory: false,
                    }
                }
                _ => {
                    let out_of_memory = self
                        .recover_dead_kernel(backend.as_ref(), ready_within)
                        .await;
                    self.collector.error = Some(kernel_died_error(out_of_memory));
                    ExecutionOutcome::KernelDied { out_of_memory }
                }
            },
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
                _ = self.stop.cancelled() => return Stop::Interrupted,
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
        // ipykernel ignores SIGINT between requests: a stop that comes right after the request
        // can reach the kernel before it starts the code, and is lost. So the interrupt waits
        // for the start; past the grace it is sent anyway (a silent execution announces none).
        let start =
            tokio::time::timeout(INTERRUPT_GRACE, self.execution.discard_until_started()).await;
        let connected = !matches!(start, Ok(Err(_)));
        if connected && self.kernel.interrupt(INTERRUPT_GRACE).await.is_ok() {
            let settled =
                tokio::time::timeout(INTERRUPT_GRACE, self.execution.discard_until_idle()).await;
            if matches!(settled, Ok(Ok(()))) {
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
        if let Err(error) = self.sandbox.kernel(ready_within).await {
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

fn interrupted_error(kernel_restarted: bool) -> PythonError {
    let what = if kernel_restarted {
        "the kernel did not respond and was restarted: variables and imports are lost (files are kept)"
    } else {
        "its state is kept"
    };
    PythonError {
        ename: "KeyboardInterrupt".into(),
        evalue: format!("the execution was stopped by an interrupt request; {what}"),
        traceback: Vec::new(),
    }
}

/// The first line of `code`, at most 60 characters, for messages about what runs.
fn code_start(code: &str) -> String {
    let line = code
        .lines()
        .find(|line| !line.trim().is_empty())
        .unwrap_or("");
    let mut start: String = line.trim().chars().take(60).collect();
    if start.len() < line.trim().len() || code.trim().lines().nth(1).is_some() {
        start.push_str(" …");
    }
    start
}

fn aborted_error() -> PythonError {
    PythonError {
        ename: "Aborted".into(),
        evalue: "the kernel aborted the request without running it; run it again".into(),
        traceback: Vec::new(),
    }
}

fn violation_error(violation: &KernelError) -> PythonError {
    PythonError {
        ename: "KernelProtocolError".into(),
        evalue: format!(
            "{violation}. The server closed the connection and restarted the sandbox's processes: variables and imports are lost (files are kept)"
        ),
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
