//! The `kernelbox` binary: parses the command line and runs the chosen mode.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kernelbox::backend::docker::DockerBackend;
use kernelbox::backend::docker::network::NetworkOptions;
use kernelbox::config::{Cli, Command, EngineArgs, ImageCommand};
use kernelbox::engine::{Engine, EngineError};
use kernelbox::http::auth::ApiKeys;
use kernelbox::http::server::{HttpConfig, ServeOptions};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("kernelbox: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(main_exec(cli));
    // Blocking work still running (an archive being packed, say) is not waited for: the stop
    // already had its deadline.
    runtime.shutdown_timeout(RUNTIME_STOP);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("kernelbox: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// How long the runtime may take to stop once the work is done or given up.
const RUNTIME_STOP: Duration = Duration::from_millis(200);

async fn main_exec(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Image {
            command: ImageCommand::Build(args),
        } => {
            kernelbox::logging::init(&args.log);
            kernelbox::backend::docker::image::build(&args.image, args.offline).await?;
            eprintln!("kernelbox: image {} is ready", args.image);
            Ok(())
        }
        Command::Serve(args) => {
            kernelbox::logging::init(&args.engine.log);
            let connections = args.connection_limits()?;
            let http = HttpConfig {
                keys: Arc::new(ApiKeys::new(&args.api_key)),
                cors_origins: args.cors_origins,
                allowed_hosts: args.allowed_hosts,
                shutdown: Default::default(),
            };
            // Before anything slow: refuse an open non-loopback bind at once.
            kernelbox::http::server::check_bind(args.host, &http.keys, args.insecure)?;
            let destroy_on_exit = args.engine.destroy_on_exit;
            let engine = start_engine(args.engine, "serve").await?;
            let shutdown_timeout = engine.config().shutdown_timeout;
            kernelbox::http::server::serve(
                engine,
                http,
                ServeOptions {
                    addr: SocketAddr::new(args.host, args.port),
                    connections,
                    shutdown_timeout,
                    destroy_on_exit,
                },
                shutdown_signal(shutdown_timeout),
            )
            .await?;
            Ok(())
        }
        Command::Stdio(args) => {
            kernelbox::logging::init(&args.engine.log);
            let destroy_on_exit = args.engine.destroy_on_exit;
            let engine = start_engine(args.engine, "stdio").await?;
            let shutdown_timeout = engine.config().shutdown_timeout;
            let served = kernelbox::mcp::transport::serve_stdio(
                engine.clone(),
                shutdown_signal(shutdown_timeout),
            )
            .await;
            let deadline = tokio::time::Instant::now()
                + kernelbox::http::server::shutdown_budget(shutdown_timeout);
            engine.shutdown_until(destroy_on_exit, deadline).await;
            served?;
            Ok(())
        }
    }
}

/// Connects to Docker, checks the image, reattaches to this instance's sandboxes and starts the
/// idle reaper.
async fn start_engine(args: EngineArgs, mode: &str) -> anyhow::Result<Arc<Engine>> {
    let build_missing_image = !args.no_image_build;
    let config = args.into_config(mode)?;
    let network = NetworkOptions::for_engine(&config)?;
    let backend = DockerBackend::connect(network)
        .await
        .context("cannot reach Docker (is the daemon running, and DOCKER_HOST right?)")?
        .with_kernel_channel(config.kernel_channel);
    let image = config.image.clone();
    let engine = Engine::new(Arc::new(backend), config);
    if let Err(EngineError::ImageMissing { .. }) = engine.check_image().await {
        if !build_missing_image {
            anyhow::bail!(
                "sandbox image {image} is missing or outdated; run `kernelbox image build` (or drop --no-image-build)"
            );
        }
        let offline = kernelbox::backend::docker::image::can_build_offline();
        tracing::warn!(%image, offline, "sandbox image missing or outdated; building it now (a few minutes, once)");
        kernelbox::backend::docker::image::build(&image, offline).await?;
    }
    engine.check_image().await?;
    let restored = engine.reattach().await?;
    tracing::info!(instance = %engine.config().instance, restored, "engine ready");
    engine.spawn_reaper();
    engine.spawn_warm_pool();
    engine.spawn_liveness();
    Ok(engine)
}

/// Resolves on ctrl-c or SIGTERM. The handlers are installed when this is called, not when the
/// future is first polled: a signal that comes the moment the server says "listening" must not
/// find the default action (death by signal) still in place. From the signal on, the process has
/// `deadline` to exit: should the orderly stop not finish by then (a task that blocks its thread,
/// say), a watchdog thread ends the process. The thread is the one thing nobody joins: it must
/// outlive a stuck runtime.
fn shutdown_signal(deadline: Duration) -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).ok();
    let mut terminate = signal(SignalKind::terminate()).ok();
    async move {
        let received = |stream: &mut Option<tokio::signal::unix::Signal>| {
            let stream = stream.take();
            async move {
                match stream {
                    Some(mut stream) => {
                        stream.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
        };
        tokio::select! {
            () = received(&mut interrupt) => {}
            () = received(&mut terminate) => {}
        }
        on_shutdown_signal(deadline);
    }
}

/// What follows the signal: the log line and the watchdog.
fn on_shutdown_signal(deadline: Duration) {
    tracing::info!(deadline_secs = deadline.as_secs_f64(), "shutting down");
    let watchdog = std::thread::Builder::new()
        .name("shutdown-watchdog".into())
        .spawn(move || {
            std::thread::sleep(deadline);
            eprintln!(
                "kernelbox: the shutdown did not finish within {} s; exiting now",
                deadline.as_secs_f64()
            );
            std::process::exit(2);
        });
    if let Err(error) = watchdog {
        tracing::warn!(%error, "cannot start the shutdown watchdog");
    }
}
