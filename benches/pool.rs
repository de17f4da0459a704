//! Create → first result from the warm pool against a cold start, in one run against real
//! Docker: `--warm-pool 2`, each create claims a ready member (waiting first until one is ready,
//! so the refill is never timed), runs `1+1`, and destroys it; every fourth claim asks for limits
//! and a network policy, which the claim applies; the cold creates ask for an env variable,
//! which the pool does not serve.
//! Run with `cargo bench --bench pool` (needs the sandbox image: `kernelbox image build`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kernelbox::backend::docker::DockerBackend;
use kernelbox::config::EngineConfig;
use kernelbox::engine::{AllowList, CreateSandbox, EgressRequest, Engine, ExecuteRequest, Tenant};

mod support;
use support::{ms, percentile};

const POOLED: usize = 40;
const COLD: usize = 8;
/// How long the pool may take to refill one member.
const REFILL: Duration = Duration::from_secs(120);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Opt-in timeline of each create (`KERNELBOX_BENCH_LOG=kernelbox=debug`), on stderr.
    if let Ok(filter) = std::env::var("KERNELBOX_BENCH_LOG") {
        kernelbox::logging::init(&kernelbox::config::LogArgs {
            filter,
            log_format: Default::default(),
        });
    }
    let instance = format!(
        "bench-pool-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let mut config = EngineConfig::defaults(&instance);
    config.warm_pool = 2;
    let backend = Arc::new(DockerBackend::connect(Default::default()).await?);
    let engine = Engine::new(backend, config);
    engine.check_image().await?;
    engine.spawn_warm_pool();
    let result = run(&engine).await;
    engine.shutdown(true).await;
    result
}

async fn first_result(
    engine: &Arc<Engine>,
    request: CreateSandbox,
) -> anyhow::Result<(Duration, Duration)> {
    let started = Instant::now();
    let id = engine.create(request).await?.id;
    let created = started.elapsed();
    let result = engine
        .execute(
            &id,
            &Tenant::Local,
            ExecuteRequest {
                code: "1+1".into(),
                timeout: None,
            },
        )
        .await?
        .finish()
        .await?;
    let took = started.elapsed();
    anyhow::ensure!(result.result_text() == Some("2"), "{result:?}");
    engine.destroy(&id, &Tenant::Local).await?;
    Ok((created, took))
}

async fn run(engine: &Arc<Engine>) -> anyhow::Result<()> {
    let mut ready = engine.warm_pool();
    let (mut pooled, mut pooled_creates) = (Vec::new(), Vec::new());
    let (mut fitted, mut fitted_creates) = (Vec::new(), Vec::new());
    let mut cold = Vec::with_capacity(COLD);
    for index in 0..POOLED {
        tokio::time::timeout(REFILL, ready.wait_for(|ready| *ready >= 2)).await??;
        let mut request = CreateSandbox::new(Tenant::Local);
        let fit = index % 4 == 3;
        if fit {
            request.memory_mb = Some(512);
            request.cpus = Some(0.5);
            request.pids = Some(128);
            request.network = Some(EgressRequest::Replace(AllowList {
                allowed_domains: Vec::new(),
                allowed_ips: Vec::new(),
            }));
        }
        let (created, took) = first_result(engine, request).await?;
        if fit {
            fitted_creates.push(created);
            fitted.push(took);
        } else {
            pooled_creates.push(created);
            pooled.push(took);
        }
        if index % (POOLED / COLD) == 0 {
            // A full pool first: the cold start is not timed against a refill either.
            tokio::time::timeout(REFILL, ready.wait_for(|ready| *ready >= 2)).await??;
            let mut request = CreateSandbox::new(Tenant::Local);
            request.env = HashMap::from([("COLD".to_string(), "1".to_string())]);
            cold.push(first_result(engine, request).await?.1);
        }
    }
    let line = |name: &str, samples: &mut Vec<Duration>| {
        println!(
            "create -> first result, {name:<10} p50 {:>8.1} ms  p99 {:>8.1} ms  ({} runs)",
            ms(percentile(samples, 0.5)),
            ms(percentile(samples, 0.99)),
            samples.len()
        );
    };
    line("warm pool", &mut pooled);
    println!(
        "  of which the create (the claim):    p50 {:>8.1} ms",
        ms(percentile(&mut pooled_creates, 0.5))
    );
    line("pool+fit", &mut fitted);
    println!(
        "  of which the create (claim, limits, firewall): p50 {:>8.1} ms",
        ms(percentile(&mut fitted_creates, 0.5))
    );
    line("cold", &mut cold);
    Ok(())
}
