//! The Docker backend (bollard). Kernel ports are published on 127.0.0.1 only, with host ports
//! Docker picks at random; the kernel itself runs as the image's non-root user.

pub mod firewall;

use std::collections::HashMap;
use std::io;

use async_trait::async_trait;
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ExecConfig, HostConfig, PortBinding,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, DownloadFromContainerOptionsBuilder,
    ListContainersOptionsBuilder, RemoveContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};
use futures::{StreamExt, TryStreamExt};

use super::{
    AttachedExec, Backend, BackendError, ByteStream, ContainerInfo, ContainerSpec, ExecChunk,
    ExecOutput, ExecSpec,
};
use crate::kernel::connection::CONTAINER_PORTS;
use crate::kernel::{KernelEndpoint, KernelPorts};

/// Where the published kernel ports listen on the host.
const PUBLISH_HOST: &str = "127.0.0.1";
/// The environment variable that carries the kernel's connection file into the container.
const CONNECTION_ENV: &str = "KERNELBOX_CONNECTION";

/// The container's main process: write the connection file, then run the kernel, starting it
/// again whenever it exits (shutdown with restart, `exit()`, OOM kill, crash). The container
/// stays up, so files and installed packages survive a kernel restart. The user site directory
/// is created first: Python only puts it on `sys.path` when it exists at startup, and `pip install`
/// (as the sandbox user) installs there.
const KERNEL_SUPERVISOR: &str = r#"printf '%s' "$KERNELBOX_CONNECTION" > /tmp/kernel.json
unset KERNELBOX_CONNECTION
mkdir -p "$(python3 -c 'import site; print(site.getusersitepackages())')"
while :; do python3 -m ipykernel_launcher -f /tmp/kernel.json; done"#;

/// Docker, reached through the usual `DOCKER_HOST` / local socket defaults.
#[derive(Clone)]
pub struct DockerBackend {
    docker: Docker,
}

impl DockerBackend {
    /// Connects with the local defaults and negotiates the API version with the daemon.
    pub async fn connect() -> Result<Self, BackendError> {
        let docker = Docker::connect_with_defaults().map_err(BackendError::Unavailable)?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(BackendError::Unavailable)?;
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
        DockerError::DockerResponseServerError { status_code, .. } => BackendError::Refused {
            operation,
            status: status_code,
            source: error,
        },
        DockerError::HyperResponseError { .. }
        | DockerError::IOError { .. }
        | DockerError::SocketNotFoundError(_) => BackendError::Unavailable(error),
        other => BackendError::Runtime {
            operation,
            source: other,
        },
    }
}

fn port_key(port: u16) -> String {
    format!("{port}/tcp")
}

fn container_info(inspect: ContainerInspectResponse) -> ContainerInfo {
    let state = inspect.state.unwrap_or_default();
    let running = state.running.unwrap_or(false);
    let labels = inspect
        .config
        .and_then(|config| config.labels)
        .unwrap_or_default();
    let published = inspect
        .network_settings
        .and_then(|settings| settings.ports)
        .unwrap_or_default();
    let host_port = |port: u16| -> Option<u16> {
        published
            .get(&port_key(port))?
            .as_ref()?
            .iter()
            .find(|binding| binding.host_ip.as_deref() == Some(PUBLISH_HOST))?
            .host_port
            .as_deref()?
            .parse()
            .ok()
    };
    let ports = (|| {
        Some(KernelPorts {
            shell: host_port(CONTAINER_PORTS.shell)?,
            iopub: host_port(CONTAINER_PORTS.iopub)?,
            stdin: host_port(CONTAINER_PORTS.stdin)?,
            control: host_port(CONTAINER_PORTS.control)?,
            hb: host_port(CONTAINER_PORTS.hb)?,
        })
    })();
    let kernel = match (
        running,
        ports,
        labels.get(crate::engine::labels::KERNEL_KEY),
    ) {
        (true, Some(ports), Some(key)) => Some(KernelEndpoint {
            host: PUBLISH_HOST.into(),
            ports,
            key: key.clone(),
        }),
        _ => None,
    };
    ContainerInfo {
        container_id: inspect.id.unwrap_or_default(),
        labels,
        running,
        oom_killed: state.oom_killed.unwrap_or(false),
        kernel,
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
        self.docker
            .ping()
            .await
            .map(drop)
            .map_err(BackendError::Unavailable)
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
        let port_bindings = CONTAINER_PORTS
            .named()
            .iter()
            .map(|(_, port)| {
                let binding = PortBinding {
                    host_ip: Some(PUBLISH_HOST.into()),
                    host_port: Some(String::new()),
                };
                (port_key(*port), Some(vec![binding]))
            })
            .collect();
        let memory = (spec.limits.memory_mb * 1024 * 1024) as i64;
        let host_config = HostConfig {
            port_bindings: Some(port_bindings),
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
            exposed_ports: Some(
                CONTAINER_PORTS
                    .named()
                    .iter()
                    .map(|(_, port)| port_key(*port))
                    .collect(),
            ),
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
        spec: ExecSpec,
    ) -> Result<AttachedExec, BackendError> {
        let (_, started) = self.start_exec(container_id, spec, true).await?;
        let StartExecResults::Attached { output, input } = started else {
            return Err(BackendError::NotAttached);
        };
        let output = output.filter_map(|chunk| async move {
            match chunk {
                Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                    Some(Ok(ExecChunk::Stdout(message)))
                }
                Ok(LogOutput::StdErr { message }) => Some(Ok(ExecChunk::Stderr(message))),
                Ok(LogOutput::StdIn { .. }) => None,
                Err(error) => Some(Err(classify("exec output", "container", error))),
            }
        });
        Ok(AttachedExec {
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
        assert!(matches!(
            classify("op", "container", error(404)),
            BackendError::NotFound { .. }
        ));
        assert!(matches!(
            classify("op", "container", error(409)),
            BackendError::Conflict { .. }
        ));
        assert!(matches!(
            classify("op", "container", error(500)),
            BackendError::Refused { status: 500, .. }
        ));
    }
}
