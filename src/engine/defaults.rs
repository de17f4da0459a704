//! Default sandboxes: each tenant has at most one, made on first use for calls that name no
//! sandbox, and shared by all of that tenant's such calls, whichever connection or protocol
//! session they come over. It is an ordinary sandbox tagged [`DEFAULT_TAG`] (so it counts toward
//! the tenant's quota, shows in listings and survives a server restart), and the idle reaper
//! destroys it after `default_sandbox_idle`, sooner than other sandboxes.
//!
//! When the server's cap on live sandboxes is reached, making a tenant's default sandbox
//! reclaims an idle default sandbox of another tenant instead of refusing: default sandboxes are
//! the reclaimable kind, and one tenant's calls are never refused because of another tenant's
//! defaults. Only a tenant holding less than its fair share of the cap (the cap over the tenants
//! with live sandboxes, itself included) may reclaim, and the default taken is that of the tenant
//! holding the most, the least recently used among theirs: a tenant that fills the cap with
//! sandboxes of its own cannot take the others' defaults one after another.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::error::EngineError;
use super::lifecycle::{CreateSandbox, Engine};
use super::sandbox::{Sandbox, SandboxInfo};
use super::tenant::Tenant;

/// The tag of a default sandbox.
pub const DEFAULT_TAG: &str = "default";

/// Whether `sandbox` is a tenant's default sandbox.
pub(super) fn is_default(sandbox: &Sandbox) -> bool {
    sandbox.tag() == Some(DEFAULT_TAG)
}

/// A tenant's default sandbox, and whether this call made it.
#[derive(Debug, Clone)]
pub struct DefaultSandbox {
    pub info: SandboxInfo,
    pub created: bool,
}

impl Engine {
    /// How long `sandbox` may idle before the reaper destroys it: a default sandbox (made for
    /// calls that name none) less long than one a client asked for.
    pub fn idle_limit(&self, sandbox: &Sandbox) -> Duration {
        if is_default(sandbox) {
            self.config.default_sandbox_idle
        } else {
            self.config.max_idle
        }
    }

    /// The default sandbox of `tenant`: the live one, or a new one.
    pub async fn default_sandbox(
        self: &Arc<Self>,
        tenant: &Tenant,
    ) -> Result<DefaultSandbox, EngineError> {
        let lock = self
            .default_locks
            .entry(tenant.clone())
            .or_default()
            .value()
            .clone();
        let _held = lock.lock().await;
        if let Some(sandbox) = self.find_default(tenant) {
            return Ok(DefaultSandbox {
                info: sandbox.info(),
                created: false,
            });
        }
        let request = || CreateSandbox {
            tag: Some(DEFAULT_TAG.into()),
            ..CreateSandbox::new(tenant.clone())
        };
        let info = match self.create(request()).await {
            Err(EngineError::TooManySandboxes { limit }) => {
                if !self.reclaim_one_default(tenant).await {
                    return Err(EngineError::TooManySandboxes { limit });
                }
                self.create(request()).await?
            }
            other => other?,
        };
        tracing::info!(sandbox_id = %info.id, %tenant, "default sandbox created");
        Ok(DefaultSandbox {
            info,
            created: true,
        })
    }

    /// The tenant's live default sandbox (the most recently used, should there be several).
    fn find_default(&self, tenant: &Tenant) -> Option<Arc<Sandbox>> {
        self.all_sandboxes()
            .into_iter()
            .filter(|sandbox| sandbox.tenant() == tenant && is_default(sandbox))
            .min_by_key(|sandbox| sandbox.idle_for())
    }

    /// Destroys an idle default sandbox of another tenant than `tenant`, when `tenant` holds less
    /// than its fair share of the cap: of the tenant holding the most sandboxes, the least
    /// recently used. Returns whether one was destroyed.
    async fn reclaim_one_default(&self, tenant: &Tenant) -> bool {
        let sandboxes = self.all_sandboxes();
        let mut held: HashMap<&Tenant, usize> = HashMap::new();
        for sandbox in &sandboxes {
            *held.entry(sandbox.tenant()).or_default() += 1;
        }
        let own = held.get(tenant).copied().unwrap_or(0);
        let tenants = held.len() + usize::from(own == 0);
        let fair_share = self.config.max_sandboxes.div_ceil(tenants.max(1));
        if own >= fair_share {
            tracing::info!(%tenant, own, fair_share, "not reclaiming another tenant's default sandbox: this tenant holds its share of the cap");
            return false;
        }
        let victim = sandboxes
            .iter()
            .filter(|sandbox| {
                sandbox.tenant() != tenant && is_default(sandbox) && !sandbox.is_busy()
            })
            .max_by_key(|sandbox| {
                (
                    held.get(sandbox.tenant()).copied().unwrap_or(0),
                    sandbox.idle_for(),
                )
            })
            .cloned();
        drop(sandboxes);
        let Some(victim) = victim else {
            return false;
        };
        let id = victim.id().to_string();
        drop(victim);
        match self.remove(&id).await {
            Ok(()) => {
                tracing::info!(sandbox_id = %id, "reclaimed the least recently used default sandbox at the server's cap");
                true
            }
            Err(error) => {
                tracing::warn!(sandbox_id = %id, %error, "could not reclaim a default sandbox");
                false
            }
        }
    }
}
