//! Tenants: who a call acts for. Every engine call that touches a sandbox names its tenant; a
//! sandbox and its executions belong to the tenant that created them, and every other tenant gets
//! "not found" for them. There is no "any tenant" value: the few operator-wide views (the reaper,
//! shutdown, `/health`'s count) are separate engine methods.

use std::fmt;

/// Who a call acts for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Tenant {
    /// The one tenant of a server without API keys, and of `kernelbox stdio`.
    Local,
    /// The holder of one API key, named by the key's fingerprint (`key_` and 16 hex digits):
    /// never the key itself.
    Key(String),
}

impl Tenant {
    /// The value of the sandbox's owner label: the fingerprint, or none for [`Tenant::Local`]
    /// (sandboxes made before tenants had names carry no label either).
    pub fn label(&self) -> Option<&str> {
        match self {
            Tenant::Local => None,
            Tenant::Key(fingerprint) => Some(fingerprint),
        }
    }

    /// The tenant an owner label names.
    pub fn from_label(label: Option<&str>) -> Self {
        match label {
            None | Some("") => Tenant::Local,
            Some(fingerprint) => Tenant::Key(fingerprint.to_string()),
        }
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tenant::Local => f.write_str("local"),
            Tenant::Key(fingerprint) => f.write_str(fingerprint),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip() {
        for tenant in [Tenant::Local, Tenant::Key("key_0123456789abcdef".into())] {
            assert_eq!(Tenant::from_label(tenant.label()), tenant);
        }
        assert_eq!(Tenant::from_label(Some("")), Tenant::Local);
    }
}
