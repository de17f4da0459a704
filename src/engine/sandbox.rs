//! One sandbox: its container, its kernel connection and the lock that lets one execution run
//! at a time.
//!
//! The kernel is reached through the backend alone (a [`Dialer`] over the runtime's API). What
//! comes back is untrusted: a kernel that breaks the protocol's bounds loses its connection, and
//! the sandbox's processes are restarted. One that keeps doing so is left stopped: each restart
//! costs the server work, so a sandbox gets [`VIOLATION_BUDGET`] of them per
//! [`VIOLATION_WINDOW`], and after that only a caller's own restart brings it back.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::error::EngineError;
use super::execution::ExecEvent;
use super::firewall::Firewall;
use super::labels;
use super::lifetimes::{Lifetime, Metadata};
use super::tenant::Tenant;
use crate::backend::{Backend, ContainerInfo};
use crate::kernel::{
    ChannelStream, CloseReason, DialError, Dialer, KernelChannel, KernelClient, KernelCounters,
    KernelError, Limits,
};

/// How long a request waits for a busy sandbox before it is told "busy".
const BUSY_GRACE: Duration = Duration::from_millis(500);
/// How long a new request waits for an execution that is being stopped.
const WIND_DOWN_WAIT: Duration = Duration::from_secs(30);
/// How long a polite kernel shutdown may take before the process is killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Restarts after protocol violations a sandbox gets per [`VIOLATION_WINDOW`].
pub const VIOLATION_BUDGET: usize = 3;
/// The window [`VIOLATION_BUDGET`] counts in.
pub const VIOLATION_WINDOW: Duration = Duration::from_secs(600);

/// What a sandbox needs to reach its kernel: the backend, the bounds on what the kernel sends,
/// and the server's counters of rejected messages.
#[derive(Clone)]
pub(crate) struct KernelLink {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) limits: Limits,
    pub(crate) counters: Arc<KernelCounters>,
}

/// Opens one sandbox's kernel channels through the backend.
struct SandboxDialer<'a> {
    backend: &'a dyn Backend,
    container_id: &'a str,
}

#[async_trait]
impl Dialer for SandboxDialer<'_> {
    async fn dial(&self, channel: KernelChannel) -> Result<ChannelStream, DialError> {
        self.backend
            .open_kernel_channel(self.container_id, channel)
            .await
            .map_err(DialError::from)
    }
}

/// What a sandbox is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxStatus {
    /// The kernel is idle and answers.
    Running,
    /// An execution is in progress.
    Busy,
    /// The kernel is being restarted.
    Restarting,
    /// The kernel does not answer.
    Dead,
}

impl SandboxStatus {
    /// The word the faces show.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Busy => "busy",
            Self::Restarting => "restarting",
            Self::Dead => "dead",
        }
    }
}

/// A sandbox as the faces show it.
#[derive(Debug, Clone, Serialize)]
pub struct SandboxInfo {
    pub id: String,
    pub tag: Option<String>,
    pub status: SandboxStatus,
    pub created_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
    pub image: String,
    /// The lifetime last given, in seconds (from when it was given); `None`: no limit but the
    /// idle one.
    pub timeout: Option<u64>,
    /// When the sandbox is destroyed, whatever it is doing.
    pub expires_at: Option<DateTime<Utc>>,
    /// The caller's metadata.
    pub metadata: Metadata,
}

/// The execution a sandbox runs.
pub(crate) struct Running {
    pub(crate) events: tokio::sync::mpsc::WeakSender<ExecEvent>,
    pub(crate) stop: CancellationToken,
    pub(crate) execution_id: String,
    /// The first line of its code, shortened.
    pub(crate) code_start: String,
    pub(crate) started: Instant,
}

/// What a sandbox runs, as errors and the interrupt tool describe it.
#[derive(Debug, Clone)]
pub struct RunningInfo {
    pub execution_id: String,
    pub code_start: String,
    pub elapsed: Duration,
}

impl std::fmt::Display for RunningInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "execution {} ({:?}), running for {:.1} s",
            self.execution_id,
            self.code_start,
            self.elapsed.as_secs_f64()
        )
    }
}

pub struct Sandbox {
    id: String,
    container_id: String,
    tenant: Tenant,
    tag: Option<String>,
    image: String,
    created_at: DateTime<Utc>,
    metadata: Metadata,
    /// How long the sandbox lives, if it has a limit.
    lifetime: Mutex<Option<Lifetime>>,
    /// Held while the lifetime changes, so that the stored change and the one in force agree.
    lifetime_change: tokio::sync::Mutex<()>,
    /// The kernel's HMAC key.
    key: String,
    link: KernelLink,
    kernel: RwLock<Option<Arc<KernelClient>>>,
    /// When the kernel broke the protocol lately (and the sandbox was restarted for it).
    violations: Mutex<VecDeque<Instant>>,
    /// The egress policy in force.
    firewall: RwLock<Firewall>,
    /// Held while connecting, reconnecting or restarting the kernel, so two callers that find
    /// the connection gone (an execution, the liveness check) do not both restart it.
    connecting: tokio::sync::Mutex<()>,
    /// Held by the running execution (and by a restart).
    pub(crate) exec_lock: Arc<tokio::sync::Mutex<()>>,
    restarting: AtomicBool,
    /// The running execution is being stopped (timeout, cancel, dead kernel): a new request
    /// waits for it instead of being refused as busy.
    winding_down: AtomicBool,
    /// The running execution: its event channel (without keeping it open), what it runs, and
    /// the token that interrupts it.
    running: Mutex<Option<Running>>,
    /// The kernel was reachable at the last check.
    alive: AtomicBool,
    /// The container's OOM-kill count when last read.
    oom_kills_seen: AtomicU64,
    last_used: Mutex<(Instant, DateTime<Utc>)>,
    cancel: CancellationToken,
}

impl Sandbox {
    /// A sandbox for a running container carrying kernelbox labels; `None` when the container
    /// lacks its labels.
    pub(crate) fn from_container(
        container: &ContainerInfo,
        image: &str,
        link: KernelLink,
        firewall: Firewall,
    ) -> Option<Self> {
        let id = container.labels.get(labels::ID)?.clone();
        let key = container.labels.get(labels::KERNEL_KEY)?.clone();
        let created_at = container
            .labels
            .get(labels::CREATED)
            .and_then(|created| DateTime::parse_from_rfc3339(created).ok())
            .map(|created| created.with_timezone(&Utc))
            .unwrap_or_else(Utc::now);
        Some(Self {
            id,
            container_id: container.container_id.clone(),
            tenant: Tenant::from_label(container.labels.get(labels::OWNER).map(String::as_str)),
            tag: container.labels.get(labels::TAG).cloned(),
            image: image.to_string(),
            created_at,
            metadata: labels::metadata(&container.labels),
            lifetime: Mutex::new(labels::lifetime(&container.labels)),
            lifetime_change: tokio::sync::Mutex::new(()),
            key,
            link,
            kernel: RwLock::new(None),
            violations: Mutex::new(VecDeque::new()),
            firewall: RwLock::new(firewall),
            connecting: tokio::sync::Mutex::new(()),
            exec_lock: Arc::new(tokio::sync::Mutex::new(())),
            restarting: AtomicBool::new(false),
            winding_down: AtomicBool::new(false),
            running: Mutex::new(None),
            alive: AtomicBool::new(true),
            oom_kills_seen: AtomicU64::new(0),
            last_used: Mutex::new((Instant::now(), Utc::now())),
            cancel: CancellationToken::new(),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn container_id(&self) -> &str {
        &self.container_id
    }

    pub fn tenant(&self) -> &Tenant {
        &self.tenant
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// How long the sandbox lives, if it has a limit.
    pub fn lifetime(&self) -> Option<Lifetime> {
        self.lifetime.lock().ok().and_then(|lifetime| *lifetime)
    }

    pub(crate) fn set_lifetime(&self, lifetime: Option<Lifetime>) {
        if let Ok(mut current) = self.lifetime.lock() {
            *current = lifetime;
        }
    }

    pub(crate) fn lifetime_change(&self) -> &tokio::sync::Mutex<()> {
        &self.lifetime_change
    }

    pub fn info(&self) -> SandboxInfo {
        let last_used_at = self
            .last_used
            .lock()
            .map(|last| last.1)
            .unwrap_or_else(|_| Utc::now());
        let lifetime = self.lifetime();
        SandboxInfo {
            id: self.id.clone(),
            tag: self.tag.clone(),
            status: self.status(),
            created_at: self.created_at,
            last_used_at,
            image: self.image.clone(),
            timeout: lifetime.map(|lifetime| lifetime.timeout_secs),
            expires_at: lifetime.map(|lifetime| lifetime.expires_at),
            metadata: self.metadata.clone(),
        }
    }

    pub fn status(&self) -> SandboxStatus {
        if self.restarting.load(Ordering::SeqCst) {
            return SandboxStatus::Restarting;
        }
        match self.current_kernel() {
            Some(kernel) if !kernel.is_closed() && self.alive.load(Ordering::SeqCst) => {
                if self.is_busy() {
                    SandboxStatus::Busy
                } else {
                    SandboxStatus::Running
                }
            }
            _ => SandboxStatus::Dead,
        }
    }

    pub(crate) fn is_busy(&self) -> bool {
        self.exec_lock.try_lock().is_err()
    }

    /// Takes the execution lock: at once when free; after the running execution has stopped
    /// when it is winding down; otherwise within [`BUSY_GRACE`] if the running execution ends
    /// by then (a cancellation travelling beside the next request, as MCP clients send them),
    /// and `None` (busy) after that.
    pub(crate) async fn acquire_exec(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        if let Ok(guard) = self.exec_lock.clone().try_lock_owned() {
            return Some(guard);
        }
        let wait = if self.winding_down.load(Ordering::SeqCst) || self.consumer_gone() {
            WIND_DOWN_WAIT
        } else {
            BUSY_GRACE
        };
        tokio::time::timeout(wait, self.exec_lock.clone().lock_owned())
            .await
            .ok()
    }

    /// Registers the running execution's event channel: once its consumer is gone, the
    /// execution is winding down even before its task notices.
    pub(crate) fn set_running(&self, execution: Option<Running>) {
        if let Ok(mut running) = self.running.lock() {
            *running = execution;
        }
    }

    fn consumer_gone(&self) -> bool {
        self.running
            .lock()
            .ok()
            .and_then(|running| {
                running
                    .as_ref()
                    .and_then(|running| running.events.upgrade())
            })
            .is_some_and(|events| events.is_closed())
    }

    /// What the running execution runs, and for how long it has: `None` when nothing runs.
    pub(crate) fn running(&self) -> Option<RunningInfo> {
        let running = self.running.lock().ok()?;
        running.as_ref().map(|running| RunningInfo {
            execution_id: running.execution_id.clone(),
            code_start: running.code_start.clone(),
            elapsed: running.started.elapsed(),
        })
    }

    /// Asks the running execution to stop (its kernel is interrupted, its state kept). Returns
    /// what was running.
    pub(crate) fn interrupt_running(&self) -> Option<RunningInfo> {
        let info = self.running();
        if let Ok(running) = self.running.lock()
            && let Some(running) = running.as_ref()
        {
            running.stop.cancel();
        }
        info
    }

    /// Asks the execution `execution_id` to stop, if it is the one running; returns whether it
    /// was.
    pub(crate) fn interrupt_execution(&self, execution_id: &str) -> bool {
        if let Ok(running) = self.running.lock()
            && let Some(running) = running.as_ref()
            && running.execution_id == execution_id
        {
            running.stop.cancel();
            return true;
        }
        false
    }

    pub(crate) fn set_winding_down(&self, winding_down: bool) {
        self.winding_down.store(winding_down, Ordering::SeqCst);
    }

    /// Checks that the kernel is reachable and records the answer: an open connection is; a
    /// closed one is reconnected (after a restart when the kernel broke the protocol), and the
    /// sandbox is alive only if that works.
    pub(crate) async fn check_alive(&self, within: Duration) -> bool {
        let alive = match self.current_kernel() {
            Some(kernel) if !kernel.is_closed() => true,
            _ => self.kernel(within).await.is_ok(),
        };
        self.alive.store(alive, Ordering::SeqCst);
        alive
    }

    /// The egress policy in force.
    pub fn firewall(&self) -> Firewall {
        self.firewall
            .read()
            .map(|firewall| firewall.clone())
            .unwrap_or_else(|_| Firewall::closed())
    }

    pub(crate) fn set_firewall(&self, firewall: Firewall) {
        if let Ok(mut current) = self.firewall.write() {
            *current = firewall;
        }
    }

    /// Marks the sandbox as used now.
    pub(crate) fn touch(&self) {
        if let Ok(mut last) = self.last_used.lock() {
            *last = (Instant::now(), Utc::now());
        }
    }

    pub(crate) fn idle_for(&self) -> Duration {
        self.last_used
            .lock()
            .map(|last| last.0.elapsed())
            .unwrap_or_default()
    }

    /// Cancelled when the sandbox is destroyed or the server shuts down.
    pub(crate) fn cancelled(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }

    /// Whether the sandbox is being destroyed or the server is shutting down.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    pub(crate) fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Takes over `other`'s kernel connection: a claimed warm-pool sandbox is a new [`Sandbox`]
    /// for the same container, whose kernel already answers.
    pub(crate) fn adopt_kernel(&self, other: &Sandbox) {
        if let Ok(mut kernel) = self.kernel.write() {
            *kernel = other.current_kernel();
        }
    }

    fn current_kernel(&self) -> Option<Arc<KernelClient>> {
        self.kernel.read().ok().and_then(|kernel| kernel.clone())
    }

    /// Connects (or reconnects) to the kernel and waits until it answers. A kernel that breaks
    /// the protocol gets its sandbox restarted and is tried once more, within the sandbox's
    /// budget of such restarts. The caller holds `connecting`.
    async fn connect_kernel(
        &self,
        ready_within: Duration,
    ) -> Result<Arc<KernelClient>, EngineError> {
        match self.dial_kernel(ready_within).await {
            Err(EngineError::Kernel(violation @ KernelError::Violation { .. })) => {
                self.restart_after_violation(&violation, ready_within).await
            }
            other => other,
        }
    }

    /// One connection attempt, no recovery.
    async fn dial_kernel(&self, ready_within: Duration) -> Result<Arc<KernelClient>, EngineError> {
        let dialer = SandboxDialer {
            backend: self.link.backend.as_ref(),
            container_id: &self.container_id,
        };
        let client = Arc::new(
            KernelClient::connect(
                &dialer,
                &self.key,
                self.link.limits,
                self.link.counters.clone(),
                ready_within,
            )
            .await
            .map_err(EngineError::Kernel)?,
        );
        if let Ok(mut kernel) = self.kernel.write() {
            *kernel = Some(client.clone());
        }
        Ok(client)
    }

    /// The kernel connection, reconnecting when the old one dropped (the kernel restarted), and
    /// restarting the sandbox first when the old one broke the protocol.
    pub(crate) async fn kernel(
        &self,
        ready_within: Duration,
    ) -> Result<Arc<KernelClient>, EngineError> {
        if let Some(kernel) = self.current_kernel().filter(|kernel| !kernel.is_closed()) {
            return Ok(kernel);
        }
        // Whoever held the lock before may have reconnected already: look again under it.
        let _connecting = self.connecting.lock().await;
        match self.current_kernel() {
            Some(kernel) if !kernel.is_closed() => Ok(kernel),
            Some(kernel) => match kernel.close_reason() {
                Some(CloseReason::Violation { channel, error }) => {
                    let violation = KernelError::Violation {
                        channel,
                        source: error,
                    };
                    self.restart_after_violation(&violation, ready_within).await
                }
                _ => self.connect_kernel(ready_within).await,
            },
            None => self.connect_kernel(ready_within).await,
        }
    }

    /// After the kernel broke the protocol: restarts every process of the sandbox (so a process
    /// that took the kernel's place goes too; files stay) and connects again, unless the sandbox
    /// used up its budget of such restarts, which leaves it stopped.
    async fn restart_after_violation(
        &self,
        violation: &KernelError,
        ready_within: Duration,
    ) -> Result<Arc<KernelClient>, EngineError> {
        if let Ok(mut kernel) = self.kernel.write() {
            kernel.take();
        }
        if !self.spend_violation() {
            self.alive.store(false, Ordering::SeqCst);
            return Err(EngineError::KernelQuarantined {
                id: self.id.clone(),
                limit: VIOLATION_BUDGET,
                window_secs: VIOLATION_WINDOW.as_secs(),
            });
        }
        self.link
            .counters
            .violations
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(sandbox_id = %self.id, error = %violation, "restarting the sandbox after a protocol violation");
        self.restart_processes(ready_within).await
    }

    /// Counts one restart against the budget; false when the budget is spent.
    fn spend_violation(&self) -> bool {
        let Ok(mut violations) = self.violations.lock() else {
            return false;
        };
        while violations
            .front()
            .is_some_and(|at| at.elapsed() > VIOLATION_WINDOW)
        {
            violations.pop_front();
        }
        if violations.len() >= VIOLATION_BUDGET {
            return false;
        }
        violations.push_back(Instant::now());
        true
    }

    /// Restarts every process of the sandbox and connects to the fresh kernel, once.
    async fn restart_processes(
        &self,
        ready_within: Duration,
    ) -> Result<Arc<KernelClient>, EngineError> {
        self.restarting.store(true, Ordering::SeqCst);
        let restarted = async {
            self.link.backend.restart(&self.container_id).await?;
            self.dial_kernel(ready_within).await
        }
        .await;
        self.restarting.store(false, Ordering::SeqCst);
        restarted
    }

    /// Restarts the kernel: a polite shutdown first, a kill when the kernel does not go; the
    /// container's supervisor starts a fresh kernel. Variables are lost; files stay. The caller
    /// holds the exec lock.
    pub(crate) async fn restart_kernel(
        &self,
        backend: &dyn Backend,
        ready_within: Duration,
    ) -> Result<(), EngineError> {
        self.restarting.store(true, Ordering::SeqCst);
        let result = self.restart_kernel_inner(backend, ready_within).await;
        self.restarting.store(false, Ordering::SeqCst);
        result
    }

    async fn restart_kernel_inner(
        &self,
        backend: &dyn Backend,
        ready_within: Duration,
    ) -> Result<(), EngineError> {
        let _connecting = self.connecting.lock().await;
        let old = self
            .kernel
            .write()
            .ok()
            .and_then(|mut kernel| kernel.take());
        let violated = old
            .as_ref()
            .is_some_and(|old| matches!(old.close_reason(), Some(CloseReason::Violation { .. })));
        if violated || self.quarantined() {
            // The caller asked for it: a restart of the whole sandbox, outside the budget.
            drop(old);
            if let Ok(mut violations) = self.violations.lock() {
                violations.clear();
            }
            self.restart_processes(ready_within).await?;
            return Ok(());
        }
        let mut gone = false;
        if let Some(old) = &old
            && !old.is_closed()
            && old.shutdown(true, SHUTDOWN_GRACE).await.is_ok()
        {
            gone = tokio::time::timeout(SHUTDOWN_GRACE, old.closed())
                .await
                .is_ok();
        }
        if !gone {
            tracing::info!(sandbox_id = %self.id, "kernel did not shut down; killing it");
            self.kill_kernel(backend).await?;
            if let Some(old) = &old {
                let _ = tokio::time::timeout(SHUTDOWN_GRACE, old.closed()).await;
            }
        }
        drop(old);
        self.connect_kernel(ready_within).await.map(drop)
    }

    /// Whether the sandbox used up its budget of restarts after violations.
    fn quarantined(&self) -> bool {
        self.violations.lock().is_ok_and(|violations| {
            violations.len() >= VIOLATION_BUDGET
                && violations
                    .front()
                    .is_some_and(|at| at.elapsed() <= VIOLATION_WINDOW)
        })
    }

    /// Kills the kernel process; the container's supervisor starts a fresh one.
    pub(crate) async fn kill_kernel(&self, backend: &dyn Backend) -> Result<(), EngineError> {
        backend.kill_kernel(&self.container_id).await?;
        Ok(())
    }

    /// Whether the container's memory limit killed a process since the last call.
    pub(crate) async fn oom_killed_since_last_check(&self, backend: &dyn Backend) -> bool {
        match backend.oom_kills(&self.container_id).await {
            Ok(kills) => kills > self.oom_kills_seen.swap(kills, Ordering::SeqCst),
            Err(error) => {
                tracing::debug!(sandbox_id = %self.id, %error, "cannot read the OOM-kill count");
                false
            }
        }
    }
}
