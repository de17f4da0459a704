//! A container's firewall: `POST /containers/{id}/firewall` replaces its egress allow-list,
//! `GET` shows the policy in force. The same allow-list shape is `network` on
//! `POST /containers`.

use axum::Extension;
use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::egress::EgressLayer;
use crate::engine::{AllowList, EgressRequest, Firewall, FirewallSource, Tenant};
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{ApiJson, ApiPath, AppState};

/// An egress allow-list: everything else is refused, and only these names resolve.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FirewallRules {
    /// Domains whose addresses may be reached (each with its subdomains): `pypi.org`.
    #[serde(default)]
    pub allowed_domains: Vec<String>,
    /// IPv4 and IPv6 addresses and CIDRs that may be reached: `10.0.0.5`, `192.0.2.0/24`,
    /// `2001:db8::/32`.
    #[serde(default)]
    pub allowed_ips: Vec<String>,
}

impl FirewallRules {
    /// The request a client's rules make: they replace the server's default policy.
    pub(crate) fn request(&self) -> Result<EgressRequest, ApiError> {
        Ok(EgressRequest::Replace(AllowList::parse(
            &self.allowed_domains,
            &self.allowed_ips,
        )?))
    }
}

/// One layer of the policy in force; a connection must pass every layer.
#[derive(Debug, Serialize, ToSchema)]
pub struct FirewallLayer {
    /// `public` (anything but private, loopback, link-local and metadata addresses), `deny`
    /// (nothing), or `allow` (only `domains` and `cidrs`).
    pub kind: String,
    pub domains: Vec<String>,
    pub cidrs: Vec<String>,
}

/// A container's firewall.
#[derive(Debug, Serialize, ToSchema)]
pub struct FirewallState {
    /// `operator` (the server's default), `client` (set through this API) or `model` (a
    /// narrower policy an MCP session asked for).
    pub source: String,
    /// The allow-list set for the container; `null` under the server's default.
    pub allowed_domains: Option<Vec<String>>,
    pub allowed_ips: Option<Vec<String>>,
    /// What is enforced.
    pub layers: Vec<FirewallLayer>,
}

impl From<Firewall> for FirewallState {
    fn from(firewall: Firewall) -> Self {
        Self {
            source: match firewall.source {
                FirewallSource::Operator => "operator",
                FirewallSource::Client => "client",
                FirewallSource::Model => "model",
            }
            .to_string(),
            allowed_domains: firewall.allow_list.as_ref().map(|list| {
                list.allowed_domains
                    .iter()
                    .map(|domain| domain.to_string())
                    .collect()
            }),
            allowed_ips: firewall
                .allow_list
                .as_ref()
                .map(|list| list.allowed_ips.iter().map(|ip| ip.to_string()).collect()),
            layers: firewall
                .policy
                .layers
                .iter()
                .map(|layer| match layer {
                    EgressLayer::Public => FirewallLayer {
                        kind: "public".into(),
                        domains: Vec::new(),
                        cidrs: Vec::new(),
                    },
                    EgressLayer::Deny => FirewallLayer {
                        kind: "deny".into(),
                        domains: Vec::new(),
                        cidrs: Vec::new(),
                    },
                    EgressLayer::Allow { domains, cidrs } => FirewallLayer {
                        kind: "allow".into(),
                        domains: domains.iter().map(|domain| domain.to_string()).collect(),
                        cidrs: cidrs.iter().map(|cidr| cidr.to_string()).collect(),
                    },
                })
                .collect(),
        }
    }
}

/// Replace the container's egress allow-list. Re-posting replaces the list; an empty list
/// refuses everything. Answers once the new rules are in force.
#[utoipa::path(
    post,
    path = "/containers/{id}/firewall",
    tag = "containers",
    params(("id" = String, Path, description = "Container id")),
    request_body = FirewallRules,
    responses(
        (status = 200, description = "The firewall now in force", body = FirewallState),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such container", body = ErrorBody),
        (status = 422, description = "A domain or address that is not one", body = ErrorBody),
        (status = 503, description = "Docker unreachable", body = ErrorBody),
    )
)]
pub(crate) async fn set(
    State(engine): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    ApiPath(id): ApiPath<String>,
    ApiJson(rules): ApiJson<FirewallRules>,
) -> Result<Json<FirewallState>, ApiError> {
    let firewall = engine.set_firewall(&id, &tenant, rules.request()?).await?;
    Ok(Json(firewall.into()))
}

/// The container's firewall: where its policy came from and what is enforced.
#[utoipa::path(
    get,
    path = "/containers/{id}/firewall",
    tag = "containers",
    params(("id" = String, Path, description = "Container id")),
    responses(
        (status = 200, description = "The firewall in force", body = FirewallState),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such container", body = ErrorBody),
    )
)]
pub(crate) async fn get(
    State(engine): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<FirewallState>, ApiError> {
    Ok(Json(engine.firewall(&id, &tenant)?.into()))
}
