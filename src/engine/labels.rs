//! Container labels. Everything a restarted server needs to reattach to a sandbox lives here,
//! in Docker, not in server memory.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::lifetimes::{Lifetime, Metadata};

/// Marks a container as a kernelbox sandbox; its value is the sandbox id.
pub const ID: &str = "io.kernelbox.id";
/// The kernelbox instance that owns the container.
pub const INSTANCE: &str = "io.kernelbox.instance";
/// The tenant (API key fingerprint or MCP session) that owns the sandbox.
pub const OWNER: &str = "io.kernelbox.owner";
pub const TAG: &str = "io.kernelbox.tag";
/// RFC 3339 creation time.
pub const CREATED: &str = "io.kernelbox.created";
pub const IMAGE: &str = "io.kernelbox.image";
/// The kernel's HMAC key.
pub const KERNEL_KEY: &str = "io.kernelbox.kernel-key";
/// The caller's metadata, as a JSON object of strings.
pub const METADATA: &str = "io.kernelbox.metadata";
/// The lifetime given at creation, in seconds; a later change is kept in the sandbox's record
/// ([`super::lifetimes`]), since labels cannot change.
pub const TIMEOUT: &str = "io.kernelbox.timeout";
/// RFC 3339: when the lifetime given at creation ends.
pub const EXPIRES: &str = "io.kernelbox.expires";
/// Marks a warm-pool sandbox (value `1`). Unclaimed, its container's name starts with
/// [`POOL_NAME_PREFIX`]; claimed, it is renamed like any sandbox, and what binds it to its
/// caller is in its `binding` record ([`binding`]), since labels cannot change.
pub const POOL: &str = "io.kernelbox.pool";
/// On a warm-pool member: a digest of the configuration it was started with.
pub const POOL_CONFIG: &str = "io.kernelbox.pool-config";
/// The name prefix of an unclaimed warm-pool container.
pub const POOL_NAME_PREFIX: &str = "kernelbox-pool-";
/// On images: the image layout version.
pub const IMAGE_VERSION: &str = "io.kernelbox.image-version";

/// The values a sandbox's labels carry.
pub struct SandboxLabels<'a> {
    pub id: &'a str,
    pub instance: &'a str,
    pub owner: Option<&'a str>,
    pub tag: Option<&'a str>,
    pub created_at: DateTime<Utc>,
    pub image: &'a str,
    pub key: &'a str,
    pub metadata: &'a Metadata,
    pub lifetime: Option<Lifetime>,
}

pub fn for_sandbox(values: &SandboxLabels<'_>) -> HashMap<String, String> {
    let mut labels = HashMap::from([
        (ID.to_string(), values.id.to_string()),
        (INSTANCE.to_string(), values.instance.to_string()),
        (CREATED.to_string(), values.created_at.to_rfc3339()),
        (IMAGE.to_string(), values.image.to_string()),
        (KERNEL_KEY.to_string(), values.key.to_string()),
    ]);
    if let Some(owner) = values.owner {
        labels.insert(OWNER.to_string(), owner.to_string());
    }
    if let Some(tag) = values.tag {
        labels.insert(TAG.to_string(), tag.to_string());
    }
    if !values.metadata.is_empty() {
        labels.insert(
            METADATA.to_string(),
            serde_json::to_string(values.metadata).unwrap_or_default(),
        );
    }
    if let Some(lifetime) = values.lifetime {
        labels.insert(TIMEOUT.to_string(), lifetime.timeout_secs.to_string());
        labels.insert(EXPIRES.to_string(), lifetime.expires_at.to_rfc3339());
    }
    labels
}

/// The metadata a sandbox's labels carry (none when the label is missing or not an object of
/// strings).
pub fn metadata(labels: &HashMap<String, String>) -> Metadata {
    labels
        .get(METADATA)
        .and_then(|json| serde_json::from_str(json).ok())
        .unwrap_or_default()
}

/// The lifetime given at creation, from a sandbox's labels.
pub fn lifetime(labels: &HashMap<String, String>) -> Option<Lifetime> {
    let timeout_secs = labels.get(TIMEOUT)?.parse().ok()?;
    let expires_at = DateTime::parse_from_rfc3339(labels.get(EXPIRES)?)
        .ok()?
        .with_timezone(&Utc);
    Some(Lifetime {
        timeout_secs,
        expires_at,
    })
}

/// The labels a claimed warm-pool sandbox takes from its caller, kept in its `binding` record
/// and laid over its container's labels when a restarted server reattaches it. Only these may
/// be laid over: a record never changes a sandbox's id, instance, image or kernel key.
pub const BINDING: [&str; 6] = [OWNER, TAG, CREATED, METADATA, TIMEOUT, EXPIRES];

/// The binding of a claimed warm-pool sandbox: the labels it would have carried had it been
/// created for its caller.
pub fn binding(values: &SandboxLabels<'_>) -> HashMap<String, String> {
    let mut labels = for_sandbox(values);
    labels.retain(|name, _| BINDING.contains(&name.as_str()));
    labels
}
