//! Egress policies: what a sandbox's code may reach on the network, as the operator configures
//! it, a REST client sets it, or a model narrows it through MCP.
//!
//! A policy is an ordered list of layers ([`EgressLayer`]); a connection is allowed only if every
//! layer allows it, and a name resolves only if every layer allows the name. `Public` allows any
//! destination but the special-purpose ranges (loopback, private, link-local, metadata, ...) and
//! the operator's extra denied CIDRs; `Deny` allows nothing; `Allow` allows its CIDRs and the
//! addresses its domain names (and their subdomains) resolve to. A policy a model asks for is
//! stacked on the operator's, so it can narrow it but never widen it ([`narrows`] refuses one
//! that names something the operator's policy would not allow). This module is the model and its
//! validation; the backend enforces it (for Docker: `backend::docker::firewall`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Deserializer, Serialize};

/// The most layers a policy may have (the operator's plus a model's).
pub const MAX_LAYERS: usize = 8;
/// The most domains one `Allow` layer may name.
pub const MAX_DOMAINS: usize = 256;
/// The most CIDRs one `Allow` layer may name.
pub const MAX_CIDRS: usize = 256;

const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> IpNet {
    IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), prefix))
}

const fn v6(first: u16, second: u16, prefix: u8) -> IpNet {
    IpNet::V6(Ipv6Net::new_assert(
        Ipv6Addr::new(first, second, 0, 0, 0, 0, 0, 0),
        prefix,
    ))
}

/// Destinations `Public` refuses, from IANA's IPv4 and IPv6 Special-Purpose Address Registries
/// (RFC 6890 and later) and the multicast blocks, with why. Entries the registries mark as
/// globally reachable anycast services (AS112, AMT, 192.0.0.9/10) are public services and stay
/// reachable, except where they sit inside a larger block listed here. For IPv6, everything
/// outside 2000::/3 (the only block IANA allocates as global unicast) is refused, which covers
/// ::/128, ::1/128, ::ffff:0:0/96, 64:ff9b::/96, 64:ff9b:1::/48, 100::/64, 5f00::/16 (SRv6 SIDs,
/// RFC 9602), fc00::/7, fec0::/10 (deprecated site-local), fe80::/10 and ff00::/8 whatever later
/// registrations come.
pub const SPECIAL_PURPOSE: &[(IpNet, &str)] = &[
    (v4(0, 0, 0, 0, 8), "\"this network\" (RFC 791)"),
    (v4(10, 0, 0, 0, 8), "private use (RFC 1918)"),
    (
        v4(100, 64, 0, 0, 10),
        "shared address space, CGNAT (RFC 6598)",
    ),
    (v4(127, 0, 0, 0, 8), "loopback (RFC 1122)"),
    (
        v4(169, 254, 0, 0, 16),
        "link local, cloud metadata (RFC 3927)",
    ),
    (v4(172, 16, 0, 0, 12), "private use (RFC 1918)"),
    (v4(192, 0, 0, 0, 24), "IETF protocol assignments (RFC 6890)"),
    (v4(192, 0, 2, 0, 24), "documentation, TEST-NET-1 (RFC 5737)"),
    (
        v4(192, 88, 99, 0, 24),
        "deprecated 6to4 relay anycast (RFC 7526)",
    ),
    (v4(192, 168, 0, 0, 16), "private use (RFC 1918)"),
    (v4(198, 18, 0, 0, 15), "benchmarking (RFC 2544)"),
    (
        v4(198, 51, 100, 0, 24),
        "documentation, TEST-NET-2 (RFC 5737)",
    ),
    (
        v4(203, 0, 113, 0, 24),
        "documentation, TEST-NET-3 (RFC 5737)",
    ),
    (v4(224, 0, 0, 0, 4), "multicast (RFC 5771)"),
    (
        v4(240, 0, 0, 0, 4),
        "reserved (RFC 1112), with 255.255.255.255 limited broadcast",
    ),
    (
        v6(0, 0, 3),
        "outside global unicast: ::/128, ::1, IPv4-mapped and -compatible, 64:ff9b::/96, \
         64:ff9b:1::/48, 100::/64, 0100::/8 reserved (RFC 4291, 6052, 8215, 6666)",
    ),
    (v6(0x2001, 0, 23), "IETF protocol assignments (RFC 2928)"),
    (v6(0x2001, 0xdb8, 32), "documentation (RFC 3849)"),
    (v6(0x2002, 0, 16), "6to4, embeds IPv4 addresses (RFC 3056)"),
    (v6(0x3fff, 0, 20), "documentation (RFC 9637)"),
    (
        v6(0x4000, 0, 2),
        "outside global unicast: 5f00::/16 SRv6 SIDs (RFC 9602), reserved",
    ),
    (
        v6(0x8000, 0, 1),
        "outside global unicast: fc00::/7 unique local (RFC 4193), fec0::/10, fe80::/10 link \
         local, ff00::/8 multicast (RFC 4291)",
    ),
];

/// A valid hostname: lowercase ASCII letters, digits and hyphens in dot-separated labels of 1-63
/// characters that neither start nor end with a hyphen, at most 253 characters, the last label
/// not all digits (so no IP literal). A trailing dot is dropped. As a policy entry it stands for
/// itself and every name under it. It is written into dnsmasq's config, which the character set
/// keeps from carrying anything but a name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DomainName(String);

/// Why a text is not a valid [`DomainName`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("a domain name must not be empty")]
    Empty,
    #[error("the domain name is {length} characters long; the limit is 253")]
    TooLong { length: usize },
    #[error("{character:?} at byte {position} is not a letter, digit, hyphen or dot")]
    InvalidCharacter { character: char, position: usize },
    #[error("the domain name has an empty label at byte {position}")]
    EmptyLabel { position: usize },
    #[error("label {label:?} is {length} characters long; the limit is 63")]
    LabelTooLong { label: String, length: usize },
    #[error("label {label:?} starts or ends with a hyphen")]
    HyphenAtEdge { label: String },
    #[error("{name:?} ends in an all-numeric label: an IP address is not a domain name")]
    NumericTopLabel { name: String },
}

impl DomainName {
    /// Validates and normalizes (lowercase, no trailing dot) a hostname.
    pub fn new(input: &str) -> Result<Self, DomainError> {
        let name = input.strip_suffix('.').unwrap_or(input);
        if name.is_empty() {
            return Err(DomainError::Empty);
        }
        if let Some((position, character)) = name
            .char_indices()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.'))
        {
            return Err(DomainError::InvalidCharacter {
                character,
                position,
            });
        }
        if name.len() > 253 {
            return Err(DomainError::TooLong { length: name.len() });
        }
        let name = name.to_ascii_lowercase();
        let mut position = 0;
        for label in name.split('.') {
            if label.is_empty() {
                return Err(DomainError::EmptyLabel { position });
            }
            if label.len() > 63 {
                return Err(DomainError::LabelTooLong {
                    label: label.to_string(),
                    length: label.len(),
                });
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(DomainError::HyphenAtEdge {
                    label: label.to_string(),
                });
            }
            position += label.len() + 1;
        }
        let top = name.rsplit('.').next().unwrap_or_default();
        if top.bytes().all(|byte| byte.is_ascii_digit()) {
            return Err(DomainError::NumericTopLabel { name });
        }
        Ok(Self(name))
    }

    /// The normalized name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `other` is this name or a name under it (`example.com` covers `a.example.com`).
    pub fn covers(&self, other: &DomainName) -> bool {
        other
            .0
            .strip_suffix(self.0.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.ends_with('.'))
    }
}

impl FromStr for DomainName {
    type Err = DomainError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        Self::new(input)
    }
}

impl TryFrom<String> for DomainName {
    type Error = DomainError;

    fn try_from(input: String) -> Result<Self, Self::Error> {
        Self::new(&input)
    }
}

impl From<DomainName> for String {
    fn from(name: DomainName) -> Self {
        name.0
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// A text that is neither an IP address nor a CIDR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not an IP address or a CIDR (like 10.0.0.0/8 or 2001:db8::/32)")]
pub struct CidrError {
    /// The offending text, cut at 64 characters.
    pub input: String,
}

/// Parses a CIDR or a single address (a host route, /32 or /128); host bits are cleared.
pub fn parse_cidr(input: &str) -> Result<IpNet, CidrError> {
    let text = input.trim();
    let parsed = if text.contains('/') {
        text.parse::<IpNet>().ok()
    } else {
        text.parse::<IpAddr>().ok().map(IpNet::from)
    };
    parsed.map(|net| net.trunc()).ok_or_else(|| CidrError {
        input: input.chars().take(64).collect(),
    })
}

fn deserialize_cidrs<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<IpNet>, D::Error> {
    Vec::<String>::deserialize(deserializer)?
        .iter()
        .map(|text| parse_cidr(text).map_err(serde::de::Error::custom))
        .collect()
}

/// One layer of a policy. A connection is allowed only if every layer allows it, and a name
/// resolves only if every layer allows the name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum EgressLayer {
    /// Any destination but the special-purpose ranges ([`SPECIAL_PURPOSE`]) and the operator's
    /// extra denied CIDRs; every name resolves.
    Public,
    /// No destination; no name resolves.
    Deny,
    /// Only destinations in `cidrs`, or addresses learned from answers for names under
    /// `domains` (each domain allows itself and every subdomain); only those names resolve.
    Allow {
        #[serde(default)]
        domains: Vec<DomainName>,
        #[serde(default, deserialize_with = "deserialize_cidrs")]
        cidrs: Vec<IpNet>,
    },
}

/// An egress policy: layers that must all allow a connection (or a name). The operator's
/// default alone (`[Public]`); a REST policy instead of it (`[Allow {..}]`); a model's (MCP)
/// stacked on the operator's (`[Public, Allow {..}]`, see [`EgressPolicy::stacked`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "UncheckedPolicy")]
pub struct EgressPolicy {
    pub layers: Vec<EgressLayer>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UncheckedPolicy {
    layers: Vec<EgressLayer>,
}

impl TryFrom<UncheckedPolicy> for EgressPolicy {
    type Error = PolicyError;

    fn try_from(unchecked: UncheckedPolicy) -> Result<Self, Self::Error> {
        Self::new(unchecked.layers)
    }
}

/// A policy over the size limits, or without layers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("a policy needs at least one layer")]
    NoLayers,
    #[error("the policy has {count} layers; the limit is {limit}")]
    TooManyLayers { count: usize, limit: usize },
    #[error("layer {layer} names {count} domains; the limit is {limit}")]
    TooManyDomains {
        layer: usize,
        count: usize,
        limit: usize,
    },
    #[error("layer {layer} names {count} CIDRs; the limit is {limit}")]
    TooManyCidrs {
        layer: usize,
        count: usize,
        limit: usize,
    },
}

impl EgressPolicy {
    /// A policy of `layers`, checked against [`MAX_LAYERS`], [`MAX_DOMAINS`] and [`MAX_CIDRS`].
    pub fn new(layers: Vec<EgressLayer>) -> Result<Self, PolicyError> {
        let policy = Self { layers };
        policy.validate()?;
        Ok(policy)
    }

    /// `[Public]`: the usual operator default.
    pub fn public() -> Self {
        Self {
            layers: vec![EgressLayer::Public],
        }
    }

    /// `[Deny]`: nothing leaves the sandbox.
    pub fn deny() -> Self {
        Self {
            layers: vec![EgressLayer::Deny],
        }
    }

    /// Checks the limits (a policy built field by field may not have been).
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.layers.is_empty() {
            return Err(PolicyError::NoLayers);
        }
        if self.layers.len() > MAX_LAYERS {
            return Err(PolicyError::TooManyLayers {
                count: self.layers.len(),
                limit: MAX_LAYERS,
            });
        }
        for (layer, entry) in self.layers.iter().enumerate() {
            if let EgressLayer::Allow { domains, cidrs } = entry {
                if domains.len() > MAX_DOMAINS {
                    return Err(PolicyError::TooManyDomains {
                        layer,
                        count: domains.len(),
                        limit: MAX_DOMAINS,
                    });
                }
                if cidrs.len() > MAX_CIDRS {
                    return Err(PolicyError::TooManyCidrs {
                        layer,
                        count: cidrs.len(),
                        limit: MAX_CIDRS,
                    });
                }
            }
        }
        Ok(())
    }

    /// This policy with `requested` stacked after its layers (a model's policy on the
    /// operator's), checked against the limits.
    pub fn stacked(&self, requested: &[EgressLayer]) -> Result<Self, PolicyError> {
        Self::new(self.layers.iter().chain(requested).cloned().collect())
    }
}

/// What `Public` refuses: the special-purpose ranges and `extra_denied`, merged.
pub fn public_denied(extra_denied: &[IpNet]) -> Vec<IpNet> {
    let all: Vec<IpNet> = SPECIAL_PURPOSE
        .iter()
        .map(|(net, _)| *net)
        .chain(extra_denied.iter().map(IpNet::trunc))
        .collect();
    IpNet::aggregate(&all)
}

/// A requested layer entry that the operator's policy would refuse anyway: stacking it would
/// not widen anything, but it would not do what the requester expects either.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WideningError {
    #[error("the operator's policy allows no egress, so {entry} cannot be allowed")]
    OperatorDeniesAll { entry: String },
    #[error("{cidr} overlaps {denied}, which the operator's policy refuses")]
    CidrDenied { cidr: IpNet, denied: IpNet },
    #[error("{cidr} is outside every CIDR the operator's policy allows")]
    CidrNotAllowed { cidr: IpNet },
    #[error("{domain} is not under any domain the operator's policy allows")]
    DomainNotAllowed { domain: DomainName },
}

/// Whether two networks share an address.
pub fn overlaps(left: &IpNet, right: &IpNet) -> bool {
    left.contains(right) || right.contains(left)
}

/// Checks that every entry of every requested `Allow` layer is something the operator's policy
/// allows: under `Public` a CIDR must not overlap the special-purpose or extra denied ranges,
/// under `Allow` it must lie inside one of that layer's CIDRs and a domain under one of its
/// domains, and under `Deny` nothing may be named. `Public` and `Deny` requested layers only
/// narrow. The error names the first offending entry.
pub fn narrows(
    operator: &EgressPolicy,
    requested: &[EgressLayer],
    extra_denied: &[IpNet],
) -> Result<(), WideningError> {
    let denied = public_denied(extra_denied);
    for layer in requested {
        let EgressLayer::Allow { domains, cidrs } = layer else {
            continue;
        };
        for cidr in cidrs.iter().map(IpNet::trunc) {
            for rule in &operator.layers {
                match rule {
                    EgressLayer::Public => {
                        if let Some(hit) = denied.iter().find(|net| overlaps(net, &cidr)) {
                            return Err(WideningError::CidrDenied { cidr, denied: *hit });
                        }
                    }
                    EgressLayer::Deny => {
                        return Err(WideningError::OperatorDeniesAll {
                            entry: cidr.to_string(),
                        });
                    }
                    EgressLayer::Allow { cidrs: allowed, .. } => {
                        if !allowed.iter().any(|net| net.trunc().contains(&cidr)) {
                            return Err(WideningError::CidrNotAllowed { cidr });
                        }
                    }
                }
            }
        }
        for domain in domains {
            for rule in &operator.layers {
                match rule {
                    EgressLayer::Public => {}
                    EgressLayer::Deny => {
                        return Err(WideningError::OperatorDeniesAll {
                            entry: domain.to_string(),
                        });
                    }
                    EgressLayer::Allow {
                        domains: allowed, ..
                    } => {
                        if !allowed.iter().any(|name| name.covers(domain)) {
                            return Err(WideningError::DomainNotAllowed {
                                domain: domain.clone(),
                            });
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// The operator's extra denied CIDRs in these tests.
    fn extra_denied() -> Vec<IpNet> {
        vec![net("52.94.0.0/16"), net("2600:1f00::/24")]
    }

    #[test]
    fn domain_names_are_normalized() {
        assert_eq!(name("Example.COM.").as_str(), "example.com");
        assert_eq!(name("a-b.c1.example").as_str(), "a-b.c1.example");
        assert_eq!(name("xn--bcher-kva.de").as_str(), "xn--bcher-kva.de");
        assert_eq!(name("localhost").as_str(), "localhost");
        assert_eq!(name("1.2.3.example").as_str(), "1.2.3.example");
        let label = "a".repeat(63);
        assert!(DomainName::new(&format!("{label}.com")).is_ok());
        let longest = [&label[..], &label[..], &label[..], &"b".repeat(61)].join(".");
        assert_eq!(longest.len(), 253);
        assert!(DomainName::new(&longest).is_ok());
        assert!(DomainName::new(&format!("{longest}.")).is_ok());
    }

    #[test]
    fn domain_names_refuse_anything_but_a_hostname() {
        let refused = [
            "a.com\nserver=1.2.3.4",
            "a.com\rserver=1.2.3.4",
            "a.com/#",
            "/a.com/",
            "a.com/1.2.3.4",
            "*.a.com",
            "a..com",
            "..",
            "",
            ".",
            "a.com..",
            ".a.com",
            "-a.com",
            "a-.com",
            "a.-b.com",
            "a_b.com",
            "1.2.3.4",
            "010.1.1",
            "a.123",
            "::1",
            "[::1]",
            "a.com\0",
            "a.com\0.evil",
            " a.com",
            "a.com ",
            "a .com",
            "a.com\t",
            "a.com#x",
            "a.com,b.com",
            "a.com=1",
            "bücher.de",
            "a.com\u{200b}",
        ];
        for text in refused {
            assert!(DomainName::new(text).is_err(), "{text:?} was accepted");
        }
        assert_eq!(
            DomainName::new(&format!("{}.com", "a".repeat(64))),
            Err(DomainError::LabelTooLong {
                label: "a".repeat(64),
                length: 64
            })
        );
        // 253 characters and a trailing dot is still a name; 255 is not.
        assert!(DomainName::new(&"a.".repeat(127)).is_ok());
        assert_eq!(
            DomainName::new(&format!("{}a", "a.".repeat(127))),
            Err(DomainError::TooLong { length: 255 })
        );
        assert_eq!(
            DomainName::new("a.com\nserver=1.2.3.4"),
            Err(DomainError::InvalidCharacter {
                character: '\n',
                position: 5
            })
        );
        assert_eq!(
            DomainName::new("a..com"),
            Err(DomainError::EmptyLabel { position: 2 })
        );
        assert_eq!(
            DomainName::new("1.2.3.4"),
            Err(DomainError::NumericTopLabel {
                name: "1.2.3.4".into()
            })
        );
        // Serde goes through the same check.
        assert!(serde_json::from_str::<DomainName>("\"a.com\\nserver=1.2.3.4\"").is_err());
        assert_eq!(
            serde_json::from_str::<DomainName>("\"A.Kb.Test.\"").expect("valid in this test"),
            name("a.kb.test")
        );
    }

    #[test]
    fn a_domain_covers_itself_and_its_subdomains_only() {
        let example = name("example.com");
        assert!(example.covers(&name("example.com")));
        assert!(example.covers(&name("a.example.com")));
        assert!(example.covers(&name("b.a.example.com")));
        assert!(!example.covers(&name("badexample.com")));
        assert!(!example.covers(&name("com")));
        assert!(!example.covers(&name("example.org")));
        assert!(name("com").covers(&example));
    }

    #[test]
    fn cidrs_accept_single_addresses_and_drop_host_bits() {
        assert_eq!(
            net("10.231.1.2"),
            "10.231.1.2/32".parse::<IpNet>().expect("a CIDR")
        );
        assert_eq!(
            net("fd6b::2"),
            "fd6b::2/128".parse::<IpNet>().expect("a CIDR")
        );
        assert_eq!(
            net("10.1.2.3/8"),
            "10.0.0.0/8".parse::<IpNet>().expect("a CIDR")
        );
        assert_eq!(
            net(" 2001:db8::1/32 "),
            "2001:db8::/32".parse::<IpNet>().expect("a CIDR")
        );
        // Surrounding whitespace is trimmed: what comes out is the parsed network, not the text.
        assert_eq!(
            net("10.0.0.0/8\n"),
            "10.0.0.0/8".parse::<IpNet>().expect("a CIDR")
        );
        for bad in [
            "",
            "10.0.0.0/33",
            "10.0.0",
            "fe80::1%eth0",
            "a.com",
            "10.0.0.0/8 x",
        ] {
            assert!(parse_cidr(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_cidr("nope"),
            Err(CidrError {
                input: "nope".into()
            })
        );
    }

    #[test]
    fn policies_deserialize_with_validation() {
        let parsed: EgressPolicy = serde_json::from_str(
            r#"{"layers":[{"kind":"public"},
                {"kind":"allow","domains":["A.kb.test."],"cidrs":["10.231.1.2","fd6b::/64"]}]}"#,
        )
        .expect("valid in this test");
        assert_eq!(
            parsed,
            policy(vec![
                EgressLayer::Public,
                allow(&["a.kb.test"], &["10.231.1.2/32", "fd6b::/64"])
            ])
        );
        let round: EgressPolicy =
            serde_json::from_str(&serde_json::to_string(&parsed).expect("serializes"))
                .expect("valid in this test");
        assert_eq!(round, parsed);
        assert_eq!(
            serde_json::from_str::<EgressPolicy>(r#"{"layers":[{"kind":"allow"}]}"#)
                .expect("valid in this test"),
            policy(vec![allow(&[], &[])])
        );
        for bad in [
            r#"{"layers":[]}"#,
            r#"{"layers":[{"kind":"everything"}]}"#,
            r#"{"layers":[{"kind":"allow","domain":["a.kb.test"]}]}"#,
            r#"{"layers":[{"kind":"allow","domains":["*.kb.test"]}]}"#,
            r#"{"layers":[{"kind":"allow","cidrs":["10.0.0.0/40"]}]}"#,
            r#"{"layers":[{"kind":"public"}],"extra":1}"#,
        ] {
            assert!(serde_json::from_str::<EgressPolicy>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn limits_are_enforced() {
        assert_eq!(EgressPolicy::new(vec![]), Err(PolicyError::NoLayers));
        assert_eq!(
            EgressPolicy::new(vec![EgressLayer::Public; MAX_LAYERS + 1]),
            Err(PolicyError::TooManyLayers {
                count: MAX_LAYERS + 1,
                limit: MAX_LAYERS
            })
        );
        let domains: Vec<DomainName> = (0..=MAX_DOMAINS)
            .map(|index| name(&format!("d{index}.test")))
            .collect();
        assert_eq!(
            EgressPolicy::new(vec![
                EgressLayer::Public,
                EgressLayer::Allow {
                    domains,
                    cidrs: vec![]
                }
            ]),
            Err(PolicyError::TooManyDomains {
                layer: 1,
                count: MAX_DOMAINS + 1,
                limit: MAX_DOMAINS
            })
        );
        let cidrs: Vec<IpNet> = (0..=MAX_CIDRS)
            .map(|index| IpNet::from(IpAddr::V4(Ipv4Addr::from(index as u32))))
            .collect();
        assert!(matches!(
            EgressPolicy::new(vec![EgressLayer::Allow {
                domains: vec![],
                cidrs
            }]),
            Err(PolicyError::TooManyCidrs { layer: 0, .. })
        ));
        let operator = EgressPolicy::public();
        assert!(operator.stacked(&[allow(&["a.kb.test"], &[])]).is_ok());
        assert!(
            operator
                .stacked(&vec![EgressLayer::Deny; MAX_LAYERS])
                .is_err()
        );
    }

    #[test]
    fn narrowing_accepts_what_the_operator_allows() {
        let config = extra_denied();
        let public = EgressPolicy::public();
        assert_eq!(
            narrows(
                &public,
                &[allow(
                    &["example.com"],
                    &["93.184.215.14", "2606:4700::/32"]
                )],
                &config
            ),
            Ok(())
        );
        assert_eq!(
            narrows(&public, &[EgressLayer::Deny, EgressLayer::Public], &config),
            Ok(())
        );
        let operator = policy(vec![allow(&["kb.test"], &["10.231.0.0/16"])]);
        assert_eq!(
            narrows(
                &operator,
                &[allow(
                    &["a.kb.test", "kb.test"],
                    &["10.231.1.2", "10.231.1.0/24"]
                )],
                &config
            ),
            Ok(())
        );
        assert_eq!(
            narrows(
                &EgressPolicy::deny(),
                &[allow(&[], &[]), EgressLayer::Deny],
                &config
            ),
            Ok(())
        );
    }

    #[test]
    fn narrowing_names_the_widening_entry() {
        let config = extra_denied();
        let public = EgressPolicy::public();
        assert_eq!(
            narrows(&public, &[allow(&[], &["1.1.1.1", "10.231.1.2"])], &config),
            Err(WideningError::CidrDenied {
                cidr: net("10.231.1.2"),
                denied: net("10.0.0.0/8")
            })
        );
        // A CIDR that contains a denied range overlaps it too.
        assert_eq!(
            narrows(&public, &[allow(&[], &["0.0.0.0/0"])], &config),
            Err(WideningError::CidrDenied {
                cidr: net("0.0.0.0/0"),
                denied: net("0.0.0.0/8")
            })
        );
        assert_eq!(
            narrows(&public, &[allow(&[], &["169.254.169.254"])], &config),
            Err(WideningError::CidrDenied {
                cidr: net("169.254.169.254"),
                denied: net("169.254.0.0/16")
            })
        );
        assert_eq!(
            narrows(&public, &[allow(&[], &["fe80::1"])], &config),
            Err(WideningError::CidrDenied {
                cidr: net("fe80::1"),
                denied: net("8000::/1")
            })
        );
        // The operator's extra denied ranges count.
        assert_eq!(
            narrows(&public, &[allow(&[], &["52.94.1.1"])], &config),
            Err(WideningError::CidrDenied {
                cidr: net("52.94.1.1"),
                denied: net("52.94.0.0/16")
            })
        );
        let operator = policy(vec![
            EgressLayer::Public,
            allow(&["kb.test"], &["93.184.0.0/16"]),
        ]);
        assert_eq!(
            narrows(&operator, &[allow(&[], &["93.0.0.0/8"])], &config),
            Err(WideningError::CidrNotAllowed {
                cidr: net("93.0.0.0/8")
            })
        );
        assert_eq!(
            narrows(
                &operator,
                &[allow(&["a.kb.test", "evil.test"], &[])],
                &config
            ),
            Err(WideningError::DomainNotAllowed {
                domain: name("evil.test")
            })
        );
        assert_eq!(
            narrows(&operator, &[allow(&["test"], &[])], &config),
            Err(WideningError::DomainNotAllowed {
                domain: name("test")
            })
        );
        assert_eq!(
            narrows(
                &EgressPolicy::deny(),
                &[allow(&["a.kb.test"], &[])],
                &config
            ),
            Err(WideningError::OperatorDeniesAll {
                entry: "a.kb.test".into()
            })
        );
        assert_eq!(
            narrows(
                &EgressPolicy::deny(),
                &[allow(&[], &["93.184.215.14"])],
                &config
            ),
            Err(WideningError::OperatorDeniesAll {
                entry: "93.184.215.14/32".into()
            })
        );
    }
}
