//! The [`Engine`]: the sandbox table and the sandbox lifecycle: create, look up, list, destroy,
//! reattach after a restart, the idle reaper, the liveness check and shutdown. What a sandbox
//! does (executions, files, commands, guest servers) is in sibling files, each an `impl Engine`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use dashmap::DashMap;
use futures::StreamExt;
use rand::RngCore;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::admission::{NoTurn, StartQueue, StartQueueState, StartTurn};
use super::create_progress::{CreateProgress, report};
use super::error::EngineError;
use super::firewall::{EgressRequest, Firewall};
use super::guest_registry::GuestRegistry;
use super::history::{ExecutionHistory, ExecutionRecord};
use super::labels;
use super::lifetimes::{self, ExpiryTimer, Lifetime, Metadata};
use super::metrics::EngineMetrics;
use super::process_table::ProcessTable;
use super::quota::{Live, Quota, SpoolBudget};
use super::readiness::{Readiness, ReadinessCache};
use super::sandbox::{KernelLink, Sandbox, SandboxInfo};
use super::tenant::Tenant;
use super::validate;
use super::warm_pool::{Created, PoolMember, Reattached, WarmPool};
use crate::backend::{Backend, ContainerInfo, ContainerSpec, Limits};
use crate::config::EngineConfig;
use crate::kernel::{ConnectionInfo, KernelError, Limits as MessageLimits};

/// The version of the sandbox image this build expects (the image's `io.kernelbox.image-version`).
pub const IMAGE_VERSION: &str = include_str!("../../docker/IMAGE_VERSION");
/// The first wait before removing again a sandbox whose removal failed; it doubles each time,
/// up to [`REMOVAL_RETRY_MAX`].
const REMOVAL_RETRY_FIRST: Duration = Duration::from_secs(1);
const REMOVAL_RETRY_MAX: Duration = Duration::from_secs(60);
/// How often kernels are checked.
const LIVENESS_INTERVAL: Duration = Duration::from_secs(5);
/// Sandboxes checked (or reattached) at the same time.
const PARALLEL_CHECKS: usize = 16;
/// How long reconnecting to a kernel that went away may take during a check.
const LIVENESS_TIMEOUT: Duration = Duration::from_secs(10);
/// How many recent executions are remembered, and how many bytes of results they may hold.
const HISTORY_ENTRIES: usize = 256;
const HISTORY_BYTES: usize = 64 * 1024 * 1024;
/// How long [`Engine::shutdown`] may take.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// Most frames in one kernel message (a Jupyter message has 6 plus a few identities and buffers).
const MAX_KERNEL_MESSAGE_PARTS: usize = 64;
/// Tells the kernel the server's message limit.
const MESSAGE_LIMIT_ENV: &str = "KERNELBOX_MAX_MESSAGE_BYTES";
/// Tells the kernel the server's text cap per execution.
const OUTPUT_LIMIT_ENV: &str = "KERNELBOX_OUTPUT_LIMIT_BYTES";
/// The smallest memory limit a request may ask for, in MiB: below it the kernel cannot start.
const MIN_MEMORY_MB: u64 = 64;
/// The smallest process limit a request may ask for: the supervisor, the kernel and its threads,
/// its channels, and room for a command (16 was measured too few for a kernel to start).
const MIN_PIDS: u64 = 64;

/// Options for a new sandbox.
#[derive(Debug, Clone)]
pub struct CreateSandbox {
    /// A free-form label the caller can use to find the sandbox again.
    pub tag: Option<String>,
    /// Environment variables for the kernel and commands.
    pub env: HashMap<String, String>,
    /// The image to run: `None` for the server's default; others must be on the operator's
    /// allow-list (`--allowed-images`).
    pub image: Option<String>,
    /// What the sandbox may reach: `None` for the operator's policy.
    pub network: Option<EgressRequest>,
    /// The tenant that owns the sandbox.
    pub tenant: Tenant,
    /// Within the operator's ceilings (`--max-memory-mb`, `--max-cpus`, `--max-pids`).
    pub memory_mb: Option<u64>,
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
    /// pip requirements installed before the sandbox is handed out, under the package policy.
    pub dependencies: Vec<String>,
    /// The sandbox's lifetime in seconds from now (at most `--max-sandbox-timeout-secs`): it is
    /// destroyed then, busy or not. `None`: only the idle limit applies.
    pub timeout: Option<u64>,
    /// The caller's metadata, shown with the sandbox and usable as a list filter.
    pub metadata: Metadata,
}

impl CreateSandbox {
    /// A sandbox for `tenant` with the server's defaults.
    pub fn new(tenant: Tenant) -> Self {
        Self {
            tag: None,
            env: HashMap::new(),
            image: None,
            network: None,
            tenant,
            memory_mb: None,
            cpus: None,
            pids: None,
            dependencies: Vec::new(),
            timeout: None,
            metadata: Metadata::new(),
        }
    }
}

/// The engine. Share it as `Arc<Engine>`.
pub struct Engine {
    pub(super) backend: Arc<dyn Backend>,
    pub(super) config: EngineConfig,
    sandboxes: DashMap<String, Arc<Sandbox>>,
    /// The global cap and the tenants' quotas on live sandboxes.
    quota: Quota,
    /// What uploads in progress may spool together.
    pub(super) spool: SpoolBudget,
    pub(super) history: ExecutionHistory,
    pub(super) metrics: EngineMetrics,
    pub(super) guests: GuestRegistry,
    /// Every sandbox's background processes.
    pub(super) processes: ProcessTable,
    /// Held while a tenant's default sandbox is looked up or made, so concurrent calls that
    /// name no sandbox make one, not several.
    pub(super) default_locks: DashMap<Tenant, Arc<tokio::sync::Mutex<()>>>,
    /// Every task the engine spawns: awaited (or given up on) at shutdown.
    pub(super) tasks: TaskTracker,
    pub(super) shutdown: CancellationToken,
    /// The last readiness answer ([`Engine::readiness`]).
    pub(super) readiness: ReadinessCache,
    /// Creates waiting for their turn to start a container.
    starts: StartQueue,
    /// Destroys sandboxes whose lifetime ended.
    pub(super) expiry: ExpiryTimer,
    /// Sandboxes started ahead, waiting to be claimed (`--warm-pool`).
    pub(super) pool: WarmPool,
}

impl Engine {
    pub fn new(backend: Arc<dyn Backend>, config: EngineConfig) -> Arc<Self> {
        let starts = StartQueue::new(config.max_concurrent_starts, config.start_queue_timeout);
        Arc::new(Self {
            backend,
            quota: Quota::new(config.max_sandboxes, config.max_sandboxes_per_tenant),
            spool: SpoolBudget::new(config.max_spool_bytes),
            config,
            sandboxes: DashMap::new(),
            history: ExecutionHistory::new(HISTORY_ENTRIES, HISTORY_BYTES),
            metrics: EngineMetrics::new(),
            guests: GuestRegistry::default(),
            processes: ProcessTable::default(),
            default_locks: DashMap::new(),
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            readiness: ReadinessCache::default(),
            starts,
            expiry: ExpiryTimer::default(),
            pool: WarmPool::default(),
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub(crate) fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// What a sandbox needs to reach its kernel.
    pub(super) fn kernel_link(&self) -> KernelLink {
        KernelLink {
            backend: self.backend.clone(),
            limits: MessageLimits {
                max_frame_bytes: self.config.max_kernel_message_bytes,
                max_message_bytes: self.config.max_kernel_message_bytes,
                max_parts: MAX_KERNEL_MESSAGE_PARTS,
            },
            counters: self.metrics.kernel_counters(),
        }
    }

    /// The metrics in the Prometheus text format (`GET /metrics`).
    pub fn metrics_text(&self) -> String {
        self.metrics.render(
            self.sandboxes.len(),
            self.spool.held(),
            *self.starts.watch().borrow(),
            self.pool.len(),
        )
    }

    /// Checks that the runtime answers and the default image exists at the version this build
    /// needs.
    pub async fn check_image(&self) -> Result<(), EngineError> {
        self.check_image_named(&self.config.image).await
    }

    /// Checks that `image` exists and carries the image version this build needs.
    async fn check_image_named(&self, image: &str) -> Result<(), EngineError> {
        let labels = self.backend.image_labels(image).await?;
        let version = labels
            .as_ref()
            .and_then(|labels| labels.get(labels::IMAGE_VERSION));
        if version.map(String::as_str) == Some(IMAGE_VERSION.trim()) {
            Ok(())
        } else {
            Err(EngineError::ImageMissing {
                image: image.to_string(),
            })
        }
    }

    /// The image a request asks for: the default, or one the operator allows.
    fn image_for(&self, request: &CreateSandbox) -> Result<String, EngineError> {
        let Some(image) = request.image.as_deref() else {
            return Ok(self.config.image.clone());
        };
        validate::no_nul("image", image)?;
        if image == self.config.image || self.config.allowed_images.iter().any(|a| a == image) {
            return Ok(image.to_string());
        }
        let mut allowed = vec![self.config.image.as_str()];
        allowed.extend(self.config.allowed_images.iter().map(String::as_str));
        Err(EngineError::InvalidInput {
            field: "image",
            reason: format!(
                "{image:?} is not an image this server runs; allowed: {}",
                allowed.join(", ")
            ),
        })
    }

    /// Creates a sandbox and waits until its kernel answers. At most
    /// `--max-concurrent-starts` sandboxes start at once; a create beyond them waits its turn
    /// in arrival order, up to `--start-queue-timeout-secs`. A caller that goes away while it
    /// waits takes nothing. Once its container starts, the work runs in a task of its own: a
    /// caller that goes away then (a client hanging up) cannot leave a container behind that
    /// the table and the quotas do not know; the sandbox is finished, counted, and reaped idle
    /// like any other.
    pub async fn create(
        self: &Arc<Self>,
        request: CreateSandbox,
    ) -> Result<SandboxInfo, EngineError> {
        self.create_reporting(request, None).await
    }

    /// [`Engine::create`], reporting its steps (the container, the kernel, installing the
    /// dependencies) on `progress` as they happen.
    pub async fn create_reporting(
        self: &Arc<Self>,
        request: CreateSandbox,
        progress: Option<UnboundedSender<CreateProgress>>,
    ) -> Result<SandboxInfo, EngineError> {
        let engine = self.clone();
        let caller = CancellationToken::new();
        let _cancel_when_the_caller_leaves = caller.clone().drop_guard();
        self.tasks
            .spawn(async move {
                let created = match engine
                    .create_to_the_end(request, Some(caller), progress)
                    .await
                {
                    Ok(Created::Handed(info)) => Ok(info),
                    Ok(Created::Pooled(_)) => Err(EngineError::ShuttingDown),
                    Err(error) => Err(error),
                };
                if created.as_ref().is_ok_and(|info| info.expires_at.is_some()) {
                    engine.arm_expiry();
                }
                created
            })
            .await
            .map_err(|_| EngineError::ShuttingDown)?
    }

    /// Follows how many creates are starting and how many wait for their turn.
    pub fn start_queue(&self) -> tokio::sync::watch::Receiver<StartQueueState> {
        self.starts.watch()
    }

    /// Waits for a turn to start a container; `caller` is cancelled when the caller left.
    async fn start_turn(&self, caller: &CancellationToken) -> Result<StartTurn, EngineError> {
        tokio::select! {
            biased;
            turn = self.starts.turn() => turn.map_err(|refused| match refused {
                NoTurn::TimedOut => {
                    tracing::warn!("no turn to start a sandbox before the queue deadline");
                    EngineError::StartQueueTimeout {
                        secs: self.starts.wait_limit().as_secs(),
                        starts: self.config.max_concurrent_starts,
                    }
                }
                NoTurn::Closed => EngineError::ShuttingDown,
            }),
            () = caller.cancelled() => Err(EngineError::StartAbandoned),
            () = self.shutdown.cancelled() => Err(EngineError::ShuttingDown),
        }
    }

    /// The environment of a new sandbox: the caller's variables and the server's own.
    pub(super) fn sandbox_env(
        &self,
        requested: &HashMap<String, String>,
    ) -> Result<Vec<String>, EngineError> {
        let mut env = validate::env(requested)?;
        // The kernel keeps its own messages under the server's limit (the image's
        // `kernelbox_output`), so large output is cut with a note instead of restarting it.
        env.push(format!(
            "{MESSAGE_LIMIT_ENV}={}",
            self.config.max_kernel_message_bytes
        ));
        env.push(format!(
            "{OUTPUT_LIMIT_ENV}={}",
            self.config.output_limit_bytes
        ));
        self.pip_index_env(requested, &mut env);
        Ok(env)
    }

    /// Creates a sandbox for `caller` (from the warm pool when the request fits it), or, with
    /// no caller, a warm-pool member of the default configuration.
    pub(super) async fn create_to_the_end(
        &self,
        request: CreateSandbox,
        caller: Option<CancellationToken>,
        progress: Option<UnboundedSender<CreateProgress>>,
    ) -> Result<Created, EngineError> {
        let for_pool = caller.is_none();
        let caller = caller.unwrap_or_default();
        if self.shutdown.is_cancelled() {
            return Err(EngineError::ShuttingDown);
        }
        let limits = self.limits_for(&request)?;
        if let Some(tag) = &request.tag {
            validate::tag(tag)?;
        }
        let timeout = request
            .timeout
            .map(|secs| lifetimes::timeout(secs, self.config.max_sandbox_timeout))
            .transpose()?;
        lifetimes::metadata(&request.metadata)?;
        let env = self.sandbox_env(&request.env)?;
        // Refused before any container starts.
        let dependencies = match request.dependencies.as_slice() {
            [] => None,
            requested => Some(self.plan_install(requested)?),
        };
        let image = self.image_for(&request)?;
        let firewall = self.firewall_for(request.network.as_ref())?;
        if image != self.config.image {
            self.check_image_named(&image).await?;
        }
        // Taken before the slow part and given back if it fails: concurrent creates cannot
        // overrun the caps.
        // Pool members count toward no quota: the pool comes on top of the limits.
        let slot = if for_pool {
            None
        } else {
            Some(
                self.quota
                    .take(&request.tenant, |tenant| self.live(tenant))?,
            )
        };
        let started = std::time::Instant::now();
        let slot = match slot {
            Some(slot) if self.fits_warm_pool(&request) => {
                match self
                    .claim_pooled(&request, timeout, &limits, &firewall)
                    .await
                {
                    Some(sandbox) => {
                        report(progress.as_ref(), CreateProgress::ContainerStarted);
                        report(progress.as_ref(), CreateProgress::KernelReady);
                        let info = sandbox.info();
                        slot.fill(|| {
                            self.sandboxes.insert(info.id.clone(), sandbox);
                        });
                        self.metrics.sandbox_created(started.elapsed());
                        return Ok(Created::Handed(info));
                    }
                    None => Some(slot),
                }
            }
            other => other,
        };
        let turn = self.start_turn(&caller).await?;
        let id = new_sandbox_id();
        let span = tracing::info_span!("sandbox", sandbox_id = %id);
        let created = async {
            let created_at = Utc::now();
            let connection = ConnectionInfo::for_sandbox();
            let mut sandbox_labels = labels::for_sandbox(&labels::SandboxLabels {
                id: &id,
                instance: &self.config.instance,
                owner: request.tenant.label(),
                tag: request.tag.as_deref(),
                created_at,
                image: &image,
                key: &connection.key,
                metadata: &request.metadata,
                lifetime: timeout.map(Lifetime::from_now),
            });
            let name = if for_pool {
                sandbox_labels.insert(labels::POOL.to_string(), "1".to_string());
                sandbox_labels.insert(
                    labels::POOL_CONFIG.to_string(),
                    pool_fingerprint(&env, &limits, &firewall.state()),
                );
                format!("{}{}", labels::POOL_NAME_PREFIX, id.replace('_', "-"))
            } else {
                sandbox_name(&id)
            };
            let spec = ContainerSpec {
                name,
                image: image.clone(),
                labels: sandbox_labels,
                env,
                limits,
                connection,
                egress: firewall.policy.clone(),
                egress_state: firewall.state(),
            };
            let container = self.backend.create(&spec).await?;
            report(progress.as_ref(), CreateProgress::ContainerStarted);
            let Some(sandbox) =
                Sandbox::from_container(&container, &image, self.kernel_link(), firewall)
            else {
                tracing::warn!("the new container lacks what a sandbox needs; removing it");
                let _ = self.backend.destroy(&container.container_id).await;
                return Err(EngineError::Kernel(KernelError::Closed));
            };
            let sandbox = Arc::new(sandbox);
            if let Err(error) = sandbox.kernel(self.config.kernel_ready_timeout).await {
                tracing::warn!(%error, "kernel did not start; removing the container");
                let _ = self.backend.destroy(&container.container_id).await;
                return Err(error);
            }
            // Started: the next create may start while this one finishes.
            drop(turn);
            report(progress.as_ref(), CreateProgress::KernelReady);
            if let Some(plan) = &dependencies
                && let Err(error) = self
                    .install_dependencies(&sandbox, plan, progress.as_ref())
                    .await
            {
                tracing::warn!(%error, "dependencies did not install; removing the container");
                sandbox.cancel();
                let _ = self.backend.destroy(&container.container_id).await;
                return Err(error);
            }
            tracing::info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "sandbox ready"
            );
            let Some(slot) = slot else {
                if !self.warm_up(&sandbox).await {
                    sandbox.cancel();
                    let _ = self.backend.destroy(&container.container_id).await;
                    return Err(EngineError::Kernel(KernelError::Closed));
                }
                return Ok(Created::Pooled(PoolMember {
                    container,
                    image,
                    firewall: sandbox.firewall(),
                    sandbox,
                }));
            };
            let info = sandbox.info();
            slot.fill(|| {
                self.sandboxes.insert(id.clone(), sandbox);
            });
            Ok(Created::Handed(info))
        }
        .instrument(span)
        .await;
        // A pool refill is not a create anyone asked for: the claim counts.
        match &created {
            Ok(_) if for_pool => {}
            Ok(_) => self.metrics.sandbox_created(started.elapsed()),
            Err(_) if for_pool => {}
            Err(_) => self.metrics.sandbox_create_failed(),
        }
        created
    }

    /// Every live sandbox, of every tenant: for the engine's own housekeeping.
    pub(super) fn all_sandboxes(&self) -> Vec<Arc<Sandbox>> {
        self.sandboxes
            .iter()
            .map(|entry| entry.value().clone())
            .collect()
    }

    /// Live sandboxes, all and `tenant`'s.
    fn live(&self, tenant: &Tenant) -> Live {
        let mut live = Live::default();
        for entry in self.sandboxes.iter() {
            live.total += 1;
            if entry.value().tenant() == tenant {
                live.tenant += 1;
            }
        }
        live
    }

    /// The limits a request asks for, within the operator's ceilings.
    fn limits_for(&self, request: &CreateSandbox) -> Result<Limits, EngineError> {
        let mut limits = self.config.limits;
        let ceilings = self.config.ceilings;
        if let Some(memory_mb) = request.memory_mb {
            validate::check(
                (MIN_MEMORY_MB..=ceilings.memory_mb).contains(&memory_mb),
                "memory_mb",
                || {
                    format!(
                        "{memory_mb} is not between {MIN_MEMORY_MB} and this server's ceiling of {} (--max-memory-mb)",
                        ceilings.memory_mb
                    )
                },
            )?;
            limits.memory_mb = memory_mb;
        }
        if let Some(cpus) = request.cpus {
            let milli_cpus = (cpus * 1000.0).round();
            validate::check(
                cpus.is_finite() && milli_cpus >= 1.0 && milli_cpus <= ceilings.milli_cpus as f64,
                "cpus",
                || {
                    format!(
                        "{cpus} is not above 0 and at most this server's ceiling of {} (--max-cpus)",
                        ceilings.milli_cpus as f64 / 1000.0
                    )
                },
            )?;
            limits.milli_cpus = milli_cpus as u64;
        }
        if let Some(pids) = request.pids {
            validate::check((MIN_PIDS..=ceilings.pids).contains(&pids), "pids", || {
                format!(
                    "{pids} is not between {MIN_PIDS} and this server's ceiling of {} (--max-pids)",
                    ceilings.pids
                )
            })?;
            limits.pids = pids;
        }
        Ok(limits)
    }

    /// A live sandbox of `tenant`; another tenant's sandbox is reported as not found.
    pub fn get(&self, id: &str, tenant: &Tenant) -> Result<Arc<Sandbox>, EngineError> {
        self.sandboxes
            .get(id)
            .map(|entry| entry.value().clone())
            .filter(|sandbox| sandbox.tenant() == tenant)
            .ok_or_else(|| EngineError::NotFound { id: id.to_string() })
    }

    /// A live sandbox of `tenant` that a call is about to use: marked as used now, so the idle
    /// reaper leaves it alone.
    pub(super) fn use_sandbox(
        &self,
        id: &str,
        tenant: &Tenant,
    ) -> Result<Arc<Sandbox>, EngineError> {
        let sandbox = self.get(id, tenant)?;
        sandbox.touch();
        Ok(sandbox)
    }

    /// Runs `work` on a live sandbox of `tenant` (marked as used, as [`Engine::use_sandbox`]
    /// does). A failure once the sandbox is no longer live (its lifetime ended, or it was
    /// closed, while the work ran: its container and every process in it were removed) is
    /// reported as [`EngineError::Destroyed`], not as whatever broke inside because of that.
    pub(super) async fn on_live<T>(
        &self,
        id: &str,
        tenant: &Tenant,
        work: impl AsyncFnOnce(Arc<Sandbox>) -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        let sandbox = self.use_sandbox(id, tenant)?;
        let outcome = work(sandbox.clone()).await;
        match outcome {
            Err(_) if !self.is_live(&sandbox) => Err(EngineError::Destroyed { id: id.to_string() }),
            outcome => outcome,
        }
    }

    /// Whether `sandbox` is still the engine's live sandbox of its id.
    fn is_live(&self, sandbox: &Arc<Sandbox>) -> bool {
        self.sandboxes
            .get(sandbox.id())
            .is_some_and(|entry| Arc::ptr_eq(entry.value(), sandbox))
    }

    /// A recent execution of `tenant`; another tenant's execution is reported as not found.
    pub fn execution(
        &self,
        execution_id: &str,
        tenant: &Tenant,
    ) -> Result<ExecutionRecord, EngineError> {
        self.history
            .get(execution_id)
            .filter(|record| &record.tenant == tenant)
            .ok_or_else(|| EngineError::ExecutionNotFound {
                id: execution_id.to_string(),
            })
    }

    /// Information about one sandbox.
    pub fn info(&self, id: &str, tenant: &Tenant) -> Result<SandboxInfo, EngineError> {
        self.get(id, tenant).map(|sandbox| sandbox.info())
    }

    /// Every live sandbox of `tenant`, oldest first.
    pub fn list(&self, tenant: &Tenant) -> Vec<SandboxInfo> {
        self.list_matching(tenant, &Metadata::new())
    }

    /// Every live sandbox of `tenant` whose metadata has every entry of `filter`, oldest first.
    pub fn list_filtered(
        &self,
        tenant: &Tenant,
        filter: &Metadata,
    ) -> Result<Vec<SandboxInfo>, EngineError> {
        for key in filter.keys() {
            lifetimes::metadata_key(key)?;
        }
        Ok(self.list_matching(tenant, filter))
    }

    fn list_matching(&self, tenant: &Tenant, filter: &Metadata) -> Vec<SandboxInfo> {
        let mut sandboxes: Vec<SandboxInfo> = self
            .sandboxes
            .iter()
            .filter(|entry| {
                entry.value().tenant() == tenant
                    && lifetimes::matches(entry.value().metadata(), filter)
            })
            .map(|entry| entry.value().info())
            .collect();
        sandboxes.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        sandboxes
    }

    /// How many sandboxes are live, of every tenant (for `/health`): an operator-wide view.
    pub fn sandbox_count(&self) -> usize {
        self.sandboxes.len()
    }

    /// Destroys a sandbox of `tenant`: its container is removed even when its kernel is dead.
    pub async fn destroy(&self, id: &str, tenant: &Tenant) -> Result<(), EngineError> {
        self.get(id, tenant)?;
        self.remove(id).await
    }

    /// Removes a sandbox whoever owns it: for the engine's own housekeeping (idle reaping,
    /// shutdown, a closed connection's default sandbox).
    pub(super) async fn remove(&self, id: &str) -> Result<(), EngineError> {
        let Some((_, sandbox)) = self.sandboxes.remove(id) else {
            return Err(EngineError::NotFound { id: id.to_string() });
        };
        self.guests.forget_sandbox(id);
        self.processes.forget_sandbox(id);
        sandbox.cancel();
        if let Err(error) = self.backend.destroy(sandbox.container_id()).await {
            tracing::warn!(sandbox_id = %id, %error, "could not remove the sandbox's containers; trying again in the background");
            self.remove_in_background(id, sandbox.container_id());
            return Err(EngineError::RemovalPending {
                id: id.to_string(),
                source: error,
            });
        }
        tracing::info!(sandbox_id = %id, "sandbox destroyed");
        Ok(())
    }

    /// Tries again to remove the containers of a sandbox the engine has already let go of,
    /// waiting longer each time (up to a minute), until it works or the server shuts down (the
    /// next start then removes what is left). A partly done destroy can leave the network
    /// sidecar without its sandbox: once the sandbox container is gone, such leftovers of this
    /// instance are swept too.
    fn remove_in_background(&self, id: &str, container_id: &str) {
        let backend = self.backend.clone();
        let shutdown = self.shutdown.clone();
        let instance = self.config.instance.clone();
        let container_id = container_id.to_string();
        let span = tracing::info_span!("removal", sandbox_id = %id);
        self.tasks.spawn(
            async move {
                let mut delay = REMOVAL_RETRY_FIRST;
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => {
                            tracing::warn!(container = %container_id, "the server stops before the sandbox's containers were removed; its next start removes them");
                            return;
                        }
                        _ = tokio::time::sleep(delay) => {}
                    }
                    match backend.destroy(&container_id).await {
                        Ok(()) => break,
                        Err(error) => {
                            tracing::warn!(container = %container_id, %error, retry_in = ?delay * 2, "still cannot remove the sandbox's containers");
                        }
                    }
                    delay = (delay * 2).min(REMOVAL_RETRY_MAX);
                }
                if let Err(error) = backend
                    .collect_garbage(&[(labels::INSTANCE, instance.as_str())])
                    .await
                {
                    tracing::warn!(%error, "could not sweep what the removal left behind");
                }
                tracing::info!("sandbox destroyed, after trying again");
            }
            .instrument(span),
        );
    }

    /// Destroys a sandbox of `tenant` without waiting for it: for a connection that owned a
    /// sandbox and went away (its handler is dropped, nobody awaits). A sandbox already gone is
    /// fine.
    pub fn destroy_in_background(self: &Arc<Self>, id: String, tenant: Tenant) {
        if tokio::runtime::Handle::try_current().is_err() {
            tracing::warn!(sandbox_id = %id, "no runtime to destroy the sandbox; the idle reaper will");
            return;
        }
        let engine = self.clone();
        self.tasks.spawn(async move {
            match engine.destroy(&id, &tenant).await {
                Ok(()) | Err(EngineError::NotFound { .. }) => {}
                Err(error) => tracing::warn!(sandbox_id = %id, %error, "could not destroy sandbox"),
            }
        });
    }

    /// Reattaches to this instance's containers after a restart: each keeps its id and kernel
    /// state. Containers whose kernel cannot be reached are removed. Returns how many came back.
    pub async fn reattach(self: &Arc<Self>) -> Result<usize, EngineError> {
        let containers = self
            .backend
            .list(&[(labels::INSTANCE, self.config.instance.as_str())])
            .await?;
        let swept = self
            .backend
            .collect_garbage(&[(labels::INSTANCE, self.config.instance.as_str())])
            .await?;
        if swept > 0 {
            tracing::info!(swept, "removed what sandboxes that are gone left behind");
        }
        // Side by side: one sandbox that takes long (a kernel that must be restarted) does not
        // hold up the others.
        let outcomes: Vec<Result<bool, EngineError>> = futures::stream::iter(containers)
            .map(|container| async move {
                match self.reattach_one(&container).await {
                    Ok(()) => Ok(true),
                    Err(error) => {
                        tracing::warn!(container = %container.container_id, %error, "cannot reattach; removing");
                        self.backend.destroy(&container.container_id).await?;
                        Ok(false)
                    }
                }
            })
            .buffer_unordered(PARALLEL_CHECKS)
            .collect()
            .await;
        let mut restored = 0;
        for outcome in outcomes {
            restored += usize::from(outcome?);
        }
        // Lifetimes that ended while no server ran end now.
        self.arm_expiry();
        Ok(restored)
    }

    /// The policy a sandbox's sidecar enforces, read back after a restart. Where no policy was
    /// ever applied, nothing leaves the sandbox.
    pub(super) async fn enforced_firewall(
        &self,
        container_id: &str,
    ) -> Result<Firewall, EngineError> {
        Ok(match self.backend.egress_state(container_id).await? {
            Some(state) => Firewall::from_state(&state).unwrap_or_else(Firewall::closed),
            None => Firewall::closed(),
        })
    }

    async fn reattach_one(&self, container: &ContainerInfo) -> Result<(), EngineError> {
        let bound;
        let container = if container.labels.contains_key(labels::POOL) {
            match self.reattach_pooled(container).await? {
                Reattached::Pooled | Reattached::LeftAlone => return Ok(()),
                Reattached::Bound(claimed) => {
                    bound = claimed;
                    &bound
                }
            }
        } else {
            container
        };
        let image = container
            .labels
            .get(labels::IMAGE)
            .cloned()
            .unwrap_or_default();
        let firewall = self.enforced_firewall(&container.container_id).await?;
        let sandbox = Sandbox::from_container(container, &image, self.kernel_link(), firewall)
            .ok_or(EngineError::Kernel(KernelError::Closed))?;
        // A lifetime changed since the create is in the record; the labels keep the first one.
        if let Some(lifetime) = self.recorded_lifetime(&container.container_id).await {
            sandbox.set_lifetime(Some(lifetime));
        }
        sandbox.kernel(Duration::from_secs(10)).await?;
        tracing::info!(sandbox_id = %sandbox.id(), "reattached");
        self.sandboxes
            .insert(sandbox.id().to_string(), Arc::new(sandbox));
        Ok(())
    }

    /// Destroys sandboxes idle longer than their limit ([`Engine::idle_limit`]). Returns their
    /// ids.
    pub async fn reap_idle(&self) -> Vec<String> {
        let idle: Vec<String> = self
            .sandboxes
            .iter()
            .filter(|entry| {
                let sandbox = entry.value();
                !sandbox.is_busy() && sandbox.idle_for() > self.idle_limit(sandbox)
            })
            .map(|entry| entry.key().clone())
            .collect();
        let mut reaped = Vec::new();
        for id in idle {
            match self.remove(&id).await {
                Ok(()) => reaped.push(id),
                Err(error) => {
                    tracing::warn!(sandbox_id = %id, %error, "could not reap idle sandbox")
                }
            }
        }
        reaped
    }

    /// Runs the idle reaper every cleanup interval until shutdown.
    pub fn spawn_reaper(self: &Arc<Self>) {
        let engine = self.clone();
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            let mut ticks = tokio::time::interval(engine.config.cleanup_interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = ticks.tick() => {
                        let reaped = engine.reap_idle().await;
                        if !reaped.is_empty() {
                            tracing::info!(count = reaped.len(), "reaped idle sandboxes");
                        }
                    }
                }
            }
        });
    }

    /// Whether the container runtime answers.
    /// Whether the engine can take new work: not shutting down, Docker reachable, the image
    /// present with this build's version. Checked within 2 s; an answer is reused for 2 s.
    pub async fn readiness(&self) -> Readiness {
        self.readiness
            .get(self.shutdown.is_cancelled(), async {
                self.backend.ping().await?;
                self.check_image().await
            })
            .await
    }

    /// Whether Docker answers a ping within 2 s (`/health`: a hung Docker must not hang it).
    pub async fn backend_reachable(&self) -> bool {
        matches!(
            tokio::time::timeout(Duration::from_secs(2), self.backend.ping()).await,
            Ok(Ok(()))
        )
    }

    /// Checks every idle sandbox's kernel heartbeat every few seconds until shutdown, so
    /// `status` shows `dead` for a kernel that stopped answering.
    pub fn spawn_liveness(self: &Arc<Self>) {
        let engine = self.clone();
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            let mut ticks = tokio::time::interval(LIVENESS_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = ticks.tick() => {
                        let sandboxes: Vec<Arc<Sandbox>> = engine.sandboxes.iter().map(|entry| entry.value().clone()).collect();
                        // Side by side: a sandbox whose kernel must be reconnected or restarted
                        // does not delay the check of the others.
                        futures::stream::iter(sandboxes)
                            .for_each_concurrent(PARALLEL_CHECKS, |sandbox| async move {
                                if !sandbox.check_alive(LIVENESS_TIMEOUT).await {
                                    tracing::warn!(sandbox_id = %sandbox.id(), "kernel not reachable");
                                }
                            })
                            .await;
                    }
                }
            }
        });
    }

    /// Stops background work. With `destroy_sandboxes`, removes every sandbox too; otherwise they
    /// keep running for the next start to reattach. Gives up after [`SHUTDOWN_TIMEOUT`].
    pub async fn shutdown(&self, destroy_sandboxes: bool) {
        self.shutdown_until(
            destroy_sandboxes,
            tokio::time::Instant::now() + SHUTDOWN_TIMEOUT,
        )
        .await;
    }

    /// [`Engine::shutdown`], done by `deadline`: running executions are interrupted and guest
    /// processes stopped (killed when they do not exit) side by side, then sandboxes are
    /// destroyed if asked. Whatever is still running at the deadline is left; the next start
    /// reattaches the sandboxes. Returns whether everything finished in time.
    pub async fn shutdown_until(
        &self,
        destroy_sandboxes: bool,
        deadline: tokio::time::Instant,
    ) -> bool {
        self.shutdown.cancel();
        self.starts.close();
        for entry in self.sandboxes.iter() {
            entry.value().cancel();
        }
        self.tasks.close();
        // Destroying the containers stops whatever still runs in them: keep half the time for it.
        let wait_until = if destroy_sandboxes {
            let now = tokio::time::Instant::now();
            now + deadline.saturating_duration_since(now) / 2
        } else {
            deadline
        };
        let stopped = tokio::time::timeout_at(wait_until, async {
            tokio::join!(
                self.guests.close_all(self.backend.as_ref()),
                self.tasks.wait()
            )
        })
        .await
        .is_ok();
        if !stopped {
            tracing::warn!(
                tasks = self.tasks.len(),
                "executions or guest processes did not stop by the shutdown deadline"
            );
        }
        if !destroy_sandboxes {
            return stopped;
        }
        let members: Vec<String> = self
            .pool
            .drain()
            .into_iter()
            .map(|member| member.container.container_id)
            .collect();
        let ids: Vec<String> = self
            .sandboxes
            .iter()
            .map(|entry| entry.key().clone())
            .collect();
        let destroyed = tokio::time::timeout_at(deadline, async {
            futures::stream::iter(members)
                .for_each_concurrent(PARALLEL_CHECKS, |container_id| async move {
                    if let Err(error) = self.backend.destroy(&container_id).await {
                        tracing::warn!(container = %container_id, %error, "could not destroy a warm-pool sandbox at shutdown");
                    }
                })
                .await;
            futures::stream::iter(ids)
                .for_each_concurrent(PARALLEL_CHECKS, |id| async move {
                    if let Err(error) = self.remove(&id).await {
                        tracing::warn!(sandbox_id = %id, %error, "could not destroy sandbox at shutdown");
                    }
                })
                .await
        })
        .await
        .is_ok();
        // A member a refill or a claim was still busy with when the first drain ran.
        for member in self.pool.drain() {
            if let Err(error) = self.backend.destroy(&member.container.container_id).await {
                tracing::warn!(container = %member.container.container_id, %error, "could not destroy a warm-pool sandbox at shutdown");
            }
        }
        if !destroyed {
            tracing::warn!(
                left = self.sandboxes.len(),
                "sandboxes not destroyed by the shutdown deadline; the next start reattaches them"
            );
        }
        stopped && destroyed
    }
}

/// `sbx_` plus 20 characters of lowercase base32 (100 random bits).
/// What a warm-pool member was started with (its env, limits and egress policy), so that one
/// started under another configuration is not handed out: a digest, kept in a label.
pub(super) fn pool_fingerprint(env: &[String], limits: &Limits, egress_state: &[u8]) -> String {
    use sha2::Digest;
    let mut digest = sha2::Sha256::new();
    for variable in env {
        digest.update(variable.as_bytes());
        digest.update([0]);
    }
    digest.update(format!("{limits:?}").as_bytes());
    digest.update([0]);
    digest.update(egress_state);
    hex::encode(&digest.finalize()[..16])
}

/// The container name of sandbox `id` (also what a claimed warm-pool container is renamed to).
pub(super) fn sandbox_name(id: &str) -> String {
    format!("kernelbox-{}", id.replace('_', "-"))
}

fn new_sandbox_id() -> String {
    let mut bytes = [0u8; 15];
    rand::rng().fill_bytes(&mut bytes);
    let encoded = data_encoding::BASE32_NOPAD
        .encode(&bytes)
        .to_ascii_lowercase();
    format!("sbx_{}", &encoded[..20])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_ids_have_the_documented_shape() {
        let id = new_sandbox_id();
        assert!(id.starts_with("sbx_"));
        assert_eq!(id.len(), 24);
        assert!(
            id[4..]
                .chars()
                .all(|c| c.is_ascii_lowercase() || ('2'..='7').contains(&c))
        );
        assert_ne!(id, new_sandbox_id());
    }
}
