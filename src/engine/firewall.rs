//! A sandbox's firewall: the egress policy in force, and how it came to be.
//!
//! Every sandbox starts under the operator's policy (`--egress`). An API client (REST,
//! `POST /containers/{id}/firewall` or `network` at creation) may replace it with an allow-list
//! of its own, which may name private addresses: the client is the operator's program. A model
//! (MCP `create_session {network}`) may only narrow the operator's policy: its allow-list is
//! stacked on the operator's, so both must allow a connection, and one that names something the
//! operator's policy refuses is an error rather than silently narrowed. The policy, with where it
//! came from, is kept in the backend beside the rules, so a restarted server reads it back.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::error::EngineError;
use crate::egress::{self, DomainName, EgressLayer, EgressPolicy, MAX_CIDRS, MAX_DOMAINS};

/// Domains and addresses a sandbox may reach: everything else is refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowList {
    /// Names (and every name under each) that resolve, and whose addresses may be reached.
    pub allowed_domains: Vec<DomainName>,
    /// Addresses and networks (IPv4 and IPv6 CIDRs) that may be reached.
    pub allowed_ips: Vec<IpNet>,
}

impl AllowList {
    /// An allow-list from what a caller sent: every entry checked.
    pub fn parse(domains: &[String], ips: &[String]) -> Result<Self, EngineError> {
        let too_many = |field: &'static str, limit: usize| EngineError::InvalidInput {
            field,
            reason: format!("at most {limit} entries"),
        };
        if domains.len() > MAX_DOMAINS {
            return Err(too_many("allowed_domains", MAX_DOMAINS));
        }
        if ips.len() > MAX_CIDRS {
            return Err(too_many("allowed_ips", MAX_CIDRS));
        }
        let allowed_domains = domains
            .iter()
            .map(|domain| {
                DomainName::new(domain).map_err(|error| EngineError::InvalidInput {
                    field: "allowed_domains",
                    reason: format!("{domain:?}: {error}"),
                })
            })
            .collect::<Result<_, _>>()?;
        let allowed_ips = ips
            .iter()
            .map(|ip| {
                egress::parse_cidr(ip).map_err(|error| EngineError::InvalidInput {
                    field: "allowed_ips",
                    reason: format!("{ip:?}: {error}"),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            allowed_domains,
            allowed_ips,
        })
    }

    fn layer(&self) -> EgressLayer {
        EgressLayer::Allow {
            domains: self.allowed_domains.clone(),
            cidrs: self.allowed_ips.clone(),
        }
    }
}

/// What a caller asks of a sandbox's egress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EgressRequest {
    /// An API client's allow-list: it replaces the operator's policy.
    Replace(AllowList),
    /// A model's allow-list: it may only narrow the operator's policy.
    Narrow(AllowList),
}

/// Where the policy in force came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FirewallSource {
    /// The operator's default (`--egress`).
    Operator,
    /// An API client replaced it.
    Client,
    /// A model narrowed the operator's.
    Model,
}

/// A sandbox's firewall: the policy in force, where it came from, and the allow-list asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Firewall {
    pub source: FirewallSource,
    /// The allow-list a caller set; `None` under the operator's policy.
    pub allow_list: Option<AllowList>,
    /// What is enforced: every layer must allow a connection.
    pub policy: EgressPolicy,
}

impl Firewall {
    /// The operator's policy, untouched.
    pub fn operator(policy: &EgressPolicy) -> Self {
        Self {
            source: FirewallSource::Operator,
            allow_list: None,
            policy: policy.clone(),
        }
    }

    /// What is in force where nothing was ever applied: nothing leaves the sandbox.
    pub fn closed() -> Self {
        Self {
            source: FirewallSource::Operator,
            allow_list: None,
            policy: EgressPolicy::deny(),
        }
    }

    /// The firewall a request gives, under the operator's `policy` (whose `Public` layers also
    /// refuse `extra_denied`). A model's request that would widen the operator's policy is
    /// refused, naming the entry.
    pub fn for_request(
        request: &EgressRequest,
        operator: &EgressPolicy,
        extra_denied: &[IpNet],
    ) -> Result<Self, EngineError> {
        let (source, allow_list, policy) = match request {
            EgressRequest::Replace(allow_list) => (
                FirewallSource::Client,
                allow_list,
                EgressPolicy::new(vec![allow_list.layer()]),
            ),
            EgressRequest::Narrow(allow_list) => {
                let requested = [allow_list.layer()];
                egress::narrows(operator, &requested, extra_denied).map_err(|error| {
                    EngineError::EgressWidening {
                        reason: error.to_string(),
                    }
                })?;
                (
                    FirewallSource::Model,
                    allow_list,
                    operator.stacked(&requested),
                )
            }
        };
        let policy = policy.map_err(|error| EngineError::InvalidInput {
            field: "network",
            reason: error.to_string(),
        })?;
        Ok(Self {
            source,
            allow_list: Some(allow_list.clone()),
            policy,
        })
    }

    /// The document kept beside the rules.
    pub(crate) fn state(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The firewall a kept document describes; `None` when it does not parse.
    pub(crate) fn from_state(state: &[u8]) -> Option<Self> {
        serde_json::from_slice(state).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(domains: &[&str], ips: &[&str]) -> AllowList {
        let strings = |items: &[&str]| {
            items
                .iter()
                .map(|item| item.to_string())
                .collect::<Vec<_>>()
        };
        AllowList::parse(&strings(domains), &strings(ips)).expect("valid")
    }

    #[test]
    fn entries_are_checked() {
        assert!(AllowList::parse(&["a.kb.test".into()], &["10.0.0.1".into()]).is_ok());
        for (domains, ips) in [
            (vec!["a.com\nserver=1.2.3.4".to_string()], vec![]),
            (vec![], vec!["10.0.0.300".to_string()]),
            (vec!["*.a.com".to_string()], vec![]),
        ] {
            assert!(AllowList::parse(&domains, &ips).is_err());
        }
    }

    #[test]
    fn a_client_replaces_and_a_model_narrows() {
        let operator = EgressPolicy::public();
        let client = Firewall::for_request(
            &EgressRequest::Replace(list(&[], &["10.1.2.3"])),
            &operator,
            &[],
        )
        .expect("a client may allow a private address");
        assert_eq!(client.policy.layers.len(), 1);
        assert_eq!(client.source, FirewallSource::Client);
        let widening = Firewall::for_request(
            &EgressRequest::Narrow(list(&[], &["10.1.2.3"])),
            &operator,
            &[],
        );
        assert!(matches!(widening, Err(EngineError::EgressWidening { .. })));
        let narrowed = Firewall::for_request(
            &EgressRequest::Narrow(list(&["pypi.org"], &["93.184.215.14"])),
            &operator,
            &[],
        )
        .expect("narrower");
        assert_eq!(narrowed.policy.layers[0], EgressLayer::Public);
        assert_eq!(narrowed.policy.layers.len(), 2);
        let state = narrowed.state();
        assert_eq!(Firewall::from_state(&state), Some(narrowed));
    }

    #[test]
    fn under_a_closed_operator_policy_a_model_can_allow_nothing() {
        let refused = Firewall::for_request(
            &EgressRequest::Narrow(list(&["pypi.org"], &[])),
            &EgressPolicy::deny(),
            &[],
        );
        assert!(matches!(refused, Err(EngineError::EgressWidening { .. })));
        assert!(
            Firewall::for_request(
                &EgressRequest::Narrow(AllowList::default()),
                &EgressPolicy::deny(),
                &[]
            )
            .is_ok()
        );
    }
}
