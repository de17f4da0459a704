//! Proxy sessions to guest servers: each session is a long-lived process of a registered server,
//! started by the client's `initialize` and ended by `DELETE`, by idling past `max_idle`, or by
//! its own death (a watcher waits for the output stream to end). A session of a process that
//! died is gone: its id is "not found", and a new `initialize` starts afresh.

use std::sync::Arc;

use rand::RngCore;
use tokio_util::sync::CancellationToken;

use super::error::{EngineError, GuestServerError};
use super::guest_registry::{GuestProcess, SessionEntry};
use super::lifecycle::Engine;
use super::tenant::Tenant;
use crate::backend::Backend;

/// Live proxy sessions per sandbox at most (each is a process inside the sandbox).
pub const MAX_SESSIONS_PER_SANDBOX: usize = 32;

/// A new proxy session: its id and the process serving it.
#[derive(Debug, Clone)]
pub struct ProxySession {
    pub session_id: String,
    pub process: Arc<GuestProcess>,
}

/// A random session id: 128 bits, hex, visible ASCII as the Streamable HTTP spec asks.
fn new_session_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    format!("mcp_{}", hex::encode(bytes))
}

impl Engine {
    /// Starts a process for a new proxy session of a registered server. The client's own
    /// `initialize` goes to it next.
    pub async fn open_proxy_session(
        &self,
        sandbox_id: &str,
        tenant: &Tenant,
        server: &str,
    ) -> Result<ProxySession, EngineError> {
        self.on_live(sandbox_id, tenant, async |sandbox| {
            let registration = self.guests.registration(sandbox_id, server)?;
            let live = self
                .guests
                .sessions
                .iter()
                .filter(|entry| entry.value().sandbox_id == sandbox_id)
                .count();
            if live >= MAX_SESSIONS_PER_SANDBOX {
                return Err(GuestServerError::TooMany {
                    sandbox_id: sandbox_id.to_string(),
                    what: "MCP proxy sessions",
                    limit: MAX_SESSIONS_PER_SANDBOX,
                }
                .into());
            }
            let process = Arc::new(
                GuestProcess::start(
                    &self.backend,
                    sandbox.container_id(),
                    sandbox_id,
                    server,
                    &registration.launch,
                )
                .await?,
            );
            let session_id = new_session_id();
            let watcher = CancellationToken::new();
            self.spawn_session_watcher(session_id.clone(), process.clone(), watcher.clone());
            self.guests.sessions.insert(
                session_id.clone(),
                SessionEntry {
                    sandbox_id: sandbox_id.to_string(),
                    server: server.to_string(),
                    process: process.clone(),
                    _watcher: watcher.drop_guard(),
                },
            );
            tracing::info!(sandbox_id = %sandbox_id, server = %server, session_id = %session_id, pid = process.pid(), "guest proxy session opened");
            Ok(ProxySession {
                session_id,
                process,
            })
        })
        .await
    }

    /// The process of a live proxy session of this sandbox and server. A session whose process
    /// exited is not found.
    pub fn proxy_session(
        &self,
        sandbox_id: &str,
        tenant: &Tenant,
        server: &str,
        session_id: &str,
    ) -> Result<Arc<GuestProcess>, EngineError> {
        let sandbox = self.get(sandbox_id, tenant)?;
        let not_found = || GuestServerError::SessionNotFound {
            session_id: session_id.to_string(),
        };
        let session = self.guests.sessions.get(session_id).ok_or_else(not_found)?;
        if session.sandbox_id != sandbox_id
            || session.server != server
            || session.process.peer().has_exited()
        {
            return Err(not_found().into());
        }
        sandbox.touch();
        Ok(session.process.clone())
    }

    /// Ends a proxy session and its process.
    pub async fn close_proxy_session(
        &self,
        sandbox_id: &str,
        tenant: &Tenant,
        server: &str,
        session_id: &str,
    ) -> Result<(), EngineError> {
        let process = self.proxy_session(sandbox_id, tenant, server, session_id)?;
        self.guests.sessions.remove(session_id);
        process.close(self.backend()).await;
        tracing::info!(sandbox_id = %sandbox_id, server = %server, session_id = %session_id, "guest proxy session closed");
        Ok(())
    }

    /// Watches a session: removes it when its process exits, and ends it once it has been idle
    /// (nothing in flight) for `max_idle`.
    fn spawn_session_watcher(
        &self,
        session_id: String,
        process: Arc<GuestProcess>,
        stop: CancellationToken,
    ) {
        let sessions = Arc::downgrade(&self.guests.sessions);
        let backend: Arc<dyn Backend> = self.backend.clone();
        let max_idle = self.config.max_idle;
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            loop {
                let deadline = tokio::time::Instant::from_std(process.peer().last_used() + max_idle);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = shutdown.cancelled() => return,
                    () = process.peer().exited() => {
                        tracing::info!(session_id = %session_id, "guest server process exited; session ended");
                        break;
                    }
                    () = tokio::time::sleep_until(deadline) => {
                        if process.peer().in_flight() == 0 && process.peer().idle_for() >= max_idle {
                            tracing::info!(session_id = %session_id, idle_secs = max_idle.as_secs(), "guest proxy session idle; ending it");
                            // Out of the table first: from now on the session is not found.
                            if let Some(sessions) = sessions.upgrade() {
                                sessions.remove(&session_id);
                            }
                            process.close(backend.as_ref()).await;
                            return;
                        }
                        if process.peer().in_flight() > 0 {
                            // Busy: look again after another idle period.
                            tokio::select! {
                                () = stop.cancelled() => return,
                                () = shutdown.cancelled() => return,
                                () = process.peer().exited() => break,
                                () = tokio::time::sleep(max_idle) => {}
                            }
                        }
                    }
                }
            }
            if let Some(sessions) = sessions.upgrade() {
                sessions.remove(&session_id);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_random_visible_ascii() {
        let id = new_session_id();
        assert!(id.starts_with("mcp_") && id.len() == 36);
        assert!(id.chars().all(|c| c.is_ascii_graphic()));
        assert_ne!(id, new_session_id());
    }
}
