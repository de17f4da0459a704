//! Load benchmark against real Docker: a burst of concurrent creates, many sandboxes executing at
//! once against raw kernels driven by the same process, and density (how many live sandboxes all
//! answer, with the server's memory and the host's memory per sandbox).
//!
//! Run with `cargo bench --bench load` (needs the sandbox image: `kernelbox image build`).
//! Sizes come from the environment: `KERNELBOX_BENCH_BURST` (50 creates at once),
//! `KERNELBOX_BENCH_SANDBOXES` and `KERNELBOX_BENCH_EXECUTES` (50 sandboxes × 100 executes), and
//! `KERNELBOX_BENCH_DENSITY` (300 live sandboxes; 0 skips it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::join_all;
use kernelbox::backend::Backend;
use kernelbox::backend::docker::DockerBackend;
use kernelbox::config::EngineConfig;
use kernelbox::engine::{CreateSandbox, Engine, ExecuteRequest, Tenant};

mod support;
use support::{kernels, ms, percentile, raw_execute};

fn size(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let instance = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let density = size("KERNELBOX_BENCH_DENSITY", 300);
    let mut config = EngineConfig::defaults(&instance);
    config.max_sandboxes = config.max_sandboxes.max(density + 10);
    config.max_sandboxes_per_tenant = config.max_sandboxes;
    let backend = Arc::new(DockerBackend::connect(Default::default()).await?);
    let engine = Engine::new(backend.clone(), config);
    engine.check_image().await?;
    let result = run(&engine, backend.as_ref(), density).await;
    engine.shutdown(true).await;
    result
}

async fn run(engine: &Arc<Engine>, backend: &dyn Backend, density: usize) -> anyhow::Result<()> {
    println!(
        "machine: {} CPUs, {:.1} GiB memory; at most {} sandboxes start at once",
        std::thread::available_parallelism().map_or(1, usize::from),
        host_memory_kib("MemTotal:") as f64 / 1024.0 / 1024.0,
        engine.config().max_concurrent_starts
    );
    burst(engine, size("KERNELBOX_BENCH_BURST", 50)).await?;
    throughput(
        engine,
        backend,
        size("KERNELBOX_BENCH_SANDBOXES", 50),
        size("KERNELBOX_BENCH_EXECUTES", 100),
    )
    .await?;
    if density > 0 {
        density_of(engine, density).await?;
    }
    Ok(())
}

/// `n` clients create a sandbox and run `1+1` in it, all at once.
async fn burst(engine: &Arc<Engine>, n: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    let clients = (0..n).map(|_| async {
        let started = Instant::now();
        let info = engine.create(CreateSandbox::new(Tenant::Local)).await?;
        let answer = execute(engine, &info.id, "1+1").await;
        let took = started.elapsed();
        answer.map(|()| (took, info.id))
    });
    let outcomes = join_all(clients).await;
    let wall = started.elapsed();
    let mut times: Vec<Duration> = Vec::new();
    let mut errors = Vec::new();
    let mut ids = Vec::new();
    for outcome in outcomes {
        match outcome {
            Ok((took, id)) => {
                times.push(took);
                ids.push(id);
            }
            Err(error) => errors.push(error.to_string()),
        }
    }
    let (p50, p99) = if times.is_empty() {
        (f64::NAN, f64::NAN)
    } else {
        (
            ms(percentile(&mut times, 0.5)),
            ms(percentile(&mut times, 0.99)),
        )
    };
    println!(
        "burst of {n} creates -> first result: {} errors, p50 {p50:.0} ms, p99 {p99:.0} ms, all done in {:.1} s",
        errors.len(),
        wall.as_secs_f64()
    );
    if let Some(first) = errors.first() {
        println!("  first error: {first}");
    }
    // Creates that failed after their container started are cleaned up by the engine itself.
    destroy_all(engine, &ids).await;
    Ok(())
}

/// `sandboxes` sandboxes each run `executes` `k+1` executions back to back, all sandboxes at
/// once: first through the engine, then as raw kernel round trips from this same process over
/// kernelbox's own channel to the same kernels.
async fn throughput(
    engine: &Arc<Engine>,
    backend: &dyn Backend,
    sandboxes: usize,
    executes: usize,
) -> anyhow::Result<()> {
    let ids = create_many(engine, sandboxes).await?;
    for id in &ids {
        execute(engine, id, "k = 0").await?;
    }
    let mut engine_run = {
        let started = Instant::now();
        let runs = ids.iter().map(|id| async move {
            let mut samples = Vec::with_capacity(executes);
            let mut errors = 0;
            for _ in 0..executes {
                let one = Instant::now();
                match execute(engine, id, "k += 1\nk").await {
                    Ok(()) => samples.push(one.elapsed()),
                    Err(_) => errors += 1,
                }
            }
            (samples, errors)
        });
        Rounds::from(join_all(runs).await, started.elapsed())
    };
    let mut raw_clients = Vec::with_capacity(ids.len());
    for id in &ids {
        let sandbox = engine.get(id, &Tenant::Local)?;
        raw_clients.push(kernels::current_transport(backend, sandbox.container_id()).await?);
    }
    let mut raw_run = {
        let started = Instant::now();
        let runs = raw_clients.iter().map(|client| async move {
            let mut samples = Vec::with_capacity(executes);
            let mut errors = 0;
            for _ in 0..executes {
                let one = Instant::now();
                match raw_execute(client, "k += 1\nk").await {
                    Ok(()) => samples.push(one.elapsed()),
                    Err(_) => errors += 1,
                }
            }
            (samples, errors)
        });
        Rounds::from(join_all(runs).await, started.elapsed())
    };
    engine_run.print(&format!("{sandboxes} x {executes} executes, engine"));
    raw_run.print(&format!("{sandboxes} x {executes} executes, raw kernels"));
    println!(
        "  engine throughput is {:.0}% of raw kernels",
        100.0 * engine_run.per_second() / raw_run.per_second()
    );
    drop(raw_clients);
    destroy_all(engine, &ids).await;
    Ok(())
}

/// Starts `n` live sandboxes, then has all of them answer `print(6*7)` at once.
async fn density_of(engine: &Arc<Engine>, n: usize) -> anyhow::Result<()> {
    let available_before = host_memory_kib("MemAvailable:");
    let rss_before = own_rss_kib();
    let started = Instant::now();
    // Added a few at a time rather than all at once: 300 creates queued together would wait
    // past the start queue's deadline, which measures the queue, not the density.
    let (ids, error) = create_paced(engine, n).await;
    if let Some(error) = error {
        println!(
            "density: stopped at {} live sandboxes after {:.0} s: {error}; host memory {:.1} MiB per sandbox",
            ids.len(),
            started.elapsed().as_secs_f64(),
            available_before.saturating_sub(host_memory_kib("MemAvailable:")) as f64
                / 1024.0
                / ids.len().max(1) as f64
        );
        destroy_all(engine, &ids).await;
        return Ok(());
    }
    let created_in = started.elapsed();
    let answered = Instant::now();
    let answers = join_all(ids.iter().map(|id| async move {
        let result = engine
            .execute(
                id,
                &Tenant::Local,
                ExecuteRequest {
                    code: "print(6*7)".into(),
                    timeout: None,
                },
            )
            .await?
            .finish()
            .await?;
        anyhow::ensure!(result.stdout == "42\n", "answered {:?}", result.stdout);
        Ok(())
    }))
    .await;
    let answered_in = answered.elapsed();
    let failed = answers.iter().filter(|answer| answer.is_err()).count();
    let host_used = available_before.saturating_sub(host_memory_kib("MemAvailable:"));
    println!(
        "density: {n} live sandboxes (started in {:.0} s), {} answered print(6*7) in {:.1} s; server RSS {:.0} MiB (+{:.0} MiB), host memory {:.1} MiB per sandbox",
        created_in.as_secs_f64(),
        n - failed,
        answered_in.as_secs_f64(),
        own_rss_kib() as f64 / 1024.0,
        own_rss_kib().saturating_sub(rss_before) as f64 / 1024.0,
        host_used as f64 / 1024.0 / n as f64
    );
    destroy_all(engine, &ids).await;
    Ok(())
}

/// Per-sandbox latencies and errors of one concurrent run.
struct Rounds {
    samples: Vec<Duration>,
    errors: usize,
    wall: Duration,
}

impl Rounds {
    fn from(runs: Vec<(Vec<Duration>, usize)>, wall: Duration) -> Self {
        let mut samples = Vec::new();
        let mut errors = 0;
        for (run, failed) in runs {
            samples.extend(run);
            errors += failed;
        }
        Self {
            samples,
            errors,
            wall,
        }
    }

    fn per_second(&self) -> f64 {
        self.samples.len() as f64 / self.wall.as_secs_f64()
    }

    fn print(&mut self, what: &str) {
        let (p50, p99) = if self.samples.is_empty() {
            (f64::NAN, f64::NAN)
        } else {
            (
                ms(percentile(&mut self.samples, 0.5)),
                ms(percentile(&mut self.samples, 0.99)),
            )
        };
        println!(
            "{what}: {:.0}/s, p50 {p50:.1} ms, p99 {p99:.1} ms, {} errors",
            self.per_second(),
            self.errors
        );
    }
}

async fn execute(engine: &Arc<Engine>, id: &str, code: &str) -> anyhow::Result<()> {
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
    anyhow::ensure!(
        result.error.is_none(),
        "execution failed: {:?}",
        result.error
    );
    Ok(())
}

/// Creates `n` sandboxes at once (the engine's admission control paces the starts).
async fn create_many(engine: &Arc<Engine>, n: usize) -> anyhow::Result<Vec<String>> {
    let created = join_all((0..n).map(|_| engine.create(CreateSandbox::new(Tenant::Local)))).await;
    let mut ids = Vec::with_capacity(n);
    let mut first_error = None;
    for outcome in created {
        match outcome {
            Ok(info) => ids.push(info.id),
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    match first_error {
        None => Ok(ids),
        Some(error) => {
            destroy_all(engine, &ids).await;
            Err(error.into())
        }
    }
}

/// Creates up to `n` sandboxes, as many at once as may start at once, and stops at the first
/// failure: the sandboxes made so far, and the failure.
async fn create_paced(engine: &Arc<Engine>, n: usize) -> (Vec<String>, Option<anyhow::Error>) {
    let at_once = engine.config().max_concurrent_starts.max(1);
    let mut creates = futures::stream::iter(0..n)
        .map(|_| engine.create(CreateSandbox::new(Tenant::Local)))
        .buffer_unordered(at_once);
    let mut ids = Vec::with_capacity(n);
    while let Some(created) = creates.next().await {
        match created {
            Ok(info) => ids.push(info.id),
            Err(error) => {
                // Let the ones under way finish, so that none is left behind untracked.
                while let Some(created) = creates.next().await {
                    if let Ok(info) = created {
                        ids.push(info.id);
                    }
                }
                return (ids, Some(error.into()));
            }
        }
    }
    (ids, None)
}

async fn destroy_all(engine: &Arc<Engine>, ids: &[String]) {
    join_all(ids.iter().map(|id| engine.destroy(id, &Tenant::Local))).await;
}

/// A field of `/proc/meminfo`, in KiB.
fn host_memory_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix(field))
                .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// This process's resident memory (the engine runs in it), in KiB.
fn own_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}
