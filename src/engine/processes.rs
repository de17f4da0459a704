//! Background processes: a shell command started in a sandbox and left running (a web server, a
//! long job), addressed later by its pid or tag, with its output kept in a bounded replay buffer
//! ([`super::process_table`]) so a late or reconnecting reader sees what it missed.
//!
//! Each process is `bash -c command` run as the sandbox user through the backend's attached exec:
//! it leads its own process group, and signals go to that group from inside the sandbox with the
//! sandbox user's rights ([`crate::backend::Backend::signal_process_group`]). Host pids are never
//! used. A sandbox holds at most [`MAX_RUNNING`] running processes; the table of a sandbox goes
//! with it. The table lives in the server's memory: after a server restart, processes are not
//! reattached.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::error::{EngineError, ProcessError};
use super::lifecycle::Engine;
use super::paths::workspace_path;
use super::process_table::{
    CD_WRAPPER, Log, Process, SIGNAL_TIMEOUT, STDIN_TIMEOUT, SandboxProcesses, forget_oldest_ended,
    lock, room_error, validate_tag,
};
pub use super::process_table::{
    ExitStatus, MAX_READ_WAIT, MAX_RUNNING, OutputStream, OutputTail, ProcessEvents, ProcessInfo,
    ProcessMessage, ProcessState, SIGNALS, StartProcess, parse_signal,
};
use super::tenant::Tenant;
use super::validate;
use crate::backend::{BackendError, ExecChunk, ExecSpec};

impl Engine {
    /// Starts `bash -c command` in the background as the sandbox user; returns once it runs.
    pub async fn start_process(
        &self,
        id: &str,
        tenant: &Tenant,
        request: StartProcess,
    ) -> Result<ProcessInfo, EngineError> {
        self.on_live(id, tenant, async |sandbox| {
            validate::command(&request.command)?;
            let cwd = workspace_path(request.cwd.as_deref().unwrap_or(""))?;
            let env = validate::env(&request.env)?;
            if let Some(tag) = &request.tag {
                validate_tag(tag)?;
            }
            let processes = self.processes.of(id, &self.shutdown);
            // Claim the slot (and the tag) before starting, so concurrent starts cannot pass
            // the limit; the claim is a placeholder-free check under the lock, repeated after
            // the start.
            self.check_room(id, &processes, request.tag.as_deref())?;
            let spec = ExecSpec {
                argv: ["bash", "-c", CD_WRAPPER, "bash", &cwd, &request.command]
                    .map(String::from)
                    .to_vec(),
                workdir: super::paths::WORKSPACE.to_string(),
                env,
                user: None,
                output_limit: 0,
            };
            let attached = self
                .backend
                .exec_attached(sandbox.container_id(), spec)
                .await?;
            let (changed, _) = tokio::sync::watch::channel(0);
            let process = Arc::new(Process {
                pid: processes
                    .next_pid
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                os_pid: attached.pid,
                tag: request.tag.clone(),
                command: request.command,
                cwd,
                started_at: Utc::now(),
                container_id: sandbox.container_id().to_string(),
                log: Mutex::new(Log {
                    chunks: VecDeque::new(),
                    first_seq: 0,
                    next_seq: 0,
                    kept_bytes: 0,
                    capacity: self.config.output_limit_bytes.max(1),
                    output_bytes: 0,
                    exit: None,
                }),
                changed,
                stdin: tokio::sync::Mutex::new(Some(attached.stdin)),
                stdin_open: std::sync::atomic::AtomicBool::new(true),
            });
            let admitted = {
                let mut list = lock(&processes.list);
                let room = room_error(id, &list, request.tag.as_deref());
                if room.is_none() {
                    list.push(process.clone());
                    forget_oldest_ended(&mut list);
                }
                room
            };
            let gone = processes.gone.clone();
            if let Some(error) = admitted {
                // Lost a race for the last slot or the tag: stop what was started.
                let _ = tokio::time::timeout(
                    SIGNAL_TIMEOUT,
                    self.backend
                        .kill_process_group(&process.container_id, process.os_pid),
                )
                .await;
                return Err(error);
            }
            tracing::info!(sandbox_id = %id, pid = process.pid, os_pid = process.os_pid, "background process started");
            let reader = process.clone();
            let mut output = attached.output;
            let exit = attached.exit;
            self.tasks.spawn(async move {
                loop {
                    let chunk = tokio::select! {
                        chunk = output.next() => chunk,
                        () = gone.cancelled() => {
                            reader.finish(ExitStatus::from_code(None));
                            return;
                        }
                    };
                    match chunk {
                        Some(Ok(ExecChunk::Stdout(data))) => reader.record(OutputStream::Stdout, data),
                        Some(Ok(ExecChunk::Stderr(data))) => reader.record(OutputStream::Stderr, data),
                        Some(Err(_)) | None => break,
                    }
                }
                drop(output);
                let code = tokio::select! {
                    code = exit => code.ok().filter(|code| *code >= 0),
                    () = gone.cancelled() => None,
                };
                reader.finish(ExitStatus::from_code(code));
            });
            Ok(process.info())
        })
        .await
    }

    fn check_room(
        &self,
        id: &str,
        processes: &SandboxProcesses,
        tag: Option<&str>,
    ) -> Result<(), EngineError> {
        match room_error(id, &lock(&processes.list), tag) {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// A sandbox's processes, running and recently ended, oldest first.
    pub fn list_processes(
        &self,
        id: &str,
        tenant: &Tenant,
    ) -> Result<Vec<ProcessInfo>, EngineError> {
        self.get(id, tenant)?;
        Ok(self
            .processes
            .sandboxes
            .get(id)
            .map(|processes| lock(&processes.list).iter().map(|p| p.info()).collect())
            .unwrap_or_default())
    }

    /// One process, by pid (digits) or tag.
    pub fn process(
        &self,
        id: &str,
        tenant: &Tenant,
        key: &str,
    ) -> Result<Arc<Process>, EngineError> {
        self.get(id, tenant)?;
        self.processes.find(id, key)
    }

    /// Sends a signal (default `TERM`) to a running process's group.
    pub async fn kill_process(
        &self,
        id: &str,
        tenant: &Tenant,
        key: &str,
        signal: Option<&str>,
    ) -> Result<ProcessInfo, EngineError> {
        let signal = parse_signal(signal)?;
        self.on_live(id, tenant, async |sandbox| {
            let process = self.processes.find(id, key)?;
            if !process.running() {
                return Err(ProcessError::Ended { pid: process.pid }.into());
            }
            tokio::time::timeout(
                SIGNAL_TIMEOUT,
                self.backend
                    .signal_process_group(sandbox.container_id(), process.os_pid, signal),
            )
            .await
            .map_err(|_| {
                EngineError::Backend(BackendError::Timeout {
                    operation: "signal",
                    waited: SIGNAL_TIMEOUT,
                })
            })??;
            tracing::info!(sandbox_id = %id, pid = process.pid, signal, "signal sent to background process");
            Ok(process.info())
        })
        .await
    }

    /// Writes `data` to a running process's stdin, then closes it when `close` says so.
    pub async fn write_process_stdin(
        &self,
        id: &str,
        tenant: &Tenant,
        key: &str,
        data: &[u8],
        close: bool,
    ) -> Result<ProcessInfo, EngineError> {
        self.use_sandbox(id, tenant)?;
        let process = self.processes.find(id, key)?;
        let pid = process.pid;
        let mut stdin = process.stdin.lock().await;
        let Some(writer) = stdin.as_mut() else {
            return Err(ProcessError::StdinClosed { pid }.into());
        };
        if !process.running() {
            return Err(ProcessError::Ended { pid }.into());
        }
        let written = tokio::time::timeout(STDIN_TIMEOUT, async {
            writer.write_all(data).await?;
            writer.flush().await?;
            if close {
                writer.shutdown().await?;
            }
            Ok::<_, std::io::Error>(())
        })
        .await
        .map_err(|_| ProcessError::StdinBlocked {
            pid,
            waited: STDIN_TIMEOUT,
        })?;
        if close || written.is_err() {
            *stdin = None;
            process
                .stdin_open
                .store(false, std::sync::atomic::Ordering::Relaxed);
        }
        drop(stdin);
        // A process that exited while we wrote: its pipe is gone.
        written.map_err(|_| ProcessError::Ended { pid })?;
        Ok(process.info())
    }

    /// The last `tail_bytes` of each of a process's streams after cursor `since` (default: all
    /// that is kept). With `wait`, first waits up to that long (at most [`MAX_READ_WAIT`]) for
    /// output past `since` or for the exit.
    pub async fn read_process_output(
        &self,
        id: &str,
        tenant: &Tenant,
        key: &str,
        since: Option<u64>,
        tail_bytes: usize,
        wait: Option<Duration>,
    ) -> Result<(ProcessInfo, OutputTail), EngineError> {
        if let Some(wait) = wait
            && wait > MAX_READ_WAIT
        {
            return Err(EngineError::InvalidInput {
                field: "wait",
                reason: format!("at most {} s", MAX_READ_WAIT.as_secs()),
            });
        }
        self.use_sandbox(id, tenant)?;
        let process = self.processes.find(id, key)?;
        let since = since.unwrap_or(0);
        if let Some(wait) = wait {
            let mut receiver = process.changed.subscribe();
            let _ = tokio::time::timeout(wait, async {
                loop {
                    receiver.mark_unchanged();
                    let ready = {
                        let log = process.log();
                        log.exit.is_some() || log.next_seq > since
                    };
                    if ready || receiver.changed().await.is_err() {
                        return;
                    }
                }
            })
            .await;
        }
        Ok((process.info(), process.tail(since, tail_bytes)))
    }
}
