//! Setting a sandbox's lifetime, and the expiry timer that destroys a sandbox when its lifetime
//! ends.
//!
//! A lifetime is absolute: it ends at `expires_at` however busy or idle the sandbox is (the idle
//! reaper is separate and still applies). The one given at creation is in the container's labels;
//! a change is kept in the sandbox's record, in its network sidecar
//! ([`crate::backend::Backend::put_record`]), where the sandbox's code cannot write: after a
//! restart the record, when there is one, wins over the labels.
//!
//! The timer is one task: it sleeps until the earliest expiry of any sandbox and is woken early
//! when a lifetime is set. It starts with the first sandbox that has a lifetime.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::sync::Notify;

use super::error::EngineError;
use super::lifecycle::Engine;
use super::lifetimes::{LIFETIME_RECORD, Lifetime, parse_record, timeout};
use super::sandbox::{Sandbox, SandboxInfo};
use super::tenant::Tenant;

/// Expired sandboxes destroyed at the same time.
const PARALLEL_EXPIRIES: usize = 8;
/// The longest the timer sleeps at once: it looks again then (a far deadline never overflows
/// the runtime's clock).
const LONGEST_SLEEP: Duration = Duration::from_secs(86_400);

impl Engine {
    /// Sets a sandbox's lifetime to `timeout_secs` from now (shorter or longer than before) and
    /// returns its information. The change is stored before it takes effect, so a restarted
    /// server keeps it.
    pub async fn set_timeout(
        self: &Arc<Self>,
        id: &str,
        tenant: &Tenant,
        timeout_secs: u64,
    ) -> Result<SandboxInfo, EngineError> {
        let timeout = timeout(timeout_secs, self.config.max_sandbox_timeout)?;
        let sandbox = self.use_sandbox(id, tenant)?;
        let _changing = sandbox.lifetime_change().lock().await;
        let lifetime = Lifetime::from_now(timeout);
        let record = serde_json::to_vec(&lifetime).unwrap_or_default();
        if let Err(error) = self
            .backend
            .put_record(sandbox.container_id(), LIFETIME_RECORD, &record)
            .await
        {
            // Destroyed meanwhile (expired, or deleted): say so, not that storing failed.
            self.get(id, tenant)?;
            return Err(error.into());
        }
        sandbox.set_lifetime(Some(lifetime));
        tracing::info!(sandbox_id = %id, timeout_secs, expires_at = %lifetime.expires_at, "sandbox lifetime set");
        self.arm_expiry();
        Ok(sandbox.info())
    }

    /// The lifetime a reattached sandbox's record keeps, if it has one that parses.
    pub(super) async fn recorded_lifetime(&self, container_id: &str) -> Option<Lifetime> {
        match self.backend.record(container_id, LIFETIME_RECORD).await {
            Ok(Some(record)) => {
                let lifetime = parse_record(&record);
                if lifetime.is_none() {
                    tracing::warn!(
                        container = %container_id,
                        "the sandbox's lifetime record does not parse; keeping the lifetime of its labels"
                    );
                }
                lifetime
            }
            Ok(None) => None,
            Err(error) => {
                tracing::warn!(container = %container_id, %error, "cannot read the sandbox's lifetime record; keeping the lifetime of its labels");
                None
            }
        }
    }

    /// Starts the expiry timer if it does not run yet, and wakes it to look at the lifetimes
    /// again. Call it whenever a sandbox with a lifetime appears or a lifetime changes.
    pub(super) fn arm_expiry(self: &Arc<Self>) {
        if !self.expiry.started.swap(true, Ordering::SeqCst) {
            if tokio::runtime::Handle::try_current().is_err() {
                self.expiry.started.store(false, Ordering::SeqCst);
                tracing::warn!("no runtime to run the expiry timer on");
                return;
            }
            let engine = Arc::downgrade(self);
            let rearm = self.expiry.rearm.clone();
            let shutdown = self.shutdown.clone();
            self.tasks
                .spawn(async move { run_expiry(engine, rearm, shutdown).await });
        }
        self.expiry.rearm.notify_one();
    }

    /// The earliest end of any sandbox's lifetime.
    fn next_expiry(&self) -> Option<DateTime<Utc>> {
        self.all_sandboxes()
            .iter()
            .filter_map(|sandbox| sandbox.lifetime())
            .map(|lifetime| lifetime.expires_at)
            .min()
    }

    /// Destroys every sandbox whose lifetime has ended, the way `DELETE` does. Each is checked
    /// again under its lifetime lock: one extended at that moment stays, and a change that
    /// waited for the lock finds the sandbox gone.
    async fn expire_due(&self) {
        let now = Utc::now();
        let due: Vec<Arc<Sandbox>> = self
            .all_sandboxes()
            .into_iter()
            .filter(|sandbox| sandbox.lifetime().is_some_and(|l| l.expired(now)))
            .collect();
        futures::stream::iter(due)
            .for_each_concurrent(PARALLEL_EXPIRIES, |sandbox| async move {
                let _changing = sandbox.lifetime_change().lock().await;
                if !sandbox
                    .lifetime()
                    .is_some_and(|l| l.expired(Utc::now()))
                {
                    return;
                }
                let id = sandbox.id();
                match self.remove(id).await {
                    Ok(()) => tracing::info!(sandbox_id = %id, "sandbox lifetime ended; destroyed"),
                    // Destroyed by a caller meanwhile.
                    Err(EngineError::NotFound { .. }) => {}
                    Err(error) => {
                        tracing::warn!(sandbox_id = %id, %error, "could not destroy an expired sandbox")
                    }
                }
            })
            .await;
    }
}

/// The expiry timer: sleeps until the earliest expiry (or until woken by a change), destroys
/// what has expired, and starts over, until shutdown. It holds the engine only while it works,
/// so an engine nobody uses any more can go.
async fn run_expiry(
    engine: std::sync::Weak<Engine>,
    rearm: Arc<Notify>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        let next = {
            let Some(engine) = engine.upgrade() else {
                return;
            };
            engine.expire_due().await;
            engine.next_expiry()
        };
        // Wall-clock time left, as a deadline on the runtime's clock.
        let wake_at = next.map(|at| {
            let left = (at - Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO)
                .min(LONGEST_SLEEP);
            tokio::time::Instant::now() + left
        });
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = rearm.notified() => {}
            () = sleep_until(wake_at) => {}
        }
    }
}

/// Sleeps until `deadline`; forever without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
