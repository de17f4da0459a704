//! What operators see of a running server: its logs (plain when captured, JSON on request, with
//! the request id, tenant and sandbox id) and its readiness probe.

use std::time::Duration;

use serde_json::{Value, json};

use crate::cli::docker_available;
use crate::common::{ServerLog, ensure_image, remove_instance_containers, start_server_with_log};

fn unique_instance(name: &str) -> String {
    format!(
        "test-{name}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Removes the instance's containers when the test ends, however it ends.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        remove_instance_containers(&self.0);
    }
}

/// Creates a sandbox, runs code in it and destroys it over REST, with `request_id` on every
/// request; returns the sandbox id.
async fn sandbox_round_trip(port: u16, key: &str, request_id: &str) -> String {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client");
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let created = client
        .post(url("/containers"))
        .header("x-api-key", key)
        .header("x-request-id", request_id)
        .json(&json!({}))
        .send()
        .await
        .expect("create");
    assert_eq!(created.status(), 201);
    assert_eq!(
        created.headers().get("x-request-id").map(|v| v.as_bytes()),
        Some(request_id.as_bytes()),
        "the client's request id comes back"
    );
    let created: Value = created.json().await.expect("json");
    let id = created["id"].as_str().expect("id").to_string();
    let executed = client
        .post(url(&format!("/containers/{id}/execute")))
        .header("x-api-key", key)
        .header("x-request-id", request_id)
        .json(&json!({"code": "import sys\nprint('to stderr', file=sys.stderr)\nraise ValueError('boom')"}))
        .send()
        .await
        .expect("execute");
    assert_eq!(executed.status(), 200);
    // A request without an id gets a fresh uuid.
    let destroyed = client
        .delete(url(&format!("/containers/{id}")))
        .header("x-api-key", key)
        .send()
        .await
        .expect("destroy");
    assert!(destroyed.status().is_success(), "{}", destroyed.status());
    let generated = destroyed
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("a generated request id");
    assert!(uuid::Uuid::parse_str(generated).is_ok(), "{generated}");
    id
}

/// Waits until the log holds a line containing `needle` (the server logs after it answers).
async fn wait_for_line(log: &ServerLog, needle: &str) {
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if log.lock().expect("log").iter().any(|l| l.contains(needle)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        found.is_ok(),
        "no {needle:?} in {:?}",
        log.lock().expect("log")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn piped_logs_are_plain_text_without_escape_bytes() {
    if !docker_available() {
        return;
    }
    ensure_image(&crate::common::sandbox_image());
    let instance = unique_instance("plainlog");
    let _cleanup = Cleanup(instance.clone());
    // stderr is a pipe here; debug makes the server log every request too.
    let (mut server, port, log) = start_server_with_log(
        &instance,
        &["--api-key", "plain-key", "--log", "info,kernelbox=debug"],
        &[("KERNELBOX_LOG_FORMAT", "text")],
    )
    .await;
    let id = sandbox_round_trip(port, "plain-key", "plain-req-1").await;
    wait_for_line(&log, "sandbox destroyed").await;
    server.kill().await.expect("kill");
    let lines = log.lock().expect("log").clone();
    assert!(lines.iter().any(|line| line.contains(&id)), "{lines:?}");
    assert!(
        lines.iter().any(|line| line.contains("plain-req-1")),
        "{lines:?}"
    );
    for line in &lines {
        assert!(!line.contains('\u{1b}'), "an escape byte in {line:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_parse_and_carry_request_tenant_and_sandbox() {
    if !docker_available() {
        return;
    }
    ensure_image(&crate::common::sandbox_image());
    let instance = unique_instance("jsonlog");
    let _cleanup = Cleanup(instance.clone());
    let (mut server, port, log) = start_server_with_log(
        &instance,
        &[
            "--api-key",
            "json-key",
            "--log",
            "info,kernelbox=debug",
            "--log-format",
            "json",
        ],
        &[],
    )
    .await;
    let id = sandbox_round_trip(port, "json-key", "json-req-1").await;
    wait_for_line(&log, "sandbox destroyed").await;
    server.kill().await.expect("kill");
    let lines = log.lock().expect("log").clone();
    let parsed: Vec<Value> = lines
        .iter()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
        })
        .collect();
    for line in &parsed {
        assert!(
            line["timestamp"].is_string() && line["level"].is_string(),
            "{line}"
        );
        assert!(line["message"].is_string(), "{line}");
    }
    // The field, on the event or on one of the spans it happened in.
    let field = |line: &Value, name: &str| -> Option<String> {
        if let Some(value) = line[name].as_str() {
            return Some(value.to_string());
        }
        line["spans"]
            .as_array()?
            .iter()
            .rev()
            .find_map(|span| span[name].as_str().map(str::to_string))
    };
    // Every line a request for this sandbox caused carries its id, the request id and the
    // tenant; and the sandbox's lifecycle lines carry the id.
    let ours: Vec<&Value> = parsed
        .iter()
        .filter(|line| field(line, "request_id").as_deref() == Some("json-req-1"))
        .collect();
    assert!(ours.len() >= 2, "too few lines of the request: {lines:?}");
    let tenant = field(ours[0], "tenant").expect("a tenant");
    assert!(tenant.starts_with("key_"), "{tenant}");
    for line in &ours {
        assert_eq!(
            field(line, "tenant").as_deref(),
            Some(tenant.as_str()),
            "{line}"
        );
        let path = field(line, "path").unwrap_or_default();
        if path.starts_with("/containers/") {
            assert_eq!(
                field(line, "sandbox_id").as_deref(),
                Some(id.as_str()),
                "{line}"
            );
        }
    }
    for message in ["sandbox ready", "sandbox destroyed"] {
        let line = parsed
            .iter()
            .find(|line| line["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} line in {lines:?}"));
        assert_eq!(
            field(line, "sandbox_id").as_deref(),
            Some(id.as_str()),
            "{line}"
        );
    }
}
