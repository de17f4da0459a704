//! Admission control over REST: creates beyond `--max-concurrent-starts` wait their turn in
//! order instead of failing; a create that waits past the queue deadline is a clear 503; a client
//! that hangs up while it waits takes no sandbox.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{TestServer, instance_sandboxes};

/// Waits until the server's start queue is in a state `wanted` accepts.
async fn queue_reaches(
    server: &TestServer,
    wanted: impl FnMut(&kernelbox::engine::StartQueueState) -> bool,
) {
    let mut queue = server.engine().start_queue();
    tokio::time::timeout(Duration::from_secs(120), queue.wait_for(wanted))
        .await
        .expect("the start queue reached the state in time")
        .expect("the engine is alive");
}

async fn create(server: &TestServer, tag: String) -> reqwest::Response {
    server
        .post("/containers")
        .json(&json!({"tag": tag}))
        .send()
        .await
        .expect("create request")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_waits_its_turn_and_every_create_succeeds() {
    let Some(server) = TestServer::start_with("starts-burst", &[], |config| {
        config.max_concurrent_starts = 2;
    })
    .await
    else {
        return;
    };
    let mut queue = server.engine().start_queue();
    let most = Arc::new(Mutex::new((0, 0)));
    let watcher = tokio::spawn({
        let most = most.clone();
        async move {
            while queue.changed().await.is_ok() {
                let state = *queue.borrow();
                let mut most = most.lock().expect("not poisoned");
                *most = (most.0.max(state.starting), most.1.max(state.waiting));
            }
        }
    });
    let creates = (0..6).map(|n| create(&server, format!("burst-{n}")));
    let answers = futures::future::join_all(creates).await;
    for answer in answers {
        let status = answer.status();
        let body: Value = answer.json().await.expect("JSON body");
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    assert_eq!(instance_sandboxes(server.instance()).len(), 6);
    let metrics = server.get("/metrics").send().await.expect("metrics");
    let text = metrics.text().await.expect("metrics text");
    assert!(
        text.contains("kernelbox_sandbox_starts_waiting 0"),
        "{text}"
    );
    assert!(
        text.contains("kernelbox_sandbox_starts_in_progress 0"),
        "{text}"
    );
    watcher.abort();
    let (most_starting, most_waiting) = *most.lock().expect("not poisoned");
    assert_eq!(most_starting, 2, "never more than the limit start at once");
    assert!(most_waiting >= 1, "some creates waited for their turn");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_create_that_waits_past_the_deadline_is_refused_with_503() {
    let Some(server) = TestServer::start_with("starts-deadline", &[], |config| {
        config.max_concurrent_starts = 1;
        config.start_queue_timeout = Duration::from_millis(1);
    })
    .await
    else {
        return;
    };
    let first = tokio::spawn({
        let request = server.post("/containers").json(&json!({"tag": "first"}));
        async move { request.send().await.expect("first create").status() }
    });
    // The first create holds the one turn from here until its kernel answers, which takes far
    // longer than the second create's 1 ms of patience.
    queue_reaches(&server, |state| state.starting == 1).await;
    let refused = create(&server, "second".into()).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = refused.json().await.expect("JSON error");
    assert_eq!(body["error"]["code"], "start_queue_timeout", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|message| message.contains("--max-concurrent-starts")),
        "{body}"
    );
    assert_eq!(first.await.expect("first"), StatusCode::CREATED);
    assert_eq!(instance_sandboxes(server.instance()).len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_hangs_up_while_waiting_takes_nothing() {
    let Some(server) = TestServer::start_with("starts-hangup", &[], |config| {
        config.max_concurrent_starts = 1;
    })
    .await
    else {
        return;
    };
    let first = tokio::spawn({
        let request = server.post("/containers").json(&json!({"tag": "first"}));
        async move { request.send().await.expect("first create").status() }
    });
    queue_reaches(&server, |state| state.starting == 1).await;
    // A second client asks, waits its turn, then hangs up (its connection closes).
    let second = tokio::spawn({
        let request = server.post("/containers").json(&json!({"tag": "gave-up"}));
        async move { request.send().await.map(|answer| answer.status()) }
    });
    queue_reaches(&server, |state| state.waiting == 1).await;
    second.abort();
    queue_reaches(&server, |state| state.waiting == 0).await;
    assert_eq!(first.await.expect("first"), StatusCode::CREATED);
    queue_reaches(&server, |state| state.starting == 0 && state.waiting == 0).await;
    let listed: Value = server
        .get("/containers")
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("list JSON");
    let tags: Vec<&str> = listed["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .filter_map(|container| container["tag"].as_str())
        .collect();
    assert_eq!(tags, ["first"], "{listed}");
    assert_eq!(instance_sandboxes(server.instance()).len(), 1);
}

/// Removes the test's network (and anything Docker still lists under its name) when dropped.
struct NetworkByName(String);

impl Drop for NetworkByName {
    fn drop(&mut self) {
        for id in networks_named(&self.0) {
            let _ = std::process::Command::new("docker")
                .args(["network", "rm", &id])
                .output();
        }
    }
}

fn networks_named(name: &str) -> Vec<String> {
    let listed = std::process::Command::new("docker")
        .args([
            "network",
            "ls",
            "--filter",
            &format!("name=^{name}$"),
            "--format",
            "{{.ID}}",
        ])
        .output()
        .expect("docker network ls");
    String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Servers that start at the same moment on a Docker host without the sandboxes' network race
/// to create it; Docker's name check is not atomic, so without care they make several networks
/// of one name, and every later lookup by that name fails as ambiguous.
#[tokio::test(flavor = "multi_thread")]
async fn servers_starting_together_end_with_one_network() {
    if !crate::common::docker_required() && networks_named("bridge").is_empty() {
        eprintln!("skipping: Docker unreachable");
        return;
    }
    let name = format!(
        "kbtest-race-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let _cleanup = NetworkByName(name.clone());
    let mut config = kernelbox::config::EngineConfig::defaults("test-network-race");
    config.network = name.clone();
    let connects = (0..8).map(|_| {
        let options = kernelbox::backend::docker::network::NetworkOptions::for_engine(&config)
            .expect("network options");
        tokio::spawn(kernelbox::backend::docker::DockerBackend::connect(options))
    });
    for connected in futures::future::join_all(connects).await {
        connected
            .expect("connect task")
            .expect("every server connects");
    }
    assert_eq!(networks_named(&name).len(), 1, "one network named {name}");
    // And a server that starts later finds it by name.
    let options = kernelbox::backend::docker::network::NetworkOptions::for_engine(&config)
        .expect("network options");
    kernelbox::backend::docker::DockerBackend::connect(options)
        .await
        .expect("a later server connects");
}
