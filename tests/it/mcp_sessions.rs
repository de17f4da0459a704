//! MCP session ids are bound to the tenant that opened them, attacked over raw HTTP: a second
//! tenant holding the first one's `Mcp-Session-Id` tries GET (resuming with `Last-Event-ID`),
//! POST and DELETE while the first tenant's execution streams a secret.

use std::time::Duration;

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::TestServer;

const PROTOCOL: &str = "2025-06-18";
const SECRET: &str = "alice-secret-7f3a";

pub(crate) fn mcp_post(
    server: &TestServer,
    key: &str,
    session: Option<&str>,
    body: &Value,
) -> reqwest::RequestBuilder {
    let mut request = server
        .post("/mcp")
        .header("x-api-key", key)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", PROTOCOL)
        .json(body);
    if let Some(session) = session {
        request = request.header("mcp-session-id", session);
    }
    request
}

/// Opens a legacy session for `key` and returns its id.
pub(crate) async fn open_session(server: &TestServer, key: &str) -> String {
    let initialize = json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": PROTOCOL, "capabilities": {},
                   "clientInfo": {"name": "session-test", "version": "1"}}
    });
    let response = mcp_post(server, key, None, &initialize)
        .send()
        .await
        .expect("initialize");
    assert_eq!(response.status(), StatusCode::OK);
    let session = response
        .headers()
        .get("mcp-session-id")
        .and_then(|value| value.to_str().ok())
        .expect("a session id")
        .to_string();
    let _ = response.text().await;
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let response = mcp_post(server, key, Some(&session), &initialized)
        .send()
        .await
        .expect("initialized");
    assert!(response.status().is_success(), "{}", response.status());
    session
}

pub(crate) fn execute(id: u64, code: &str) -> Value {
    json!({
        "jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": "execute_code", "arguments": {"code": code},
                   "_meta": {"progressToken": format!("p{id}")}}
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn another_tenant_gets_404_for_a_session_id_on_every_method() {
    let Some(server) = TestServer::start("mcp-session-owner", &["alice", "bob"]).await else {
        return;
    };
    let session = open_session(&server, "alice").await;
    // Alice's execution prints the secret over a few seconds, streamed as progress.
    let code = format!(
        "import time\nfor i in range(6):\n    print('{SECRET}', i, flush=True)\n    time.sleep(0.5)"
    );
    let alice_stream = mcp_post(&server, "alice", Some(&session), &execute(2, &code))
        .send()
        .await
        .expect("alice's call");
    assert_eq!(alice_stream.status(), StatusCode::OK);
    let alice = tokio::spawn(async move {
        let mut body = alice_stream.bytes_stream();
        let mut seen = Vec::new();
        while let Some(chunk) = body.next().await {
            seen.extend_from_slice(&chunk.expect("chunk"));
        }
        String::from_utf8_lossy(&seen).into_owned()
    });

    // Bob, holding Alice's session id, while her stream is live.
    let mut bob_saw = String::new();
    for last_event_id in [None, Some("0"), Some("0/0"), Some("1/0")] {
        let mut request = server
            .get("/mcp")
            .header("x-api-key", "bob")
            .header("accept", "text/event-stream")
            .header("mcp-protocol-version", PROTOCOL)
            .header("mcp-session-id", &session);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.expect("bob's GET");
        let status = response.status();
        let body = tokio::time::timeout(Duration::from_secs(10), response.text())
            .await
            .expect("a refusal, not a stream")
            .unwrap_or_default();
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "GET {last_event_id:?}: {body}"
        );
        bob_saw.push_str(&body);
    }
    let posted = mcp_post(
        &server,
        "bob",
        Some(&session),
        &execute(3, "print('bob was here')"),
    )
    .send()
    .await
    .expect("bob's POST");
    assert_eq!(posted.status(), StatusCode::NOT_FOUND);
    bob_saw.push_str(&posted.text().await.unwrap_or_default());
    let deleted = server
        .delete("/mcp")
        .header("x-api-key", "bob")
        .header("mcp-protocol-version", PROTOCOL)
        .header("mcp-session-id", &session)
        .send()
        .await
        .expect("bob's DELETE");
    assert_eq!(deleted.status(), StatusCode::NOT_FOUND);
    bob_saw.push_str(&deleted.text().await.unwrap_or_default());
    // Bob's refusals are the ones an unknown id gets, and carry nothing of Alice's.
    let unknown = server
        .delete("/mcp")
        .header("x-api-key", "bob")
        .header("mcp-protocol-version", PROTOCOL)
        .header("mcp-session-id", "no-such-session")
        .send()
        .await
        .expect("unknown DELETE");
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let unknown_body = unknown.text().await.unwrap_or_default();
    assert!(refusals_read_like(&bob_saw, &unknown_body), "{bob_saw}");
    assert!(
        !bob_saw.contains(SECRET),
        "bob saw alice's output: {bob_saw}"
    );

    // Alice got her whole output, and her session keeps working.
    let alice_saw = tokio::time::timeout(Duration::from_secs(60), alice)
        .await
        .expect("alice's stream ends")
        .expect("alice's reader");
    assert!(alice_saw.contains(&format!("{SECRET} 5")), "{alice_saw}");
    let again = mcp_post(
        &server,
        "alice",
        Some(&session),
        &execute(4, "print('still here')"),
    )
    .send()
    .await
    .expect("alice again");
    assert_eq!(again.status(), StatusCode::OK);
    let body = again.text().await.expect("body");
    assert!(body.contains("still here"), "{body}");
    // Her DELETE works.
    let closed = server
        .delete("/mcp")
        .header("x-api-key", "alice")
        .header("mcp-protocol-version", PROTOCOL)
        .header("mcp-session-id", &session)
        .send()
        .await
        .expect("alice's DELETE");
    assert!(closed.status().is_success(), "{}", closed.status());
}

/// Every refusal Bob got reads like the one for an id that never existed.
fn refusals_read_like(bob_saw: &str, unknown: &str) -> bool {
    !unknown.is_empty() && bob_saw.matches(unknown).count() == 6
}
