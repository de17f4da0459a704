//! State without session ids, end to end over `/mcp` with real clients and real Docker: calls
//! that name no sandbox use their tenant's default sandbox, whatever the client pattern (one long
//! session, or a session per call) and protocol era, and the number of such sandboxes stays
//! bounded however many calls and tenants there are.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::common::{TestServer, container_exists, instance_sandboxes, run_scenario};

async fn scenario(args: &[&str]) -> Value {
    run_scenario(args, Duration::from_secs(600)).await
}

fn ids_of(value: &Value) -> BTreeSet<String> {
    value
        .as_array()
        .expect("ids")
        .iter()
        .map(|id| id.as_str().expect("id").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn fastmcp_keeps_state_without_session_id_in_one_default_sandbox() {
    let Some(server) = TestServer::start("mcp-state-fastmcp", &["alice"]).await else {
        return;
    };
    let facts = scenario(&["fastmcp-state", &server.url("/mcp"), "alice", "100"]).await;
    assert!(facts["protocol"].as_str() >= Some("2026-07-28"), "{facts}");
    // 102 calls without session_id, one sandbox: the scenario saw one id and one default.
    let ids = ids_of(&facts["ids"]);
    assert_eq!(ids.len(), 1, "{facts}");
    assert_eq!(facts["default_sessions"], 1, "{facts}");
    assert_eq!(instance_sandboxes(server.instance()).len(), 1);
    // The id the results named stays valid: REST, a different face, still finds it.
    let id = ids.first().expect("one id");
    let listed: Value = server
        .get(&format!("/containers/{id}"))
        .header("x-api-key", "alice")
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("container");
    assert_eq!(listed["id"], id.as_str(), "{listed}");
    assert_eq!(listed["tag"], "default", "{listed}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_per_call_keeps_state_with_or_without_the_id() {
    let Some(server) = TestServer::start("mcp-state-per-call", &[]).await else {
        return;
    };
    let facts = scenario(&["session-per-call", &server.url("/mcp")]).await;
    // Every client, in every era, used the keyless server's one default sandbox, which outlived
    // the nine MCP sessions that used it.
    let id = facts["legacy"].as_str().expect("id");
    assert_eq!(facts["auto"], id, "{facts}");
    assert_eq!(facts["fastmcp"], id, "{facts}");
    assert!(container_exists(id));
    assert_eq!(instance_sandboxes(server.instance()), vec![id.to_string()]);
}

/// Three tenants make 200 calls each without `session_id`, at the same time, on a server whose
/// cap (3 live sandboxes) their default sandboxes fill; then a fourth tenant calls, and the least
/// recently used default is reclaimed for it instead of refusing it.
#[tokio::test(flavor = "multi_thread")]
async fn many_tenants_many_calls_are_never_refused_and_stay_bounded() {
    let keys = ["tenant-a", "tenant-b", "tenant-c", "tenant-d"];
    let Some(server) = TestServer::start_with("mcp-state-tenants", &keys, |config| {
        config.max_sandboxes = 3;
        config.max_sandboxes_per_tenant = 2;
    })
    .await
    else {
        return;
    };
    // Count the live sandboxes while the calls run.
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicUsize::new(0));
    let watcher = {
        let (stop, peak, instance) = (stop.clone(), peak.clone(), server.instance().to_string());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let live = instance_sandboxes(&instance).len();
                peak.fetch_max(live, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let facts = scenario(&[
        "tenants-many-calls",
        &server.url("/mcp"),
        "200",
        keys[3],
        keys[0],
        keys[1],
        keys[2],
    ])
    .await;
    stop.store(true, Ordering::SeqCst);
    watcher.join().expect("watcher");
    let peak = peak.load(Ordering::SeqCst);
    eprintln!(
        "600 calls without session_id in {} s; live sandboxes at most {peak}",
        facts["seconds"]
    );
    assert_eq!(facts["calls"], 600);
    for key in &keys[..3] {
        assert_eq!(ids_of(&facts["ids"][key]).len(), 1, "{key}: {facts}");
    }
    assert!(peak <= 3, "{peak} live sandboxes");
    // The fourth tenant's default took the place of the least recently used one.
    let live = instance_sandboxes(server.instance());
    assert_eq!(live.len(), 3, "{live:?}");
    assert!(live.contains(&facts["extra"].as_str().expect("id").to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn every_schema_passes_strict_conversion_and_null_arguments_work() {
    let Some(server) = TestServer::start("mcp-state-strict", &[]).await else {
        return;
    };
    let facts = scenario(&["strict-schemas", &server.url("/mcp")]).await;
    assert_eq!(facts["tools"].as_array().map(Vec::len), Some(11), "{facts}");
    assert!(!container_exists(facts["created"].as_str().expect("id")));
}
