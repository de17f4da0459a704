//! `1+1` three ways in one run, against real Docker: through kernelbox's REST route (the real
//! `kernelbox serve` binary in a process of its own, reached over loopback HTTP as any client
//! reaches it), on the raw kernel channel of the same sandbox (the floor), and through a Jupyter
//! Kernel Gateway (PyPI `jupyter_kernel_gateway`) in a container of the same image, its port
//! published on 127.0.0.1 and reached over HTTP and WebSocket: the path the ipybox server takes
//! to its kernels. The interleaving gives all three the same machine.
//! Run with `cargo bench --bench gateway` (needs the sandbox image and PyPI for the wheels).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
};
use futures::{SinkExt, StreamExt};
use kernelbox::backend::docker::DockerBackend;
use kernelbox::config::EngineConfig;
use kernelbox::engine::Engine;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

mod support;
use support::{kernels, ms, percentile, raw_execute};

const ITERATIONS: usize = 500;
const WARMUP: usize = 30;
const TARGET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target");
const GATEWAY_PORT: u16 = 8888;
/// How long the gateway has to install and start.
const GATEWAY_START: Duration = Duration::from_secs(300);
/// How long `kernelbox serve` has to listen, and to stop.
const SERVE_START: Duration = Duration::from_secs(60);
/// How long one `1+1` may take before the run is abandoned.
const CALL_DEADLINE: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let wheels = gateway_wheels()?;
    let instance = format!(
        "bench-gateway-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let backend = Arc::new(DockerBackend::connect(Default::default()).await?);
    let engine = Engine::new(backend.clone(), EngineConfig::defaults(&instance));
    engine.check_image().await?;
    let docker = Docker::connect_with_defaults()?.negotiate_version().await?;
    let name = format!("{instance}-jkg");
    let outcome = async {
        let gateway = Gateway::start(&docker, &engine.config().image, &name, &wheels).await?;
        let served = Served::start(&format!("{instance}-serve")).await?;
        let compared = compare(&served, backend.as_ref(), &docker, &gateway).await;
        served.stop().await;
        compared
    }
    .await;
    let _ = docker
        .remove_container(
            &name,
            Some(RemoveContainerOptionsBuilder::default().force(true).build()),
        )
        .await;
    engine.shutdown(true).await;
    outcome
}

/// The gateway's wheels for Python 3.11 (the sandbox's), downloaded once under target/.
fn gateway_wheels() -> anyhow::Result<PathBuf> {
    let wheels = Path::new(TARGET).join("gateway-bench-wheels");
    if !wheels.join(".downloaded").exists() {
        let output = std::process::Command::new("python3")
            .args(["-m", "pip", "download", "--quiet", "jupyter_kernel_gateway"])
            .args(["--python-version", "3.11", "--only-binary=:all:", "--dest"])
            .arg(&wheels)
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "pip download: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        std::fs::write(wheels.join(".downloaded"), b"")?;
    }
    Ok(wheels)
}

/// `kernelbox serve`, the real binary, on a free loopback port, with one sandbox created over
/// REST.
struct Served {
    child: tokio::process::Child,
    base: String,
    id: String,
    client: reqwest::Client,
}

impl Served {
    async fn start(instance: &str) -> anyhow::Result<Self> {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kernelbox"))
            .args(["serve", "--port", "0", "--instance", instance])
            .args(["--no-image-build", "--log", "info", "--log-format", "text"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stderr"))?;
        let mut lines = BufReader::new(stderr).lines();
        // Its own word, in its log, that it listens, and where.
        let local = tokio::time::timeout(SERVE_START, async {
            while let Some(line) = lines.next_line().await? {
                if let Some((_, local)) = line.split_once("listening local=") {
                    return Ok(local.trim().to_string());
                }
            }
            anyhow::bail!("kernelbox serve exited before it listened")
        })
        .await
        .map_err(|_| anyhow::anyhow!("kernelbox serve did not listen within {SERVE_START:?}"))??;
        // The rest of its log goes on being read, so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let base = format!("http://{local}");
        let client = reqwest::Client::builder().tcp_nodelay(true).build()?;
        let created: Value = client
            .post(format!("{base}/containers"))
            .json(&json!({}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let id = created["id"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("no id in {created}"))?
            .to_string();
        Ok(Self {
            child,
            base,
            id,
            client,
        })
    }

    /// Destroys the sandbox, then stops the server as an operator does (SIGTERM).
    async fn stop(mut self) {
        let _ = self
            .client
            .delete(format!("{}/containers/{}", self.base, self.id))
            .send()
            .await;
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let _ = tokio::time::timeout(SERVE_START, self.child.wait()).await;
    }
}

/// The container of the sandbox `id` (its label), for the raw channel to the same kernel.
async fn container_of(docker: &Docker, id: &str) -> anyhow::Result<String> {
    let options = bollard::query_parameters::ListContainersOptionsBuilder::default()
        .filters(&HashMap::from([(
            "label".to_string(),
            vec![format!("{}={id}", kernelbox::engine::labels::ID)],
        )]))
        .build();
    docker
        .list_containers(Some(options))
        .await?
        .into_iter()
        .find_map(|container| container.id)
        .ok_or_else(|| anyhow::anyhow!("no container for {id}"))
}

/// A Kernel Gateway in a container, with one kernel started.
struct Gateway {
    base: String,
    kernel_id: String,
}

impl Gateway {
    async fn start(
        docker: &Docker,
        image: &str,
        name: &str,
        wheels: &Path,
    ) -> anyhow::Result<Self> {
        // Installed into a directory of its own, so the image's Debian packages are untouched.
        let script = format!(
            "python3 -m pip install --quiet --no-index --find-links /wheels --target /tmp/jkg jupyter_kernel_gateway \
             && PYTHONPATH=/tmp/jkg exec python3 -m kernel_gateway \
             --KernelGatewayApp.ip=0.0.0.0 --KernelGatewayApp.port={GATEWAY_PORT}"
        );
        let binding = PortBinding {
            host_ip: Some("127.0.0.1".into()),
            host_port: Some(String::new()),
        };
        let body = ContainerCreateBody {
            image: Some(image.into()),
            cmd: Some(vec!["sh".into(), "-c".into(), script]),
            exposed_ports: Some(vec![format!("{GATEWAY_PORT}/tcp")]),
            labels: Some(HashMap::from([("io.kernelbox.bench".into(), name.into())])),
            // The limits a kernelbox sandbox gets by default.
            host_config: Some(HostConfig {
                port_bindings: Some(HashMap::from([(
                    format!("{GATEWAY_PORT}/tcp"),
                    Some(vec![binding]),
                )])),
                binds: Some(vec![format!("{}:/wheels:ro", wheels.display())]),
                memory: Some(1024 * 1024 * 1024),
                nano_cpus: Some(1_000_000_000),
                pids_limit: Some(256),
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(vec!["no-new-privileges".into()]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default().name(name).build();
        docker.create_container(Some(options), body).await?;
        docker.start_container(name, None).await?;
        tokio::time::timeout(GATEWAY_START, serving(docker, name))
            .await
            .map_err(|_| anyhow::anyhow!("the gateway did not start within {GATEWAY_START:?}"))??;
        let inspect = docker.inspect_container(name, None).await?;
        let port: u16 = inspect
            .network_settings
            .and_then(|settings| settings.ports)
            .and_then(|ports| ports.get(&format!("{GATEWAY_PORT}/tcp")).cloned().flatten())
            .and_then(|bindings| bindings.first()?.host_port.clone())
            .ok_or_else(|| anyhow::anyhow!("the gateway's port is not published"))?
            .parse()?;
        let base = format!("127.0.0.1:{port}");
        let kernel: Value = reqwest::Client::new()
            .post(format!("http://{base}/api/kernels"))
            .json(&json!({"name": "python3"}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let kernel_id = kernel["id"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("no kernel id in {kernel}"))?
            .to_string();
        Ok(Self { base, kernel_id })
    }
}

/// Waits for the gateway's own word that it serves, in its log.
async fn serving(docker: &Docker, name: &str) -> anyhow::Result<()> {
    let options = LogsOptionsBuilder::default()
        .follow(true)
        .stdout(true)
        .stderr(true)
        .build();
    let mut logs = docker.logs(name, Some(options));
    let mut seen = String::new();
    while let Some(chunk) = logs.next().await {
        seen.push_str(&chunk?.to_string());
        if seen.contains("is available at") {
            return Ok(());
        }
    }
    anyhow::bail!("the gateway exited: {seen}")
}

/// One client of the gateway's kernel channels, as a Jupyter client speaks them (the JSON
/// WebSocket protocol, every channel on one socket).
struct GatewayClient {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    session: String,
}

impl GatewayClient {
    /// `nodelay`: TCP_NODELAY on the client's socket (a client without it waits on Nagle and
    /// delayed ACKs, about 40 ms a call here).
    async fn connect(gateway: &Gateway, nodelay: bool) -> anyhow::Result<Self> {
        let url = format!(
            "ws://{}/api/kernels/{}/channels",
            gateway.base, gateway.kernel_id
        );
        let (socket, _) = tokio_tungstenite::connect_async_with_config(url, None, nodelay).await?;
        Ok(Self {
            socket,
            session: uuid::Uuid::new_v4().simple().to_string(),
        })
    }

    /// Runs `code` and waits for its shell reply and its iopub `idle`, as a client does.
    async fn execute(&mut self, code: &str) -> anyhow::Result<()> {
        let msg_id = uuid::Uuid::new_v4().simple().to_string();
        let request = json!({
            "header": {"msg_id": msg_id, "username": "bench", "session": self.session,
                "msg_type": "execute_request", "version": "5.3",
                "date": chrono::Utc::now().to_rfc3339()},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": false, "store_history": true,
                "user_expressions": {}, "allow_stdin": false, "stop_on_error": true},
        });
        self.socket
            .send(Message::Text(request.to_string().into()))
            .await?;
        let (mut replied, mut idle) = (false, false);
        while !(replied && idle) {
            let message = self
                .socket
                .next()
                .await
                .ok_or_else(|| anyhow::anyhow!("the gateway closed the socket"))??;
            let Message::Text(text) = message else {
                continue;
            };
            let message: Value = serde_json::from_str(&text)?;
            if message["parent_header"]["msg_id"] != msg_id.as_str() {
                continue;
            }
            match message["msg_type"].as_str() {
                Some("execute_reply") => replied = true,
                Some("status") if message["content"]["execution_state"] == "idle" => idle = true,
                _ => {}
            }
        }
        Ok(())
    }
}

async fn compare(
    served: &Served,
    backend: &dyn kernelbox::backend::Backend,
    docker: &Docker,
    gateway: &Gateway,
) -> anyhow::Result<()> {
    let container = container_of(docker, &served.id).await?;
    let kernel = kernels::current_transport(backend, &container).await?;
    let client = &served.client;
    let url = format!("{}/containers/{}/execute", served.base, served.id);
    // One gateway client at a time, as a Jupyter client holds one socket per kernel: first with
    // TCP_NODELAY, as the REST client has, then with the socket's defaults, as a plain WebSocket
    // library opens it. Each pass interleaves the three paths, so all see the same machine.
    let mut passes = Vec::new();
    for nodelay in [true, false] {
        let mut through_gateway = GatewayClient::connect(gateway, nodelay).await?;
        let (mut rest, mut raw, mut jkg) = (Vec::new(), Vec::new(), Vec::new());
        for index in 0..WARMUP + ITERATIONS {
            let started = Instant::now();
            let answer: Value = tokio::time::timeout(CALL_DEADLINE, async {
                client
                    .post(&url)
                    .json(&json!({"code": "1+1"}))
                    .send()
                    .await?
                    .json()
                    .await
            })
            .await??;
            // `text` may carry IPython's warning when its output cache fills; the value is last.
            anyhow::ensure!(
                answer["status"] == "completed"
                    && answer["text"]
                        .as_str()
                        .is_some_and(|text| text.ends_with('2')),
                "REST answer: {answer}"
            );
            let rest_took = started.elapsed();

            let started = Instant::now();
            tokio::time::timeout(CALL_DEADLINE, raw_execute(&kernel, "1+1")).await??;
            let raw_took = started.elapsed();

            let started = Instant::now();
            tokio::time::timeout(CALL_DEADLINE, through_gateway.execute("1+1")).await??;
            let gateway_took = started.elapsed();
            if index >= WARMUP {
                rest.push(rest_took);
                raw.push(raw_took);
                jkg.push(gateway_took);
            }
        }
        passes.push((nodelay, rest, raw, jkg));
    }
    let line = |name: &str, samples: &mut Vec<Duration>| {
        let (p50, p99) = (percentile(samples, 0.5), percentile(samples, 0.99));
        println!(
            "1+1 {name:<48} p50 {:>7.2} ms  p99 {:>7.2} ms  ({ITERATIONS} runs)",
            ms(p50),
            ms(p99)
        );
        p50
    };
    for (nodelay, mut rest, mut raw, mut jkg) in passes {
        let socket = if nodelay { "TCP_NODELAY" } else { "defaults" };
        println!("gateway client socket: {socket}");
        let rest_p50 = line(
            "kernelbox REST (`kernelbox serve`, loopback HTTP)",
            &mut rest,
        );
        let raw_p50 = line("raw kernel channel (same sandbox)", &mut raw);
        let gateway_p50 = line("Jupyter Kernel Gateway (HTTP + WebSocket)", &mut jkg);
        println!(
            "  gateway p50 / kernelbox REST p50: {:.1}x; gateway / raw: {:.1}x",
            ms(gateway_p50) / ms(rest_p50),
            ms(gateway_p50) / ms(raw_p50)
        );
    }
    Ok(())
}
