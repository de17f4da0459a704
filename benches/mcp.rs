//! MCP overhead benchmark against real Docker: 1000 `execute_code("print(1+1)")` calls over
//! Streamable HTTP (the real router on loopback) and over stdio (the real binary), against the
//! same code run directly through the engine.
//! Run with `cargo bench --bench mcp` (needs the sandbox image: `kernelbox image build`).

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kernelbox::backend::DockerBackend;
use kernelbox::config::EngineConfig;
use kernelbox::engine::{CreateSandbox, Engine, ExecuteRequest};
use kernelbox::server::{HttpConfig, app};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;

const ITERATIONS: usize = 1000;
const WARMUP: usize = 20;

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn report(name: &str, samples: &mut [Duration]) {
    samples.sort();
    let at = |p: f64| ms(samples[((samples.len() as f64 - 1.0) * p).round() as usize]);
    let mean = samples.iter().map(|d| ms(*d)).sum::<f64>() / samples.len() as f64;
    println!(
        "{name:<28} n={} p50={:.2} ms p90={:.2} ms p99={:.2} ms mean={:.2} ms",
        samples.len(),
        at(0.5),
        at(0.9),
        at(0.99),
        mean
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let instance = format!(
        "bench-mcp-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let engine = Engine::new(
        Arc::new(DockerBackend::connect().await?),
        EngineConfig::defaults(&instance),
    );
    engine.check_image().await?;
    let outcome = run(&engine, &instance).await;
    engine.shutdown(true).await;
    outcome
}

async fn run(engine: &Arc<Engine>, instance: &str) -> anyhow::Result<()> {
    let mut direct = engine_calls(engine).await?;
    report("engine (no MCP)", &mut direct);
    let mut http = http_calls(engine).await?;
    report("MCP Streamable HTTP", &mut http);
    // Its own instance: a second process must not reattach to this one's sandboxes.
    let mut stdio = stdio_calls(&format!("{instance}-stdio")).await?;
    report("MCP stdio", &mut stdio);
    Ok(())
}

async fn engine_calls(engine: &Arc<Engine>) -> anyhow::Result<Vec<Duration>> {
    let id = engine.create(CreateSandbox::default()).await?.id;
    let mut samples = Vec::with_capacity(ITERATIONS);
    for index in 0..WARMUP + ITERATIONS {
        let started = Instant::now();
        let result = engine
            .execute(
                &id,
                None,
                ExecuteRequest {
                    code: "print(1+1)".into(),
                    timeout: None,
                },
            )
            .await?
            .finish()
            .await?;
        anyhow::ensure!(result.stdout == "2\n", "engine lost output: {result:?}");
        if index >= WARMUP {
            samples.push(started.elapsed());
        }
    }
    engine.destroy(&id, None).await?;
    Ok(samples)
}

fn call_request(id: usize) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "method": "tools/call",
        "params": {"name": "execute_code", "arguments": {"code": "print(1+1)"}},
    })
}

const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}"#;
const INITIALIZED: &str = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;

/// A legacy Streamable HTTP session on the real router.
async fn http_calls(engine: &Arc<Engine>) -> anyhow::Result<Vec<Duration>> {
    let shutdown = CancellationToken::new();
    let router = app(
        engine.clone(),
        &HttpConfig {
            shutdown: shutdown.clone(),
            ..Default::default()
        },
    )?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/mcp", listener.local_addr()?);
    let listener = axum::serve::ListenerExt::tap_io(listener, |stream| {
        let _ = stream.set_nodelay(true);
    });
    let stop = shutdown.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
    });
    let client = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let post = |body: String, session: Option<&str>| {
        let mut request = client
            .post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25")
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
    post(INITIALIZED.into(), Some(&session))
        .await?
        .text()
        .await?;
    let mut samples = Vec::with_capacity(ITERATIONS);
    for index in 0..WARMUP + ITERATIONS {
        let started = Instant::now();
        let body = post(call_request(index + 1).to_string(), Some(&session))
            .await?
            .text()
            .await?;
        anyhow::ensure!(
            body.contains(r#""stdout":"2\n""#),
            "HTTP lost output: {body}"
        );
        if index >= WARMUP {
            samples.push(started.elapsed());
        }
    }
    client
        .delete(&url)
        .header("mcp-session-id", &session)
        .send()
        .await?;
    shutdown.cancel();
    let _ = server.await;
    Ok(samples)
}

/// The real binary over stdio, one JSON-RPC message per line.
async fn stdio_calls(instance: &str) -> anyhow::Result<Vec<Duration>> {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kernelbox"))
        .args([
            "stdio",
            "--instance",
            instance,
            "--no-image-build",
            "--log",
            "warn",
        ])
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
                .map_err(|_| anyhow::anyhow!("no reply from kernelbox stdio within 60 s"))??
                .ok_or_else(|| anyhow::anyhow!("kernelbox stdio closed"))?;
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
        let reply = exchange(call_request(index + 1).to_string(), true).await?;
        anyhow::ensure!(
            reply.contains(r#""stdout":"2\n""#),
            "stdio lost output: {reply}"
        );
        if index >= WARMUP {
            samples.push(started.elapsed());
        }
    }
    // EOF on stdin ends the MCP session; the server then removes its default sandbox and exits.
    drop(stdin);
    child.wait().await?;
    Ok(samples)
}
