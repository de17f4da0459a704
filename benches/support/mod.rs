//! Helpers shared by the benchmarks: percentiles, and a raw kernel round trip that bypasses the
//! engine (the floor every face is measured against).

#![allow(dead_code)]

pub(crate) mod kernels;

use std::time::Duration;

use kernelbox::kernel::{KernelClient, KernelEvent};

pub(crate) fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// The `p` quantile (0..=1) of `samples` (sorted in place).
pub(crate) fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[index]
}

/// Runs `code` on a kernel directly and waits until the kernel reports the execution done.
pub(crate) async fn raw_execute(client: &KernelClient, code: &str) -> anyhow::Result<()> {
    let mut execution = client.execute(code).await?;
    while let Some(event) = execution.next().await? {
        if matches!(event, KernelEvent::Done { .. }) {
            return Ok(());
        }
    }
    Ok(())
}

/// The real router (REST, `/mcp`, the proxy) served on a free loopback port with TCP_NODELAY,
/// as `kernelbox serve` would serve it.
pub(crate) struct LoopbackServer {
    /// `http://127.0.0.1:port`
    pub(crate) base: String,
    shutdown: tokio_util::sync::CancellationToken,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl LoopbackServer {
    pub(crate) async fn start(
        engine: &std::sync::Arc<kernelbox::engine::Engine>,
    ) -> anyhow::Result<Self> {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let router = kernelbox::http::server::app(
            engine.clone(),
            &kernelbox::http::server::HttpConfig {
                shutdown: shutdown.clone(),
                ..Default::default()
            },
        )?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let listener = axum::serve::ListenerExt::tap_io(listener, |stream| {
            let _ = stream.set_nodelay(true);
        });
        let stop = shutdown.clone();
        let server = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        });
        Ok(Self {
            base,
            shutdown,
            server,
        })
    }

    /// Ends MCP sessions and the listener, and waits for it.
    pub(crate) async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.server.await;
    }
}
