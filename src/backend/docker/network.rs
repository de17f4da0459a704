//! The network of a Docker sandbox: each sandbox joins the network namespace of a companion
//! container, its *network sidecar*, the way the containers of a Kubernetes pod share one.
//!
//! The sidecar is kernelbox's own container from the same image: it runs `kernelbox-netd` as
//! root with only the capabilities the firewall and its resolver need, owns the namespace's
//! nftables rules and dnsmasq, and keeps the state document of the policy in force. The sandbox
//! container has no capabilities, its own PID and mount namespaces, and cannot see, signal or
//! change any of it. Sidecars sit on a kernelbox bridge network with inter-container traffic off.
//! This module builds the containers' and the network's settings; `docker.rs` makes the calls.

use std::collections::HashMap;

use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig, NetworkCreateRequest};

use super::firewall::{ConfigError, DnsUser, EMBEDDED_DNS, FirewallConfig, NETD};
use crate::config::EngineConfig;

/// The network sidecars attach to when the operator names none.
pub const DEFAULT_NETWORK: &str = "kernelbox";
/// On a sidecar: what it is.
pub const ROLE_LABEL: &str = "io.kernelbox.role";
/// The value of [`ROLE_LABEL`] on a network sidecar.
pub const ROLE_NETWORK: &str = "network";
/// On a sidecar: the id of the sandbox whose namespace it holds.
pub const NETNS_OF_LABEL: &str = "io.kernelbox.netns-of";
/// On a sandbox: the container id of its network sidecar.
pub const SIDECAR_LABEL: &str = "io.kernelbox.network";
/// On a network kernelbox created.
pub const MANAGED_LABEL: &str = "io.kernelbox.managed";
/// The sidecar's memory: nftables, dnsmasq and a shell loop need a few MiB.
const SIDECAR_MEMORY: i64 = 64 * 1024 * 1024;
/// The sidecar's processes: tini, netd, dnsmasq, and an apply now and then.
const SIDECAR_PIDS: i64 = 32;
/// The most a container's log (its main process's stdout and stderr, which sandbox code can
/// write to) keeps on the host's disk: Docker's default keeps all of it.
const LOG_MAX_SIZE: &str = "1m";

/// The log settings of every container the backend makes: `json-file`, so `docker logs` still
/// shows a kernel's last words, capped at [`LOG_MAX_SIZE`] in one file.
pub fn bounded_log() -> HostConfigLogConfig {
    HostConfigLogConfig {
        typ: Some("json-file".into()),
        config: Some(HashMap::from([
            ("max-size".to_string(), LOG_MAX_SIZE.to_string()),
            ("max-file".to_string(), "1".to_string()),
        ])),
    }
}

/// Where Docker sandboxes get their network, and how their firewall renders.
#[derive(Debug, Clone)]
pub struct NetworkOptions {
    /// The Docker network sidecars attach to; created (bridge, inter-container traffic off)
    /// when missing.
    pub network: String,
    pub firewall: FirewallConfig,
}

impl NetworkOptions {
    /// The options an engine's settings give: its network, DNS servers (Docker's embedded DNS
    /// when none are set) and the extra ranges `public` refuses.
    pub fn for_engine(config: &EngineConfig) -> Result<Self, ConfigError> {
        let dns = if config.dns.is_empty() {
            vec![std::net::IpAddr::V4(EMBEDDED_DNS)]
        } else {
            config.dns.clone()
        };
        Ok(Self {
            network: config.network.clone(),
            firewall: FirewallConfig::new(dns, config.egress_denied.clone(), DnsUser::default())?,
        })
    }
}

impl Default for NetworkOptions {
    fn default() -> Self {
        Self {
            network: DEFAULT_NETWORK.to_string(),
            firewall: FirewallConfig::default(),
        }
    }
}

/// The network kernelbox creates when it is missing: a user-defined bridge (which gives the
/// sidecars Docker's embedded DNS as the default upstream) with inter-container traffic off.
pub fn network_request(name: &str) -> NetworkCreateRequest {
    NetworkCreateRequest {
        name: name.to_string(),
        driver: Some("bridge".into()),
        options: Some(HashMap::from([(
            "com.docker.network.bridge.enable_icc".to_string(),
            "false".to_string(),
        )])),
        labels: Some(HashMap::from([(
            MANAGED_LABEL.to_string(),
            "true".to_string(),
        )])),
        ..Default::default()
    }
}

/// The labels of a sandbox's sidecar: its instance (so housekeeping by instance finds it), its
/// role, and its sandbox.
pub fn sidecar_labels(sandbox_labels: &HashMap<String, String>) -> HashMap<String, String> {
    let mut labels = HashMap::from([(ROLE_LABEL.to_string(), ROLE_NETWORK.to_string())]);
    for (from, to) in [
        (
            crate::engine::labels::INSTANCE,
            crate::engine::labels::INSTANCE,
        ),
        (crate::engine::labels::ID, NETNS_OF_LABEL),
    ] {
        if let Some(value) = sandbox_labels.get(from) {
            labels.insert(to.to_string(), value.clone());
        }
    }
    labels
}

/// The sidecar: root in its own container, only NET_ADMIN (the firewall), NET_BIND_SERVICE
/// (dnsmasq on :53) and SETUID/SETGID (dnsmasq drops to its own user), no new privileges,
/// and unprivileged ports starting at 1024 in the namespace, so the sandbox cannot take :53.
pub fn sidecar_body(
    image: &str,
    network: &str,
    labels: HashMap<String, String>,
) -> ContainerCreateBody {
    ContainerCreateBody {
        image: Some(image.to_string()),
        user: Some("0:0".into()),
        cmd: Some(vec![NETD.into()]),
        labels: Some(labels),
        host_config: Some(HostConfig {
            network_mode: Some(network.to_string()),
            cap_drop: Some(vec!["ALL".into()]),
            cap_add: Some(
                ["NET_ADMIN", "NET_BIND_SERVICE", "SETUID", "SETGID"]
                    .map(String::from)
                    .to_vec(),
            ),
            security_opt: Some(vec!["no-new-privileges".into()]),
            sysctls: Some(HashMap::from([(
                "net.ipv4.ip_unprivileged_port_start".to_string(),
                "1024".to_string(),
            )])),
            memory: Some(SIDECAR_MEMORY),
            memory_swap: Some(SIDECAR_MEMORY),
            pids_limit: Some(SIDECAR_PIDS),
            log_config: Some(bounded_log()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// What joins a sandbox to its sidecar's namespace.
pub fn sandbox_network_mode(sidecar_id: &str) -> String {
    format!("container:{sidecar_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecars_carry_their_instance_and_sandbox_but_not_the_sandbox_id() {
        let sandbox = HashMap::from([
            (crate::engine::labels::ID.to_string(), "sbx_a".to_string()),
            (
                crate::engine::labels::INSTANCE.to_string(),
                "serve".to_string(),
            ),
            (
                crate::engine::labels::KERNEL_KEY.to_string(),
                "secret".to_string(),
            ),
        ]);
        let labels = sidecar_labels(&sandbox);
        assert_eq!(
            labels.get(NETNS_OF_LABEL).map(String::as_str),
            Some("sbx_a")
        );
        assert_eq!(
            labels
                .get(crate::engine::labels::INSTANCE)
                .map(String::as_str),
            Some("serve")
        );
        assert!(!labels.contains_key(crate::engine::labels::ID));
        assert!(!labels.contains_key(crate::engine::labels::KERNEL_KEY));
    }

    #[test]
    fn the_sidecar_has_only_the_capabilities_it_needs() {
        let body = sidecar_body("img", "kernelbox", HashMap::new());
        let host = body.host_config.expect("host config");
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]));
        assert_eq!(host.cap_add.map(|caps| caps.len()), Some(4));
        assert_eq!(host.network_mode.as_deref(), Some("kernelbox"));
    }
}
