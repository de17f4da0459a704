//! The MCP face end to end: the official MCP Python SDK (tests/mcp/scenarios.py) drives
//! `kernelbox stdio` and the `/mcp` route of the real router over real HTTP, against real Docker.

use std::time::Duration;

use serde_json::Value;

use crate::common::{TestEngine, TestServer, container_exists, curl, run_scenario};

/// Runs one scenario (ten minutes at most) and returns its facts.
async fn scenario(args: &[&str]) -> Value {
    run_scenario(args, Duration::from_secs(600)).await
}

fn mcp_url(server: &TestServer) -> String {
    server.url("/mcp")
}

fn stdio_command(instance: &str) -> Vec<String> {
    [
        env!("CARGO_BIN_EXE_kernelbox"),
        "stdio",
        "--instance",
        instance,
        "--no-image-build",
    ]
    .map(String::from)
    .to_vec()
}

async fn stdio_scenario(name: &str, mode: &str) {
    let Some(t) = TestEngine::start(name).await else {
        return;
    };
    let command = stdio_command(t.instance());
    let mut args = vec!["stdio", mode];
    args.extend(command.iter().map(String::as_str));
    let facts = scenario(&args).await;
    let session_id = facts["session_id"].as_str().expect("session id");
    assert!(
        facts["next_call_after_cancel_s"].as_f64().expect("seconds") < 1.0,
        "{facts}"
    );
    // The client closed stdin: the connection's default sandbox is gone.
    assert!(
        !container_exists(session_id),
        "the default sandbox outlived its stdio connection"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stdio_legacy_handshake() {
    stdio_scenario("mcp-stdio-legacy", "legacy").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stdio_default_mode() {
    stdio_scenario("mcp-stdio-auto", "auto").await;
}

/// 10,000 consecutive `print(1+1)` calls: none may lose its output to the race between
/// `execute_reply` and the iopub `idle` status.
#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_calls_lose_no_output() {
    let Some(t) = TestEngine::start("mcp-stress").await else {
        return;
    };
    let command = stdio_command(t.instance());
    let mut args = vec!["stress", "10000"];
    args.extend(command.iter().map(String::as_str));
    let facts = scenario(&args).await;
    assert_eq!(facts["lost"], 0, "{facts}");
    assert_eq!(facts["calls"], 10000);
}

#[tokio::test(flavor = "multi_thread")]
async fn http_legacy_sessions_share_the_tenant_default_and_create_session_isolates() {
    let Some(server) = TestServer::start("mcp-http-legacy", &[]).await else {
        return;
    };
    let facts = scenario(&["http-legacy", &mcp_url(&server)]).await;
    // Ending both MCP sessions (HTTP DELETE) left the tenant's default sandbox, and the one
    // create_session made, in place.
    for key in ["default", "isolated"] {
        assert!(container_exists(facts[key].as_str().expect("id")), "{key}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn http_stateless_sessions_tools_and_resources() {
    let Some(server) = TestServer::start("mcp-http-stateless", &[]).await else {
        return;
    };
    let facts = scenario(&["http-stateless", &mcp_url(&server)]).await;
    for id in facts["closed"].as_array().expect("closed ids") {
        assert!(!container_exists(id.as_str().expect("id")));
    }
}

const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"curl","version":"1"}}}"#;

#[tokio::test(flavor = "multi_thread")]
async fn http_endpoint_checks_key_origin_and_host() {
    let Some(server) = TestServer::start("mcp-http-guard", &["secret-one"]).await else {
        return;
    };
    let url = mcp_url(&server);
    let post = |extra: &[&str]| {
        let mut args = vec![
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-H",
            "accept: application/json, text/event-stream",
            "--data",
            INITIALIZE,
        ];
        args.extend_from_slice(extra);
        args.push(&url);
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>| async move {
        {
            let (status, _headers, body) =
                curl(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
            (status, body)
        }
    };

    let (status, body) = run(post(&[])).await;
    assert_eq!(status, 401, "{body}");
    let error: Value = serde_json::from_str(&body).expect("JSON error body");
    assert_eq!(error["error"]["code"], "unauthorized");

    let (status, _) = run(post(&["-H", "x-api-key: wrong"])).await;
    assert_eq!(status, 401);

    let (status, body) = run(post(&["-H", "authorization: Bearer secret-one"])).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("kernelbox"), "{body}");

    let (status, body) = run(post(&[
        "-H",
        "x-api-key: secret-one",
        "-H",
        "origin: http://evil.example",
    ]))
    .await;
    assert_eq!(status, 403, "a foreign Origin was accepted: {body}");

    let (status, _) = run(post(&[
        "-H",
        "x-api-key: secret-one",
        "-H",
        "origin: http://localhost:6274",
    ]))
    .await;
    assert_eq!(status, 200, "MCP Inspector's origin is refused");

    let (status, _) = run(post(&[
        "-H",
        "x-api-key: secret-one",
        "-H",
        "host: evil.example",
    ]))
    .await;
    assert_eq!(status, 403, "a foreign Host was accepted (DNS rebinding)");
}

#[tokio::test(flavor = "multi_thread")]
async fn http_tenants_cannot_reach_each_others_sessions() {
    let Some(server) = TestServer::start("mcp-http-tenants", &["key-one", "key-two"]).await else {
        return;
    };
    let facts = scenario(&["http-tenants", &mcp_url(&server), "key-one", "key-two"]).await;
    assert!(!container_exists(facts["owned"].as_str().expect("id")));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_the_same_code_and_message_over_mcp_and_rest() {
    let Some(server) = TestServer::start("mcp-bad-input", &[]).await else {
        return;
    };
    let mcp = scenario(&["bad-input", &mcp_url(&server)]).await;

    let rest_error = |response: reqwest::Response| async move {
        let status = response.status();
        let body: Value = response.json().await.expect("JSON error body");
        (
            status,
            body["error"]["code"].as_str().map(String::from),
            body["error"]["message"].as_str().map(String::from),
        )
    };
    let image = server
        .post("/containers")
        .json(&serde_json::json!({"image": "kernelbox-no-such-image:latest"}))
        .send()
        .await
        .expect("create");
    let (status, code, message) = rest_error(image).await;
    assert_eq!(status, 422);
    assert_eq!(code.as_deref(), mcp["image"].as_str());
    assert_eq!(message.as_deref(), mcp["image_message"].as_str());

    let created: Value = server
        .post("/containers")
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("container");
    let id = created["id"].as_str().expect("id");
    let nul = server
        .post(&format!("/containers/{id}/commands"))
        .json(&serde_json::json!({"cmd": "echo a\u{0}b"}))
        .send()
        .await
        .expect("command");
    let (status, code, message) = rest_error(nul).await;
    assert_eq!(status, 422);
    assert_eq!(code.as_deref(), mcp["nul_command"].as_str());
    assert_eq!(message.as_deref(), mcp["nul_message"].as_str());

    let path = server
        .get(&format!("/containers/{id}/files/..%2F..%2Fetc%2Fpasswd"))
        .send()
        .await
        .expect("read");
    let (status, code, message) = rest_error(path).await;
    assert_eq!(status, 400);
    assert_eq!(code.as_deref(), mcp["path"].as_str());
    assert_eq!(message.as_deref(), mcp["path_message"].as_str());
    assert_eq!(mcp["image"], "invalid_request", "{mcp}");
    assert_eq!(mcp["nul_command"], "invalid_request", "{mcp}");
    assert_eq!(mcp["path"], "path_outside_workspace", "{mcp}");
    // A model may narrow the server's egress policy, never widen it.
    assert_eq!(mcp["widen"], "network_not_allowed", "{mcp}");
    assert!(
        mcp["widen_message"]
            .as_str()
            .is_some_and(|message| message.contains("10.1.2.3")),
        "{mcp}"
    );
}
