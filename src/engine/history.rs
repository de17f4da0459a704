//! Recent executions, so a caller can look one up by id after it ended (REST
//! `GET /executions/{id}`, MCP resource links to large images).
//!
//! The log is bounded twice: by the number of executions and by the bytes their results hold.
//! The oldest finished executions are forgotten first; running ones are always kept.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};

use super::execution::ExecutionResult;
use super::tenant::Tenant;
use crate::json_budget::value_footprint;

/// One execution as the log knows it.
#[derive(Debug, Clone)]
pub struct ExecutionRecord {
    pub execution_id: String,
    pub sandbox_id: String,
    pub tenant: Tenant,
    pub started_at: DateTime<Utc>,
    /// `None` while the execution runs.
    pub result: Option<Arc<ExecutionResult>>,
}

/// A bounded log of recent executions.
pub(crate) struct ExecutionHistory {
    max_entries: usize,
    max_bytes: usize,
    inner: Mutex<Entries>,
    /// Bumped whenever an execution finishes, so a caller can wait for one to end.
    finished: tokio::sync::watch::Sender<u64>,
}

#[derive(Default)]
struct Entries {
    records: VecDeque<ExecutionRecord>,
    bytes: usize,
}

impl ExecutionHistory {
    pub(crate) fn new(max_entries: usize, max_bytes: usize) -> Self {
        Self {
            max_entries: max_entries.max(1),
            max_bytes,
            inner: Mutex::new(Entries::default()),
            finished: tokio::sync::watch::Sender::new(0),
        }
    }

    fn entries(&self) -> MutexGuard<'_, Entries> {
        // A panic while holding this lock cannot leave the log inconsistent in a way that
        // matters (at worst a size estimate is off), so a poisoned lock is used as is.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records an execution that just started.
    pub(crate) fn started(&self, record: ExecutionRecord) {
        let mut entries = self.entries();
        entries.records.push_back(record);
        self.evict(&mut entries);
    }

    /// Records the result of an execution.
    pub(crate) fn finished(&self, result: Arc<ExecutionResult>) {
        self.record_result(result);
        self.finished.send_modify(|count| *count += 1);
    }

    fn record_result(&self, result: Arc<ExecutionResult>) {
        let mut entries = self.entries();
        let size = approximate_size(&result);
        if let Some(record) = entries
            .records
            .iter_mut()
            .rev()
            .find(|record| record.execution_id == result.execution_id)
        {
            record.result = Some(result);
            entries.bytes += size;
        }
        self.evict(&mut entries);
    }

    /// The execution with this id, if it is still remembered.
    pub(crate) fn get(&self, execution_id: &str) -> Option<ExecutionRecord> {
        self.entries()
            .records
            .iter()
            .rev()
            .find(|record| record.execution_id == execution_id)
            .cloned()
    }

    /// Waits until the execution with this id has a result and returns it; `None` when it is
    /// not (or no longer) remembered.
    pub(crate) async fn wait_finished(&self, execution_id: &str) -> Option<ExecutionRecord> {
        let mut finished = self.finished.subscribe();
        loop {
            finished.mark_unchanged();
            let record = self.get(execution_id)?;
            if record.result.is_some() {
                return Some(record);
            }
            // The sender lives as long as the log, so this only waits.
            if finished.changed().await.is_err() {
                return None;
            }
        }
    }

    /// Forgets finished executions until the log is within its bounds: the oldest of the
    /// tenant that holds the most, so that one tenant's many executions push out its own
    /// results, not another's (a result a caller still means to poll).
    fn evict(&self, entries: &mut Entries) {
        while entries.records.len() > self.max_entries || entries.bytes > self.max_bytes {
            let mut finished: std::collections::HashMap<&Tenant, usize> =
                std::collections::HashMap::new();
            for record in entries
                .records
                .iter()
                .filter(|record| record.result.is_some())
            {
                *finished.entry(&record.tenant).or_insert(0) += 1;
            }
            let Some(heaviest) = finished
                .into_iter()
                .max_by_key(|(_, count)| *count)
                .map(|(tenant, _)| tenant.clone())
            else {
                return;
            };
            let Some(position) = entries
                .records
                .iter()
                .position(|record| record.result.is_some() && record.tenant == heaviest)
            else {
                return;
            };
            if let Some(record) = entries.records.remove(position) {
                entries.bytes = entries
                    .bytes
                    .saturating_sub(record.result.as_deref().map_or(0, approximate_size));
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries().records.len()
    }
}

/// The bytes a result holds, near enough for a memory bound.
fn approximate_size(result: &ExecutionResult) -> usize {
    let outputs: usize = result
        .outputs
        .iter()
        .flat_map(|output| output.data.iter())
        .map(|(mime, value)| mime.len() + value_footprint(value))
        .sum();
    let error = result.error.as_ref().map_or(0, |error| {
        error.ename.len()
            + error.evalue.len()
            + error.traceback.iter().map(String::len).sum::<usize>()
    });
    256 + result.stdout.len() + result.stderr.len() + outputs + error
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::execution::ExecutionOutcome;

    fn record(id: &str) -> ExecutionRecord {
        ExecutionRecord {
            execution_id: id.into(),
            sandbox_id: "sbx_test".into(),
            tenant: Tenant::Local,
            started_at: Utc::now(),
            result: None,
        }
    }

    fn result(id: &str, stdout_bytes: usize) -> Arc<ExecutionResult> {
        Arc::new(ExecutionResult {
            execution_id: id.into(),
            sandbox_id: "sbx_test".into(),
            outcome: ExecutionOutcome::Completed,
            stdout: "x".repeat(stdout_bytes),
            stderr: String::new(),
            outputs: Vec::new(),
            error: None,
            execution_count: Some(1),
            started_at: Utc::now(),
            duration_ms: 1,
            truncated: false,
        })
    }

    #[test]
    fn a_result_of_countless_tiny_values_counts_what_it_holds() {
        let mut data = serde_json::Map::new();
        data.insert(
            "application/json".into(),
            serde_json::Value::Array(vec![serde_json::json!([]); 100_000]),
        );
        let mut tiny = (*result("a", 0)).clone();
        tiny.outputs.push(crate::engine::execution::Output {
            kind: crate::engine::execution::OutputKind::Display,
            data,
        });
        // 300 KB as text, 3.2 MB parsed: it counted as 64 bytes.
        assert!(approximate_size(&tiny) >= 100_000 * 32);
    }

    #[test]
    fn finished_results_are_found_by_id() {
        let history = ExecutionHistory::new(8, 1 << 20);
        history.started(record("a"));
        assert!(history.get("a").expect("running").result.is_none());
        history.finished(result("a", 3));
        assert_eq!(
            history
                .get("a")
                .expect("finished")
                .result
                .expect("result")
                .stdout,
            "xxx"
        );
        assert!(history.get("b").is_none());
    }

    #[test]
    fn the_oldest_finished_executions_go_first() {
        let history = ExecutionHistory::new(2, 1 << 20);
        history.started(record("running"));
        for id in ["a", "b", "c"] {
            history.started(record(id));
            history.finished(result(id, 1));
        }
        assert_eq!(history.len(), 2);
        assert!(
            history.get("running").is_some(),
            "running executions are kept"
        );
        assert!(history.get("c").is_some());
        assert!(history.get("a").is_none());
    }

    #[tokio::test]
    async fn a_waiter_wakes_when_its_execution_finishes() {
        let history = Arc::new(ExecutionHistory::new(8, 1 << 20));
        history.started(record("a"));
        history.started(record("b"));
        let waiter = tokio::spawn({
            let history = history.clone();
            async move { history.wait_finished("a").await }
        });
        history.finished(result("b", 1));
        history.finished(result("a", 2));
        let record = waiter.await.expect("join").expect("remembered");
        assert_eq!(record.result.expect("result").stdout, "xx");
        assert!(history.wait_finished("unknown").await.is_none());
    }

    #[test]
    fn a_tenant_that_runs_many_executions_pushes_out_its_own_results() {
        let history = ExecutionHistory::new(4, 1 << 20);
        let mut kept = record("kept");
        kept.tenant = Tenant::Key("key_aaaaaaaaaaaaaaaa".into());
        history.started(kept);
        history.finished(result("kept", 1));
        for index in 0..20 {
            let id = format!("flood-{index}");
            history.started(record(&id));
            history.finished(result(&id, 1));
        }
        assert!(
            history.get("kept").is_some(),
            "another tenant's flood evicted it"
        );
        assert_eq!(history.len(), 4);
        assert!(history.get("flood-19").is_some());
        assert!(history.get("flood-0").is_none());
    }

    #[test]
    fn the_byte_bound_holds() {
        let history = ExecutionHistory::new(100, 10_000);
        for id in ["a", "b", "c"] {
            history.started(record(id));
            history.finished(result(id, 4_000));
        }
        assert!(history.get("a").is_none());
        assert!(history.get("b").is_some());
        assert!(history.get("c").is_some());
    }
}
