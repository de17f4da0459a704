//! The engine: the one place where sandbox logic lives. Every face (MCP, REST, proxy) parses its
//! input, calls a method here and renders the result.
//!
//! | part            | what it does                                                       |
//! |-----------------|--------------------------------------------------------------------|
//! | [`sandbox`]     | one sandbox: its container, its kernel connection, its exec lock   |
//! | [`execution`]   | running code: event stream, timeouts, cancellation, output caps    |
//! | [`files`]       | files and directory trees, confined to `/workspace`                |
//! | [`commands`]    | shell commands                                                     |
//! | [`mcp_servers`] | stdio MCP servers inside a sandbox: registrations, proxy sessions  |
//! | [`labels`]      | the container labels that let a restarted server reattach          |
//! | [`history`]     | recent executions, looked up by id after they ended                |
//! | [`metrics`]     | counters and histograms for `GET /metrics`                         |

pub mod commands;
pub mod execution;
pub mod files;
pub mod history;
pub mod labels;
pub mod mcp_servers;
pub mod metrics;
pub mod sandbox;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use rand::RngCore;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::backend::{Backend, BackendError, ContainerInfo, ContainerSpec, Limits};
use crate::config::EngineConfig;
use crate::kernel::{ConnectionInfo, KernelError};

pub use execution::{
    ExecEvent, ExecuteRequest, ExecutionOutcome, ExecutionResult, ExecutionStream, Output,
};
pub use files::{FileDownload, FileEntry, FileKind, UploadedFile};
pub use history::ExecutionRecord;
pub use mcp_servers::{McpServerError, ProxySession, RegisteredServer, ServerParams};
pub use sandbox::{Sandbox, SandboxStatus};

/// The version of the sandbox image this build expects (the image's `io.kernelbox.image-version`).
pub const IMAGE_VERSION: &str = include_str!("../docker/IMAGE_VERSION");
/// How often kernel heartbeats are checked.
const LIVENESS_INTERVAL: Duration = Duration::from_secs(5);
/// How long a heartbeat may take.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(2);
/// How many recent executions are remembered, and how many bytes of results they may hold.
const HISTORY_ENTRIES: usize = 256;
const HISTORY_BYTES: usize = 64 * 1024 * 1024;
/// The largest code string one execution accepts.
pub const MAX_CODE_BYTES: usize = 2 * 1024 * 1024;
/// Where user files live inside a sandbox.
pub const WORKSPACE: &str = "/workspace";

/// Engine failures, one variant per thing a caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no sandbox with id {id}")]
    NotFound { id: String },
    #[error("no execution with id {id} (only recent executions are kept)")]
    ExecutionNotFound { id: String },
    #[error("sandbox {id} is busy with another execution; wait for it to finish or cancel it")]
    Busy { id: String },
    #[error("the limit of {limit} live sandboxes is reached; close one first")]
    TooManySandboxes { limit: usize },
    #[error("invalid {field}: {reason}")]
    InvalidInput { field: &'static str, reason: String },
    #[error("path {path} is outside {WORKSPACE}")]
    PathOutsideWorkspace { path: String },
    #[error("no such file or directory: {path}")]
    PathNotFound { path: String },
    #[error("{path} is a directory")]
    IsADirectory { path: String },
    #[error("{what} is larger than the limit of {limit} bytes")]
    TooLarge { what: &'static str, limit: u64 },
    #[error("command did not finish within {secs} s and was killed")]
    CommandTimeout { secs: u64 },
    #[error("sandbox image {image} is missing or outdated; run `kernelbox image build`")]
    ImageMissing { image: String },
    #[error("the sandbox's kernel is not reachable")]
    Kernel(#[source] KernelError),
    #[error(transparent)]
    Backend(BackendError),
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("the upload was interrupted before it ended")]
    UploadInterrupted(#[source] std::io::Error),
    #[error("cannot buffer the upload on the server")]
    Spool(#[source] std::io::Error),
    #[error(transparent)]
    McpServer(#[from] McpServerError),
}

impl From<BackendError> for EngineError {
    fn from(error: BackendError) -> Self {
        match error {
            BackendError::ImageMissing { image } => EngineError::ImageMissing { image },
            other => EngineError::Backend(other),
        }
    }
}

/// Options for a new sandbox.
#[derive(Debug, Clone, Default)]
pub struct CreateSandbox {
    /// A free-form label the caller can use to find the sandbox again.
    pub tag: Option<String>,
    /// Environment variables for the kernel and commands.
    pub env: HashMap<String, String>,
    /// The tenant that owns the sandbox (an API key's fingerprint, an MCP session).
    pub owner: Option<String>,
    pub memory_mb: Option<u64>,
    pub cpus: Option<f64>,
}

/// A sandbox as the faces show it.
#[derive(Debug, Clone, Serialize)]
pub struct SandboxInfo {
    pub id: String,
    pub tag: Option<String>,
    pub status: SandboxStatus,
    pub created_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
    pub image: String,
}

/// The engine. Share it as `Arc<Engine>`.
pub struct Engine {
    backend: Arc<dyn Backend>,
    config: EngineConfig,
    sandboxes: DashMap<String, Arc<Sandbox>>,
    history: history::ExecutionHistory,
    metrics: metrics::EngineMetrics,
    mcp: mcp_servers::McpServers,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl Engine {
    pub fn new(backend: Arc<dyn Backend>, config: EngineConfig) -> Arc<Self> {
        Arc::new(Self {
            backend,
            config,
            sandboxes: DashMap::new(),
            history: history::ExecutionHistory::new(HISTORY_ENTRIES, HISTORY_BYTES),
            metrics: metrics::EngineMetrics::new(),
            mcp: mcp_servers::McpServers::default(),
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub(crate) fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// The metrics in the Prometheus text format (`GET /metrics`).
    pub fn metrics_text(&self) -> String {
        self.metrics.render(self.sandboxes.len())
    }

    /// Checks that the runtime answers and the image exists at the version this build needs.
    pub async fn check_image(&self) -> Result<(), EngineError> {
        let labels = self.backend.image_labels(&self.config.image).await?;
        let version = labels
            .as_ref()
            .and_then(|labels| labels.get(labels::IMAGE_VERSION));
        if version.map(String::as_str) == Some(IMAGE_VERSION.trim()) {
            Ok(())
        } else {
            Err(EngineError::ImageMissing {
                image: self.config.image.clone(),
            })
        }
    }

    /// Creates a sandbox and waits until its kernel answers.
    pub async fn create(&self, request: CreateSandbox) -> Result<SandboxInfo, EngineError> {
        if self.shutdown.is_cancelled() {
            return Err(EngineError::ShuttingDown);
        }
        if self.sandboxes.len() >= self.config.max_sandboxes {
            return Err(EngineError::TooManySandboxes {
                limit: self.config.max_sandboxes,
            });
        }
        let limits = self.limits_for(&request)?;
        let id = new_sandbox_id();
        let span = tracing::info_span!("sandbox", sandbox_id = %id);
        let started = std::time::Instant::now();
        let created = async {
            let created_at = Utc::now();
            let connection = ConnectionInfo::for_container();
            let mut env: Vec<String> = Vec::with_capacity(request.env.len());
            for (key, value) in &request.env {
                validate_env_name(key)?;
                env.push(format!("{key}={value}"));
            }
            let spec = ContainerSpec {
                name: format!("kernelbox-{}", id.replace('_', "-")),
                image: self.config.image.clone(),
                labels: labels::for_sandbox(&labels::SandboxLabels {
                    id: &id,
                    instance: &self.config.instance,
                    owner: request.owner.as_deref(),
                    tag: request.tag.as_deref(),
                    created_at,
                    image: &self.config.image,
                    key: &connection.key,
                }),
                env,
                limits,
                connection,
            };
            let container = self.backend.create(&spec).await?;
            let sandbox = Arc::new(
                Sandbox::from_container(&container, &self.config.image).ok_or_else(|| {
                    EngineError::Backend(BackendError::NoKernelPort { channel: "shell" })
                })?,
            );
            if let Err(error) = sandbox
                .connect_kernel(self.config.kernel_ready_timeout)
                .await
            {
                tracing::warn!(%error, "kernel did not start; removing the container");
                let _ = self.backend.destroy(&container.container_id).await;
                return Err(error);
            }
            tracing::info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "sandbox ready"
            );
            let info = sandbox.info();
            self.sandboxes.insert(id.clone(), sandbox);
            Ok(info)
        }
        .instrument(span)
        .await;
        match &created {
            Ok(_) => self.metrics.sandbox_created(started.elapsed()),
            Err(_) => self.metrics.sandbox_create_failed(),
        }
        created
    }

    fn limits_for(&self, request: &CreateSandbox) -> Result<Limits, EngineError> {
        let mut limits = self.config.limits;
        if let Some(memory_mb) = request.memory_mb {
            if !(64..=self.config.limits.memory_mb.max(64) * 16).contains(&memory_mb) {
                return Err(EngineError::InvalidInput {
                    field: "memory_mb",
                    reason: "must be at least 64".into(),
                });
            }
            limits.memory_mb = memory_mb;
        }
        if let Some(cpus) = request.cpus {
            if !(cpus > 0.0 && cpus <= 64.0) {
                return Err(EngineError::InvalidInput {
                    field: "cpus",
                    reason: "must be greater than 0 and at most 64".into(),
                });
            }
            limits.milli_cpus = (cpus * 1000.0).round() as u64;
        }
        Ok(limits)
    }

    /// A live sandbox. With `owner`, a sandbox of another owner is reported as not found.
    pub fn get(&self, id: &str, owner: Option<&str>) -> Result<Arc<Sandbox>, EngineError> {
        self.sandboxes
            .get(id)
            .map(|entry| entry.value().clone())
            .filter(|sandbox| owner.is_none() || sandbox.owner() == owner)
            .ok_or_else(|| EngineError::NotFound { id: id.to_string() })
    }

    /// A recent execution. With `owner`, another owner's execution is reported as not found.
    pub fn execution(
        &self,
        execution_id: &str,
        owner: Option<&str>,
    ) -> Result<ExecutionRecord, EngineError> {
        self.history
            .get(execution_id)
            .filter(|record| owner.is_none() || record.owner.as_deref() == owner)
            .ok_or_else(|| EngineError::ExecutionNotFound {
                id: execution_id.to_string(),
            })
    }

    /// Information about one sandbox.
    pub fn info(&self, id: &str, owner: Option<&str>) -> Result<SandboxInfo, EngineError> {
        self.get(id, owner).map(|sandbox| sandbox.info())
    }

    /// Every live sandbox of `owner` (every one when `owner` is `None`), oldest first.
    pub fn list(&self, owner: Option<&str>) -> Vec<SandboxInfo> {
        let mut sandboxes: Vec<SandboxInfo> = self
            .sandboxes
            .iter()
            .filter(|entry| owner.is_none() || entry.value().owner() == owner)
            .map(|entry| entry.value().info())
            .collect();
        sandboxes.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        sandboxes
    }

    /// Destroys a sandbox: its container is removed even when its kernel is dead.
    pub async fn destroy(&self, id: &str, owner: Option<&str>) -> Result<(), EngineError> {
        let sandbox = self.get(id, owner)?;
        self.sandboxes.remove(id);
        self.mcp.forget_sandbox(id);
        sandbox.cancel();
        self.backend.destroy(sandbox.container_id()).await?;
        tracing::info!(sandbox_id = %id, "sandbox destroyed");
        Ok(())
    }

    /// Destroys a sandbox without waiting for it: for a connection that owned a sandbox and went
    /// away (its handler is dropped, nobody awaits). A sandbox already gone is fine.
    pub fn destroy_in_background(self: &Arc<Self>, id: String) {
        if tokio::runtime::Handle::try_current().is_err() {
            tracing::warn!(sandbox_id = %id, "no runtime to destroy the sandbox; the idle reaper will");
            return;
        }
        let engine = self.clone();
        self.tasks.spawn(async move {
            match engine.destroy(&id, None).await {
                Ok(()) | Err(EngineError::NotFound { .. }) => {}
                Err(error) => tracing::warn!(sandbox_id = %id, %error, "could not destroy sandbox"),
            }
        });
    }

    /// Reattaches to this instance's containers after a restart: each keeps its id and kernel
    /// state. Containers whose kernel cannot be reached are removed. Returns how many came back.
    pub async fn reattach(&self) -> Result<usize, EngineError> {
        let containers = self
            .backend
            .list(&[(labels::INSTANCE, self.config.instance.as_str())])
            .await?;
        let mut restored = 0;
        for container in containers {
            match self.reattach_one(&container).await {
                Ok(()) => restored += 1,
                Err(error) => {
                    tracing::warn!(container = %container.container_id, %error, "cannot reattach; removing");
                    self.backend.destroy(&container.container_id).await?;
                }
            }
        }
        Ok(restored)
    }

    async fn reattach_one(&self, container: &ContainerInfo) -> Result<(), EngineError> {
        let image = container
            .labels
            .get(labels::IMAGE)
            .cloned()
            .unwrap_or_default();
        let sandbox = Sandbox::from_container(container, &image)
            .ok_or(EngineError::Kernel(KernelError::Closed))?;
        sandbox.connect_kernel(Duration::from_secs(10)).await?;
        tracing::info!(sandbox_id = %sandbox.id(), "reattached");
        self.sandboxes
            .insert(sandbox.id().to_string(), Arc::new(sandbox));
        Ok(())
    }

    /// Destroys sandboxes idle longer than the configured maximum. Returns their ids.
    pub async fn reap_idle(&self) -> Vec<String> {
        let idle: Vec<String> = self
            .sandboxes
            .iter()
            .filter(|entry| {
                !entry.value().is_busy() && entry.value().idle_for() > self.config.max_idle
            })
            .map(|entry| entry.key().clone())
            .collect();
        let mut reaped = Vec::new();
        for id in idle {
            match self.destroy(&id, None).await {
                Ok(()) => reaped.push(id),
                Err(error) => {
                    tracing::warn!(sandbox_id = %id, %error, "could not reap idle sandbox")
                }
            }
        }
        reaped
    }

    /// Runs the idle reaper every cleanup interval until shutdown.
    pub fn spawn_reaper(self: &Arc<Self>) {
        let engine = self.clone();
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            let mut ticks = tokio::time::interval(engine.config.cleanup_interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = ticks.tick() => {
                        let reaped = engine.reap_idle().await;
                        if !reaped.is_empty() {
                            tracing::info!(count = reaped.len(), "reaped idle sandboxes");
                        }
                    }
                }
            }
        });
    }

    /// Whether the container runtime answers.
    pub async fn backend_reachable(&self) -> bool {
        self.backend.ping().await.is_ok()
    }

    /// Checks every idle sandbox's kernel heartbeat every few seconds until shutdown, so
    /// `status` shows `dead` for a kernel that stopped answering.
    pub fn spawn_liveness(self: &Arc<Self>) {
        let engine = self.clone();
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            let mut ticks = tokio::time::interval(LIVENESS_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = ticks.tick() => {
                        let sandboxes: Vec<Arc<Sandbox>> = engine.sandboxes.iter().map(|entry| entry.value().clone()).collect();
                        for sandbox in sandboxes {
                            if !sandbox.check_heartbeat(HEARTBEAT_TIMEOUT).await {
                                tracing::warn!(sandbox_id = %sandbox.id(), "kernel heartbeat missed");
                            }
                        }
                    }
                }
            }
        });
    }

    /// Stops background work. With `destroy_sandboxes`, removes every sandbox too; otherwise they
    /// keep running for the next start to reattach.
    pub async fn shutdown(&self, destroy_sandboxes: bool) {
        self.close_mcp_servers().await;
        self.shutdown.cancel();
        for entry in self.sandboxes.iter() {
            entry.value().cancel();
        }
        self.tasks.close();
        if tokio::time::timeout(Duration::from_secs(10), self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("background tasks did not stop within 10 s");
        }
        if destroy_sandboxes {
            let ids: Vec<String> = self
                .sandboxes
                .iter()
                .map(|entry| entry.key().clone())
                .collect();
            for id in ids {
                if let Err(error) = self.destroy(&id, None).await {
                    tracing::warn!(sandbox_id = %id, %error, "could not destroy sandbox at shutdown");
                }
            }
        }
    }
}

/// `sbx_` plus 20 characters of lowercase base32 (100 random bits).
fn new_sandbox_id() -> String {
    let mut bytes = [0u8; 15];
    rand::rng().fill_bytes(&mut bytes);
    let encoded = data_encoding::BASE32_NOPAD
        .encode(&bytes)
        .to_ascii_lowercase();
    format!("sbx_{}", &encoded[..20])
}

fn validate_env_name(name: &str) -> Result<(), EngineError> {
    let valid = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("KERNELBOX_");
    if valid {
        Ok(())
    } else {
        Err(EngineError::InvalidInput {
            field: "env",
            reason: format!(
                "{name:?} is not a valid variable name (letters, digits, '_'; not KERNELBOX_*)"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_ids_have_the_documented_shape() {
        let id = new_sandbox_id();
        assert!(id.starts_with("sbx_"));
        assert_eq!(id.len(), 24);
        assert!(
            id[4..]
                .chars()
                .all(|c| c.is_ascii_lowercase() || ('2'..='7').contains(&c))
        );
        assert_ne!(id, new_sandbox_id());
    }

    #[test]
    fn env_names_are_checked() {
        assert!(validate_env_name("MY_VAR1").is_ok());
        assert!(validate_env_name("1BAD").is_err());
        assert!(validate_env_name("A=B").is_err());
        assert!(validate_env_name("KERNELBOX_CONNECTION").is_err());
    }
}
