//! Ceilings and quotas over real HTTP against real Docker: a request above the operator's
//! ceilings is a 422 that names the ceiling, concurrent creates never overrun the server's cap,
//! and a tenant at its quota is refused while another tenant still creates.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{TestServer, instance_sandboxes};

async fn create(server: &TestServer, key: &str, body: Value) -> (StatusCode, Value) {
    let response = server
        .post("/containers")
        .header("x-api-key", key)
        .json(&body)
        .send()
        .await
        .expect("create");
    let status = response.status();
    let body = response.json().await.expect("JSON body");
    (status, body)
}

#[tokio::test]
async fn limits_above_the_ceilings_are_refused_and_name_the_ceiling() {
    let Some(server) = TestServer::start_with("quota-ceiling", &["k1"], |config| {
        config.ceilings.memory_mb = 1024;
        config.ceilings.milli_cpus = 1000;
        config.ceilings.pids = 256;
    })
    .await
    else {
        return;
    };
    for (body, field, ceiling) in [
        (json!({"memory_mb": 16384}), "memory_mb", "--max-memory-mb"),
        (json!({"memory_mb": 1025}), "memory_mb", "--max-memory-mb"),
        (json!({"cpus": 2}), "cpus", "--max-cpus"),
        (json!({"cpus": 64}), "cpus", "--max-cpus"),
        (json!({"pids": 100000}), "pids", "--max-pids"),
    ] {
        let (status, refused) = create(&server, "k1", body.clone()).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {refused}"
        );
        let message = refused["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(field) && message.contains(ceiling),
            "{body}: {message}"
        );
    }
    assert!(
        instance_sandboxes(server.instance()).is_empty(),
        "a refused create left a container"
    );
    // At the ceiling is fine, and the container gets what was asked for.
    let (status, created) = create(
        &server,
        "k1",
        json!({"memory_mb": 1024, "cpus": 1, "pids": 128}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().expect("id");
    let inspected = std::process::Command::new("docker")
        .args([
            "inspect",
            "--format",
            "{{.HostConfig.Memory}} {{.HostConfig.NanoCpus}} {{.HostConfig.PidsLimit}}",
            &format!("kernelbox-{}", id.replace('_', "-")),
        ])
        .output()
        .expect("docker inspect");
    assert_eq!(
        String::from_utf8_lossy(&inspected.stdout).trim(),
        format!("{} 1000000000 128", 1024u64 * 1024 * 1024)
    );
}

#[tokio::test]
async fn concurrent_creates_never_overrun_the_cap_or_a_quota() {
    let Some(server) = TestServer::start_with("quota-race", &["alice", "bob"], |config| {
        config.max_sandboxes = 3;
        config.max_sandboxes_per_tenant = 2;
    })
    .await
    else {
        return;
    };
    // 8 concurrent creates by one tenant against its quota of 2.
    let attempts =
        futures::future::join_all((0..8).map(|_| create(&server, "alice", json!({"tag": "race"}))))
            .await;
    let created = attempts
        .iter()
        .filter(|(status, _)| *status == StatusCode::CREATED)
        .count();
    assert_eq!(created, 2, "{attempts:?}");
    for (status, body) in attempts.iter().filter(|(s, _)| *s != StatusCode::CREATED) {
        assert_eq!(*status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert_eq!(body["error"]["code"], "tenant_quota_reached", "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("quota of 2"), "{message}");
    }
    // Alice is at her quota; Bob still creates, and then the server's cap of 3 is reached.
    let (status, refused) = create(&server, "alice", json!({})).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{refused}");
    let attempts =
        futures::future::join_all((0..8).map(|_| create(&server, "bob", json!({})))).await;
    let bob: Vec<&(StatusCode, Value)> = attempts
        .iter()
        .filter(|(status, _)| *status == StatusCode::CREATED)
        .collect();
    assert_eq!(bob.len(), 1, "{attempts:?}");
    for (status, body) in attempts.iter().filter(|(s, _)| *s != StatusCode::CREATED) {
        assert_eq!(*status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert_eq!(body["error"]["code"], "too_many_sandboxes", "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("limit of 3"), "{message}");
    }
    // Exactly 3 sandboxes exist, as Docker sees them.
    assert_eq!(instance_sandboxes(server.instance()).len(), 3);
    // Closing one gives its slot back.
    let id = bob[0].1["id"].as_str().expect("id");
    let closed = server
        .delete(&format!("/containers/{id}"))
        .header("x-api-key", "bob")
        .send()
        .await
        .expect("delete");
    assert!(closed.status().is_success());
    let (status, again) = create(&server, "bob", json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
}
