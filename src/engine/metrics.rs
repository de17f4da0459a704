//! The engine's counters, rendered for `GET /metrics` in the Prometheus (OpenMetrics) text
//! format: live sandboxes, executions by outcome, and execution and sandbox-creation durations.
//! Every face's executions count, since the engine records them where they end.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::admission::StartQueueState;
use super::execution::ExecutionOutcome;
use crate::kernel::KernelCounters;

/// Bucket bounds in seconds: 5 ms to about 10 minutes.
const EXECUTION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0, 600.0,
];
/// Bucket bounds in seconds for creating a sandbox (container start + kernel ready).
const CREATE_BUCKETS: [f64; 10] = [0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// The engine's metrics.
pub struct EngineMetrics {
    registry: Registry,
    live_sandboxes: Gauge,
    spooled_bytes: Gauge,
    starts_in_progress: Gauge,
    starts_waiting: Gauge,
    warm_pool_ready: Gauge,
    executions: Family<OutcomeLabels, Counter>,
    execution_seconds: Histogram,
    creations: Family<ResultLabels, Counter>,
    create_seconds: Histogram,
    /// Counted by every kernel connection; read into `rejected` when rendering.
    kernel_counters: Arc<KernelCounters>,
    rejected: Family<ReasonLabels, Counter>,
    violations: Counter,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

impl EngineMetrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("kernelbox");
        let live_sandboxes = Gauge::default();
        let spooled_bytes = Gauge::default();
        registry.register(
            "upload_spool_bytes",
            "Bytes that uploads in progress hold in temporary files",
            spooled_bytes.clone(),
        );
        let starts_in_progress = Gauge::default();
        registry.register(
            "sandbox_starts_in_progress",
            "Sandboxes starting now, from container start until the kernel answers (at most --max-concurrent-starts)",
            starts_in_progress.clone(),
        );
        let starts_waiting = Gauge::default();
        registry.register(
            "sandbox_starts_waiting",
            "Creates waiting for their turn to start a sandbox",
            starts_waiting.clone(),
        );
        let warm_pool_ready = Gauge::default();
        registry.register(
            "warm_pool_ready",
            "Warm-pool sandboxes started and waiting to be claimed (--warm-pool)",
            warm_pool_ready.clone(),
        );
        let executions = Family::<OutcomeLabels, Counter>::default();
        let execution_seconds = Histogram::new(EXECUTION_BUCKETS);
        let creations = Family::<ResultLabels, Counter>::default();
        let create_seconds = Histogram::new(CREATE_BUCKETS);
        registry.register("sandboxes", "Live sandboxes", live_sandboxes.clone());
        registry.register(
            "executions",
            "Finished executions by outcome (completed, failed, timeout, cancelled, kernel_died)",
            executions.clone(),
        );
        registry.register(
            "execution_duration_seconds",
            "Execution wall time, from start to the last output",
            execution_seconds.clone(),
        );
        registry.register(
            "sandbox_creations",
            "Sandbox creations by result (ok, error)",
            creations.clone(),
        );
        registry.register(
            "sandbox_create_duration_seconds",
            "Time to create a sandbox until its kernel answers",
            create_seconds.clone(),
        );
        let violations = Counter::default();
        registry.register(
            "kernel_violations",
            "Kernel connections closed because the kernel broke the protocol or its bounds (the sandbox was restarted)",
            violations.clone(),
        );
        let rejected = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "kernel_messages_rejected",
            "Kernel messages dropped because they were not signed with the kernel's key (bad_signature) or did not parse (malformed)",
            rejected.clone(),
        );
        Self {
            kernel_counters: Arc::default(),
            rejected,
            violations,
            registry,
            live_sandboxes,
            spooled_bytes,
            starts_in_progress,
            starts_waiting,
            warm_pool_ready,
            executions,
            execution_seconds,
            creations,
            create_seconds,
        }
    }

    pub(crate) fn execution_finished(&self, outcome: &ExecutionOutcome, took: Duration) {
        let outcome = match outcome {
            ExecutionOutcome::KernelDied { .. } => "kernel_died",
            other => other.status(),
        };
        self.executions
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        self.execution_seconds.observe(took.as_secs_f64());
    }

    pub(crate) fn sandbox_created(&self, took: Duration) {
        self.creations
            .get_or_create(&ResultLabels { result: "ok" })
            .inc();
        self.create_seconds.observe(took.as_secs_f64());
    }

    pub(crate) fn sandbox_create_failed(&self) {
        self.creations
            .get_or_create(&ResultLabels { result: "error" })
            .inc();
    }

    /// The counters every kernel connection adds to.
    pub(crate) fn kernel_counters(&self) -> Arc<KernelCounters> {
        self.kernel_counters.clone()
    }

    /// The text exposition, with `live` as the current number of sandboxes.
    pub(crate) fn render(
        &self,
        live: usize,
        spooled_bytes: u64,
        starts: StartQueueState,
        warm_pool_ready: usize,
    ) -> String {
        self.live_sandboxes.set(live as i64);
        self.warm_pool_ready.set(warm_pool_ready as i64);
        self.starts_in_progress.set(starts.starting as i64);
        self.starts_waiting.set(starts.waiting as i64);
        self.spooled_bytes
            .set(i64::try_from(spooled_bytes).unwrap_or(i64::MAX));
        for (reason, counter) in [
            ("bad_signature", &self.kernel_counters.bad_signature),
            ("malformed", &self.kernel_counters.malformed),
        ] {
            let family = self.rejected.get_or_create(&ReasonLabels { reason });
            let seen = counter.load(Ordering::Relaxed);
            family.inc_by(seen.saturating_sub(family.get()));
        }
        let violations = self.kernel_counters.violations.load(Ordering::Relaxed);
        self.violations
            .inc_by(violations.saturating_sub(self.violations.get()));
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_and_durations_are_rendered() {
        let metrics = EngineMetrics::new();
        metrics.execution_finished(&ExecutionOutcome::Completed, Duration::from_millis(3));
        metrics.execution_finished(
            &ExecutionOutcome::KernelDied {
                out_of_memory: true,
            },
            Duration::from_secs(2),
        );
        metrics.sandbox_created(Duration::from_millis(700));
        let text = metrics.render(3, 0, super::StartQueueState::default(), 0);
        assert!(text.contains("kernelbox_sandboxes 3"), "{text}");
        assert!(text.contains(r#"kernelbox_executions_total{outcome="completed"} 1"#));
        assert!(text.contains(r#"kernelbox_executions_total{outcome="kernel_died"} 1"#));
        assert!(text.contains("kernelbox_execution_duration_seconds_count 2"));
        assert!(text.contains(r#"kernelbox_execution_duration_seconds_bucket{le="0.005"} 1"#));
        assert!(text.contains("kernelbox_sandbox_create_duration_seconds_count 1"));
        assert!(text.contains(r#"kernelbox_sandbox_creations_total{result="ok"} 1"#));
        assert!(text.ends_with("# EOF\n"));
    }
}
