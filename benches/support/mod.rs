//! Helpers shared by the benchmarks: percentiles, and a raw kernel round trip that bypasses the
//! engine (the floor every face is measured against).

#![allow(dead_code)]

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
