//! The sandboxes' network, as the engine drives it: the firewall a new sandbox gets, and reading
//! and replacing a sandbox's firewall. What a firewall is lives in `firewall`.

use super::error::EngineError;
use super::firewall::{EgressRequest, Firewall};
use super::lifecycle::Engine;
use super::tenant::Tenant;

impl Engine {
    /// The firewall a new sandbox gets.
    pub(super) fn firewall_for(
        &self,
        request: Option<&EgressRequest>,
    ) -> Result<Firewall, EngineError> {
        match request {
            None => Ok(Firewall::operator(&self.config.egress)),
            Some(request) => {
                Firewall::for_request(request, &self.config.egress, &self.config.egress_denied)
            }
        }
    }

    /// A sandbox's firewall.
    pub fn firewall(&self, id: &str, tenant: &Tenant) -> Result<Firewall, EngineError> {
        Ok(self.use_sandbox(id, tenant)?.firewall())
    }

    /// Replaces a sandbox's firewall; returns once the new one is in force.
    pub async fn set_firewall(
        &self,
        id: &str,
        tenant: &Tenant,
        request: EgressRequest,
    ) -> Result<Firewall, EngineError> {
        self.on_live(id, tenant, async |sandbox| {
            let firewall = self.firewall_for(Some(&request))?;
            self.backend
                .apply_egress(sandbox.container_id(), &firewall.policy, &firewall.state())
                .await?;
            tracing::info!(sandbox_id = %id, source = ?firewall.source, "egress policy applied");
            sandbox.set_firewall(firewall.clone());
            Ok(firewall)
        })
        .await
    }
}
