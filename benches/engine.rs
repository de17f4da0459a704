//! Engine benchmark against real Docker: create → first result, `1+1` through the engine against
//! a raw kernel round trip in the same sandbox, and 10 MiB output throughput.
//! Run with `cargo bench --bench engine` (needs the sandbox image: `kernelbox image build`).

use std::sync::Arc;
use std::time::Instant;

use kernelbox::backend::Backend;
use kernelbox::backend::docker::DockerBackend;
use kernelbox::config::EngineConfig;
use kernelbox::engine::Tenant;
use kernelbox::engine::{CreateSandbox, Engine, ExecuteRequest};

mod support;
use support::{kernels, ms, percentile, raw_execute};

const ITERATIONS: usize = 1000;
const CREATES: usize = 5;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let instance = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut config = EngineConfig::defaults(&instance);
    config.output_limit_bytes = 16 * 1024 * 1024;
    let backend = Arc::new(DockerBackend::connect(Default::default()).await?);
    let engine = Engine::new(backend.clone(), config);
    engine.check_image().await?;
    let result = run(&engine, backend.as_ref()).await;
    engine.shutdown(true).await;
    result
}

async fn run(engine: &Arc<Engine>, backend: &dyn Backend) -> anyhow::Result<()> {
    // create → first result
    let mut creates = Vec::new();
    for _ in 0..CREATES {
        let started = Instant::now();
        let info = engine.create(CreateSandbox::new(Tenant::Local)).await?;
        let result = engine
            .execute(
                &info.id,
                &Tenant::Local,
                ExecuteRequest {
                    code: "1+1".into(),
                    timeout: None,
                },
            )
            .await?
            .finish()
            .await?;
        anyhow::ensure!(
            result.result_text() == Some("2"),
            "unexpected result {result:?}"
        );
        creates.push(started.elapsed());
        engine.destroy(&info.id, &Tenant::Local).await?;
    }
    println!(
        "create -> first result: p50 {:.0} ms, max {:.0} ms ({CREATES} runs)",
        ms(percentile(&mut creates, 0.5)),
        ms(percentile(&mut creates, 1.0))
    );

    let info = engine.create(CreateSandbox::new(Tenant::Local)).await?;
    let sandbox = engine.get(&info.id, &Tenant::Local)?;
    let raw = kernels::current_transport(backend, sandbox.container_id()).await?;
    let channels = kernels::current_channels(sandbox.container_id()).await?;
    let mut old = kernels::OldTransport::start(
        &engine.config().image,
        &format!("{}-old", engine.config().instance),
    )
    .await?;
    let compared = kernels::compare_transports(&mut old, &channels, ITERATIONS).await;
    old.stop().await;
    compared?;

    // Warm both paths.
    for _ in 0..50 {
        raw_execute(&raw, "1+1").await?;
        engine_execute(engine, &info.id, "1+1").await?;
    }
    let mut raw_samples = Vec::with_capacity(ITERATIONS);
    let mut engine_samples = Vec::with_capacity(ITERATIONS);
    // Interleave so both see the same machine conditions.
    for _ in 0..ITERATIONS {
        let started = Instant::now();
        raw_execute(&raw, "1+1").await?;
        raw_samples.push(started.elapsed());
        let started = Instant::now();
        engine_execute(engine, &info.id, "1+1").await?;
        engine_samples.push(started.elapsed());
    }
    let raw_p50 = percentile(&mut raw_samples, 0.5);
    let engine_p50 = percentile(&mut engine_samples, 0.5);
    println!(
        "1+1 raw kernel round trip: p50 {:.2} ms, p99 {:.2} ms ({ITERATIONS} runs)",
        ms(raw_p50),
        ms(percentile(&mut raw_samples, 0.99))
    );
    println!(
        "1+1 through the engine:    p50 {:.2} ms, p99 {:.2} ms (p50 overhead {:+.2} ms)",
        ms(engine_p50),
        ms(percentile(&mut engine_samples, 0.99)),
        ms(engine_p50) - ms(raw_p50)
    );

    // 10 MiB of output.
    let code = "import sys\nchunk = 'x' * 1023 + '\\n'\nfor _ in range(10 * 1024):\n    sys.stdout.write(chunk)";
    let mut throughputs = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let result = engine
            .execute(
                &info.id,
                &Tenant::Local,
                ExecuteRequest {
                    code: code.into(),
                    timeout: None,
                },
            )
            .await?
            .finish()
            .await?;
        let elapsed = started.elapsed();
        anyhow::ensure!(
            result.stdout.len() == 10 * 1024 * 1024,
            "got {} bytes",
            result.stdout.len()
        );
        throughputs.push(10.0 / elapsed.as_secs_f64());
    }
    throughputs.sort_by(f64::total_cmp);
    // The same output read straight off the kernel's channel, every message decoded and
    // dropped: the floor for the engine's collection and caps.
    let mut raw_throughputs = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        raw_execute(&raw, code).await?;
        raw_throughputs.push(10.0 / started.elapsed().as_secs_f64());
    }
    raw_throughputs.sort_by(f64::total_cmp);
    println!(
        "10 MiB stdout: engine median {:.1} MiB/s, raw kernel median {:.1} MiB/s (3 runs each)",
        throughputs[1], raw_throughputs[1]
    );
    Ok(())
}

async fn engine_execute(engine: &Arc<Engine>, id: &str, code: &str) -> anyhow::Result<()> {
    let result = engine
        .execute(
            id,
            &Tenant::Local,
            ExecuteRequest {
                code: code.into(),
                timeout: None,
            },
        )
        .await?
        .finish()
        .await?;
    anyhow::ensure!(result.result_text() == Some("2"));
    Ok(())
}
