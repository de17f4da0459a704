//! The package policy: which Python packages the server's own installs (`install_packages`,
//! `POST /containers/{id}/packages`, and the `dependencies` of a new sandbox) may install.
//!
//! | part               | what it does                                                         |
//! |--------------------|----------------------------------------------------------------------|
//! | [`PackagePolicy`]  | the operator's allow list and block rules, parsed once from config   |
//! | [`PackageRule`]    | one rule: a PEP 503-normalized name and PEP 440 version specifiers   |
//! | [`InstallPlan`]    | what a checked request hands pip: requirements and constraints       |
//! | [`PackageRefusal`] | why the policy refuses a request, naming the rule                    |
//!
//! Requirement strings and specifiers are parsed by `pep508_rs` (and its `pep440_rs`), the
//! parsers of the uv ecosystem: names are normalized the PEP 503 way (lowercase, runs of `-`,
//! `_` and `.` become one `-`), and versions compare the PEP 440 way, pre-releases and local
//! versions included.
//!
//! Semantics:
//! - With an allow list, only the names on it may be requested; an allow rule with specifiers
//!   (`numpy>=1.26`) also bounds the version.
//! - A block rule refuses the versions its specifiers match (all of them when it has none).
//! - A request pinned to one version (`name==1.2.3`, `name===1.2.3`) is checked against the
//!   rules directly.
//! - A request that leaves the version to pip (`name`, `name>=1.0`) is installed under a pip
//!   constraint that keeps pip out of what the rules refuse: block `urllib3<1.26.5` becomes the
//!   constraint `urllib3>=1.26.5`. The constraints go to every install, so they also hold for
//!   dependencies pip pulls in. A block rule that has no single-specifier complement
//!   (`a>=1,<2`, `a~=1.4`, `a===1.0`) cannot be a constraint: an unpinned request of its name is
//!   refused, asking for a pin.
//! - Only named requirements are accepted: no URL (`name @ https://…`), no path, no pip option
//!   (`-e`, `--index-url=…`), no whitespace.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use pep508_rs::pep440_rs::{Operator, Version, VersionSpecifier, VersionSpecifiers};
use pep508_rs::{PackageName, Requirement, VersionOrUrl};

/// Most rules a policy may hold.
const MAX_RULES: usize = 4096;
/// Longest requirement string accepted.
const MAX_REQUIREMENT_LEN: usize = 256;

/// One policy rule, as the operator wrote it and parsed.
#[derive(Debug, Clone)]
pub struct PackageRule {
    name: PackageName,
    specifiers: VersionSpecifiers,
    /// What the operator wrote, trimmed: how refusals name the rule.
    text: String,
}

impl PackageRule {
    fn parse(text: &str) -> Result<Self, PolicyError> {
        let text = text.trim();
        let invalid = |reason: String| PolicyError::InvalidRule {
            rule: text.to_string(),
            reason,
        };
        let requirement = Requirement::<pep508_rs::VerbatimUrl>::from_str(text)
            .map_err(|error| invalid(error.message.to_string()))?;
        if !requirement.extras.is_empty() {
            return Err(invalid("a rule names no extras".into()));
        }
        if !requirement.marker.is_true() {
            return Err(invalid("a rule carries no environment marker".into()));
        }
        let specifiers = match requirement.version_or_url {
            None => VersionSpecifiers::empty(),
            Some(VersionOrUrl::VersionSpecifier(specifiers)) => specifiers,
            Some(VersionOrUrl::Url(_)) => return Err(invalid("a rule names no URL".into())),
        };
        Ok(Self {
            name: requirement.name,
            specifiers,
            text: text.to_string(),
        })
    }

    /// Whether the rule covers this version of its package.
    fn covers(&self, version: &Version) -> bool {
        self.specifiers.contains(version)
    }

    /// The one specifier matching every version this block rule leaves, if there is one.
    fn complement(&self) -> Option<VersionSpecifier> {
        let [specifier] = &*self.specifiers else {
            return None;
        };
        let negated = match specifier.operator() {
            Operator::TildeEqual | Operator::ExactEqual => return None,
            operator => operator.negate()?,
        };
        VersionSpecifier::from_version(negated, specifier.version().clone()).ok()
    }
}

impl fmt::Display for PackageRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The operator's package policy. The default policy allows everything.
#[derive(Debug, Clone, Default)]
pub struct PackagePolicy {
    /// `None`: every name may be installed (block rules aside).
    allow: Option<BTreeMap<PackageName, PackageRule>>,
    block: Vec<PackageRule>,
}

/// An invalid policy.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("package rule {rule:?} is invalid: {reason}")]
    InvalidRule { rule: String, reason: String },
    #[error("package {name} is on the allow list twice ({first:?} and {second:?}); keep one rule")]
    AllowedTwice {
        name: String,
        first: String,
        second: String,
    },
    #[error("line {line} of the package policy file: {reason}")]
    File { line: usize, reason: String },
    #[error("a package policy holds at most {MAX_RULES} rules")]
    TooManyRules,
}

/// Why the policy refuses a request: each names the requirement and, where one applies, the rule.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PackageRefusal {
    #[error("{requirement:?} is not a package requirement this server installs: {reason}")]
    NotARequirement { requirement: String, reason: String },
    #[error("{requirement:?} is not on this server's package allow list")]
    NotAllowed { requirement: String },
    #[error("{requirement:?} is outside the allowed versions of rule {rule:?}")]
    OutsideAllowed { requirement: String, rule: String },
    #[error("{requirement:?} is blocked by rule {rule:?}")]
    Blocked { requirement: String, rule: String },
    #[error(
        "{requirement:?} may resolve to a version that rule {rule:?} blocks, and pip cannot be told to avoid it: pin a version (name==X.Y)"
    )]
    PinNeeded { requirement: String, rule: String },
}

/// What pip gets for a request the policy admits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallPlan {
    /// The requirements, as parsed and written back (what was checked is what pip sees).
    pub requirements: Vec<String>,
    /// Lines of a pip constraints file (`-c`): what the rules leave of each package's versions.
    pub constraints: Vec<String>,
}

impl PackagePolicy {
    /// A policy from allow and block rules (requirement strings: `numpy`, `urllib3<1.26.5`,
    /// `requests>=2.0,<2.31`).
    pub fn parse(allow: &[String], block: &[String]) -> Result<Self, PolicyError> {
        if allow.len() + block.len() > MAX_RULES {
            return Err(PolicyError::TooManyRules);
        }
        let allow = if allow.is_empty() {
            None
        } else {
            let mut rules = BTreeMap::new();
            for text in allow {
                let rule = PackageRule::parse(text)?;
                if let Some(first) = rules.get(&rule.name) {
                    let first: &PackageRule = first;
                    return Err(PolicyError::AllowedTwice {
                        name: rule.name.to_string(),
                        first: first.text.clone(),
                        second: rule.text,
                    });
                }
                rules.insert(rule.name.clone(), rule);
            }
            Some(rules)
        };
        let block = block
            .iter()
            .map(|text| PackageRule::parse(text))
            .collect::<Result<_, _>>()?;
        Ok(Self { allow, block })
    }

    /// A policy file's rules added to `allow` and `block`: one rule a line, `allow <rule>` or
    /// `block <rule>`; blank lines and `#` comments are skipped.
    pub fn read_file(
        text: &str,
        allow: &mut Vec<String>,
        block: &mut Vec<String>,
    ) -> Result<(), PolicyError> {
        for (index, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let (verb, rule) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let list = match verb {
                "allow" => &mut *allow,
                "block" => &mut *block,
                _ => {
                    return Err(PolicyError::File {
                        line: index + 1,
                        reason: format!("{verb:?} is neither `allow` nor `block`"),
                    });
                }
            };
            if rule.trim().is_empty() {
                return Err(PolicyError::File {
                    line: index + 1,
                    reason: format!("`{verb}` names no package"),
                });
            }
            list.push(rule.trim().to_string());
        }
        Ok(())
    }

    /// Whether this policy admits every named requirement unchanged (no rules).
    pub fn is_open(&self) -> bool {
        self.allow.is_none() && self.block.is_empty()
    }

    /// Checks a request: every entry must be a named requirement the rules admit. Returns what
    /// pip is to install, under which constraints.
    pub fn check(&self, requested: &[String]) -> Result<InstallPlan, PackageRefusal> {
        let mut requirements = Vec::with_capacity(requested.len());
        for text in requested {
            let requirement = parse_request(text)?;
            self.admit(text, &requirement)?;
            requirements.push(requirement.to_string());
        }
        Ok(InstallPlan {
            requirements,
            constraints: self.constraints(),
        })
    }

    fn admit(
        &self,
        text: &str,
        requirement: &Requirement<pep508_rs::VerbatimUrl>,
    ) -> Result<(), PackageRefusal> {
        let pinned = pinned_version(requirement);
        if let Some(allow) = &self.allow {
            let Some(rule) = allow.get(&requirement.name) else {
                return Err(PackageRefusal::NotAllowed {
                    requirement: text.to_string(),
                });
            };
            // An unpinned request stays inside the rule through its constraint.
            if let Some(version) = &pinned
                && !rule.covers(version)
            {
                return Err(PackageRefusal::OutsideAllowed {
                    requirement: text.to_string(),
                    rule: rule.text.clone(),
                });
            }
        }
        for rule in self
            .block
            .iter()
            .filter(|rule| rule.name == requirement.name)
        {
            let refused = match &pinned {
                Some(version) => rule.covers(version),
                // Every version, or versions pip cannot be kept out of.
                None if rule.specifiers.is_empty() => true,
                None if rule.complement().is_none() => {
                    return Err(PackageRefusal::PinNeeded {
                        requirement: text.to_string(),
                        rule: rule.text.clone(),
                    });
                }
                None => false,
            };
            if refused {
                return Err(PackageRefusal::Blocked {
                    requirement: text.to_string(),
                    rule: rule.text.clone(),
                });
            }
        }
        Ok(())
    }

    /// The constraints file every install runs under: the allowed specifiers of allow rules, the
    /// complement of each ranged block rule, and for a name blocked outright a constraint no
    /// version meets (so pip fails rather than pull it in as a dependency).
    fn constraints(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for rule in self.allow.iter().flat_map(BTreeMap::values) {
            if !rule.specifiers.is_empty() {
                lines.push(format!("{}{}", rule.name, rule.specifiers));
            }
        }
        for rule in &self.block {
            if rule.specifiers.is_empty() {
                lines.push(format!("{}===blocked-by-package-policy", rule.name));
            } else if let Some(complement) = rule.complement() {
                lines.push(format!("{}{complement}", rule.name));
            }
        }
        lines
    }
}

/// A request entry as a named requirement: no URL, no path, no option.
fn parse_request(text: &str) -> Result<Requirement<pep508_rs::VerbatimUrl>, PackageRefusal> {
    let refuse = |reason: &str| PackageRefusal::NotARequirement {
        requirement: text.to_string(),
        reason: reason.to_string(),
    };
    if text.is_empty() || text.len() > MAX_REQUIREMENT_LEN {
        return Err(refuse("give a name, at most 256 characters"));
    }
    if text.starts_with('-') {
        return Err(refuse("pip options are not accepted"));
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(refuse(
            "write it without spaces, like `pandas` or `requests==2.32.3`",
        ));
    }
    let requirement = Requirement::<pep508_rs::VerbatimUrl>::from_str(text).map_err(|_| {
        refuse("write a PEP 508 requirement, like `pandas` or `requests==2.32.3` (URLs and paths are not accepted)")
    })?;
    if let Some(VersionOrUrl::Url(_)) = requirement.version_or_url {
        return Err(refuse(
            "URLs are not accepted; name the package and a version",
        ));
    }
    Ok(requirement)
}

/// The one version a requirement pins (`==1.2.3`, `===1.2.3`), if it pins one.
fn pinned_version(requirement: &Requirement<pep508_rs::VerbatimUrl>) -> Option<Version> {
    let Some(VersionOrUrl::VersionSpecifier(specifiers)) = &requirement.version_or_url else {
        return None;
    };
    specifiers
        .iter()
        .find(|specifier| matches!(specifier.operator(), Operator::Equal | Operator::ExactEqual))
        .map(|specifier| specifier.version().clone())
}

/// A package name, PEP 503-normalized (lowercase; runs of `-`, `_`, `.` become `-`).
pub fn normalize_name(name: &str) -> Option<String> {
    PackageName::new(name.to_string())
        .ok()
        .map(|name| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|item| item.to_string()).collect()
    }

    fn policy(allow: &[&str], block: &[&str]) -> PackagePolicy {
        PackagePolicy::parse(&strings(allow), &strings(block)).expect("valid policy")
    }

    fn refusal(policy: &PackagePolicy, request: &str) -> PackageRefusal {
        policy.check(&strings(&[request])).expect_err("refused")
    }

    #[test]
    fn names_are_normalized_the_pep_503_way() {
        assert_eq!(
            normalize_name("Foo.Bar__baz").as_deref(),
            Some("foo-bar-baz")
        );
        assert_eq!(normalize_name("A-_.-B").as_deref(), Some("a-b"));
        assert_eq!(
            normalize_name("scikit_learn").as_deref(),
            Some("scikit-learn")
        );
        assert_eq!(normalize_name("bad name"), None);
        // Rules and requests meet on the normalized name.
        let policy = policy(&[], &["Scikit_Learn"]);
        assert!(matches!(
            refusal(&policy, "scikit.learn==1.5.2"),
            PackageRefusal::Blocked { .. }
        ));
        let allow = self::policy(&["python-dateutil"], &[]);
        assert!(allow.check(&strings(&["Python_Dateutil"])).is_ok());
    }

    #[test]
    fn a_pinned_request_is_checked_against_every_operator() {
        let cases = [
            ("a==1.0", "a==1.0", true),
            ("a==1.0", "a==1.0.1", false),
            ("a==1.*", "a==1.9", true),
            ("a==1.*", "a==2.0", false),
            ("a!=1.0", "a==1.1", true),
            ("a!=1.0", "a==1.0", false),
            ("a<1.26.5", "a==1.26.0", true),
            ("a<1.26.5", "a==1.26.5", false),
            ("a<=1.0", "a==1.0", true),
            ("a>2", "a==2.0", false),
            ("a>2", "a==2.1", true),
            ("a>=2", "a==2.0", true),
            ("a~=1.4.2", "a==1.4.9", true),
            ("a~=1.4.2", "a==1.5.0", false),
            ("a===1.0", "a===1.0", true),
            ("a>=2.0,<2.31", "a==2.30", true),
            ("a>=2.0,<2.31", "a==2.31", false),
            ("a>=2.0,<2.31", "a==1.9", false),
        ];
        for (rule, request, blocked) in cases {
            let outcome = policy(&[], &[rule]).check(&strings(&[request]));
            assert_eq!(
                outcome.is_err(),
                blocked,
                "block {rule}, request {request}: {outcome:?}"
            );
        }
    }

    #[test]
    fn a_refusal_names_the_request_and_the_rule() {
        let policy = policy(&[], &["urllib3<1.26.5"]);
        assert_eq!(
            refusal(&policy, "urllib3==1.26.0").to_string(),
            r#""urllib3==1.26.0" is blocked by rule "urllib3<1.26.5""#
        );
    }

    #[test]
    fn an_unpinned_request_is_kept_out_of_blocked_versions_by_a_constraint() {
        let policy = policy(&[], &["urllib3<1.26.5", "evil"]);
        let plan = policy
            .check(&strings(&["urllib3", "requests>=2"]))
            .expect("admitted");
        assert_eq!(plan.requirements, strings(&["urllib3", "requests>=2"]));
        assert_eq!(
            plan.constraints,
            strings(&["urllib3>=1.26.5", "evil===blocked-by-package-policy"])
        );
        // A name blocked outright is refused whatever the version.
        assert!(matches!(
            refusal(&policy, "evil"),
            PackageRefusal::Blocked { .. }
        ));
        assert!(matches!(
            refusal(&policy, "Evil>=1"),
            PackageRefusal::Blocked { .. }
        ));
    }

    #[test]
    fn a_range_pip_cannot_avoid_needs_a_pin() {
        for rule in ["a>=2.0,<2.31", "a~=1.4.2", "a===1.0"] {
            let policy = policy(&[], &[rule]);
            assert!(
                matches!(refusal(&policy, "a"), PackageRefusal::PinNeeded { .. }),
                "{rule}"
            );
            assert!(policy.constraints().is_empty(), "{rule}");
        }
        let policy = policy(&[], &["a>=2.0,<2.31"]);
        assert!(policy.check(&strings(&["a==2.31"])).is_ok());
    }

    #[test]
    fn the_allow_list_admits_only_its_names_and_versions() {
        let policy = policy(&["numpy>=1.26", "kbdemo"], &["kbdemo>=2"]);
        assert!(policy.check(&strings(&["kbdemo", "numpy"])).is_ok());
        assert!(matches!(
            refusal(&policy, "pandas"),
            PackageRefusal::NotAllowed { .. }
        ));
        assert!(matches!(
            refusal(&policy, "numpy==1.25"),
            PackageRefusal::OutsideAllowed { .. }
        ));
        assert!(matches!(
            refusal(&policy, "kbdemo==2.0"),
            PackageRefusal::Blocked { .. }
        ));
        assert_eq!(
            policy
                .check(&strings(&["numpy"]))
                .expect("admitted")
                .constraints,
            strings(&["numpy>=1.26", "kbdemo<2"])
        );
    }

    #[test]
    fn urls_paths_and_options_are_refused() {
        let open = PackagePolicy::default();
        for request in [
            "--index-url=http://evil",
            "-e",
            "-e.",
            "-r/workspace/req.txt",
            "kbdemo @ http://evil/kbdemo-1.0-py3-none-any.whl",
            "kbdemo@http://evil/kbdemo-1.0-py3-none-any.whl",
            "kbdemo@file:///workspace/kbdemo.whl",
            "/workspace/kbdemo-1.0-py3-none-any.whl",
            "./kbdemo",
            ".",
            "http://evil/kbdemo.whl",
            "git+https://evil/repo",
            "kbdemo --index-url=http://evil",
            "kbdemo;--x",
            "",
        ] {
            let outcome = open.check(&strings(&[request]));
            assert!(
                matches!(outcome, Err(PackageRefusal::NotARequirement { .. })),
                "{request:?}: {outcome:?}"
            );
        }
        assert!(
            open.check(&strings(&["pandas[excel]>=2", "requests==2.32.3"]))
                .is_ok()
        );
    }

    #[test]
    fn invalid_rules_are_named() {
        for rule in [
            "",
            "a @ http://x",
            "a; python_version<'3'",
            "a[b]",
            "a<<1",
            "a<1.0,",
        ] {
            let error = PackagePolicy::parse(&[], &strings(&[rule])).expect_err(rule);
            assert!(error.to_string().contains(rule.trim()), "{error}");
        }
        assert!(matches!(
            PackagePolicy::parse(&strings(&["a", "A>=1"]), &[]),
            Err(PolicyError::AllowedTwice { .. })
        ));
    }

    #[test]
    fn a_policy_file_holds_allow_and_block_lines() {
        let (mut allow, mut block) = (Vec::new(), Vec::new());
        PackagePolicy::read_file(
            "# known-vulnerable releases\nblock urllib3<1.26.5\n\nallow numpy  # any version\nblock requests>=2.0,<2.31\n",
            &mut allow,
            &mut block,
        )
        .expect("valid");
        assert_eq!(allow, strings(&["numpy"]));
        assert_eq!(block, strings(&["urllib3<1.26.5", "requests>=2.0,<2.31"]));
        let error =
            PackagePolicy::read_file("deny x\n", &mut allow, &mut block).expect_err("unknown verb");
        assert!(error.to_string().contains("line 1"), "{error}");
    }
}
