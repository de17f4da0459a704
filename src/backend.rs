//! Where sandboxes run. The engine talks only to the [`Backend`] trait, in the types of this
//! file; [`docker`] implements it with bollard, and keeps everything Docker-specific (the
//! container's supervisor, how a kernel is killed, where the OOM counter lives, the image build)
//! to itself. Another runtime (Kubernetes) would be a sibling file.

pub mod docker;

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;
use std::future::Future;
use tokio::io::AsyncWrite;

use crate::egress::EgressPolicy;
use crate::kernel::{ChannelStream, ConnectionInfo, KernelChannel};

/// A stream of bytes (a tar archive) moving in or out of a sandbox.
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// Resource limits for one sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory_mb: u64,
    /// CPUs in thousandths (1000 = one CPU).
    pub milli_cpus: u64,
    pub pids: u64,
}

/// Everything needed to start a sandbox container.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    /// Container name; unique per sandbox.
    pub name: String,
    pub image: String,
    pub labels: HashMap<String, String>,
    /// `KEY=value` pairs for the kernel's environment.
    pub env: Vec<String>,
    pub limits: Limits,
    pub connection: ConnectionInfo,
    /// What the sandbox's code may reach: in force before the sandbox's first process runs.
    pub egress: EgressPolicy,
    /// An opaque document kept with the policy, read back with [`Backend::egress_state`].
    pub egress_state: Vec<u8>,
}

/// What the backend knows about a sandbox container.
#[derive(Debug, Clone)]
pub struct ContainerInfo {
    /// The runtime's id for the container.
    pub container_id: String,
    /// Its name, without the leading `/`.
    pub name: String,
    /// The id of the image it runs.
    pub image_id: String,
    pub labels: HashMap<String, String>,
    pub running: bool,
    /// The kernel was (or the container's main process was) killed for exceeding memory.
    pub oom_killed: bool,
}

/// A command to run inside a sandbox.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    pub argv: Vec<String>,
    pub workdir: String,
    pub env: Vec<String>,
    pub user: Option<String>,
    /// Each of stdout and stderr is cut after this many bytes.
    pub output_limit: usize,
}

/// What a command printed and how it ended.
#[derive(Debug, Clone, Default)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i64,
    /// Output beyond `output_limit` was dropped.
    pub truncated: bool,
}

/// A chunk of what an attached process printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecChunk {
    Stdout(Bytes),
    Stderr(Bytes),
}

/// A process running in a sandbox with its stdin and output attached (`docker exec -i`).
pub struct AttachedExec {
    /// The process's pid inside the sandbox. It leads its own process group, so
    /// [`Backend::kill_process_group`] with it takes its children along.
    pub pid: u32,
    /// Writes reach the process's stdin; shutting this down closes its stdin.
    pub stdin: Pin<Box<dyn AsyncWrite + Send>>,
    /// What the process prints. The stream ends when the process exits or its container goes
    /// away: that end is how a caller learns the process is gone.
    pub output: Pin<Box<dyn Stream<Item = Result<ExecChunk, BackendError>> + Send>>,
    /// The process's exit code, to be awaited once `output` has ended. A process killed by a
    /// signal reports `128 + signal`, as a shell does.
    pub exit: Pin<Box<dyn Future<Output = Result<i64, BackendError>> + Send>>,
}

/// A process in a sandbox with its stdin and its output as streams, for bulk transfers in and
/// out (`docker exec -i`, the command run as given, no wrapper).
pub struct StreamingExec {
    /// Writes reach the process's stdin; shutting this down closes its stdin.
    pub stdin: Pin<Box<dyn AsyncWrite + Send>>,
    /// What the process prints; ends when it exits.
    pub output: Pin<Box<dyn Stream<Item = Result<ExecChunk, BackendError>> + Send>>,
    /// The process's exit code, to be awaited once `output` has ended (it is read then).
    pub exit: Pin<Box<dyn Future<Output = Result<i64, BackendError>> + Send>>,
}

/// The runtime's own error, kept for the log; its type is the backend's business.
pub type RuntimeError = Box<dyn std::error::Error + Send + Sync>;

/// The largest document [`Backend::put_record`] keeps.
pub const MAX_RECORD_BYTES: usize = 16 * 1024;

/// The sandbox image's non-root user (`sandbox`, whose group has the same id), who runs the
/// kernel and owns its sockets and `/workspace`.
pub const SANDBOX_UID: u32 = 1000;

/// Backend failures. Variants are decided from the runtime's status codes, not message text.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("the container runtime is unreachable")]
    Unavailable {
        #[source]
        source: RuntimeError,
    },
    #[error("{what} not found")]
    NotFound { what: &'static str },
    #[error("image {image} is missing; build it with `kernelbox image build`")]
    ImageMissing { image: String },
    #[error("{what} conflicts with the container's state")]
    Conflict { what: &'static str },
    /// The runtime refused the request as invalid (say, more CPUs than the host has).
    #[error("the container runtime refused {operation} as invalid")]
    Invalid {
        operation: &'static str,
        #[source]
        source: RuntimeError,
    },
    #[error("the container runtime failed during {operation}")]
    Failed {
        operation: &'static str,
        #[source]
        source: RuntimeError,
    },
    #[error("the container runtime started the process detached, not attached")]
    NotAttached,
    #[error("the process exited before it started: {stderr}")]
    ProcessDidNotStart { stderr: String },
    /// Nothing listens on the kernel's socket yet (it is starting): worth another try.
    #[error("the kernel is not listening on its socket yet")]
    KernelNotListening {
        #[source]
        source: RuntimeError,
    },
    /// The kernel's socket could not be opened directly (see the source for why).
    #[error("the kernel's socket could not be opened")]
    KernelSocket {
        #[source]
        source: RuntimeError,
    },
    #[error("{operation} did not finish within {waited:?}")]
    Timeout {
        operation: &'static str,
        waited: Duration,
    },
}

/// A place that runs sandbox containers.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Checks that the runtime answers.
    async fn ping(&self) -> Result<(), BackendError>;
    /// Whether `image` exists, and its labels.
    async fn image_labels(
        &self,
        image: &str,
    ) -> Result<Option<HashMap<String, String>>, BackendError>;
    /// The id of `image`, or `None` when there is no such image.
    async fn image_id(&self, image: &str) -> Result<Option<String>, BackendError>;
    /// Renames a container, at once and durably: a one-bit record that costs no command.
    async fn rename(&self, container_id: &str, name: &str) -> Result<(), BackendError>;
    /// Sets a running sandbox's memory, CPU and process limits; they are in force, and kept
    /// across restarts of the container, when this returns.
    async fn update_limits(&self, container_id: &str, limits: &Limits) -> Result<(), BackendError>;
    /// Creates and starts a container; returns it with its kernel endpoint.
    async fn create(&self, spec: &ContainerSpec) -> Result<ContainerInfo, BackendError>;
    /// Containers (running or not) carrying every one of `labels`.
    async fn list(&self, labels: &[(&str, &str)]) -> Result<Vec<ContainerInfo>, BackendError>;
    /// One container.
    async fn inspect(&self, container_id: &str) -> Result<ContainerInfo, BackendError>;
    /// Runs a command to completion (the caller bounds its time) and collects its output.
    async fn exec(&self, container_id: &str, spec: ExecSpec) -> Result<ExecOutput, BackendError>;
    /// Starts a process with stdin, stdout and stderr attached, in a process group of its own,
    /// and returns once it runs (`spec.output_limit` does not apply: the caller reads the output
    /// as it comes).
    async fn exec_attached(
        &self,
        container_id: &str,
        spec: ExecSpec,
    ) -> Result<AttachedExec, BackendError>;
    /// Starts `spec.argv` as given (no wrapper, no pid line) with stdin and output attached,
    /// for moving bytes in and out of the sandbox; `spec.output_limit` does not apply. Starting
    /// it is bounded in time; the caller bounds the rest.
    async fn exec_streaming(
        &self,
        container_id: &str,
        spec: ExecSpec,
    ) -> Result<StreamingExec, BackendError>;
    /// A byte stream to one of the kernel's sockets inside the sandbox: how the server reaches
    /// a kernel, through the runtime and nothing else.
    async fn open_kernel_channel(
        &self,
        container_id: &str,
        channel: KernelChannel,
    ) -> Result<ChannelStream, BackendError>;
    /// Sends SIGKILL to a process group inside the container.
    async fn kill_process_group(&self, container_id: &str, pgid: u32) -> Result<(), BackendError>;
    /// Sends `signal` (a name without `SIG`, like `TERM`, from the caller's validated list) to a
    /// process group inside the container, with the sandbox user's rights only.
    async fn signal_process_group(
        &self,
        container_id: &str,
        pgid: u32,
        signal: &str,
    ) -> Result<(), BackendError>;
    /// Kills the sandbox's kernel process; the sandbox starts a fresh kernel on its own, keeping
    /// its files and installed packages.
    async fn kill_kernel(&self, container_id: &str) -> Result<(), BackendError>;
    /// Restarts every process of the sandbox (its files and installed packages stay), and
    /// returns once it runs again.
    async fn restart(&self, container_id: &str) -> Result<(), BackendError>;
    /// How many processes the sandbox's memory limit has killed since it started.
    async fn oom_kills(&self, container_id: &str) -> Result<u64, BackendError>;
    /// Replaces the sandbox's egress policy; returns once the new one is in force. `state` is
    /// kept with it.
    async fn apply_egress(
        &self,
        container_id: &str,
        policy: &EgressPolicy,
        state: &[u8],
    ) -> Result<(), BackendError>;
    /// The document kept with the policy in force; `None` when none was ever applied.
    async fn egress_state(&self, container_id: &str) -> Result<Option<Vec<u8>>, BackendError>;
    /// Keeps a small document (at most [`MAX_RECORD_BYTES`]) named `name` (lowercase letters,
    /// digits and `-`) with the sandbox, where the sandbox's own code can neither read nor write
    /// it, replacing one of that name. It lasts as long as the sandbox, across server restarts.
    async fn put_record(
        &self,
        container_id: &str,
        name: &str,
        record: &[u8],
    ) -> Result<(), BackendError>;
    /// The document [`Backend::put_record`] kept as `name`; `None` when there is none.
    async fn record(&self, container_id: &str, name: &str)
    -> Result<Option<Vec<u8>>, BackendError>;
    /// Removes what a sandbox left behind after it went (its network plumbing), among the
    /// containers carrying every one of `labels`. Returns how many were removed.
    async fn collect_garbage(&self, labels: &[(&str, &str)]) -> Result<usize, BackendError>;
    /// Removes the container and everything that belongs to it, running or not. Removing a
    /// missing container succeeds.
    async fn destroy(&self, container_id: &str) -> Result<(), BackendError>;
}

impl From<BackendError> for crate::kernel::DialError {
    /// A kernel that is still starting is worth another try; anything else is final.
    fn from(error: BackendError) -> Self {
        match error {
            BackendError::KernelNotListening { .. } => Self::NotListening(Box::new(error)),
            error => Self::Failed(Box::new(error)),
        }
    }
}
