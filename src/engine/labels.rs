//! Container labels. Everything a restarted server needs to reattach to a sandbox lives here,
//! in Docker, not in server memory.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

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
    labels
}
