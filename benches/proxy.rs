//! MCP proxy overhead against real Docker: `tools/call get_current_time` on mcp-server-time
//! (from PyPI) through `/containers/{id}/mcp-proxy/time` (the real router on loopback, one
//! session, JSON answers), through the helper route, and on the same server run directly over
//! stdio on the host (same wheels, in a venv under target/).
//! Run with `cargo bench --bench proxy` (needs the sandbox image and PyPI for the wheels).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kernelbox::backend::docker::DockerBackend;
use kernelbox::config::EngineConfig;
use kernelbox::engine::Tenant;
use kernelbox::engine::commands::CommandRequest;
use kernelbox::engine::{CreateSandbox, Engine, GuestServerParams};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

mod support;
use support::{LoopbackServer, kernels, ms};

const ITERATIONS: usize = 1000;
const WARMUP: usize = 50;
const TARGET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target");

fn report(name: &str, samples: &mut [Duration]) {
    samples.sort();
    let at = |p: f64| ms(samples[((samples.len() as f64 - 1.0) * p).round() as usize]);
    let mean = samples.iter().map(|d| ms(*d)).sum::<f64>() / samples.len() as f64;
    println!(
        "{name:<36} n={} p50={:.2} ms p90={:.2} ms p99={:.2} ms mean={:.2} ms",
        samples.len(),
        at(0.5),
        at(0.9),
        at(0.99),
        mean
    );
}

fn run(command: &mut std::process::Command) -> anyhow::Result<()> {
    let output = command.output()?;
    anyhow::ensure!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// A host venv with mcp-server-time, and the wheels it was installed from (Python 3.11, which
/// the sandbox runs too).
fn host_server() -> anyhow::Result<(PathBuf, PathBuf)> {
    let venv = Path::new(TARGET).join("proxy-bench-venv");
    let wheels = Path::new(TARGET).join("proxy-bench-wheels");
    let python = venv.join("bin").join("python");
    if !venv.join(".installed").exists() {
        run(std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv))?;
        run(std::process::Command::new(&python)
            .args(["-m", "pip", "download", "--quiet", "mcp-server-time"])
            .args(["--python-version", "3.11", "--only-binary=:all:", "--dest"])
            .arg(&wheels))?;
        run(std::process::Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-index",
                "--find-links",
            ])
            .arg(&wheels)
            .arg("mcp-server-time"))?;
        std::fs::write(venv.join(".installed"), b"")?;
    }
    Ok((python, wheels))
}

fn call(id: usize) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": "get_current_time", "arguments": {"timezone": "Europe/Paris"}}})
}

const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}"#;
const INITIALIZED: &str = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (python, wheels) = host_server()?;
    let mut direct = direct_calls(&python).await?;
    report("direct stdio on the host", &mut direct);
    let instance = format!(
        "bench-proxy-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let backend = Arc::new(DockerBackend::connect(Default::default()).await?);
    let engine = Engine::new(backend.clone(), EngineConfig::defaults(&instance));
    engine.check_image().await?;
    let outcome = async {
        compare_kernel_transports(&engine, &instance).await?;
        proxied(&engine, &wheels).await
    }
    .await;
    engine.shutdown(true).await;
    outcome
}

/// The kernel channel the guest proxy's sandboxes use, against the old transport.
async fn compare_kernel_transports(engine: &Arc<Engine>, instance: &str) -> anyhow::Result<()> {
    let id = engine.create(CreateSandbox::new(Tenant::Local)).await?.id;
    let container = engine.get(&id, &Tenant::Local)?.container_id().to_string();
    let channels = kernels::current_channels(&container).await?;
    let mut old =
        kernels::OldTransport::start(&engine.config().image, &format!("{instance}-old")).await?;
    let compared = kernels::compare_transports(&mut old, &channels, ITERATIONS).await;
    old.stop().await;
    engine.destroy(&id, &Tenant::Local).await?;
    compared
}

async fn proxied(engine: &Arc<Engine>, wheels: &Path) -> anyhow::Result<()> {
    let id = engine.create(CreateSandbox::new(Tenant::Local)).await?.id;
    let mut tar = tar::Builder::new(Vec::new());
    tar.append_dir_all(".", wheels)?;
    let tar = Bytes::from(tar.into_inner()?);
    engine
        .upload_tree(
            &id,
            &Tenant::Local,
            "wheels",
            Box::pin(futures::stream::once(async move { Ok(tar) })),
        )
        .await?;
    let installed = engine
        .run_command(&id, &Tenant::Local,
            CommandRequest {
                command: "python3 -m pip install --no-input --no-index --find-links /workspace/wheels mcp-server-time".into(),
                timeout: Some(Duration::from_secs(300)),
                ..Default::default()
            },
        )
        .await?;
    anyhow::ensure!(installed.exit_code == 0, "pip: {}", installed.stderr);
    engine
        .register_guest_server(
            &id,
            &Tenant::Local,
            "time",
            GuestServerParams {
                command: "python3".into(),
                args: vec!["-m".into(), "mcp_server_time".into()],
                env: Default::default(),
            },
        )
        .await?;

    let server = LoopbackServer::start(engine).await?;
    let base = server.base.clone();
    let client = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let url = format!("{base}/containers/{id}/mcp-proxy/time");
    let post = |body: String, session: Option<&str>| {
        let mut request = client
            .post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .body(body);
        if let Some(session) = session {
            request = request.header("mcp-session-id", session);
        }
        request.send()
    };
    let response = post(INITIALIZE.into(), None).await?;
    let session = response
        .headers()
        .get("mcp-session-id")
        .and_then(|value| value.to_str().ok())
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("no Mcp-Session-Id"))?;
    response.text().await?;
    post(INITIALIZED.into(), Some(&session)).await?;
    let mut samples = Vec::with_capacity(ITERATIONS);
    for index in 0..WARMUP + ITERATIONS {
        let started = Instant::now();
        let body = post(call(index + 1).to_string(), Some(&session))
            .await?
            .text()
            .await?;
        anyhow::ensure!(body.contains("Europe/Paris"), "proxy answer: {body}");
        if index >= WARMUP {
            samples.push(started.elapsed());
        }
    }
    report("proxy (Streamable HTTP → docker exec)", &mut samples);

    let helper = format!("{base}/containers/{id}/mcp/time/get_current_time");
    let mut samples = Vec::with_capacity(ITERATIONS);
    for index in 0..WARMUP + ITERATIONS {
        let started = Instant::now();
        let body = client
            .post(&helper)
            .json(&json!({"params": {"timezone": "Europe/Paris"}}))
            .send()
            .await?
            .text()
            .await?;
        anyhow::ensure!(body.contains("Europe/Paris"), "helper answer: {body}");
        if index >= WARMUP {
            samples.push(started.elapsed());
        }
    }
    report("helper route (REST → docker exec)", &mut samples);
    client
        .delete(&url)
        .header("mcp-session-id", &session)
        .send()
        .await?;
    server.stop().await;
    Ok(())
}

/// The same server as a child process on the host, one JSON-RPC message per line.
async fn direct_calls(python: &Path) -> anyhow::Result<Vec<Duration>> {
    let mut child = tokio::process::Command::new(python)
        .args(["-m", "mcp_server_time"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdin = child.stdin.take().ok_or_else(|| anyhow::anyhow!("stdin"))?;
    let mut lines = BufReader::new(
        child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("stdout"))?,
    )
    .lines();
    let mut exchange = async |message: String, expect_reply: bool| -> anyhow::Result<String> {
        stdin.write_all(message.as_bytes()).await?;
        stdin.write_all(b"\n").await?;
        stdin.flush().await?;
        if !expect_reply {
            return Ok(String::new());
        }
        loop {
            let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
                .await
                .map_err(|_| anyhow::anyhow!("no reply within 60 s"))??
                .ok_or_else(|| anyhow::anyhow!("the server closed stdout"))?;
            if line.contains(r#""result""#) || line.contains(r#""error""#) {
                return Ok(line);
            }
        }
    };
    exchange(INITIALIZE.into(), true).await?;
    exchange(INITIALIZED.into(), false).await?;
    let mut samples = Vec::with_capacity(ITERATIONS);
    for index in 0..WARMUP + ITERATIONS {
        let started = Instant::now();
        let reply = exchange(call(index + 1).to_string(), true).await?;
        anyhow::ensure!(reply.contains("Europe/Paris"), "direct answer: {reply}");
        if index >= WARMUP {
            samples.push(started.elapsed());
        }
    }
    drop(stdin);
    child.wait().await?;
    Ok(samples)
}
