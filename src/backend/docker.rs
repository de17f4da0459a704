//! The Docker backend (bollard). Nothing is published: the kernel listens on unix sockets inside
//! its container, and the server reaches them through execs that run `socat` there, so the
//! channel is the Docker API itself (local socket or a remote `DOCKER_HOST` alike). The kernel
//! and everything the server runs in a sandbox run as the image's non-root user.
//!
//! | part        | what it does                                               |
//! |-------------|------------------------------------------------------------|
//! | this file   | containers, execs, archives, the kernel's supervisor       |
//! | [`image`]   | building the sandbox image (`kernelbox image build`)       |

pub mod image;

pub mod firewall;

use std::collections::HashMap;
use std::io;
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, ContainerInspectResponse, ExecConfig, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, DownloadFromContainerOptionsBuilder,
    ListContainersOptionsBuilder, RemoveContainerOptionsBuilder, RestartContainerOptionsBuilder,
    UploadToContainerOptionsBuilder,
};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tokio_util::io::StreamReader;

use super::{
    AttachedExec, Backend, BackendError, ByteStream, ContainerInfo, ContainerSpec, ExecChunk,
    ExecOutput, ExecSpec,
};
use crate::kernel::{ChannelStream, KernelChannel};
/// The environment variable that carries the kernel's connection file into the container.
const CONNECTION_ENV: &str = "KERNELBOX_CONNECTION";

/// The container's main process: write the connection file, then run the kernel, starting it
/// again whenever it exits (shutdown with restart, `exit()`, OOM kill, crash). The container
/// stays up, so files and installed packages survive a kernel restart. The user site directory
/// is created first: Python only puts it on `sys.path` when it exists at startup, and `pip install`
/// (as the sandbox user) installs there.
const KERNEL_SUPERVISOR: &str = r#"umask 077
printf '%s' "$KERNELBOX_CONNECTION" > /tmp/kernel.json
unset KERNELBOX_CONNECTION
mkdir -p "$(python3 -c 'import site; print(site.getusersitepackages())')"
while :; do python3 -m ipykernel_launcher -f /tmp/kernel.json; done"#;
/// Seconds a restarting sandbox's processes get after SIGTERM before SIGKILL.
const RESTART_GRACE_SECS: i32 = 1;
/// The relay between an exec's stdio and a kernel socket: root-owned, so sandbox code cannot
/// replace it.
const SOCAT: &str = "/usr/bin/socat";
/// How often socat tries the kernel's socket (25 ms apart) before it gives up.
const KERNEL_CONNECT_RETRIES: u32 = 200;
/// Kills the kernel, anchored: the supervisor's own command line mentions the kernel too.
const KILL_KERNEL: [&str; 4] = ["pkill", "-KILL", "-f", "^python3 -m ipykernel_launcher"];
/// Prints the memory cgroup's event counters (cgroup v2, then v1).
const READ_OOM_EVENTS: &str =
    "cat /sys/fs/cgroup/memory.events 2>/dev/null || cat /sys/fs/cgroup/memory/memory.oom_control";
/// The first line an attached process prints: its pid inside the container. The wrapper makes
/// the process the leader of a new session, so its pid is also its process group.
const PID_MARKER: &str = "kernelbox-pid ";
/// Prints the pid marker, then becomes the command (`exec` keeps the pid).
const PID_WRAPPER: &str = r#"printf 'kernelbox-pid %s
' "$$"; exec "$@""#;
/// How long `docker exec` may take to show the wrapper's pid line.
const ATTACH_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of an attached process's stderr explains a failed start.
const START_STDERR_BYTES: usize = 4096;

/// Docker, reached through the usual `DOCKER_HOST` / local socket defaults.
#[derive(Clone)]
pub struct DockerBackend {
    docker: Docker,
}

impl DockerBackend {
    /// Connects with the local defaults and negotiates the API version with the daemon.
    pub async fn connect() -> Result<Self, BackendError> {
        let docker = Docker::connect_with_defaults().map_err(unavailable)?;
        let docker = docker.negotiate_version().await.map_err(unavailable)?;
        Ok(Self { docker })
    }

    /// The bollard client, for image management.
    pub fn client(&self) -> &Docker {
        &self.docker
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

/// Maps a Docker error by status code (never by message text).
fn classify(operation: &'static str, what: &'static str, error: DockerError) -> BackendError {
    match error {
        DockerError::DockerResponseServerError {
            status_code: 404, ..
        } => BackendError::NotFound { what },
        DockerError::DockerResponseServerError {
            status_code: 409, ..
        } => BackendError::Conflict { what },
        DockerError::DockerResponseServerError {
            status_code: 400, ..
        } => BackendError::Invalid {
            operation,
            source: Box::new(error),
        },
        DockerError::HyperResponseError { .. }
        | DockerError::IOError { .. }
        | DockerError::SocketNotFoundError(_) => unavailable(error),
        other => BackendError::Failed {
            operation,
            source: Box::new(other),
        },
    }
}

fn unavailable(error: DockerError) -> BackendError {
    BackendError::Unavailable {
        source: Box::new(error),
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
        match self.docker.inspect_image(image).await {
            Ok(inspect) => Ok(Some(
                inspect
                    .config
                    .and_then(|config| config.labels)
                    .unwrap_or_default(),
            )),
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(error) => Err(classify("image inspect", "image", error)),
        }
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<ContainerInfo, BackendError> {
        let connection = serde_json::to_string(&spec.connection).unwrap_or_default();
        let mut env = spec.env.clone();
        env.push(format!("{CONNECTION_ENV}={connection}"));
        let memory = (spec.limits.memory_mb * 1024 * 1024) as i64;
        let host_config = HostConfig {
            memory: Some(memory),
            memory_swap: Some(memory),
            nano_cpus: Some((spec.limits.milli_cpus * 1_000_000) as i64),
            pids_limit: Some(spec.limits.pids as i64),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges".into()]),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: Some(vec!["sh".into(), "-c".into(), KERNEL_SUPERVISOR.into()]),
            env: Some(env),
            labels: Some(spec.labels.clone()),
            host_config: Some(host_config),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default()
            .name(&spec.name)
            .build();
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(|error| match classify("container create", "image", error) {
                BackendError::NotFound { .. } => BackendError::ImageMissing {
                    image: spec.image.clone(),
                },
                other => other,
            })?;
        let started = self.docker.start_container(&created.id, None).await;
        if let Err(error) = started {
            // Never leave a created-but-dead container behind.
            let _ = self.destroy(&created.id).await;
            return Err(classify("container start", "container", error));
        }
        self.inspect(&created.id).await
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
        self.docker
            .inspect_container(container_id, None)
            .await
            .map(container_info)
            .map_err(|error| classify("container inspect", "container", error))
    }

    async fn exec(&self, container_id: &str, spec: ExecSpec) -> Result<ExecOutput, BackendError> {
        let output_limit = spec.output_limit;
        let (exec_id, started) = self.start_exec(container_id, spec, false).await?;
        let mut result = ExecOutput::default();
        if let StartExecResults::Attached { mut output, .. } = started {
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
        let inspect = self
            .docker
            .inspect_exec(&exec_id)
            .await
            .map_err(|error| classify("exec inspect", "container", error))?;
        result.exit_code = inspect.exit_code.unwrap_or(-1);
        Ok(result)
    }

    async fn exec_attached(
        &self,
        container_id: &str,
        mut spec: ExecSpec,
    ) -> Result<AttachedExec, BackendError> {
        let mut argv: Vec<String> = ["sh", "-c", PID_WRAPPER, "sh"].map(String::from).to_vec();
        argv.append(&mut spec.argv);
        spec.argv = argv;
        let (_, started) = self.start_exec(container_id, spec, true).await?;
        let StartExecResults::Attached { output, input } = started else {
            return Err(BackendError::NotAttached);
        };
        let mut output = Box::pin(output.filter_map(|chunk| async move {
            match chunk {
                Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                    Some(Ok(ExecChunk::Stdout(message)))
                }
                Ok(LogOutput::StdErr { message }) => Some(Ok(ExecChunk::Stderr(message))),
                Ok(LogOutput::StdIn { .. }) => None,
                Err(error) => Some(Err(classify("exec output", "container", error))),
            }
        }));
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
        Ok(AttachedExec {
            pid,
            stdin: input,
            output: Box::pin(output),
        })
    }

    async fn put_archive(
        &self,
        container_id: &str,
        dir: &str,
        tar: ByteStream,
    ) -> Result<(), BackendError> {
        let options = UploadToContainerOptionsBuilder::default().path(dir).build();
        self.docker
            .upload_to_container(container_id, Some(options), bollard::body_try_stream(tar))
            .await
            .map_err(|error| classify("archive upload", "directory", error))
    }

    fn get_archive(&self, container_id: &str, path: &str) -> ByteStream {
        let options = DownloadFromContainerOptionsBuilder::default()
            .path(path)
            .build();
        let stream = self
            .docker
            .download_from_container(container_id, Some(options))
            .map_err(|error| match classify("archive download", "path", error) {
                BackendError::NotFound { .. } => {
                    io::Error::new(io::ErrorKind::NotFound, "path not found")
                }
                other => io::Error::other(other),
            });
        Box::pin(stream)
    }

    async fn open_kernel_channel(
        &self,
        container_id: &str,
        channel: KernelChannel,
    ) -> Result<ChannelStream, BackendError> {
        // socat waits a few seconds for the socket while the kernel starts, inside the sandbox.
        let target = format!(
            "UNIX-CONNECT:{},retry={KERNEL_CONNECT_RETRIES},interval=0.025",
            channel.socket_path()
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

    async fn kill_process_group(&self, container_id: &str, pgid: u32) -> Result<(), BackendError> {
        let group = format!("-{pgid}");
        self.exec(
            container_id,
            backend_command(&["kill", "-KILL", "--", &group]),
        )
        .await
        .map(drop)
    }

    async fn kill_kernel(&self, container_id: &str) -> Result<(), BackendError> {
        self.exec(container_id, backend_command(&KILL_KERNEL))
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
            .exec(
                container_id,
                backend_command(&["sh", "-c", READ_OOM_EVENTS]),
            )
            .await?;
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .find_map(|line| line.strip_prefix("oom_kill "))
            .and_then(|count| count.trim().parse::<u64>().ok())
            .unwrap_or(0))
    }

    async fn destroy(&self, container_id: &str) -> Result<(), BackendError> {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self
            .docker
            .remove_container(container_id, Some(options))
            .await
        {
            Ok(()) => Ok(()),
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(error) => Err(classify("container remove", "container", error)),
        }
    }
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
