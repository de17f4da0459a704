//! The state guest servers and their proxy sessions share: one process as the engine starts and
//! stops it ([`GuestProcess`]), the registrations with their helper processes, and the session
//! table. What is done with them is in `guest_servers` and `guest_sessions`.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use serde_json::Value;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::error::{EngineError, GuestServerError};
use crate::backend::{Backend, BackendError, ExecSpec};
use crate::guest::GuestPeer;

/// How long a server may take to exit after its stdin closed, before it is killed.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// The same at shutdown, where the whole stop has a deadline.
const SHUTDOWN_CLOSE_GRACE: Duration = Duration::from_secs(1);
/// How long the runtime may take to deliver a kill.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// What a guest process is started with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Launch {
    pub(crate) command: String,
    pub(crate) args: Vec<String>,
    /// `KEY=value` pairs.
    pub(crate) env: Vec<String>,
    pub(crate) workdir: String,
}

/// One guest server process: the protocol peer, and what the engine needs to stop it.
#[derive(Debug)]
pub struct GuestProcess {
    peer: GuestPeer,
    container_id: String,
    sandbox_id: String,
    server: String,
    /// The process's pid inside the sandbox; it leads its own process group.
    pid: u32,
    /// Stops the task that kills the process once it prints a line past the limit (it may well
    /// still run, and nobody reads it any more). A kill already due still happens.
    _overflow_watch: DropGuard,
}

impl GuestProcess {
    /// Starts `launch` in the container as the sandbox user. Returns once the process runs (not
    /// once the server answers: the first request tells that).
    pub(crate) async fn start(
        backend: &Arc<dyn Backend>,
        container_id: &str,
        sandbox_id: &str,
        server: &str,
        launch: &Launch,
    ) -> Result<Self, GuestServerError> {
        let mut argv = vec![launch.command.clone()];
        argv.extend(launch.args.iter().cloned());
        let spec = ExecSpec {
            argv,
            workdir: launch.workdir.clone(),
            env: launch.env.clone(),
            user: None,
            output_limit: 0,
        };
        let attached =
            backend
                .exec_attached(container_id, spec)
                .await
                .map_err(|error| match error {
                    BackendError::ProcessDidNotStart { stderr } => GuestServerError::Exited {
                        server: server.to_string(),
                        stderr,
                    },
                    other => GuestServerError::Backend(other),
                })?;
        let pid = attached.pid;
        tracing::info!(sandbox_id = %sandbox_id, server = %server, pid, "guest server process started");
        let peer = GuestPeer::new(attached.stdin, attached.output, sandbox_id, server);
        let ended = peer.ended();
        let (killer, container, sandbox) = (
            backend.clone(),
            container_id.to_string(),
            sandbox_id.to_string(),
        );
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            // Biased: a process dropped right after it overflowed is still killed.
            let overflowed = tokio::select! {
                biased;
                overflowed = ended => overflowed,
                () = stopped.cancelled() => false,
            };
            if overflowed {
                tracing::warn!(sandbox_id = %sandbox, pid, "guest server printed a line past the limit; killing it");
                if let Err(error) = killer.kill_process_group(&container, pid).await {
                    tracing::warn!(sandbox_id = %sandbox, %error, "could not kill the guest server process");
                }
            }
        });
        Ok(Self {
            peer,
            container_id: container_id.to_string(),
            sandbox_id: sandbox_id.to_string(),
            server: server.to_string(),
            pid,
            _overflow_watch: stop.drop_guard(),
        })
    }

    /// The protocol peer: requests, notifications, responses.
    pub fn peer(&self) -> &GuestPeer {
        &self.peer
    }

    /// The name the guest server is registered under.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The process's pid inside the sandbox.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Ends the process: closes its stdin, gives it a moment to exit, then kills its process
    /// group. Returns once its output stream ended (or the kill was sent and did not help).
    pub(crate) async fn close(&self, backend: &dyn Backend) {
        self.close_within(backend, CLOSE_GRACE).await
    }

    /// [`GuestProcess::close`] with `grace` for each step. A write stuck on a process that stopped
    /// reading holds its stdin: then the process is killed without waiting.
    pub(crate) async fn close_within(&self, backend: &dyn Backend, grace: Duration) {
        if self.peer.has_exited() {
            return;
        }
        let closed = tokio::time::timeout(grace, self.peer.close_stdin()).await;
        if closed.is_ok()
            && tokio::time::timeout(grace, self.peer.exited())
                .await
                .is_ok()
        {
            return;
        }
        if closed.is_err() {
            tracing::info!(sandbox_id = %self.sandbox_id, server = %self.server, pid = self.pid, "guest server's stdin is blocked; killing it");
        }
        match tokio::time::timeout(
            KILL_TIMEOUT,
            backend.kill_process_group(&self.container_id, self.pid),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::debug!(sandbox_id = %self.sandbox_id, %error, "could not kill the guest server process")
            }
            Err(_) => {
                tracing::warn!(sandbox_id = %self.sandbox_id, pid = self.pid, "killing the guest server process timed out")
            }
        }
        if tokio::time::timeout(grace, self.peer.exited())
            .await
            .is_err()
        {
            tracing::warn!(sandbox_id = %self.sandbox_id, server = %self.server, pid = self.pid, "guest server process did not exit after SIGKILL");
        }
    }
}

/// A registration and its helper process.
pub(crate) struct Registration {
    pub(crate) launch: Launch,
    pub(crate) helper: tokio::sync::Mutex<Option<Helper>>,
}

/// The process that serves a registration's plain tool routes, and its `initialize` result.
#[derive(Clone)]
pub(crate) struct Helper {
    pub(crate) process: Arc<GuestProcess>,
    pub(crate) initialize: Value,
}

/// A proxy session in the table. Dropping it stops its watcher.
pub(crate) struct SessionEntry {
    pub(crate) sandbox_id: String,
    pub(crate) server: String,
    pub(crate) process: Arc<GuestProcess>,
    pub(crate) _watcher: DropGuard,
}

/// Registrations and sessions of every sandbox.
#[derive(Default)]
pub(crate) struct GuestRegistry {
    /// Keyed by (sandbox id, server name).
    pub(crate) registrations: DashMap<(String, String), Arc<Registration>>,
    pub(crate) sessions: Arc<DashMap<String, SessionEntry>>,
}

impl GuestRegistry {
    /// A registered server of a sandbox.
    pub(crate) fn registration(
        &self,
        sandbox_id: &str,
        server: &str,
    ) -> Result<Arc<Registration>, EngineError> {
        self.registrations
            .get(&(sandbox_id.to_string(), server.to_string()))
            .map(|entry| entry.value().clone())
            .ok_or_else(|| {
                GuestServerError::ServerNotFound {
                    sandbox_id: sandbox_id.to_string(),
                    server: server.to_string(),
                }
                .into()
            })
    }

    /// Forgets a destroyed sandbox's servers and sessions (their processes died with it).
    pub(crate) fn forget_sandbox(&self, sandbox_id: &str) {
        self.registrations
            .retain(|(sandbox, _), _| sandbox != sandbox_id);
        self.sessions
            .retain(|_, session| session.sandbox_id != sandbox_id);
    }

    /// Ends every guest process (at shutdown): proxy sessions and helpers.
    pub(crate) async fn close_all(&self, backend: &dyn Backend) {
        let mut processes: Vec<Arc<GuestProcess>> = self
            .sessions
            .iter()
            .map(|entry| entry.value().process.clone())
            .collect();
        let registrations: Vec<Arc<Registration>> = self
            .registrations
            .iter()
            .map(|entry| entry.value().clone())
            .collect();
        for registration in registrations {
            if let Some(helper) = registration.helper.lock().await.as_ref() {
                processes.push(helper.process.clone());
            }
        }
        futures::future::join_all(
            processes
                .iter()
                .map(|process| process.close_within(backend, SHUTDOWN_CLOSE_GRACE)),
        )
        .await;
        self.sessions.clear();
        self.registrations.clear();
    }
}
