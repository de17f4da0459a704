//! The engine's side of the warm pool ([`super::warm_pool`]): `--warm-pool N` keeps N sandboxes
//! of the default configuration started, kernels ready; a create that fits takes one.
//!
//! - **Fits**: no image but the default, no limits, no network policy, no dependencies, no env.
//!   Env cannot be given faithfully to a kernel that already runs (what it imported at start
//!   saw the old environment), so such a create starts cold. Tag, metadata and a lifetime are
//!   given to a claimed sandbox like to a new one.
//! - **Claiming** renames the container (one daemon call, durable at once) and then keeps the
//!   binding (owner, tag, metadata, lifetime) in its `binding` record. A restarted server gives
//!   an unclaimed member back to the pool, a claimed one with its binding back to its owner, and
//!   removes a claimed one whose binding was never stored (the server stopped in between): it
//!   is never handed to anyone else.
//! - **Used once**: a claimed sandbox is its caller's until it is destroyed, like any other.
//! - **Refilling** runs in the background, one start at a time and only while no caller waits
//!   for a turn to start, so it never delays a caller's create by more than the one start it
//!   may have begun.
//! - **Limits**: members count toward no quota and no `--max-sandboxes` (the machine holds up to
//!   `--max-sandboxes` plus N); they are not reaped as idle; they are rebuilt when the image
//!   behind the configured name changes.

use std::sync::Arc;
use std::time::Duration;

use super::error::EngineError;
use super::labels;
use super::lifecycle::{CreateSandbox, Engine, sandbox_name};
use super::lifetimes::Lifetime;
use super::sandbox::Sandbox;
use super::tenant::Tenant;
use super::warm_pool::{Created, PoolMember};
use crate::backend::ContainerInfo;

/// The record that binds a claimed pool sandbox to its caller.
const BINDING_RECORD: &str = "binding";
/// How long a refill waits after a failed start before it tries again.
const REFILL_BACKOFF: Duration = Duration::from_secs(5);
/// How long a new member's warm-up may take.
const WARM_UP: Duration = Duration::from_secs(10);
/// What the warm-up runs: the path every execution takes, and nothing that leaves a trace.
const WARM_UP_CODE: &str = "pass";
/// How long a reattached member's kernel has to answer.
const REATTACH_KERNEL: Duration = Duration::from_secs(10);

impl Engine {
    /// Whether `request` can be served by a warm-pool sandbox.
    pub(super) fn fits_warm_pool(&self, request: &CreateSandbox) -> bool {
        self.config.warm_pool > 0
            && request
                .image
                .as_deref()
                .is_none_or(|image| image == self.config.image)
            && request.memory_mb.is_none()
            && request.cpus.is_none()
            && request.pids.is_none()
            && request.network.is_none()
            && request.dependencies.is_empty()
            && request.env.is_empty()
    }

    /// Claims a ready pool member for `request`'s caller; `None` when none is ready (or none
    /// could be claimed), and the create starts cold.
    pub(super) async fn claim_pooled(
        &self,
        request: &CreateSandbox,
        timeout: Option<Duration>,
    ) -> Option<Arc<Sandbox>> {
        while let Some(member) = self.pool.take() {
            let id = member.sandbox.id().to_string();
            if member.sandbox.status() == super::sandbox::SandboxStatus::Dead {
                tracing::warn!(sandbox_id = %id, "a pool member's kernel is gone; removing it");
                self.discard_member(member);
                continue;
            }
            // Durable before anything else: from here on a restarted server never gives this
            // container to the pool again.
            if let Err(error) = self
                .backend
                .rename(&member.container.container_id, &sandbox_name(&id))
                .await
            {
                tracing::warn!(sandbox_id = %id, %error, "cannot claim a pool member; removing it");
                self.discard_member(member);
                continue;
            }
            let created_at = chrono::Utc::now();
            let binding = labels::binding(&labels::SandboxLabels {
                id: &id,
                instance: &self.config.instance,
                owner: request.tenant.label(),
                tag: request.tag.as_deref(),
                created_at,
                image: &member.image,
                key: "",
                metadata: &request.metadata,
                lifetime: timeout.map(Lifetime::from_now),
            });
            let mut container = member.container.clone();
            container.labels.extend(binding.clone());
            let Some(sandbox) = Sandbox::from_container(
                &container,
                &member.image,
                self.kernel_link(),
                member.firewall.clone(),
            ) else {
                self.discard_member(member);
                continue;
            };
            sandbox.adopt_kernel(&member.sandbox);
            self.keep_binding(&member.container.container_id, &id, &binding);
            tracing::info!(sandbox_id = %id, "claimed from the warm pool");
            return Some(Arc::new(sandbox));
        }
        None
    }

    /// Stores a claimed sandbox's binding after the caller has its answer: the rename already
    /// keeps it from anyone else.
    fn keep_binding(
        &self,
        container_id: &str,
        id: &str,
        binding: &std::collections::HashMap<String, String>,
    ) {
        let backend = self.backend.clone();
        let container_id = container_id.to_string();
        let id = id.to_string();
        let record = serde_json::to_vec(binding).unwrap_or_default();
        self.tasks.spawn(async move {
            if let Err(error) = backend
                .put_record(&container_id, BINDING_RECORD, &record)
                .await
            {
                tracing::warn!(sandbox_id = %id, %error, "cannot store a claimed pool sandbox's binding: a restart will remove it");
            }
        });
    }

    /// Removes a member that will not be claimed, in the background.
    fn discard_member(&self, member: PoolMember) {
        let backend = self.backend.clone();
        member.sandbox.cancel();
        self.tasks.spawn(async move {
            if let Err(error) = backend.destroy(&member.container.container_id).await {
                tracing::warn!(container = %member.container.container_id, %error, "cannot remove a pool member");
            }
        });
    }

    /// Runs a first execution in a new member's kernel, silently (the counter stays at 0, no
    /// output, no history), so that its caller's first execution does not pay for the kernel's
    /// first-run setup.
    pub(super) async fn warm_up(&self, sandbox: &Sandbox) {
        let warmed = tokio::time::timeout(WARM_UP, async {
            let kernel = sandbox.kernel(self.config.kernel_ready_timeout).await?;
            let mut execution = kernel
                .execute_silently(WARM_UP_CODE)
                .await
                .map_err(EngineError::Kernel)?;
            while let Some(event) = execution.next().await.map_err(EngineError::Kernel)? {
                if matches!(event, crate::kernel::KernelEvent::Done { .. }) {
                    break;
                }
            }
            Ok::<_, EngineError>(())
        })
        .await;
        match warmed {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "a warm-pool kernel's warm-up failed"),
            Err(_) => tracing::warn!("a warm-pool kernel's warm-up did not finish in time"),
        }
    }

    /// How many pool members are ready, as it changes.
    pub fn warm_pool(&self) -> tokio::sync::watch::Receiver<usize> {
        self.pool.watch()
    }

    /// Keeps the pool at `--warm-pool` members until shutdown (nothing when it is 0).
    pub fn spawn_warm_pool(self: &Arc<Self>) {
        if self.config.warm_pool == 0 {
            return;
        }
        let engine = self.clone();
        self.tasks
            .spawn(async move { engine.keep_pool_filled().await });
    }

    async fn keep_pool_filled(self: Arc<Self>) {
        let mut checks = tokio::time::interval(self.config.cleanup_interval);
        checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut queue = self.start_queue();
        loop {
            self.prune_warm_pool().await;
            while self.pool.len() < self.config.warm_pool && !self.shutdown.is_cancelled() {
                // Callers first: no refill starts while one of them waits for a turn.
                while queue.borrow_and_update().waiting > 0 {
                    tokio::select! {
                        changed = queue.changed() => if changed.is_err() { return },
                        () = self.shutdown.cancelled() => return,
                    }
                }
                match self
                    .create_to_the_end(CreateSandbox::new(Tenant::Local), None, None)
                    .await
                {
                    Ok(Created::Pooled(member)) => self.pool.push(member),
                    Ok(Created::Handed(_)) => {}
                    Err(error) => {
                        tracing::warn!(%error, "cannot start a warm-pool sandbox; trying again later");
                        tokio::select! {
                            () = tokio::time::sleep(REFILL_BACKOFF) => {}
                            () = self.shutdown.cancelled() => return,
                        }
                    }
                }
            }
            tokio::select! {
                () = self.pool.member_wanted() => {}
                _ = checks.tick() => {}
                () = self.shutdown.cancelled() => return,
            }
        }
    }

    /// Removes members whose kernel is gone or whose image is no longer the one the configured
    /// name points to; the refill replaces them.
    pub async fn prune_warm_pool(&self) {
        let current = match self.backend.image_id(&self.config.image).await {
            Ok(current) => current,
            Err(error) => {
                tracing::warn!(%error, "cannot inspect the image; keeping the pool as it is");
                return;
            }
        };
        let stale = self.pool.take_where(|member| {
            current.as_deref() != Some(member.container.image_id.as_str())
                || member.sandbox.status() == super::sandbox::SandboxStatus::Dead
        });
        if !stale.is_empty() {
            tracing::info!(
                count = stale.len(),
                "removing warm-pool sandboxes of an old image or with no kernel"
            );
        }
        for member in stale {
            self.discard_member(member);
        }
    }

    /// A pool container found at reattach: an unclaimed one goes back to the pool (`None`), a
    /// claimed one comes back with its binding laid over its labels. One claimed but never bound
    /// is an error, and the caller removes it.
    pub(super) async fn reattach_pooled(
        &self,
        container: &ContainerInfo,
    ) -> Result<Option<ContainerInfo>, EngineError> {
        if container.name.starts_with(labels::POOL_NAME_PREFIX) {
            let current = self.backend.image_id(&self.config.image).await?;
            if current.as_deref() != Some(container.image_id.as_str()) {
                return Err(EngineError::ImageMissing {
                    image: self.config.image.clone(),
                });
            }
            let image = container
                .labels
                .get(labels::IMAGE)
                .cloned()
                .unwrap_or_default();
            let firewall = self.firewall_for(None)?;
            let sandbox =
                Sandbox::from_container(container, &image, self.kernel_link(), firewall.clone())
                    .ok_or(EngineError::Kernel(crate::kernel::KernelError::Closed))?;
            sandbox.kernel(REATTACH_KERNEL).await?;
            self.pool.push(PoolMember {
                container: container.clone(),
                image,
                firewall,
                sandbox: Arc::new(sandbox),
            });
            return Ok(None);
        }
        let record = self
            .backend
            .record(&container.container_id, BINDING_RECORD)
            .await?
            .ok_or(EngineError::Kernel(crate::kernel::KernelError::Closed))?;
        let binding: std::collections::HashMap<String, String> = serde_json::from_slice(&record)
            .map_err(|_| EngineError::Kernel(crate::kernel::KernelError::Closed))?;
        let mut bound = container.clone();
        for (name, value) in binding {
            if labels::BINDING.contains(&name.as_str()) {
                bound.labels.insert(name, value);
            }
        }
        Ok(Some(bound))
    }
}
