//! Readiness: whether this engine can take new work now (Docker answers, the sandbox image is
//! there, no shutdown under way). Cheap and bounded: the check has a deadline and its answer is
//! kept for a moment, so a probe every second costs Docker one ping and one inspect every few.

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::error::EngineError;

/// How long one check may take, Docker's two calls together.
const CHECK_DEADLINE: Duration = Duration::from_secs(2);

/// How long a check's answer is given again without asking Docker.
const CACHE_FOR: Duration = Duration::from_secs(2);

/// Why the engine is not ready.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NotReady {
    /// Docker did not answer (in time).
    DockerUnreachable,
    /// The sandbox image is missing or outdated.
    ImageMissing,
    /// A shutdown is under way.
    ShuttingDown,
}

/// The answer to a readiness check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// `None` when ready.
    pub not_ready: Option<NotReady>,
    /// What an operator reads: the reason, with the image or Docker's error.
    pub message: String,
}

impl Readiness {
    fn ready() -> Self {
        Self {
            not_ready: None,
            message: "ready".into(),
        }
    }

    fn not(reason: NotReady, message: String) -> Self {
        Self {
            not_ready: Some(reason),
            message,
        }
    }

    pub fn is_ready(&self) -> bool {
        self.not_ready.is_none()
    }
}

/// The last answer and when it was found.
#[derive(Debug, Default)]
pub(super) struct ReadinessCache {
    last: tokio::sync::Mutex<Option<(Instant, Readiness)>>,
}

impl ReadinessCache {
    /// The answer to a readiness check: `shutting_down` first, then the last answer if it is
    /// recent, else `check` run within the deadline (one at a time: concurrent probes wait for
    /// it and share its answer).
    pub(super) async fn get(
        &self,
        shutting_down: bool,
        check: impl Future<Output = Result<(), EngineError>>,
    ) -> Readiness {
        if shutting_down {
            return Readiness::not(NotReady::ShuttingDown, "the server is shutting down".into());
        }
        let mut last = self.last.lock().await;
        if let Some((at, answer)) = last.as_ref()
            && at.elapsed() < CACHE_FOR
        {
            return answer.clone();
        }
        let answer = Readiness::from_check(tokio::time::timeout(CHECK_DEADLINE, check).await);
        *last = Some((Instant::now(), answer.clone()));
        answer
    }
}

impl Readiness {
    fn from_check(checked: Result<Result<(), EngineError>, tokio::time::error::Elapsed>) -> Self {
        match checked {
            Ok(Ok(())) => Readiness::ready(),
            Ok(Err(EngineError::ImageMissing { image })) => Readiness::not(
                NotReady::ImageMissing,
                format!(
                    "the sandbox image {image} is missing or outdated; run `kernelbox image build --offline` (or `kernelbox image build` where a registry is reachable)"
                ),
            ),
            Ok(Err(error)) => Readiness::not(
                NotReady::DockerUnreachable,
                format!("Docker is not reachable: {error}"),
            ),
            Err(_) => Readiness::not(
                NotReady::DockerUnreachable,
                format!(
                    "Docker did not answer within {} s",
                    CHECK_DEADLINE.as_secs()
                ),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shutting_down_wins_and_answers_are_reused_briefly() {
        let cache = ReadinessCache::default();
        let down = cache.get(true, async { Ok(()) }).await;
        assert_eq!(down.not_ready, Some(NotReady::ShuttingDown));
        let missing = cache
            .get(false, async {
                Err(EngineError::ImageMissing {
                    image: "img:1".into(),
                })
            })
            .await;
        assert_eq!(missing.not_ready, Some(NotReady::ImageMissing));
        assert!(missing.message.contains("kernelbox image build --offline"));
        // Within the cache time the check is not run again.
        let again = cache.get(false, async { Ok(()) }).await;
        assert_eq!(again, missing);
    }

    #[tokio::test(start_paused = true)]
    async fn a_check_that_hangs_is_cut_at_the_deadline() {
        let cache = ReadinessCache::default();
        let answer = cache.get(false, std::future::pending()).await;
        assert_eq!(answer.not_ready, Some(NotReady::DockerUnreachable));
    }
}
