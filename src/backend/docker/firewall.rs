//! The egress firewall of a sandbox's network sidecar. A sandbox container joins the network
//! namespace of a companion container (the sidecar, `kernelbox-netd` from the sandbox image),
//! which filters with one nftables `inet kernelbox` table and resolves names with its own
//! dnsmasq on 127.0.0.1:53. This module turns an [`EgressPolicy`] into what the sidecar applies:
//! [`render`] gives the nftables transaction and the dnsmasq config, and [`apply_input`] frames
//! them as the stdin of `kernelbox-netd apply`. It does no I/O.

use std::collections::BTreeSet;
use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::egress::{DomainName, EgressLayer, EgressPolicy, public_denied};

/// The nftables table the sidecar owns (family `inet`: IPv4 and IPv6 in one table).
pub const TABLE: &str = "kernelbox";
/// The set of IPv4 addresses dnsmasq learned from answers for allowed names.
pub const LEARNED_V4: &str = "learned4";
/// The set of IPv6 addresses dnsmasq learned from answers for allowed names.
pub const LEARNED_V6: &str = "learned6";
/// How long a learned address stays allowed after it was learned or last used for a new
/// connection (dnsmasq adds it again on every lookup once it has expired).
pub const LEARNED_TIMEOUT_SECS: u64 = 3600;
/// The most addresses each learned set holds; beyond it dnsmasq's additions fail (refused).
pub const LEARNED_SET_SIZE: u32 = 65536;
/// Docker's embedded DNS server, present in every container on a user-defined network.
pub const EMBEDDED_DNS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);
/// The address dnsmasq listens on, the only DNS server the sandbox may reach.
pub const RESOLVER: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// The uid of `kbxdns`, dnsmasq's user in the sandbox image (`docker/provision.sh`).
pub const DEFAULT_DNS_UID: u32 = 990;
/// dnsmasq's user in the sandbox image.
pub const DEFAULT_DNS_USER: &str = "kbxdns";
/// The sidecar's entrypoint and control command in the sandbox image.
pub const NETD: &str = "/usr/local/sbin/kernelbox-netd";
/// What the server runs in the sidecar (as root, stdin attached) to apply [`apply_input`].
pub const APPLY_ARGV: [&str; 2] = [NETD, "apply"];
/// Where the sidecar keeps the state document of the policy in force (read it with `cat`).
pub const STATE_PATH: &str = "/var/lib/kernelbox/state.json";
/// The largest part (ruleset, config or state) `kernelbox-netd apply` accepts.
pub const APPLY_MAX_PART: usize = 4 * 1024 * 1024;

/// dnsmasq's user in the sidecar: its uid (for the firewall) and name (for dnsmasq's `user=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsUser {
    uid: u32,
    name: String,
}

/// A [`DnsUser`] or [`FirewallConfig`] that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("dnsmasq's uid must not be 0: root's traffic must not pass as the resolver's")]
    RootDnsUser,
    #[error(
        "{name:?} is not a valid user name (lowercase letters, digits, '_' and '-', at most 32)"
    )]
    InvalidUserName { name: String },
    #[error("upstream DNS server {server} is the sandbox's own resolver address")]
    UpstreamIsResolver { server: IpAddr },
}

impl DnsUser {
    /// Checks that `name` is a plain user name and `uid` is not root's.
    pub fn new(uid: u32, name: &str) -> Result<Self, ConfigError> {
        if uid == 0 {
            return Err(ConfigError::RootDnsUser);
        }
        let valid = !name.is_empty()
            && name.len() <= 32
            && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !valid {
            return Err(ConfigError::InvalidUserName {
                name: name.chars().take(64).collect(),
            });
        }
        Ok(Self {
            uid,
            name: name.to_string(),
        })
    }

    /// The uid the firewall lets reach the upstream servers.
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// The name dnsmasq's `user=` and `group=` take.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Default for DnsUser {
    fn default() -> Self {
        Self {
            uid: DEFAULT_DNS_UID,
            name: DEFAULT_DNS_USER.to_string(),
        }
    }
}

/// The operator's side of rendering: where dnsmasq forwards, what `Public` refuses besides the
/// special-purpose ranges, and dnsmasq's user. Nothing accepts new connections from outside the
/// namespace: the kernel is reached through the container runtime, not the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallConfig {
    /// Port 53 of each; the only destinations dnsmasq's uid may reach.
    upstream_dns: Vec<IpAddr>,
    /// Refused by `Public` besides [`SPECIAL_PURPOSE`].
    pub extra_denied: Vec<IpNet>,
    pub dns_user: DnsUser,
}

impl FirewallConfig {
    /// A config forwarding to `upstream_dns`.
    pub fn new(
        upstream_dns: Vec<IpAddr>,
        extra_denied: Vec<IpNet>,
        dns_user: DnsUser,
    ) -> Result<Self, ConfigError> {
        if let Some(server) = upstream_dns
            .iter()
            .find(|server| **server == IpAddr::V4(RESOLVER))
        {
            return Err(ConfigError::UpstreamIsResolver { server: *server });
        }
        Ok(Self {
            upstream_dns,
            extra_denied: extra_denied.iter().map(IpNet::trunc).collect(),
            dns_user,
        })
    }

    /// Where dnsmasq forwards the names the policy lets resolve.
    pub fn upstream_dns(&self) -> &[IpAddr] {
        &self.upstream_dns
    }

    /// What `Public` refuses: the special-purpose ranges and the extra denied CIDRs, merged.
    pub fn public_denied(&self) -> Vec<IpNet> {
        public_denied(&self.extra_denied)
    }
}

impl Default for FirewallConfig {
    /// Forwards to Docker's embedded DNS (a user-defined network provides it), no extra denied
    /// CIDRs, `kbxdns` (uid 990).
    fn default() -> Self {
        Self {
            upstream_dns: vec![IpAddr::V4(EMBEDDED_DNS)],
            extra_denied: Vec::new(),
            dns_user: DnsUser::default(),
        }
    }
}

/// What the sidecar applies: one nftables transaction replacing `table inet kernelbox`, and
/// dnsmasq's complete config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub nft: String,
    pub dnsmasq: String,
}

/// The names a policy lets resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Names {
    All,
    /// These names and everything under them; no entry covers another.
    Only(BTreeSet<DomainName>),
}

/// Drops every name another one in the set covers.
fn minimal(names: BTreeSet<DomainName>) -> BTreeSet<DomainName> {
    names
        .iter()
        .filter(|name| {
            !names
                .iter()
                .any(|other| other != *name && other.covers(name))
        })
        .cloned()
        .collect()
}

fn intersect(left: &BTreeSet<DomainName>, right: &BTreeSet<DomainName>) -> BTreeSet<DomainName> {
    let under = |names: &BTreeSet<DomainName>, others: &BTreeSet<DomainName>| {
        names
            .iter()
            .filter(|name| others.iter().any(|other| other.covers(name)))
            .cloned()
            .collect::<Vec<_>>()
    };
    let mut both: BTreeSet<DomainName> = under(left, right).into_iter().collect();
    both.extend(under(right, left));
    minimal(both)
}

fn resolvable(layers: &[EgressLayer]) -> Names {
    let mut names = Names::All;
    for layer in layers {
        let allowed = match layer {
            EgressLayer::Public => continue,
            EgressLayer::Deny => BTreeSet::new(),
            EgressLayer::Allow { domains, .. } => minimal(domains.iter().cloned().collect()),
        };
        names = Names::Only(match names {
            Names::All => allowed,
            Names::Only(current) => intersect(&current, &allowed),
        });
    }
    names
}

fn split(nets: &[IpNet]) -> (Vec<Ipv4Net>, Vec<Ipv6Net>) {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for net in IpNet::aggregate(&nets.iter().map(IpNet::trunc).collect()) {
        match net {
            IpNet::V4(net) => v4.push(net),
            IpNet::V6(net) => v6.push(net),
        }
    }
    (v4, v6)
}

fn element(net: impl fmt::Display, prefix: u8, host_prefix: u8) -> String {
    let text = net.to_string();
    if prefix == host_prefix {
        text.split('/').next().unwrap_or_default().to_string()
    } else {
        text
    }
}

/// Writes a set declaration; `elements` may be empty.
fn set(out: &mut String, name: &str, kind: &str, flags: &str, elements: &[String]) {
    let _ = write!(out, "    set {name} {{ type {kind};{flags}");
    if !elements.is_empty() {
        let _ = write!(out, " elements = {{ {} }};", elements.join(", "));
    }
    out.push_str(" }\n");
}

fn interval_sets(out: &mut String, name: &str, nets: &[IpNet]) {
    let (v4, v6) = split(nets);
    let v4: Vec<String> = v4
        .iter()
        .map(|net| element(net, net.prefix_len(), 32))
        .collect();
    let v6: Vec<String> = v6
        .iter()
        .map(|net| element(net, net.prefix_len(), 128))
        .collect();
    set(
        out,
        &format!("{name}_v4"),
        "ipv4_addr",
        " flags interval;",
        &v4,
    );
    set(
        out,
        &format!("{name}_v6"),
        "ipv6_addr",
        " flags interval;",
        &v6,
    );
}

/// Renders `policy` for the sidecar. Pure. A policy without layers renders as `[Deny]` (fail
/// closed). The ruleset, one transaction, creates the table if missing, deletes it and builds
/// it anew, so it replaces everything at once, learned addresses included:
///
/// - `output` (hook priority `mangle`, -150, before Docker's DNAT of 127.0.0.11:53 at -100):
///   established and related traffic; dnsmasq's uid only to the upstream servers on port 53
///   (TCP and UDP); DNS and DNS-over-TLS (53, 853) only to 127.0.0.1; nothing else to
///   127.0.0.11; loopback; IPv6 neighbour discovery and MLD; then one chain per layer, each
///   returning when its layer allows the destination and refusing otherwise.
/// - `input`: loopback, established and related traffic and neighbour discovery; nothing else.
///   `forward`: nothing.
/// - refused traffic gets a TCP reset or an ICMP port unreachable (connected UDP sockets see
///   the send fail at once), never a silent drop.
///
/// dnsmasq listens on 127.0.0.1:53 as `config.dns_user`, keeps no cache (so every lookup goes
/// upstream and puts its addresses back into the learned sets), answers NXDOMAIN for names the
/// policy does not let resolve, and adds the addresses it forwards for the others to the
/// learned sets, which every `Allow` layer with domains accepts.
pub fn render(policy: &EgressPolicy, config: &FirewallConfig) -> Rendered {
    let deny = [EgressLayer::Deny];
    let layers: &[EgressLayer] = if policy.layers.is_empty() {
        &deny
    } else {
        &policy.layers
    };
    let names = resolvable(layers);
    Rendered {
        nft: render_nft(layers, config),
        dnsmasq: render_dnsmasq(&names, config),
    }
}

fn render_nft(layers: &[EgressLayer], config: &FirewallConfig) -> String {
    let uid = config.dns_user.uid();
    let mut out = String::new();
    out.push_str("# kernelbox egress policy (generated): one transaction replacing the table.\n");
    let _ = writeln!(out, "table inet {TABLE}");
    let _ = writeln!(out, "delete table inet {TABLE}");
    let _ = writeln!(out, "table inet {TABLE} {{");

    let upstream: Vec<IpNet> = config
        .upstream_dns
        .iter()
        .map(|ip| IpNet::from(*ip))
        .collect();
    let (up4, up6) = split(&upstream);
    let up4: Vec<String> = up4.iter().map(|net| net.addr().to_string()).collect();
    let up6: Vec<String> = up6.iter().map(|net| net.addr().to_string()).collect();
    set(&mut out, "upstream_v4", "ipv4_addr", "", &up4);
    set(&mut out, "upstream_v6", "ipv6_addr", "", &up6);
    let learned_flags = format!(
        " size {LEARNED_SET_SIZE}; flags dynamic,timeout; timeout {LEARNED_TIMEOUT_SECS}s;"
    );
    set(&mut out, LEARNED_V4, "ipv4_addr", &learned_flags, &[]);
    set(&mut out, LEARNED_V6, "ipv6_addr", &learned_flags, &[]);
    if layers.contains(&EgressLayer::Public) {
        interval_sets(&mut out, "public_denied", &config.public_denied());
    }
    for (index, layer) in layers.iter().enumerate() {
        if let EgressLayer::Allow { cidrs, .. } = layer {
            interval_sets(&mut out, &format!("layer{index}"), cidrs);
        }
    }

    out.push_str(
        "    chain refuse {
        meta l4proto tcp reject with tcp reset
        reject with icmpx port-unreachable
    }
",
    );
    for (index, layer) in layers.iter().enumerate() {
        let _ = writeln!(out, "    chain layer{index} {{");
        match layer {
            EgressLayer::Public => {
                out.push_str("        ip daddr @public_denied_v4 goto refuse\n");
                out.push_str("        ip6 daddr @public_denied_v6 goto refuse\n");
            }
            EgressLayer::Deny => out.push_str("        goto refuse\n"),
            EgressLayer::Allow { domains, .. } => {
                let _ = writeln!(out, "        ip daddr @layer{index}_v4 return");
                let _ = writeln!(out, "        ip6 daddr @layer{index}_v6 return");
                if !domains.is_empty() {
                    let _ = writeln!(out, "        ip daddr @{LEARNED_V4} return");
                    let _ = writeln!(out, "        ip6 daddr @{LEARNED_V6} return");
                }
                out.push_str("        goto refuse\n");
            }
        }
        out.push_str("    }\n");
    }

    out.push_str(
        "    chain input {
        type filter hook input priority filter; policy drop;
        iif \"lo\" accept
        ct state established,related accept
        icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 accept
",
    );
    out.push_str(
        "    }
    chain forward {
        type filter hook forward priority filter; policy drop;
    }
",
    );

    let _ = write!(
        out,
        "    chain output {{
        type filter hook output priority mangle; policy drop;
        meta skuid != {uid} meta l4proto {{ tcp, udp }} th dport {{ 53, 853 }} ip daddr != {RESOLVER} goto refuse
        meta skuid != {uid} meta l4proto {{ tcp, udp }} th dport {{ 53, 853 }} meta nfproto ipv6 goto refuse
        meta skuid != {uid} ip daddr {EMBEDDED_DNS} goto refuse
        meta skuid {uid} ct state established,related accept
        meta skuid {uid} ip daddr @upstream_v4 meta l4proto {{ tcp, udp }} th dport 53 accept
        meta skuid {uid} ip6 daddr @upstream_v6 meta l4proto {{ tcp, udp }} th dport 53 accept
        meta skuid {uid} goto refuse
        meta l4proto {{ tcp, udp }} th dport {{ 53, 853 }} ip daddr {RESOLVER} accept
        meta l4proto {{ tcp, udp }} th dport {{ 53, 853 }} goto refuse
        ip daddr {EMBEDDED_DNS} goto refuse
        oif \"lo\" accept
        icmpv6 type {{ nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert }} ip6 hoplimit 255 accept
        icmpv6 type {{ mld-listener-report, mld-listener-done, mld2-listener-report }} ip6 daddr ff02::/16 accept
        ip daddr @{LEARNED_V4} update @{LEARNED_V4} {{ ip daddr }}
        ip6 daddr @{LEARNED_V6} update @{LEARNED_V6} {{ ip6 daddr }}
"
    );
    for index in 0..layers.len() {
        let _ = writeln!(out, "        jump layer{index}");
    }
    out.push_str("        accept\n    }\n}\n");
    out
}

fn render_dnsmasq(names: &Names, config: &FirewallConfig) -> String {
    let user = config.dns_user.name();
    let mut out = format!(
        "# kernelbox dnsmasq config (generated)
port=53
listen-address={RESOLVER}
bind-interfaces
no-resolv
no-hosts
user={user}
group={user}
pid-file=
log-facility=-
cache-size=0
"
    );
    match names {
        Names::All => {
            for server in &config.upstream_dns {
                let _ = writeln!(out, "server={server}");
            }
        }
        Names::Only(names) => {
            out.push_str("address=/#/\n");
            if !config.upstream_dns.is_empty() {
                for name in names {
                    for server in &config.upstream_dns {
                        let _ = writeln!(out, "server=/{name}/{server}");
                    }
                    let _ = writeln!(
                        out,
                        "nftset=/{name}/4#inet#{TABLE}#{LEARNED_V4},6#inet#{TABLE}#{LEARNED_V6}"
                    );
                }
            }
        }
    }
    out
}

/// The stdin of `kernelbox-netd apply` ([`APPLY_ARGV`]): a header line, the ruleset, dnsmasq's
/// config and the opaque state document (stored at [`STATE_PATH`]), each after a line with its
/// name and length in bytes, and a trailer line.
pub fn apply_input(rendered: &Rendered, state: &[u8]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(rendered.nft.len() + rendered.dnsmasq.len() + state.len() + 64);
    out.extend_from_slice(b"kernelbox-netd-apply 1\n");
    for (name, body) in [
        ("nft", rendered.nft.as_bytes()),
        ("dnsmasq", rendered.dnsmasq.as_bytes()),
        ("state", state),
    ] {
        out.extend_from_slice(format!("{name} {}\n", body.len()).as_bytes());
        out.extend_from_slice(body);
    }
    out.extend_from_slice(b"end\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress::{MAX_CIDRS, MAX_DOMAINS, overlaps, parse_cidr};

    fn name(text: &str) -> DomainName {
        DomainName::new(text).expect("a valid name")
    }

    fn net(text: &str) -> IpNet {
        parse_cidr(text).expect("a valid CIDR")
    }

    fn allow(domains: &[&str], cidrs: &[&str]) -> EgressLayer {
        EgressLayer::Allow {
            domains: domains.iter().map(|text| name(text)).collect(),
            cidrs: cidrs.iter().map(|text| net(text)).collect(),
        }
    }

    fn policy(layers: Vec<EgressLayer>) -> EgressPolicy {
        EgressPolicy::new(layers).expect("within the limits")
    }

    fn test_config() -> FirewallConfig {
        FirewallConfig::new(
            vec![
                "10.231.1.4".parse().expect("an address"),
                "fd00:1::53".parse().expect("an address"),
            ],
            vec![net("52.94.0.0/16"), net("2600:1f00::/24")],
            DnsUser::default(),
        )
        .expect("valid in this test")
    }

    /// Every policy shape the tests render, for the checks that apply to all of them.
    fn shapes() -> Vec<EgressPolicy> {
        vec![
            EgressPolicy::public(),
            EgressPolicy::deny(),
            policy(vec![allow(&[], &[])]),
            policy(vec![allow(&["a.kb.test"], &["10.231.1.2", "fd6b::2"])]),
            policy(vec![allow(
                &[],
                &["10.0.0.0/8", "10.1.0.0/16", "2001:db8::/32"],
            )]),
            policy(vec![EgressLayer::Public, allow(&["a.kb.test"], &[])]),
            policy(vec![
                EgressLayer::Public,
                allow(&["kb.test"], &["192.0.2.0/24"]),
                allow(&["a.kb.test", "other.test"], &["192.0.2.7"]),
            ]),
            policy(vec![EgressLayer::Public, EgressLayer::Deny]),
        ]
    }

    #[test]
    fn dns_users_and_configs_are_checked() {
        assert_eq!(DnsUser::new(0, "root"), Err(ConfigError::RootDnsUser));
        for bad in [
            "",
            "Kbx",
            "kbx\nserver=1.2.3.4",
            "kbx dns",
            "1kbx",
            &"a".repeat(33),
        ] {
            assert!(DnsUser::new(990, bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            DnsUser::new(990, "kbxdns").expect("valid in this test"),
            DnsUser::default()
        );
        assert_eq!(
            FirewallConfig::new(
                vec!["127.0.0.1".parse().expect("an address")],
                vec![],
                DnsUser::default()
            ),
            Err(ConfigError::UpstreamIsResolver {
                server: "127.0.0.1".parse().expect("an address")
            })
        );
        let config = FirewallConfig::default();
        assert_eq!(config.upstream_dns(), &[IpAddr::V4(EMBEDDED_DNS)]);
    }

    /// The lines every rendering carries, whatever the layers.
    const ALWAYS_NFT: &[&str] = &[
        "table inet kernelbox\ndelete table inet kernelbox\ntable inet kernelbox {\n",
        "set learned4 { type ipv4_addr; size 65536; flags dynamic,timeout; timeout 3600s; }",
        "set learned6 { type ipv6_addr; size 65536; flags dynamic,timeout; timeout 3600s; }",
        "meta l4proto tcp reject with tcp reset\n        reject with icmpx port-unreachable",
        "type filter hook input priority filter; policy drop;\n        iif \"lo\" accept\n        ct state established,related accept\n",
        "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 accept",
        "type filter hook forward priority filter; policy drop;",
        // Before the established rule: a flow the resolver opened to its upstream cannot be
        // taken over by another user binding the same source port.
        // Only the resolver's own flows are accepted as established: everyone else's packets
        // go through the policy each time, so a narrowed policy cuts the flows it no longer
        // allows.
        "type filter hook output priority mangle; policy drop;\n        meta skuid != 990 meta l4proto { tcp, udp } th dport { 53, 853 } ip daddr != 127.0.0.1 goto refuse\n        meta skuid != 990 meta l4proto { tcp, udp } th dport { 53, 853 } meta nfproto ipv6 goto refuse\n        meta skuid != 990 ip daddr 127.0.0.11 goto refuse\n        meta skuid 990 ct state established,related accept\n",
        "meta skuid 990 ip daddr @upstream_v4 meta l4proto { tcp, udp } th dport 53 accept",
        "meta skuid 990 ip6 daddr @upstream_v6 meta l4proto { tcp, udp } th dport 53 accept",
        "meta skuid 990 goto refuse",
        "meta l4proto { tcp, udp } th dport { 53, 853 } ip daddr 127.0.0.1 accept\n        meta l4proto { tcp, udp } th dport { 53, 853 } goto refuse\n        ip daddr 127.0.0.11 goto refuse\n        oif \"lo\" accept\n",
        "icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 accept",
        "ip daddr @learned4 update @learned4 { ip daddr }",
        "        accept\n    }\n}\n",
    ];

    const ALWAYS_DNSMASQ: &[&str] = &[
        "port=53\n",
        "listen-address=127.0.0.1\nbind-interfaces\nno-resolv\nno-hosts\n",
        "user=kbxdns\ngroup=kbxdns\n",
        "cache-size=0\n",
    ];

    #[test]
    fn every_rendering_has_the_always_on_rules() {
        for shape in shapes() {
            let rendered = render(&shape, &test_config());
            for line in ALWAYS_NFT {
                assert!(
                    rendered.nft.contains(line),
                    "{line}\nmissing from\n{}",
                    rendered.nft
                );
            }
            for line in ALWAYS_DNSMASQ {
                assert!(rendered.dnsmasq.contains(line), "{line} missing");
            }
            assert!(
                !rendered.nft.contains("dport 5000"),
                "no kernel port is open inbound"
            );
            // One jump per layer, in order, before the final accept.
            let jumps: Vec<&str> = rendered
                .nft
                .lines()
                .filter_map(|line| line.trim().strip_prefix("jump "))
                .collect();
            let expected: Vec<String> = (0..shape.layers.len())
                .map(|index| format!("layer{index}"))
                .collect();
            assert_eq!(jumps, expected);
            // The DNS rules come before loopback and the layers.
            let dns = rendered
                .nft
                .find("th dport { 53, 853 } goto refuse")
                .expect("valid in this test");
            assert!(
                dns < rendered
                    .nft
                    .find("oif \"lo\" accept")
                    .expect("valid in this test")
            );
            assert!(
                dns < rendered
                    .nft
                    .find("jump layer0")
                    .expect("valid in this test")
            );
        }
    }

    #[test]
    fn public_refuses_the_special_ranges_and_resolves_everything() {
        let rendered = render(&EgressPolicy::public(), &test_config());
        assert!(rendered.nft.contains(
            "    chain layer0 {\n        ip daddr @public_denied_v4 goto refuse\n        ip6 daddr @public_denied_v6 goto refuse\n    }\n"
        ));
        assert!(rendered.nft.contains(
            "set public_denied_v4 { type ipv4_addr; flags interval; elements = { 0.0.0.0/8, 10.0.0.0/8, 52.94.0.0/16, 100.64.0.0/10, 127.0.0.0/8, 169.254.0.0/16, 172.16.0.0/12, 192.0.0.0/24, 192.0.2.0/24, 192.88.99.0/24, 192.168.0.0/16, 198.18.0.0/15, 198.51.100.0/24, 203.0.113.0/24, 224.0.0.0/3 }; }"
        ), "{}", rendered.nft);
        assert!(rendered.nft.contains(
            "set public_denied_v6 { type ipv6_addr; flags interval; elements = { ::/3, 2001::/23, 2001:db8::/32, 2002::/16, 2600:1f00::/24, 3fff::/20, 4000::/2, 8000::/1 }; }"
        ), "{}", rendered.nft);
        assert!(
            rendered
                .nft
                .contains("set upstream_v4 { type ipv4_addr; elements = { 10.231.1.4 }; }")
        );
        assert!(
            rendered
                .nft
                .contains("set upstream_v6 { type ipv6_addr; elements = { fd00:1::53 }; }")
        );
        assert!(
            rendered
                .dnsmasq
                .ends_with("cache-size=0\nserver=10.231.1.4\nserver=fd00:1::53\n")
        );
        assert!(!rendered.dnsmasq.contains("address=/#/"));
        assert!(!rendered.dnsmasq.contains("nftset="));
    }

    #[test]
    fn every_special_purpose_range_is_denied_by_public() {
        let denied = FirewallConfig::default().public_denied();
        let required = [
            "0.0.0.0/8",
            "10.0.0.0/8",
            "100.64.0.0/10",
            "127.0.0.0/8",
            "169.254.0.0/16",
            "169.254.169.254",
            "172.16.0.0/12",
            "192.0.0.0/24",
            "192.0.2.0/24",
            "192.88.99.0/24",
            "192.168.0.0/16",
            "198.18.0.0/15",
            "198.51.100.0/24",
            "203.0.113.0/24",
            "224.0.0.0/4",
            "240.0.0.0/4",
            "255.255.255.255",
            "::/128",
            "::1/128",
            "::ffff:0:0/96",
            "64:ff9b::/96",
            "64:ff9b:1::/48",
            "100::/64",
            "2001::/23",
            "2001:db8::/32",
            "2002::/16",
            "fc00::/7",
            "fe80::/10",
            "ff00::/8",
            "3fff::/20",
            "5f00::/16",
            "fec0::/10",
            "fd00:ec2::254",
            "192.0.2.2",
            "fd00::2",
        ];
        for range in required {
            let range = net(range);
            assert!(
                denied.iter().any(|block| block.contains(&range)),
                "{range} is not denied"
            );
        }
        for public in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.215.14",
            "2606:4700::1111",
            "2a00:1450::1",
        ] {
            let public = net(public);
            assert!(
                !denied.iter().any(|block| overlaps(block, &public)),
                "{public} is denied"
            );
        }
    }

    #[test]
    fn deny_refuses_everything_and_resolves_nothing() {
        let rendered = render(&EgressPolicy::deny(), &test_config());
        assert!(
            rendered
                .nft
                .contains("    chain layer0 {\n        goto refuse\n    }\n")
        );
        assert!(!rendered.nft.contains("public_denied"));
        assert!(rendered.dnsmasq.ends_with("cache-size=0\naddress=/#/\n"));
        assert!(!rendered.dnsmasq.contains("server="));
        // A policy without layers fails closed.
        let empty = render(&EgressPolicy { layers: vec![] }, &test_config());
        assert_eq!(empty, rendered);
    }

    #[test]
    fn allow_accepts_its_cidrs_and_the_learned_addresses_of_its_names() {
        let rendered = render(
            &policy(vec![allow(
                &["a.kb.test", "x.a.kb.test"],
                &["10.231.1.2", "10.231.1.0/24", "fd6b::2"],
            )]),
            &test_config(),
        );
        assert!(rendered.nft.contains(
            "set layer0_v4 { type ipv4_addr; flags interval; elements = { 10.231.1.0/24 }; }"
        ));
        assert!(
            rendered.nft.contains(
                "set layer0_v6 { type ipv6_addr; flags interval; elements = { fd6b::2 }; }"
            )
        );
        assert!(rendered.nft.contains(
            "    chain layer0 {
        ip daddr @layer0_v4 return
        ip6 daddr @layer0_v6 return
        ip daddr @learned4 return
        ip6 daddr @learned6 return
        goto refuse
    }
"
        ));
        assert!(rendered.dnsmasq.ends_with(
            "cache-size=0
address=/#/
server=/a.kb.test/10.231.1.4
server=/a.kb.test/fd00:1::53
nftset=/a.kb.test/4#inet#kernelbox#learned4,6#inet#kernelbox#learned6
"
        ));
        // Without domains the learned sets are not accepted and nothing resolves.
        let cidrs_only = render(&policy(vec![allow(&[], &["10.231.1.2"])]), &test_config());
        assert!(!cidrs_only.nft.contains("ip daddr @learned4 return"));
        assert!(cidrs_only.dnsmasq.ends_with("address=/#/\n"));
        // Without upstream servers no name resolves either.
        let no_upstream =
            FirewallConfig::new(vec![], vec![], DnsUser::default()).expect("valid in this test");
        let rendered = render(&policy(vec![allow(&["a.kb.test"], &[])]), &no_upstream);
        assert!(rendered.dnsmasq.ends_with("address=/#/\n"));
        assert!(rendered.nft.contains("set upstream_v4 { type ipv4_addr; }"));
    }

    #[test]
    fn stacked_layers_resolve_only_names_every_layer_allows() {
        let names = |layers: Vec<EgressLayer>| match resolvable(&layers) {
            Names::All => vec!["*".to_string()],
            Names::Only(names) => names.iter().map(ToString::to_string).collect(),
        };
        assert_eq!(names(vec![EgressLayer::Public]), ["*"]);
        assert_eq!(names(vec![EgressLayer::Public, EgressLayer::Public]), ["*"]);
        assert_eq!(names(vec![EgressLayer::Deny]), Vec::<String>::new());
        assert_eq!(
            names(vec![
                EgressLayer::Public,
                allow(&["a.kb.test", "x.a.kb.test"], &[])
            ]),
            ["a.kb.test"]
        );
        assert_eq!(
            names(vec![
                allow(&["kb.test", "other.test"], &[]),
                allow(&["a.kb.test", "b.kb.test", "third.test"], &[])
            ]),
            ["a.kb.test", "b.kb.test"]
        );
        assert_eq!(
            names(vec![
                allow(&["a.kb.test"], &[]),
                EgressLayer::Public,
                allow(&["kb.test"], &[])
            ]),
            ["a.kb.test"]
        );
        assert_eq!(
            names(vec![allow(&["a.test"], &[]), allow(&["b.test"], &[])]),
            Vec::<String>::new()
        );
        assert_eq!(
            names(vec![allow(&["a.kb.test"], &[]), EgressLayer::Deny]),
            Vec::<String>::new()
        );
        // The operator's Public, then a model's Allow: a private address stays refused.
        let rendered = render(
            &EgressPolicy::public()
                .stacked(&[allow(&["a.kb.test"], &["10.231.1.2"])])
                .expect("valid in this test"),
            &test_config(),
        );
        let layer0 = rendered
            .nft
            .find("chain layer0 {")
            .expect("valid in this test");
        let layer1 = rendered
            .nft
            .find("chain layer1 {")
            .expect("valid in this test");
        assert!(rendered.nft[layer0..layer1].contains("@public_denied_v4 goto refuse"));
        assert!(rendered.nft[layer1..].contains("ip daddr @layer1_v4 return"));
        assert!(rendered.dnsmasq.contains("server=/a.kb.test/10.231.1.4\n"));
        assert!(rendered.dnsmasq.contains("address=/#/\n"));
    }

    #[test]
    fn apply_input_frames_each_part_with_its_length() {
        let rendered = Rendered {
            nft: "table inet kernelbox\n".into(),
            dnsmasq: "port=53\n".into(),
        };
        assert_eq!(
            apply_input(&rendered, br#"{"v":1}"#),
            b"kernelbox-netd-apply 1\nnft 21\ntable inet kernelbox\ndnsmasq 8\nport=53\nstate 7\n{\"v\":1}end\n"
        );
        assert_eq!(APPLY_ARGV, ["/usr/local/sbin/kernelbox-netd", "apply"]);
    }

    /// The sidecar's first ruleset and config, written in the image's `kernelbox-netd`, are
    /// what [`render`] gives for `[Deny]` without upstream servers or inbound ports.

    #[test]
    fn the_sidecar_starts_with_the_rendered_deny_policy() {
        let script = include_str!("../../../docker/provision.sh");
        let between = |start: &str| -> String {
            let from = script.find(start).expect("function in the script") + start.len();
            let to = from + script[from..].find("\nEOF\n").expect("end of the heredoc");
            script[from..to].to_string() + "\n"
        };
        let closed =
            FirewallConfig::new(vec![], vec![], DnsUser::default()).expect("valid in this test");
        let rendered = render(&EgressPolicy::deny(), &closed);
        let nft = between("deny_ruleset() {\n    uid=$(id -u \"$dns_user\")\n    cat <<EOF\n");
        assert_eq!(nft.replace("$uid", "990"), rendered.nft);
        let dnsmasq = between("deny_dnsmasq() {\n    cat <<EOF\n");
        assert_eq!(dnsmasq.replace("$dns_user", "kbxdns"), rendered.dnsmasq);
    }

    /// `nft -c` (check only, nothing is committed) accepts every rendered ruleset. Needs root and
    /// nft; skipped without them.

    #[test]
    fn nft_accepts_every_rendered_ruleset() {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let root = std::fs::read_to_string("/proc/self/status")
            .map(|status| status.lines().any(|line| line.starts_with("Uid:\t0\t")))
            .unwrap_or(false);
        let nft = ["/usr/sbin/nft", "/sbin/nft"]
            .into_iter()
            .find(|path| std::path::Path::new(path).exists());
        let (true, Some(nft)) = (root, nft) else {
            eprintln!("skipped: needs root and nft");
            return;
        };
        let mut shapes = shapes();
        shapes.push(policy(vec![EgressLayer::Allow {
            domains: (0..MAX_DOMAINS)
                .map(|index| name(&format!("d{index}.test")))
                .collect(),
            cidrs: (0..MAX_CIDRS as u32)
                .map(|index| IpNet::from(IpAddr::V4(Ipv4Addr::from(0x5d00_0000 + index * 256))))
                .collect(),
        }]));
        for shape in shapes {
            let rendered = render(&shape, &test_config());
            let mut child = Command::new(nft)
                .args(["-c", "-f", "-"])
                .stdin(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("nft runs");
            child
                .stdin
                .take()
                .expect("piped stdin")
                .write_all(rendered.nft.as_bytes())
                .expect("ruleset written");
            let output = child.wait_with_output().expect("nft exits");
            assert!(
                output.status.success(),
                "nft refused\n{}\n{}",
                rendered.nft,
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}
