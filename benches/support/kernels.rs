//! Raw kernel round trips for the benchmarks' baselines, over each transport:
//! - the kernel channels kernelbox uses now, without the engine: ZMTP straight to the kernel's
//!   unix socket through the sandbox's `/proc/<pid>/root` (direct), and ZMTP over `docker exec`
//!   streams to it (exec);
//! - the old transport it replaced (TCP ports published on 127.0.0.1 through docker-proxy, spoken
//!   to with the `zeromq` crate), in a container of its own started the old way.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder};
use kernelbox::backend::Backend;
use kernelbox::backend::docker::DockerBackend;
use kernelbox::config::KernelChannelMode;
use kernelbox::engine::labels;
use kernelbox::kernel::wire::Codec;
use kernelbox::kernel::{
    ChannelStream, DialError, Dialer, KernelChannel, KernelClient, KernelCounters, Limits,
};
use serde_json::{Value, json};
use zeromq::{DealerSocket, Socket, SocketRecv, SocketSend, SubSocket, ZmqMessage};

use super::{ms, percentile, raw_execute};

struct BenchDialer<'a> {
    backend: &'a dyn Backend,
    container_id: &'a str,
}

#[async_trait]
impl Dialer for BenchDialer<'_> {
    async fn dial(&self, channel: KernelChannel) -> Result<ChannelStream, DialError> {
        self.backend
            .open_kernel_channel(self.container_id, channel)
            .await
            .map_err(DialError::from)
    }
}

/// A kernel client of a sandbox the engine made, over kernelbox's own channel.
pub(crate) async fn current_transport(
    backend: &dyn Backend,
    container_id: &str,
) -> anyhow::Result<KernelClient> {
    let info = backend.inspect(container_id).await?;
    let key = info
        .labels
        .get(labels::KERNEL_KEY)
        .ok_or_else(|| anyhow::anyhow!("no kernel key label"))?;
    let dialer = BenchDialer {
        backend,
        container_id,
    };
    Ok(KernelClient::connect(
        &dialer,
        key,
        Limits::default(),
        Arc::new(KernelCounters::default()),
        Duration::from_secs(60),
    )
    .await?)
}

/// The old transport: a container of the sandbox image whose kernel listens on TCP, with its
/// ports published on 127.0.0.1, reached with the `zeromq` crate.
pub(crate) struct OldTransport {
    docker: Docker,
    container: String,
    codec: Codec,
    shell: DealerSocket,
    iopub: SubSocket,
}

const OLD_PORTS: [u16; 5] = [50001, 50002, 50003, 50004, 50005];

impl OldTransport {
    pub(crate) async fn start(image: &str, name: &str) -> anyhow::Result<Self> {
        let docker = Docker::connect_with_defaults()?.negotiate_version().await?;
        let key = uuid::Uuid::new_v4().simple().to_string();
        let connection = json!({
            "ip": "0.0.0.0", "transport": "tcp", "shell_port": OLD_PORTS[0],
            "iopub_port": OLD_PORTS[1], "stdin_port": OLD_PORTS[2], "control_port": OLD_PORTS[3],
            "hb_port": OLD_PORTS[4], "key": key, "signature_scheme": "hmac-sha256",
            "kernel_name": "python3",
        });
        let script = format!(
            "printf '%s' '{connection}' > /tmp/kernel.json; exec python3 -m ipykernel_launcher -f /tmp/kernel.json"
        );
        let bindings = OLD_PORTS
            .iter()
            .map(|port| {
                let binding = PortBinding {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some(String::new()),
                };
                (format!("{port}/tcp"), Some(vec![binding]))
            })
            .collect();
        let body = ContainerCreateBody {
            image: Some(image.into()),
            cmd: Some(vec!["sh".into(), "-c".into(), script]),
            exposed_ports: Some(OLD_PORTS.iter().map(|port| format!("{port}/tcp")).collect()),
            labels: Some(HashMap::from([("io.kernelbox.bench".into(), name.into())])),
            // The limits a sandbox gets by default, as the old transport ran them.
            host_config: Some(HostConfig {
                port_bindings: Some(bindings),
                memory: Some(1024 * 1024 * 1024),
                memory_swap: Some(1024 * 1024 * 1024),
                nano_cpus: Some(1_000_000_000),
                pids_limit: Some(256),
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(vec!["no-new-privileges".into()]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default().name(name).build();
        let created = docker.create_container(Some(options), body).await?;
        docker.start_container(&created.id, None).await?;
        let inspect = docker.inspect_container(&created.id, None).await?;
        let ports = inspect
            .network_settings
            .and_then(|settings| settings.ports)
            .unwrap_or_default();
        let host_port = |port: u16| -> anyhow::Result<u16> {
            Ok(ports
                .get(&format!("{port}/tcp"))
                .and_then(|bindings| bindings.as_ref()?.first()?.host_port.clone())
                .ok_or_else(|| anyhow::anyhow!("port {port} not published"))?
                .parse()?)
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut iopub = SubSocket::new();
        iopub.subscribe("").await?;
        connect(&mut iopub, host_port(OLD_PORTS[1])?, deadline).await?;
        let mut shell = DealerSocket::new();
        connect(&mut shell, host_port(OLD_PORTS[0])?, deadline).await?;
        let mut old = Self {
            docker,
            container: created.id,
            codec: Codec::new(&key),
            shell,
            iopub,
        };
        // Ready once a kernel_info reply and the iopub status for it both came back.
        while Instant::now() < deadline {
            if tokio::time::timeout(
                Duration::from_millis(500),
                old.round_trip("kernel_info_request", json!({})),
            )
            .await
            .is_ok_and(|answered| answered.is_ok())
            {
                return Ok(old);
            }
        }
        anyhow::bail!("the old-transport kernel did not answer")
    }

    /// Sends a request and waits for its shell reply and its iopub `idle`.
    async fn round_trip(&mut self, msg_type: &str, content: Value) -> anyhow::Result<()> {
        let (message, msg_id) = self.codec.request(msg_type, &content);
        self.shell
            .send(ZmqMessage::try_from(message).map_err(|_| anyhow::anyhow!("empty message"))?)
            .await?;
        let (mut replied, mut idle) = (false, false);
        while !(replied && idle) {
            tokio::select! {
                reply = self.shell.recv() => {
                    let decoded = self.codec.decode(reply?.into_vec())?;
                    replied |= decoded.parent_msg_id() == Some(msg_id.as_str());
                }
                published = self.iopub.recv() => {
                    let Ok(decoded) = self.codec.decode(published?.into_vec()) else { continue };
                    idle |= decoded.parent_msg_id() == Some(msg_id.as_str())
                        && decoded.msg_type() == "status"
                        && decoded.content["execution_state"] == "idle";
                }
            }
        }
        Ok(())
    }

    /// `1+1`, to its end.
    pub(crate) async fn execute(&mut self, code: &str) -> anyhow::Result<()> {
        let content = json!({
            "code": code, "silent": false, "store_history": true,
            "user_expressions": {}, "allow_stdin": false, "stop_on_error": false,
        });
        self.round_trip("execute_request", content).await
    }

    pub(crate) async fn stop(self) {
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        let _ = self
            .docker
            .remove_container(&self.container, Some(options))
            .await;
    }
}

/// Connects as the old client did: the published port accepts (docker-proxy) and resets until
/// the kernel listens behind it, so it retries after a short pause.
async fn connect(socket: &mut impl Socket, port: u16, deadline: Instant) -> anyhow::Result<()> {
    loop {
        match socket.connect(&format!("tcp://127.0.0.1:{port}")).await {
            Ok(()) => return Ok(()),
            Err(error) if Instant::now() < deadline => {
                let _ = error;
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// Raw kernel clients of one sandbox over each of kernelbox's channels: direct, then exec.
pub(crate) async fn current_channels(
    container_id: &str,
) -> anyhow::Result<Vec<(&'static str, KernelClient)>> {
    let mut channels = Vec::new();
    for (label, mode) in [
        ("direct channel", KernelChannelMode::Direct),
        ("exec-stream channel", KernelChannelMode::Exec),
    ] {
        let backend = DockerBackend::connect(Default::default())
            .await?
            .with_kernel_channel(mode);
        channels.push((label, current_transport(&backend, container_id).await?));
    }
    Ok(channels)
}

/// Measures `1+1` over the old transport and each of kernelbox's channels, interleaved, and
/// prints each.
pub(crate) async fn compare_transports(
    old: &mut OldTransport,
    current: &[(&'static str, KernelClient)],
    iterations: usize,
) -> anyhow::Result<()> {
    for _ in 0..50 {
        old.execute("1+1").await?;
        for (_, client) in current {
            raw_execute(client, "1+1").await?;
        }
    }
    let mut old_samples = Vec::with_capacity(iterations);
    let mut current_samples = vec![Vec::with_capacity(iterations); current.len()];
    for _ in 0..iterations {
        let started = Instant::now();
        old.execute("1+1").await?;
        old_samples.push(started.elapsed());
        for ((_, client), samples) in current.iter().zip(&mut current_samples) {
            let started = Instant::now();
            raw_execute(client, "1+1").await?;
            samples.push(started.elapsed());
        }
    }
    let old_p50 = percentile(&mut old_samples, 0.5);
    println!(
        "1+1 raw kernel, old transport (published TCP ports): p50 {:.2} ms, p99 {:.2} ms ({iterations} runs)",
        ms(old_p50),
        ms(percentile(&mut old_samples, 0.99))
    );
    for ((label, _), samples) in current.iter().zip(&mut current_samples) {
        let p50 = percentile(samples, 0.5);
        println!(
            "1+1 raw kernel, {label:<36} p50 {:.2} ms, p99 {:.2} ms (p50 {:+.2} ms against the old transport)",
            ms(p50),
            ms(percentile(samples, 0.99)),
            ms(p50) - ms(old_p50)
        );
    }
    Ok(())
}
