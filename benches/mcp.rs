//! MCP overhead benchmark against real Docker: 1000 `execute_code("1+1")` calls over Streamable
//! HTTP (the real router on loopback, one keep-alive client) and over stdio (the real binary),
//! each interleaved with the raw kernel round trip of the same code, so both see the same machine.
//! Run with `cargo bench --bench mcp` (needs the sandbox image: `kernelbox image build`).

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kernelbox::backend::Backend;
use kernelbox::backend::docker::DockerBackend;
use kernelbox::config::EngineConfig;
use kernelbox::engine::Tenant;
use kernelbox::engine::{CreateSandbox, Engine};
use kernelbox::kernel::KernelClient;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

mod support;
use support::{LoopbackServer, kernels, ms, percentile, raw_execute};

const ITERATIONS: usize = 1000;
const WARMUP: usize = 50;
const CODE: &str = "1+1";
/// How a correct answer looks in the tool result.
const ANSWER: &str = r#""result":"2""#;

fn report(name: &str, samples: &mut [Duration], raw: &mut [Duration]) {
    let p50 = ms(percentile(samples, 0.5));
    println!(
        "{name:<30} p50 {p50:.2} ms  p99 {:.2} ms   raw kernel p50 {:.2} ms  p99 {:.2} ms   p50 overhead {:+.2} ms",
        ms(percentile(samples, 0.99)),
        ms(percentile(raw, 0.5)),
        ms(percentile(raw, 0.99)),
        p50 - ms(percentile(raw, 0.5)),
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let instance = format!(
        "bench-mcp-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let backend = Arc::new(DockerBackend::connect(Default::default()).await?);
    let engine = Engine::new(backend.clone(), EngineConfig::defaults(&instance));
    engine.check_image().await?;
    let outcome = run(&engine, backend.as_ref(), &instance).await;
    engine.shutdown(true).await;
    outcome
}

async fn run(engine: &Arc<Engine>, backend: &dyn Backend, instance: &str) -> anyhow::Result<()> {
    let id = engine.create(CreateSandbox::new(Tenant::Local)).await?.id;
    let container = engine.get(&id, &Tenant::Local)?.container_id().to_string();
    let raw = kernels::current_transport(backend, &container).await?;
    let channels = kernels::current_channels(&container).await?;
    let mut old =
        kernels::OldTransport::start(&engine.config().image, &format!("{instance}-old")).await?;
    let compared = kernels::compare_transports(&mut old, &channels, ITERATIONS).await;
    old.stop().await;
    compared?;
    println!("{ITERATIONS} calls of execute_code({CODE:?}), after {WARMUP} warm-up calls");

    let (mut http, mut raw_during_http) = http_calls(engine, &raw, &id).await?;
    report("MCP Streamable HTTP", &mut http, &mut raw_during_http);
    // Its own instance: a second process must not reattach to this one's sandboxes.
    let (mut stdio, mut raw_during_stdio) = stdio_calls(&raw, &format!("{instance}-stdio")).await?;
    report("MCP stdio", &mut stdio, &mut raw_during_stdio);
    Ok(())
}

fn call_request(id: usize, session_id: Option<&str>) -> String {
    let mut arguments = json!({ "code": CODE });
    if let Some(session_id) = session_id {
        arguments["session_id"] = json!(session_id);
    }
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "method": "tools/call",
        "params": {"name": "execute_code", "arguments": arguments},
    })
    .to_string()
}

const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}"#;
const INITIALIZED: &str = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;

/// A legacy Streamable HTTP session on the real router, running in the benchmark's sandbox.
async fn http_calls(
    engine: &Arc<Engine>,
    raw: &KernelClient,
    sandbox_id: &str,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let server = LoopbackServer::start(engine).await?;
    let url = format!("{}/mcp", server.base);
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
    let mut raw_samples = Vec::with_capacity(ITERATIONS);
    for index in 0..WARMUP + ITERATIONS {
        let started = Instant::now();
        raw_execute(raw, CODE).await?;
        let raw_elapsed = started.elapsed();
        let started = Instant::now();
        let body = post(call_request(index + 1, Some(sandbox_id)), Some(&session))
            .await?
            .text()
            .await?;
        let elapsed = started.elapsed();
        anyhow::ensure!(body.contains(ANSWER), "HTTP lost the result: {body}");
        if index >= WARMUP {
            samples.push(elapsed);
            raw_samples.push(raw_elapsed);
        }
    }
    client
        .delete(&url)
        .header("mcp-session-id", &session)
        .send()
        .await?;
    server.stop().await;
    Ok((samples, raw_samples))
}

/// The real binary over stdio, one JSON-RPC message per line, in its own default sandbox.
async fn stdio_calls(
    raw: &KernelClient,
    instance: &str,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
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
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
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
    let mut raw_samples = Vec::with_capacity(ITERATIONS);
    for index in 0..WARMUP + ITERATIONS {
        let started = Instant::now();
        raw_execute(raw, CODE).await?;
        let raw_elapsed = started.elapsed();
        let started = Instant::now();
        let reply = exchange(call_request(index + 1, None), true).await?;
        let elapsed = started.elapsed();
        anyhow::ensure!(reply.contains(ANSWER), "stdio lost the result: {reply}");
        if index >= WARMUP {
            samples.push(elapsed);
            raw_samples.push(raw_elapsed);
        }
    }
    // EOF on stdin ends the MCP session; the server then removes its default sandbox and exits.
    drop(stdin);
    child.wait().await?;
    Ok((samples, raw_samples))
}
