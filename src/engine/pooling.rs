//! The engine's side of the warm pool ([`super::warm_pool`]): `--warm-pool N` keeps N sandboxes
//! of the default configuration started, kernels ready; a create that fits takes one.
//!
//! - **Fits**: no image but the default, no dependencies, no env. Env cannot be given faithfully
//!   to a kernel that already runs (what it imported at start saw the old environment), so such
//!   a create starts cold. Tag, metadata and a lifetime are given to a claimed sandbox like to a
//!   new one; so are limits (memory, CPUs, processes: `docker update`) and a network policy (the
//!   sidecar's firewall), both in force before the caller has the sandbox. A claim that cannot
//!   apply them removes the member and starts cold.
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
use super::firewall::Firewall;
use super::labels;
use super::lifecycle::{CreateSandbox, Engine, pool_fingerprint, sandbox_name};
use super::lifetimes::Lifetime;
use super::sandbox::Sandbox;
use super::tenant::Tenant;
use super::warm_pool::{Created, PoolMember, Reattached};
use crate::backend::{ContainerInfo, Limits};

/// The record that binds a claimed pool sandbox to its caller.
const BINDING_RECORD: &str = "binding";
/// How often storing a binding is tried, and how long apart.
const BINDING_ATTEMPTS: u32 = 3;
/// How long after a claim its binding is written (measured: written at once, it made the
/// caller's first `1+1` 10–20 ms instead of 7–9). A server that dies in between removes the
/// sandbox at its restart, as for a binding never stored.
const BINDING_DEFER: Duration = Duration::from_millis(200);
const BINDING_RETRY: Duration = Duration::from_secs(1);
/// How long a member's kernel has to answer the periodic check.
const HEALTH_CHECK: Duration = Duration::from_secs(5);
/// How long a refill waits after a failed start before it tries again.
const REFILL_BACKOFF: Duration = Duration::from_secs(5);
/// How long a new member's warm-up may take.
const WARM_UP: Duration = Duration::from_secs(10);
/// What the warm-up runs: the path every execution takes, and a result's trip through the
/// display formatters, which do first-time setup of their own (about 3 ms off the caller's first
/// execution, measured), without a trace: silent, no history, no `_`.
const WARM_UP_CODE: &str = "get_ipython().display_formatter.format(1 + 1)";
/// How long after a claim the refill keeps off the machine: a new member's start takes both
/// cores of a small host for about a second, and the caller who just claimed one runs its first
/// executions now (measured: a refill started at the claim made the first `1+1` 20–46 ms
/// instead of about 5).
const REFILL_SETTLE: Duration = Duration::from_millis(750);
/// Claims that keep coming defer a refill by at most this much, so a busy server still gets
/// its pool back.
const REFILL_MAX_DEFER: Duration = Duration::from_secs(5);
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
            && request.dependencies.is_empty()
            && request.env.is_empty()
    }

    /// Claims a ready pool member for `request`'s caller, with its limits and firewall in
    /// force; `None` when none is ready (or none could be claimed), and the create starts cold.
    pub(super) async fn claim_pooled(
        &self,
        request: &CreateSandbox,
        timeout: Option<Duration>,
        limits: &Limits,
        firewall: &Firewall,
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
            // What the caller asked for differently from the pool's configuration. A failure
            // here would likely fail for every member alike: this one goes (it is renamed, so
            // it is nobody's), and the create starts cold rather than try the next.
            if let Err(error) = self.fit_member(&member, limits, firewall).await {
                tracing::warn!(sandbox_id = %id, %error, "cannot give a pool member the limits or network asked for; removing it and starting cold");
                self.discard_member(member);
                return None;
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
                firewall.clone(),
            ) else {
                self.discard_member(member);
                continue;
            };
            sandbox.adopt_kernel(&member.sandbox);
            let sandbox = Arc::new(sandbox);
            self.keep_binding(&sandbox, &binding);
            tracing::info!(sandbox_id = %id, "claimed from the warm pool");
            return Some(sandbox);
        }
        None
    }

    /// Gives a claimed member the limits and the firewall its caller asked for, where they
    /// differ from the ones it was started with.
    async fn fit_member(
        &self,
        member: &PoolMember,
        limits: &Limits,
        firewall: &Firewall,
    ) -> Result<(), EngineError> {
        let container_id = &member.container.container_id;
        if *limits != self.config.limits {
            self.backend.update_limits(container_id, limits).await?;
        }
        let state = firewall.state();
        if state != member.firewall.state() {
            self.backend
                .apply_egress(container_id, &firewall.policy, &state)
                .await?;
        }
        Ok(())
    }

    /// Stores a claimed sandbox's binding after the caller has its answer (the rename already
    /// keeps it from anyone else), trying a few times. Should it never be stored, a restarted
    /// server removes the sandbox rather than guess whose it is. A sandbox destroyed before its
    /// binding is stored needs none.
    fn keep_binding(
        &self,
        sandbox: &Arc<Sandbox>,
        binding: &std::collections::HashMap<String, String>,
    ) {
        let backend = self.backend.clone();
        let sandbox = sandbox.clone();
        let container_id = sandbox.container_id().to_string();
        let id = sandbox.id().to_string();
        let record = binding_record(binding);
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            // Not under the caller's first executions: the write is a `docker exec` in the
            // sidecar, whose start costs the daemon and runc more CPU than those executions take.
            // A shutdown writes it at once.
            tokio::select! {
                () = tokio::time::sleep(BINDING_DEFER) => {}
                () = shutdown.cancelled() => {}
            }
            for attempt in 1..=BINDING_ATTEMPTS {
                match backend
                    .put_record(&container_id, BINDING_RECORD, &record)
                    .await
                {
                    Ok(()) => return,
                    // Destroyed by its owner meanwhile (not stopped with the server): nothing
                    // is left to bind.
                    Err(error) if sandbox.is_cancelled() && !shutdown.is_cancelled() => {
                        tracing::debug!(sandbox_id = %id, %error, "a claimed pool sandbox was destroyed before its binding was stored");
                        return;
                    }
                    Err(error) if attempt == BINDING_ATTEMPTS => {
                        tracing::error!(sandbox_id = %id, %error, "cannot store a claimed pool sandbox's binding: a restart will remove the sandbox");
                    }
                    Err(error) => {
                        tracing::warn!(sandbox_id = %id, %error, attempt, "cannot store a claimed pool sandbox's binding yet; trying again");
                        tokio::select! {
                            () = tokio::time::sleep(BINDING_RETRY) => {}
                            () = shutdown.cancelled() => {}
                        }
                    }
                }
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
    pub(super) async fn warm_up(&self, sandbox: &Sandbox) -> bool {
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
            Ok(Ok(())) => true,
            Ok(Err(error)) => {
                tracing::warn!(%error, "a warm-pool kernel's warm-up failed; not pooling it");
                false
            }
            Err(_) => {
                tracing::warn!(
                    "a warm-pool kernel's warm-up did not finish in time; not pooling it"
                );
                false
            }
        }
    }

    /// The configuration digest a member started now would carry ([`pool_fingerprint`]).
    fn current_pool_config(&self) -> Result<String, EngineError> {
        let env = self.sandbox_env(&std::collections::HashMap::new())?;
        let firewall = self.firewall_for(None)?;
        Ok(pool_fingerprint(
            &env,
            &self.config.limits,
            &firewall.state(),
        ))
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
                // Callers first: no refill starts while one of them waits for a turn, nor right
                // after a claim (up to a limit, when claims keep coming).
                let deferred_until = tokio::time::Instant::now() + REFILL_MAX_DEFER;
                loop {
                    let settle = self.pool.settling_for(REFILL_SETTLE);
                    if settle.is_zero() || tokio::time::Instant::now() >= deferred_until {
                        break;
                    }
                    let until = (tokio::time::Instant::now() + settle).min(deferred_until);
                    tokio::select! {
                        () = tokio::time::sleep_until(until) => {}
                        () = self.shutdown.cancelled() => return,
                    }
                }
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

    /// Removes members whose kernel does not answer, whose image is no longer the one the
    /// configured name points to, or that were started under another configuration; the refill
    /// replaces them.
    pub async fn prune_warm_pool(&self) {
        let current = match (
            self.backend.image_id(&self.config.image).await,
            self.current_pool_config(),
        ) {
            (Ok(image), Ok(config)) => (image, config),
            (Err(error), _) => {
                tracing::warn!(%error, "cannot inspect the image; keeping the pool as it is");
                return;
            }
            (_, Err(error)) => {
                tracing::warn!(%error, "cannot work out the pool's configuration; keeping it as it is");
                return;
            }
        };
        // Asked without taking them out, so that claims meanwhile still find them.
        let mut unanswered = Vec::new();
        for (container_id, sandbox) in self.pool.sandboxes() {
            if !sandbox.check_alive(HEALTH_CHECK).await {
                unanswered.push(container_id);
            }
        }
        let stale = self.pool.take_where(|member| {
            !member_is_current(&member.container, &current)
                || unanswered.contains(&member.container.container_id)
        });
        if !stale.is_empty() {
            tracing::info!(
                count = stale.len(),
                "removing warm-pool sandboxes of an old image or configuration, or with no kernel"
            );
        }
        for member in stale {
            self.discard_member(member);
        }
    }

    /// A pool container found at reattach: an unclaimed one goes back to the pool when it is
    /// current and the pool has room (else it is an error and the caller removes it); a claimed
    /// one comes back with its binding laid over its labels. One claimed but never bound is an
    /// error too; one whose binding cannot be read now is left alone for the next start.
    pub(super) async fn reattach_pooled(
        &self,
        container: &ContainerInfo,
    ) -> Result<Reattached, EngineError> {
        if container.name.starts_with(labels::POOL_NAME_PREFIX) {
            let current = (
                self.backend.image_id(&self.config.image).await?,
                self.current_pool_config()?,
            );
            if !member_is_current(container, &current) {
                return Err(EngineError::PoolMemberStale);
            }
            let image = container
                .labels
                .get(labels::IMAGE)
                .cloned()
                .unwrap_or_default();
            // The policy the sidecar enforces, as for any sandbox.
            let firewall = self.enforced_firewall(&container.container_id).await?;
            let sandbox =
                Sandbox::from_container(container, &image, self.kernel_link(), firewall.clone())
                    .ok_or(EngineError::Kernel(crate::kernel::KernelError::Closed))?;
            sandbox.kernel(REATTACH_KERNEL).await?;
            let member = PoolMember {
                container: container.clone(),
                image,
                firewall,
                sandbox: Arc::new(sandbox),
            };
            return if self.pool.push_within(member, self.config.warm_pool) {
                Ok(Reattached::Pooled)
            } else {
                Err(EngineError::PoolMemberStale)
            };
        }
        let record = match self
            .backend
            .record(&container.container_id, BINDING_RECORD)
            .await
        {
            Ok(Some(record)) => record,
            Ok(None) => return Err(EngineError::PoolClaimUnbound),
            Err(error) => {
                tracing::warn!(container = %container.container_id, %error, "cannot read a claimed pool sandbox's binding; leaving it for the next start");
                return Ok(Reattached::LeftAlone);
            }
        };
        let binding = parse_binding(&record).ok_or(EngineError::PoolClaimUnbound)?;
        let mut bound = container.clone();
        bound.labels.extend(binding);
        Ok(Reattached::Bound(bound))
    }
}

/// Whether a member runs the current image under the current configuration.
fn member_is_current(container: &ContainerInfo, current: &(Option<String>, String)) -> bool {
    current.0.as_deref() == Some(container.image_id.as_str())
        && container.labels.get(labels::POOL_CONFIG) == Some(&current.1)
}

/// The binding as a record: the metadata as the object it is (not a string inside a string,
/// whose escaping could double its size), the other labels as strings.
fn binding_record(binding: &std::collections::HashMap<String, String>) -> Vec<u8> {
    let record: serde_json::Map<String, serde_json::Value> = binding
        .iter()
        .map(|(name, value)| {
            let value = if name == labels::METADATA {
                serde_json::from_str(value).unwrap_or(serde_json::Value::Null)
            } else {
                serde_json::Value::String(value.clone())
            };
            (name.clone(), value)
        })
        .collect();
    serde_json::to_vec(&record).unwrap_or_default()
}

/// The labels a binding record lays over: only [`labels::BINDING`] ones, as the server wrote
/// them; `None` when the record is not one.
fn parse_binding(record: &[u8]) -> Option<std::collections::HashMap<String, String>> {
    let record: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(record).ok()?;
    let mut labels = std::collections::HashMap::new();
    for (name, value) in record {
        if !labels::BINDING.contains(&name.as_str()) {
            continue;
        }
        let value = match value {
            serde_json::Value::String(value) if name != labels::METADATA => value,
            serde_json::Value::Object(_) if name == labels::METADATA => value.to_string(),
            _ => return None,
        };
        labels.insert(name, value);
    }
    Some(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binding_round_trips_and_lays_over_nothing_else() {
        let binding = std::collections::HashMap::from([
            (
                labels::OWNER.to_string(),
                "key_0123456789abcdef".to_string(),
            ),
            (labels::TAG.to_string(), "t".to_string()),
            (
                labels::METADATA.to_string(),
                r#"{"quote":"\"\"\"","k":"v"}"#.to_string(),
            ),
        ]);
        let record = binding_record(&binding);
        let parsed = parse_binding(&record).expect("a binding");
        assert_eq!(parsed[labels::OWNER], binding[labels::OWNER]);
        assert_eq!(parsed[labels::TAG], "t");
        let metadata: serde_json::Value =
            serde_json::from_str(&parsed[labels::METADATA]).expect("JSON");
        assert_eq!(metadata["k"], "v");
        // A record naming labels outside the binding changes nothing of them.
        let forged = br#"{"io.kernelbox.id":"sbx_other","io.kernelbox.kernel-key":"k","io.kernelbox.tag":"x"}"#;
        let parsed = parse_binding(forged).expect("a binding");
        assert_eq!(parsed.len(), 1);
        assert!(parse_binding(b"not json").is_none());
        assert!(parse_binding(br#"{"io.kernelbox.owner": 3}"#).is_none());
    }

    #[test]
    fn escaped_metadata_at_its_limit_fits_a_record() {
        // 4096 bytes of quotes, the metadata limit's worst case for escaping.
        let value = "\"".repeat(4000);
        let metadata = serde_json::json!({ "k": value }).to_string();
        let binding = std::collections::HashMap::from([(labels::METADATA.to_string(), metadata)]);
        assert!(binding_record(&binding).len() <= crate::backend::MAX_RECORD_BYTES);
    }
}
