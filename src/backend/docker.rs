//! The Docker backend (bollard). Nothing is published: the kernel listens on unix sockets inside
//! its container, and the server reaches them through execs that run `socat` there, so the
//! channel is the Docker API itself (local socket or a remote `DOCKER_HOST` alike). The kernel
//! and everything the server runs in a sandbox run as the image's non-root user.
//!
//!
//! | part         | what it does                                                   |
//! |--------------|----------------------------------------------------------------|
//! | this file    | containers, execs (collected, attached, streaming), the kernel's supervisor |
//! | [`network`]  | each sandbox's network sidecar and the bridge they sit on      |
//! | [`api_error`] | Docker API errors as the backend's errors, by status code |
//! | [`exec_exit`] | an exec's exit code when its stream closed before the process exited |
//! | [`firewall`] | egress policies as the sidecar's nftables rules and dnsmasq    |
//! | [`image`]    | building the sandbox image (`kernelbox image build`)           |

pub mod image;
pub mod network;

mod api_error;
pub mod direct_channel;
mod exec_exit;
pub mod firewall;
pub mod records;
mod shared_usr;

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerUpdateBody, ExecConfig, HostConfig,
    ImageInspect, Mount,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, ListNetworksOptionsBuilder,
    RemoveContainerOptionsBuilder, RestartContainerOptionsBuilder,
};
use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio_util::io::StreamReader;

use self::api_error::{classify, unavailable};
use self::direct_channel::DirectChannelError;
use self::network::NetworkOptions;
use super::{
    AttachedExec, Backend, BackendError, ContainerInfo, ContainerSpec, ExecChunk, ExecOutput,
    ExecSpec, Limits, MAX_RECORD_BYTES, SANDBOX_UID, StreamingExec,
};
use crate::config::KernelChannelMode;
use crate::egress::EgressPolicy;
use crate::kernel::{ChannelStream, KernelChannel};
/// The environment variable that carries the kernel's connection file into the container.
const CONNECTION_ENV: &str = "KERNELBOX_CONNECTION";

/// The container's main process: write the connection file, then run the kernel, starting it
/// again whenever it exits (shutdown with restart, `exit()`, OOM kill, crash). The container
/// stays up, so files and installed packages survive a kernel restart. The user site directory
/// is created first: Python only puts it on `sys.path` when it exists at startup, and `pip install`
/// (as the sandbox user) installs there. Its path comes from `python3 -S` (no `site.main()`, so
/// no `.pth` files run): 20-40 ms here instead of 45-100.
const KERNEL_SUPERVISOR: &str = r#"umask 077
printf '%s' "$KERNELBOX_CONNECTION" > /tmp/kernel.json
unset KERNELBOX_CONNECTION
mkdir -p "$(python3 -S -c 'import site; print(site.getusersitepackages())')"
while :; do python3 -m ipykernel_launcher -f /tmp/kernel.json; done"#;
/// How long applying an egress policy in a sidecar may take (it waits for the sidecar to be up
/// and for its resolver to answer with the new config).
const EGRESS_APPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long inspecting an image may take (the daemon answers from its own store).
const IMAGE_INSPECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How many times a container's removal is tried when the daemon fails to delete its directory.
const REMOVE_ATTEMPTS: u32 = 3;
/// How long renaming a container may take (the daemon does it at once).
const RENAME_TIMEOUT: Duration = Duration::from_secs(10);
/// Seconds a restarting sandbox's processes get after SIGTERM before SIGKILL.
const RESTART_GRACE_SECS: i32 = 1;
/// The relay between an exec's stdio and a kernel socket: root-owned, so sandbox code cannot
/// replace it.
const SOCAT: &str = "/usr/bin/socat";
/// How often socat, or the direct channel, tries the kernel's socket before it gives up.
const KERNEL_CONNECT_RETRIES: u32 = 200;
/// How long apart those tries are: a starting kernel binds its sockets about a second after its
/// container starts.
const KERNEL_CONNECT_INTERVAL: Duration = Duration::from_millis(25);
/// Kills the kernel, anchored: the supervisor's own command line mentions the kernel too.
/// The backend's own commands in a sandbox name their binaries by absolute, root-owned paths:
/// the image's PATH starts with `~/.local/bin`, which the sandbox's code can write.
const KILL_KERNEL: [&str; 4] = [
    "/usr/bin/pkill",
    "-KILL",
    "-f",
    "^python3 -m ipykernel_launcher",
];
/// Prints the memory cgroup's event counters (cgroup v2, then v1).
const READ_OOM_EVENTS: &str = "/bin/cat /sys/fs/cgroup/memory.events 2>/dev/null || /bin/cat /sys/fs/cgroup/memory/memory.oom_control";
/// The first line an attached process prints: its pid inside the container. The wrapper makes
/// the process the leader of a new session, so its pid is also its process group.
const PID_MARKER: &str = "kernelbox-pid ";
/// Prints the pid marker, then becomes the command (`exec` keeps the pid).
const PID_WRAPPER: &str = r#"printf 'kernelbox-pid %s
' "$$"; exec "$@""#;
/// How long `docker exec` may take to show the wrapper's pid line.
const ATTACH_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long creating and starting a streaming exec may take.
const STREAMING_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long, after an exec's output has ended, its process may take to exit.
const EXEC_EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one of the backend's own short commands in a sandbox (a kill, a signal, reading the
/// OOM count) may take. They run as the sandbox's user, whose code can stop them or hold their
/// output open.
const BACKEND_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of an attached process's stderr explains a failed start.
const START_STDERR_BYTES: usize = 4096;

/// One chunk of an attached exec's output as the backend hands it on; stdin echoes are dropped.
fn exec_chunk(
    chunk: Result<LogOutput, bollard::errors::Error>,
) -> Option<Result<ExecChunk, BackendError>> {
    match chunk {
        Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
            Some(Ok(ExecChunk::Stdout(message)))
        }
        Ok(LogOutput::StdErr { message }) => Some(Ok(ExecChunk::Stderr(message))),
        Ok(LogOutput::StdIn { .. }) => None,
        Err(error) => Some(Err(classify("exec output", "container", error))),
    }
}

/// The image a sandbox's containers are created from, and its shared `/usr` (see
/// [`shared_usr`]).
struct ImageRoot {
    /// A reference Docker resolves: the image's id when `usr` is set.
    image: String,
    usr: Option<Mount>,
}

impl ImageRoot {
    fn mount_into(&self, body: &mut ContainerCreateBody) {
        if let Some(usr) = &self.usr {
            body.host_config
                .get_or_insert_with(Default::default)
                .mounts
                .get_or_insert_with(Vec::new)
                .push(usr.clone());
        }
    }
}

/// Docker, reached through the usual `DOCKER_HOST` / local socket defaults.
#[derive(Clone)]
pub struct DockerBackend {
    docker: Docker,
    network: NetworkOptions,
    kernel_channel: KernelChannelMode,
    /// Set once `auto` found the direct channel unusable here (the server in another pid
    /// namespace, or on another host); from then on it relays through execs.
    direct_unavailable: Arc<AtomicBool>,
}

impl DockerBackend {
    /// Connects with the local defaults, negotiates the API version with the daemon, and makes
    /// sure the sandboxes' network exists.
    pub async fn connect(network: NetworkOptions) -> Result<Self, BackendError> {
        let docker = Docker::connect_with_defaults().map_err(unavailable)?;
        let docker = docker.negotiate_version().await.map_err(unavailable)?;
        let backend = Self {
            docker,
            network,
            kernel_channel: KernelChannelMode::default(),
            direct_unavailable: Arc::new(AtomicBool::new(false)),
        };
        backend.ensure_network().await?;
        Ok(backend)
    }

    /// The same backend, reaching kernels as `mode` says.
    pub fn with_kernel_channel(mut self, mode: KernelChannelMode) -> Self {
        self.kernel_channel = mode;
        self
    }

    /// A stream to a kernel's socket straight through the sandbox's `/proc/<pid>/root`, retried
    /// while the kernel is not listening yet.
    async fn open_direct_channel(
        &self,
        container_id: &str,
        channel: KernelChannel,
    ) -> Result<ChannelStream, DirectChannelError> {
        let inspect = self
            .docker
            .inspect_container(container_id, None)
            .await
            .map_err(|error| DirectChannelError::Io(io::Error::other(error)))?;
        let state = inspect.state.unwrap_or_default();
        let (Some(true), Some(pid), Some(full_id)) = (state.running, state.pid, inspect.id) else {
            return Err(DirectChannelError::Exited);
        };
        let path = channel.socket_path();
        let mut tries = 0;
        let stream = loop {
            let (full_id, blocking_path) = (full_id.clone(), path.clone());
            let attempt = match tokio::task::spawn_blocking(move || {
                direct_channel::open(pid, &full_id, &blocking_path)
            })
            .await
            .map_err(|error| DirectChannelError::Io(io::Error::other(error)))?
            {
                Ok(socket) => direct_channel::connect(&socket, &path).await,
                Err(error) => Err(error),
            };
            match attempt {
                Err(DirectChannelError::NotListening { .. }) if tries < KERNEL_CONNECT_RETRIES => {
                    tries += 1;
                    tokio::time::sleep(KERNEL_CONNECT_INTERVAL).await;
                }
                other => break other?,
            }
        };
        let (reader, writer) = stream.into_split();
        Ok(ChannelStream {
            reader: Box::pin(reader),
            writer: Box::pin(writer),
        })
    }

    /// A stream to a kernel's socket through a `docker exec` running socat in the sandbox.
    async fn open_exec_channel(
        &self,
        container_id: &str,
        channel: KernelChannel,
    ) -> Result<ChannelStream, BackendError> {
        // socat waits a few seconds for the socket while the kernel starts, inside the sandbox.
        let target = format!(
            "UNIX-CONNECT:{},retry={KERNEL_CONNECT_RETRIES},interval={}",
            channel.socket_path(),
            KERNEL_CONNECT_INTERVAL.as_secs_f64()
        );
        let spec = ExecSpec {
            argv: [SOCAT, "-b", "262144", "STDIO", &target]
                .map(String::from)
                .to_vec(),
            workdir: "/".into(),
            env: Vec::new(),
            user: None,
            output_limit: 0,
        };
        let (_, started) = self.start_exec(container_id, spec, true).await?;
        let StartExecResults::Attached { output, input } = started else {
            return Err(BackendError::NotAttached);
        };
        let name = channel.name();
        let bytes = output.filter_map(move |chunk| async move {
            match chunk {
                Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                    Some(Ok(message))
                }
                Ok(LogOutput::StdErr { message }) => {
                    tracing::debug!(channel = name, stderr = %String::from_utf8_lossy(&message).trim_end(), "kernel channel relay");
                    None
                }
                Ok(LogOutput::StdIn { .. }) => None,
                Err(error) => Some(Err(io::Error::other(error))),
            }
        });
        Ok(ChannelStream {
            reader: Box::pin(StreamReader::new(Box::pin(bytes))),
            writer: input,
        })
    }

    /// Creates the sandboxes' network when it is missing. Docker's check for a taken name is
    /// not atomic: servers (or test processes) starting at the same moment can each create a
    /// network of that name, after which every lookup by name is ambiguous. So after creating,
    /// the networks of that name are listed again, and all but the oldest (the same one for
    /// every racer) are removed when they are kernelbox's own and unused.
    async fn ensure_network(&self) -> Result<(), BackendError> {
        let name = &self.network.network;
        let mut found = self.networks_named(name).await?;
        if found.is_empty() {
            match self
                .docker
                .create_network(network::network_request(name))
                .await
            {
                Ok(_) => tracing::info!(network = %name, "created the sandboxes' network"),
                // Created by another process at the same moment.
                Err(DockerError::DockerResponseServerError {
                    status_code: 409, ..
                }) => {}
                Err(error) => return Err(classify("network create", "network", error)),
            }
            found = self.networks_named(name).await?;
        }
        found.sort_by(|a, b| (&a.created, &a.id).cmp(&(&b.created, &b.id)));
        for duplicate in found.iter().skip(1) {
            let ours = duplicate
                .labels
                .as_ref()
                .is_some_and(|labels| labels.contains_key(network::MANAGED_LABEL));
            let Some(id) = duplicate.id.as_deref().filter(|_| ours) else {
                continue;
            };
            match self.docker.remove_network(id).await {
                Ok(()) => {
                    tracing::info!(network = %name, %id, "removed a duplicate of the sandboxes' network")
                }
                Err(DockerError::DockerResponseServerError {
                    status_code: 404, ..
                }) => {}
                Err(error) => {
                    tracing::warn!(network = %name, %id, %error, "cannot remove a duplicate of the sandboxes' network")
                }
            }
        }
        Ok(())
    }

    /// The networks named exactly `name` (Docker's name filter also matches substrings).
    async fn networks_named(
        &self,
        name: &str,
    ) -> Result<Vec<bollard::models::Network>, BackendError> {
        let filters = HashMap::from([("name".to_string(), vec![name.to_string()])]);
        let options = ListNetworksOptionsBuilder::default()
            .filters(&filters)
            .build();
        let networks = self
            .docker
            .list_networks(Some(options))
            .await
            .map_err(|error| classify("network list", "network", error))?;
        Ok(networks
            .into_iter()
            .filter(|network| network.name.as_deref() == Some(name))
            .collect())
    }

    /// Creates a container; an image that is not there is [`BackendError::ImageMissing`].
    async fn create_container(
        &self,
        name: &str,
        body: ContainerCreateBody,
    ) -> Result<String, BackendError> {
        let image = body.image.clone().unwrap_or_default();
        let options = CreateContainerOptionsBuilder::default().name(name).build();
        self.docker
            .create_container(Some(options), body)
            .await
            .map(|created| created.id)
            .map_err(|error| match classify("container create", "image", error) {
                BackendError::NotFound { .. } => BackendError::ImageMissing { image },
                other => other,
            })
    }

    async fn start_container(&self, id: &str) -> Result<(), BackendError> {
        self.docker
            .start_container(id, None)
            .await
            .map_err(|error| classify("container start", "container", error))
    }

    /// Removes one container; a missing one is fine.
    async fn remove_container(&self, id: &str) -> Result<(), BackendError> {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        let mut attempt = 1;
        loop {
            match self
                .docker
                .remove_container(id, Some(options.clone()))
                .await
            {
                Ok(()) => return Ok(()),
                Err(DockerError::DockerResponseServerError {
                    status_code: 404, ..
                }) => return Ok(()),
                // The daemon kills the container, then deletes its directory while its own log
                // writer may still add a file there: "unable to remove filesystem … directory
                // not empty" (seen here in 2 of 300 removals at once). The container is dead by
                // then, and removing it again deletes what was left.
                Err(DockerError::DockerResponseServerError {
                    status_code: 500,
                    message,
                }) if message.contains("unable to remove filesystem")
                    && attempt < REMOVE_ATTEMPTS =>
                {
                    tracing::debug!(container = %id, attempt, %message, "removing the container again");
                    attempt += 1;
                }
                Err(error) => return Err(classify("container remove", "container", error)),
            }
        }
    }

    /// The id of a sandbox's network sidecar.
    async fn sidecar_of(&self, container_id: &str) -> Result<String, BackendError> {
        let inspect = self
            .docker
            .inspect_container(container_id, None)
            .await
            .map_err(|error| classify("container inspect", "container", error))?;
        inspect
            .config
            .and_then(|config| config.labels)
            .and_then(|mut labels| labels.remove(network::SIDECAR_LABEL))
            .ok_or(BackendError::NotFound {
                what: "network sidecar",
            })
    }

    /// Applies `policy` in the sidecar: `kernelbox-netd apply` as root there (never in the
    /// sandbox), the rendered rules and config on its stdin; done when it exits 0.
    async fn apply_in_sidecar(
        &self,
        sidecar_id: &str,
        policy: &EgressPolicy,
        state: &[u8],
    ) -> Result<(), BackendError> {
        let rendered = firewall::render(policy, &self.network.firewall);
        let input = Bytes::from(firewall::apply_input(&rendered, state));
        let spec = ExecSpec {
            argv: firewall::APPLY_ARGV.map(String::from).to_vec(),
            workdir: "/".into(),
            env: Vec::new(),
            user: Some("0".into()),
            output_limit: 64 * 1024,
        };
        let output = tokio::time::timeout(
            EGRESS_APPLY_TIMEOUT,
            self.exec_with_input(sidecar_id, spec, Some(input)),
        )
        .await
        .map_err(|_| BackendError::Timeout {
            operation: "egress policy apply",
            waited: EGRESS_APPLY_TIMEOUT,
        })??;
        if output.exit_code == 0 {
            return Ok(());
        }
        Err(BackendError::Failed {
            operation: "egress policy apply",
            source: String::from_utf8_lossy(&output.stderr)
                .trim()
                .to_string()
                .into(),
        })
    }

    /// An image as the daemon describes it; `None` when there is no such image.
    async fn inspect_image(&self, image: &str) -> Result<Option<ImageInspect>, BackendError> {
        let inspected =
            tokio::time::timeout(IMAGE_INSPECT_TIMEOUT, self.docker.inspect_image(image))
                .await
                .map_err(|_| BackendError::Timeout {
                    operation: "image inspect",
                    waited: IMAGE_INSPECT_TIMEOUT,
                })?;
        match inspected {
            Ok(inspect) => Ok(Some(inspect)),
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(error) => Err(classify("image inspect", "image", error)),
        }
    }

    /// What a sandbox's two containers are made from: the image as inspected now, and the mount
    /// that shares its `/usr` when it can be shared.
    async fn image_root(&self, image: &str) -> Result<ImageRoot, BackendError> {
        let inspect =
            self.inspect_image(image)
                .await?
                .ok_or_else(|| BackendError::ImageMissing {
                    image: image.to_string(),
                })?;
        Ok(match (shared_usr::usr_mount(&inspect), inspect.id) {
            // By id: the `/usr` mounted is the layer of the image the containers run, even if
            // the tag moves meanwhile.
            (Some(usr), Some(id)) => ImageRoot {
                image: id,
                usr: Some(usr),
            },
            _ => ImageRoot {
                image: image.to_string(),
                usr: None,
            },
        })
    }

    /// The bollard client, for image management.
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// Everything of a sandbox after its sidecar was created: start the sidecar while the
    /// sandbox container is created, then start the sandbox while the policy is applied. No
    /// caller's code runs before both are done.
    async fn create_sandbox(
        &self,
        spec: &ContainerSpec,
        root: &ImageRoot,
        sidecar: &str,
        started: std::time::Instant,
    ) -> Result<ContainerInfo, BackendError> {
        let elapsed_ms = || started.elapsed().as_millis() as u64;
        let connection = serde_json::to_string(&spec.connection).unwrap_or_default();
        let mut env = spec.env.clone();
        env.push(format!("{CONNECTION_ENV}={connection}"));
        let memory = memory_bytes(&spec.limits);
        let mut labels = spec.labels.clone();
        labels.insert(network::SIDECAR_LABEL.to_string(), sidecar.to_string());
        let mut body = ContainerCreateBody {
            image: Some(root.image.clone()),
            cmd: Some(vec![
                "/bin/sh".into(),
                "-c".into(),
                KERNEL_SUPERVISOR.into(),
            ]),
            // The sandbox user whatever the image says: the kernel's channel and the file
            // helper are checked against this uid.
            user: Some(format!("{SANDBOX_UID}:{SANDBOX_UID}")),
            env: Some(env),
            labels: Some(labels),
            host_config: Some(HostConfig {
                network_mode: Some(network::sandbox_network_mode(sidecar)),
                memory: Some(memory),
                memory_swap: Some(memory),
                nano_cpus: Some(nano_cpus(&spec.limits)),
                pids_limit: Some(spec.limits.pids as i64),
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(vec!["no-new-privileges".into()]),
                log_config: Some(network::bounded_log()),
                ..Default::default()
            }),
            ..Default::default()
        };
        root.mount_into(&mut body);
        // The sandbox container is made while the sidecar starts (Docker only needs the sidecar to
        // exist to create a container in its namespace, and to run to start one).
        let (sidecar_started, created) = tokio::join!(
            async {
                let started = self.start_container(sidecar).await;
                tracing::debug!(elapsed_ms = elapsed_ms(), "network sidecar started");
                started
            },
            self.create_container(&spec.name, body)
        );
        let created = match (sidecar_started, created) {
            (Ok(()), Ok(created)) => created,
            (Err(error), Ok(created)) => {
                let _ = self.remove_container(&created).await;
                return Err(error);
            }
            (_, Err(error)) => return Err(error),
        };
        // The policy goes in while the sandbox starts and its kernel loads: until it is in, the
        // sidecar keeps the namespace closed (it denies everything from its first instant), and
        // nothing a caller sends runs before create returns, after the policy.
        let (started, applied) = tokio::join!(
            async {
                let started = self.start_container(&created).await;
                tracing::debug!(elapsed_ms = elapsed_ms(), "sandbox started");
                started
            },
            async {
                let applied = self
                    .apply_in_sidecar(sidecar, &spec.egress, &spec.egress_state)
                    .await;
                tracing::debug!(elapsed_ms = elapsed_ms(), "egress policy applied");
                applied
            },
        );
        if let Err(error) = started.and(applied) {
            let _ = self.remove_container(&created).await;
            return Err(error);
        }
        self.inspect(&created).await
    }

    /// Runs one of the backend's own short commands, within [`BACKEND_COMMAND_TIMEOUT`].
    async fn backend_exec(
        &self,
        container_id: &str,
        operation: &'static str,
        argv: &[&str],
    ) -> Result<ExecOutput, BackendError> {
        tokio::time::timeout(
            BACKEND_COMMAND_TIMEOUT,
            self.exec_with_input(container_id, backend_command(argv), None),
        )
        .await
        .map_err(|_| BackendError::Timeout {
            operation,
            waited: BACKEND_COMMAND_TIMEOUT,
        })?
    }

    /// Runs a command to completion, writing `input` (when given) to its stdin first.
    async fn exec_with_input(
        &self,
        container_id: &str,
        spec: ExecSpec,
        input: Option<Bytes>,
    ) -> Result<ExecOutput, BackendError> {
        let output_limit = spec.output_limit;
        let (exec_id, started) = self.start_exec(container_id, spec, input.is_some()).await?;
        let mut result = ExecOutput::default();
        if let StartExecResults::Attached {
            mut output,
            input: mut stdin,
        } = started
        {
            if let Some(input) = input {
                // A process that exits without reading everything is its own business: its exit
                // code says what happened.
                let _ = stdin.write_all(&input).await;
                let _ = stdin.shutdown().await;
            }
            drop(stdin);
            while let Some(chunk) = output.next().await {
                let chunk = chunk.map_err(|error| classify("exec output", "container", error))?;
                let dropped = match chunk {
                    LogOutput::StdOut { message } | LogOutput::Console { message } => {
                        append_capped(&mut result.stdout, &message, output_limit)
                    }
                    LogOutput::StdErr { message } => {
                        append_capped(&mut result.stderr, &message, output_limit)
                    }
                    LogOutput::StdIn { .. } => false,
                };
                result.truncated |= dropped;
            }
        }
        result.exit_code =
            exec_exit::exit_code(&self.docker, container_id, &exec_id, EXEC_EXIT_TIMEOUT).await?;
        Ok(result)
    }

    /// Creates and starts an exec with stdout and stderr attached (and stdin when asked).
    /// Returns the exec id, for its exit code, and the attached streams.
    async fn start_exec(
        &self,
        container_id: &str,
        spec: ExecSpec,
        attach_stdin: bool,
    ) -> Result<(String, StartExecResults), BackendError> {
        let config = ExecConfig {
            attach_stdin: Some(attach_stdin),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            cmd: Some(spec.argv),
            env: Some(spec.env),
            working_dir: Some(spec.workdir),
            user: spec.user,
            ..Default::default()
        };
        let exec = self
            .docker
            .create_exec(container_id, config)
            .await
            .map_err(|error| classify("exec create", "container", error))?;
        let started = self
            .docker
            .start_exec(&exec.id, None::<StartExecOptions>)
            .await
            .map_err(|error| classify("exec start", "container", error))?;
        Ok((exec.id, started))
    }
}

fn container_info(inspect: ContainerInspectResponse) -> ContainerInfo {
    let state = inspect.state.unwrap_or_default();
    let running = state.running.unwrap_or(false);
    let labels = inspect
        .config
        .and_then(|config| config.labels)
        .unwrap_or_default();
    ContainerInfo {
        container_id: inspect.id.unwrap_or_default(),
        name: inspect
            .name
            .map(|name| name.trim_start_matches('/').to_string())
            .unwrap_or_default(),
        image_id: inspect.image.unwrap_or_default(),
        labels,
        running,
        oom_killed: state.oom_killed.unwrap_or(false),
    }
}

/// A short command of the backend's own, run as the image's user (the sandbox user).
fn backend_command(argv: &[&str]) -> ExecSpec {
    ExecSpec {
        argv: argv.iter().map(|arg| arg.to_string()).collect(),
        workdir: "/".into(),
        env: Vec::new(),
        user: None,
        output_limit: 4096,
    }
}

/// Appends `chunk` to `buffer` up to `limit` bytes; reports whether anything was dropped.
fn append_capped(buffer: &mut Vec<u8>, chunk: &[u8], limit: usize) -> bool {
    let room = limit.saturating_sub(buffer.len());
    buffer.extend_from_slice(&chunk[..chunk.len().min(room)]);
    chunk.len() > room
}

#[async_trait]
impl Backend for DockerBackend {
    async fn ping(&self) -> Result<(), BackendError> {
        self.docker.ping().await.map(drop).map_err(unavailable)
    }

    async fn image_labels(
        &self,
        image: &str,
    ) -> Result<Option<HashMap<String, String>>, BackendError> {
        Ok(self.inspect_image(image).await?.map(|inspect| {
            inspect
                .config
                .and_then(|config| config.labels)
                .unwrap_or_default()
        }))
    }

    async fn image_id(&self, image: &str) -> Result<Option<String>, BackendError> {
        Ok(self
            .inspect_image(image)
            .await?
            .and_then(|inspect| inspect.id))
    }

    async fn rename(&self, container_id: &str, name: &str) -> Result<(), BackendError> {
        let options = bollard::query_parameters::RenameContainerOptionsBuilder::default()
            .name(name)
            .build();
        tokio::time::timeout(
            RENAME_TIMEOUT,
            self.docker.rename_container(container_id, options),
        )
        .await
        .map_err(|_| BackendError::Timeout {
            operation: "container rename",
            waited: RENAME_TIMEOUT,
        })?
        .map_err(|error| classify("container rename", "container", error))
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<ContainerInfo, BackendError> {
        let started = std::time::Instant::now();
        let root = self.image_root(&spec.image).await?;
        // The sidecar first: it owns the namespace, and it closes it the moment it starts.
        let mut sidecar_body = network::sidecar_body(
            &root.image,
            &self.network.network,
            network::sidecar_labels(&spec.labels),
        );
        root.mount_into(&mut sidecar_body);
        let sidecar = self
            .create_container(&format!("{}-net", spec.name), sidecar_body)
            .await?;
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "network sidecar created"
        );
        let created = self.create_sandbox(spec, &root, &sidecar, started).await;
        if created.is_err() {
            // Never leave a half-made sandbox behind.
            let _ = self.remove_container(&sidecar).await;
        }
        created
    }

    async fn list(&self, labels: &[(&str, &str)]) -> Result<Vec<ContainerInfo>, BackendError> {
        let filters = HashMap::from([(
            "label".to_string(),
            labels
                .iter()
                .map(|(key, value)| format!("{key}={value}"))
                .collect::<Vec<_>>(),
        )]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let summaries = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|error| classify("container list", "container", error))?;
        let mut containers = Vec::with_capacity(summaries.len());
        for summary in summaries {
            let Some(id) = summary.id else { continue };
            let sidecar = summary
                .labels
                .as_ref()
                .and_then(|labels| labels.get(network::ROLE_LABEL))
                .is_some_and(|role| role == network::ROLE_NETWORK);
            if sidecar {
                continue;
            }
            match self.inspect(&id).await {
                Ok(info) => containers.push(info),
                // Removed between list and inspect.
                Err(BackendError::NotFound { .. }) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(containers)
    }

    async fn inspect(&self, container_id: &str) -> Result<ContainerInfo, BackendError> {
        let mut info = self
            .docker
            .inspect_container(container_id, None)
            .await
            .map(container_info)
            .map_err(|error| classify("container inspect", "container", error))?;
        // A sandbox whose sidecar went has no network namespace worth the name: not running.
        if info.running
            && let Some(sidecar) = info.labels.get(network::SIDECAR_LABEL)
        {
            info.running = match self.docker.inspect_container(sidecar, None).await {
                Ok(sidecar) => sidecar.state.and_then(|state| state.running) == Some(true),
                Err(DockerError::DockerResponseServerError {
                    status_code: 404, ..
                }) => false,
                Err(error) => return Err(classify("container inspect", "container", error)),
            };
        }
        Ok(info)
    }

    async fn exec(&self, container_id: &str, spec: ExecSpec) -> Result<ExecOutput, BackendError> {
        self.exec_with_input(container_id, spec, None).await
    }

    async fn exec_attached(
        &self,
        container_id: &str,
        mut spec: ExecSpec,
    ) -> Result<AttachedExec, BackendError> {
        let mut argv: Vec<String> = ["/bin/sh", "-c", PID_WRAPPER, "sh"]
            .map(String::from)
            .to_vec();
        argv.append(&mut spec.argv);
        spec.argv = argv;
        let (exec_id, started) = self.start_exec(container_id, spec, true).await?;
        let StartExecResults::Attached { output, input } = started else {
            return Err(BackendError::NotAttached);
        };
        let mut output =
            Box::pin(output.filter_map(|chunk| futures::future::ready(exec_chunk(chunk))));
        // Everything before the pid line is kept and handed on, in order.
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let first_line = tokio::time::timeout(ATTACH_START_TIMEOUT, async {
            loop {
                match output.next().await {
                    Some(Ok(ExecChunk::Stdout(bytes))) => {
                        stdout.extend_from_slice(&bytes);
                        if let Some(end) = stdout.iter().position(|byte| *byte == b'\n') {
                            return Some(end);
                        }
                        if stdout.len() > PID_MARKER.len() + 16 {
                            return None;
                        }
                    }
                    Some(Ok(ExecChunk::Stderr(bytes))) => {
                        append_capped(&mut stderr, &bytes, START_STDERR_BYTES);
                    }
                    Some(Err(_)) | None => return None,
                }
            }
        })
        .await
        .map_err(|_| BackendError::Timeout {
            operation: "exec start",
            waited: ATTACH_START_TIMEOUT,
        })?;
        let pid = first_line.and_then(|end| {
            std::str::from_utf8(&stdout[..end])
                .ok()?
                .trim()
                .strip_prefix(PID_MARKER)?
                .parse::<u32>()
                .ok()
        });
        let (Some(pid), Some(end)) = (pid, first_line) else {
            return Err(BackendError::ProcessDidNotStart {
                stderr: String::from_utf8_lossy(&stderr).trim().to_string(),
            });
        };
        let rest = stdout.split_off(end + 1);
        let replay = [
            (!stderr.is_empty()).then(|| Ok(ExecChunk::Stderr(Bytes::from(stderr)))),
            (!rest.is_empty()).then(|| Ok(ExecChunk::Stdout(Bytes::from(rest)))),
        ];
        let output = futures::stream::iter(replay.into_iter().flatten()).chain(output);
        let docker = self.docker.clone();
        let container_id = container_id.to_string();
        let exit = async move {
            exec_exit::exit_code(&docker, &container_id, &exec_id, EXEC_EXIT_TIMEOUT).await
        };
        Ok(AttachedExec {
            pid,
            stdin: input,
            output: Box::pin(output),
            exit: Box::pin(exit),
        })
    }

    async fn exec_streaming(
        &self,
        container_id: &str,
        spec: ExecSpec,
    ) -> Result<StreamingExec, BackendError> {
        let (exec_id, started) = tokio::time::timeout(
            STREAMING_START_TIMEOUT,
            self.start_exec(container_id, spec, true),
        )
        .await
        .map_err(|_| BackendError::Timeout {
            operation: "exec start",
            waited: STREAMING_START_TIMEOUT,
        })??;
        let StartExecResults::Attached { output, input } = started else {
            return Err(BackendError::NotAttached);
        };
        let output = output.filter_map(|chunk| futures::future::ready(exec_chunk(chunk)));
        let docker = self.docker.clone();
        let container_id = container_id.to_string();
        let exit = async move {
            exec_exit::exit_code(&docker, &container_id, &exec_id, EXEC_EXIT_TIMEOUT).await
        };
        Ok(StreamingExec {
            stdin: input,
            output: Box::pin(output),
            exit: Box::pin(exit),
        })
    }

    async fn open_kernel_channel(
        &self,
        container_id: &str,
        channel: KernelChannel,
    ) -> Result<ChannelStream, BackendError> {
        let try_direct = match self.kernel_channel {
            KernelChannelMode::Exec => false,
            KernelChannelMode::Direct => true,
            KernelChannelMode::Auto => !self.direct_unavailable.load(Ordering::Relaxed),
        };
        if try_direct {
            match self.open_direct_channel(container_id, channel).await {
                Ok(stream) => return Ok(stream),
                Err(DirectChannelError::NotLocal(why))
                    if self.kernel_channel == KernelChannelMode::Auto =>
                {
                    if !self.direct_unavailable.swap(true, Ordering::Relaxed) {
                        tracing::info!(%why, "kernel channels relay through docker exec: the direct channel is not available here");
                    }
                }
                Err(error @ DirectChannelError::NotListening { .. }) => {
                    return Err(BackendError::KernelNotListening {
                        source: Box::new(error),
                    });
                }
                Err(error) => {
                    return Err(BackendError::KernelSocket {
                        source: Box::new(error),
                    });
                }
            }
        }
        self.open_exec_channel(container_id, channel).await
    }

    async fn kill_process_group(&self, container_id: &str, pgid: u32) -> Result<(), BackendError> {
        let group = format!("-{pgid}");
        self.backend_exec(
            container_id,
            "process group kill",
            &["/usr/bin/kill", "-KILL", "--", &group],
        )
        .await
        .map(drop)
    }

    async fn signal_process_group(
        &self,
        container_id: &str,
        pgid: u32,
        signal: &str,
    ) -> Result<(), BackendError> {
        let group = format!("-{pgid}");
        // util-linux kill takes `-TERM -- -pgid` (`-s TERM --` it refuses).
        let signal = format!("-{signal}");
        let output = self
            .backend_exec(
                container_id,
                "process group signal",
                &["/usr/bin/kill", &signal, "--", &group],
            )
            .await?;
        if output.exit_code != 0 {
            // The group may have just exited: the caller reads the process's state, not this.
            tracing::debug!(pgid, exit_code = output.exit_code, stderr = %String::from_utf8_lossy(&output.stderr), "kill found no process group");
        }
        Ok(())
    }

    async fn kill_kernel(&self, container_id: &str) -> Result<(), BackendError> {
        self.backend_exec(container_id, "kernel kill", &KILL_KERNEL)
            .await
            .map(drop)
    }

    async fn restart(&self, container_id: &str) -> Result<(), BackendError> {
        let options = RestartContainerOptionsBuilder::default()
            .t(RESTART_GRACE_SECS)
            .build();
        self.docker
            .restart_container(container_id, Some(options))
            .await
            .map_err(|error| classify("container restart", "container", error))
    }

    async fn oom_kills(&self, container_id: &str) -> Result<u64, BackendError> {
        let output = self
            .backend_exec(
                container_id,
                "OOM count read",
                &["/bin/sh", "-c", READ_OOM_EVENTS],
            )
            .await?;
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .find_map(|line| line.strip_prefix("oom_kill "))
            .and_then(|count| count.trim().parse::<u64>().ok())
            .unwrap_or(0))
    }

    async fn apply_egress(
        &self,
        container_id: &str,
        policy: &EgressPolicy,
        state: &[u8],
    ) -> Result<(), BackendError> {
        let sidecar = self.sidecar_of(container_id).await?;
        self.apply_in_sidecar(&sidecar, policy, state).await
    }

    async fn egress_state(&self, container_id: &str) -> Result<Option<Vec<u8>>, BackendError> {
        let sidecar = self.sidecar_of(container_id).await?;
        let spec = ExecSpec {
            argv: ["/bin/cat", firewall::STATE_PATH]
                .map(String::from)
                .to_vec(),
            workdir: "/".into(),
            env: Vec::new(),
            user: Some("0".into()),
            output_limit: firewall::APPLY_MAX_PART,
        };
        let output = self.exec(&sidecar, spec).await?;
        Ok((output.exit_code == 0).then_some(output.stdout))
    }

    async fn put_record(
        &self,
        container_id: &str,
        name: &str,
        record: &[u8],
    ) -> Result<(), BackendError> {
        if !records::valid_name(name) || record.len() > MAX_RECORD_BYTES {
            return Err(BackendError::Invalid {
                operation: "record write",
                source: format!("record {name:?} of {} bytes", record.len()).into(),
            });
        }
        let sidecar = self.sidecar_of(container_id).await?;
        let spec = ExecSpec {
            argv: records::write_argv(name),
            workdir: "/".into(),
            env: Vec::new(),
            user: Some("0".into()),
            output_limit: 4096,
        };
        let output = tokio::time::timeout(
            records::TIMEOUT,
            self.exec_with_input(&sidecar, spec, Some(Bytes::copy_from_slice(record))),
        )
        .await
        .map_err(|_| BackendError::Timeout {
            operation: "record write",
            waited: records::TIMEOUT,
        })??;
        if output.exit_code == 0 {
            return Ok(());
        }
        Err(BackendError::Failed {
            operation: "record write",
            source: String::from_utf8_lossy(&output.stderr)
                .trim()
                .to_string()
                .into(),
        })
    }

    async fn record(
        &self,
        container_id: &str,
        name: &str,
    ) -> Result<Option<Vec<u8>>, BackendError> {
        if !records::valid_name(name) {
            return Err(BackendError::Invalid {
                operation: "record read",
                source: format!("record {name:?}").into(),
            });
        }
        let sidecar = self.sidecar_of(container_id).await?;
        let spec = ExecSpec {
            argv: records::read_argv(name),
            workdir: "/".into(),
            env: Vec::new(),
            user: Some("0".into()),
            output_limit: MAX_RECORD_BYTES,
        };
        let output = tokio::time::timeout(records::TIMEOUT, self.exec(&sidecar, spec))
            .await
            .map_err(|_| BackendError::Timeout {
                operation: "record read",
                waited: records::TIMEOUT,
            })??;
        match output.exit_code {
            0 if !output.truncated => Ok(Some(output.stdout)),
            records::MISSING => Ok(None),
            _ => Err(BackendError::Failed {
                operation: "record read",
                source: String::from_utf8_lossy(&output.stderr)
                    .trim()
                    .to_string()
                    .into(),
            }),
        }
    }

    async fn collect_garbage(&self, labels: &[(&str, &str)]) -> Result<usize, BackendError> {
        let mut wanted: Vec<String> = labels
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        wanted.push(format!("{}={}", network::ROLE_LABEL, network::ROLE_NETWORK));
        let filters = HashMap::from([("label".to_string(), wanted)]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let sidecars = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|error| classify("container list", "container", error))?;
        let mut removed = 0;
        for sidecar in sidecars {
            let Some(id) = sidecar.id else { continue };
            let sandbox = sidecar
                .labels
                .as_ref()
                .and_then(|labels| labels.get(network::NETNS_OF_LABEL))
                .cloned()
                .unwrap_or_default();
            let filters = HashMap::from([(
                "label".to_string(),
                vec![format!("{}={sandbox}", crate::engine::labels::ID)],
            )]);
            let options = ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build();
            let owners = self
                .docker
                .list_containers(Some(options))
                .await
                .map_err(|error| classify("container list", "container", error))?;
            if owners.is_empty() {
                tracing::info!(sidecar = %id, sandbox_id = %sandbox, "removing the network sidecar of a sandbox that is gone");
                self.remove_container(&id).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    async fn update_limits(&self, container_id: &str, limits: &Limits) -> Result<(), BackendError> {
        let memory = memory_bytes(limits);
        let body = ContainerUpdateBody {
            // No swap, as at create: the swap limit is memory plus swap.
            memory: Some(memory),
            memory_swap: Some(memory),
            nano_cpus: Some(nano_cpus(limits)),
            pids_limit: Some(limits.pids as i64),
            ..Default::default()
        };
        self.docker
            .update_container(container_id, body)
            .await
            .map_err(|error| classify("container update", "container", error))
    }

    async fn destroy(&self, container_id: &str) -> Result<(), BackendError> {
        let sidecar = match self.sidecar_of(container_id).await {
            Ok(sidecar) => Some(sidecar),
            Err(BackendError::NotFound { .. }) => None,
            Err(error) => return Err(error),
        };
        self.remove_container(container_id).await?;
        if let Some(sidecar) = sidecar {
            self.remove_container(&sidecar).await?;
        }
        Ok(())
    }
}

/// A sandbox's memory limit as Docker takes it.
fn memory_bytes(limits: &Limits) -> i64 {
    (limits.memory_mb * 1024 * 1024) as i64
}

/// A sandbox's CPU limit as Docker takes it (billionths of a CPU).
fn nano_cpus(limits: &Limits) -> i64 {
    (limits.milli_cpus * 1_000_000) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_append_keeps_the_head_and_reports_drops() {
        let mut buffer = Vec::new();
        assert!(!append_capped(&mut buffer, b"hello", 8));
        assert!(append_capped(&mut buffer, b"world", 8));
        assert_eq!(buffer, b"hellowor");
        assert!(append_capped(&mut buffer, b"!", 8));
        assert_eq!(buffer, b"hellowor");
    }

    #[test]
    fn status_codes_decide_the_error() {
        let error = |status_code| DockerError::DockerResponseServerError {
            status_code,
            message: "whatever the daemon says".into(),
        };
        let kind = |status_code| match classify("op", "container", error(status_code)) {
            BackendError::NotFound { .. } => "not found",
            BackendError::Conflict { .. } => "conflict",
            BackendError::Invalid { .. } => "invalid",
            BackendError::Failed { .. } => "failed",
            _ => "other",
        };
        let kinds = [404, 409, 400, 500].map(kind);
        assert_eq!(kinds, ["not found", "conflict", "invalid", "failed"]);
    }
}
