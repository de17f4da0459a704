//! An exec's exit code once its output has ended, even when the attached connection closed before
//! the process exited.
//!
//! The Docker API closes an exec's stream only after the process and its streams are done, and
//! then `exec inspect` has the exit code. A relay in front of a remote API need not wait that
//! long: `socat`, for one, closes both directions half a second after the client half-closes
//! stdin, while the process may still be working. Then the exec still runs when it is inspected,
//! and the server waits for its `exec_die` event rather than guess an exit code.

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::EventsOptionsBuilder;
use futures::StreamExt;

use super::api_error::classify;
use crate::backend::BackendError;

/// How far back the event subscription reaches: the exec may have exited between the inspect and
/// the subscription, and a remote Docker host's clock need not match ours.
const EVENT_LOOKBACK_SECS: u64 = 300;

/// The exit code of `exec_id` in `container_id`, waiting up to `deadline` for a process that is
/// still running; `-1` when Docker reports none (an exec that never started).
pub(super) async fn exit_code(
    docker: &Docker,
    container_id: &str,
    exec_id: &str,
    deadline: Duration,
) -> Result<i64, BackendError> {
    tokio::time::timeout(deadline, wait_for_exit(docker, container_id, exec_id))
        .await
        .map_err(|_| BackendError::Timeout {
            operation: "exec exit",
            waited: deadline,
        })?
}

async fn wait_for_exit(
    docker: &Docker,
    container_id: &str,
    exec_id: &str,
) -> Result<i64, BackendError> {
    let inspect = docker
        .inspect_exec(exec_id)
        .await
        .map_err(|error| classify("exec inspect", "container", error))?;
    if inspect.running != Some(true) {
        return Ok(inspect.exit_code.unwrap_or(-1));
    }
    tracing::debug!(
        exec_id,
        "the exec's stream ended before the process exited; waiting for its exit event"
    );
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|now| now.as_secs().saturating_sub(EVENT_LOOKBACK_SECS))
        .unwrap_or_default()
        .to_string();
    let filters = HashMap::from([
        ("type", vec!["container"]),
        ("container", vec![container_id]),
        ("event", vec!["exec_die"]),
    ]);
    let mut events = docker.events(Some(
        EventsOptionsBuilder::default()
            .since(&since)
            .filters(&filters)
            .build(),
    ));
    while let Some(event) = events.next().await {
        let event = event.map_err(|error| classify("exec exit event", "container", error))?;
        let attributes = event.actor.and_then(|actor| actor.attributes);
        let Some(attributes) = attributes else {
            continue;
        };
        if attributes.get("execID").map(String::as_str) != Some(exec_id) {
            continue;
        }
        let inspect = docker
            .inspect_exec(exec_id)
            .await
            .map_err(|error| classify("exec inspect", "container", error))?;
        let from_event = attributes
            .get("exitCode")
            .and_then(|code| code.parse::<i64>().ok());
        return Ok(inspect.exit_code.or(from_event).unwrap_or(-1));
    }
    Err(BackendError::Failed {
        operation: "exec exit",
        source: "the Docker event stream ended before the exec exited".into(),
    })
}
