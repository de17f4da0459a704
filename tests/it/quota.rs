//! Ceilings and quotas over real HTTP against real Docker: a request above the operator's
//! ceilings is a 422 that names the ceiling, concurrent creates never overrun the server's cap,
//! and a tenant at its quota is refused while another tenant still creates.

use reqwest::StatusCode;
use serde_json::{Value, json};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

/// A multipart upload of `size` bytes to `path`.
async fn upload(server: &TestServer, id: &str, path: &str, size: usize) -> (StatusCode, Value) {
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(vec![b'u'; size]).file_name("u.bin"),
    );
    let response = server
        .post(&format!("/containers/{id}/files/{path}"))
        .header("x-api-key", "k")
        .multipart(form)
        .send()
        .await
        .expect("upload");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn uploads_in_progress_share_one_spool_budget() {
    const BUDGET: u64 = 1024 * 1024;
    let Some(server) = TestServer::start_with("quota-spool", &["k"], |config| {
        config.max_spool_bytes = BUDGET;
    })
    .await
    else {
        return;
    };
    let (status, created) = create(&server, "k", json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().expect("id").to_string();

    // A slow upload holds 700 KiB of the budget and keeps its connection open (raw HTTP, so
    // the test decides when each byte leaves).
    let address = server.base.trim_start_matches("http://").to_string();
    let mut slow = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    let boundary = "kbxboundary";
    let head = format!(
        "POST /containers/{id}/files/slow HTTP/1.1\r\nHost: {address}\r\nX-Api-Key: k\r\n\
         Content-Type: multipart/form-data; boundary={boundary}\r\n\
         Transfer-Encoding: chunked\r\n\r\n"
    );
    let part = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"slow.bin\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    );
    let chunk = |data: &[u8]| {
        let mut framed = format!("{:x}\r\n", data.len()).into_bytes();
        framed.extend_from_slice(data);
        framed.extend_from_slice(b"\r\n");
        framed
    };
    slow.write_all(head.as_bytes()).await.expect("head");
    slow.write_all(&chunk(part.as_bytes())).await.expect("part");
    slow.write_all(&chunk(&vec![b's'; 700 * 1024]))
        .await
        .expect("700 KiB");
    // Wait until the server holds those bytes (its spool gauge in /metrics).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let metrics = server
            .get("/metrics")
            .header("x-api-key", "k")
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        let held: u64 = metrics
            .lines()
            .find_map(|line| line.strip_prefix("kernelbox_upload_spool_bytes "))
            .and_then(|value| value.trim().parse().ok())
            .expect("the spool gauge");
        if held >= 700 * 1024 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slow upload never held its share ({held} bytes)"
        );
        tokio::task::yield_now().await;
    }

    // Another upload of 400 KiB does not fit beside it.
    let (status, refused) = upload(&server, &id, "other.bin", 400 * 1024).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{refused}");
    assert_eq!(refused["error"]["code"], "spool_full", "{refused}");
    let message = refused["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&BUDGET.to_string()) && message.contains("--max-spool-bytes"),
        "{message}"
    );
    // An upload larger than the whole budget is refused as well, and gives its share back.
    let (status, body) = upload(&server, &id, "huge.bin", 2 * 1024 * 1024).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");

    // The slow one ends and lands; then the budget is free again.
    slow.write_all(&chunk(format!("\r\n--{boundary}--\r\n").as_bytes()))
        .await
        .expect("end");
    slow.write_all(b"0\r\n\r\n").await.expect("last chunk");
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("\r\n\r\n") {
        let read = slow.read(&mut buffer).await.expect("answer");
        assert!(read > 0, "the slow upload got no answer");
        answer.extend_from_slice(&buffer[..read]);
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let (status, body) = upload(&server, &id, "other.bin", 900 * 1024).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test]
async fn a_create_whose_client_hangs_up_is_finished_and_counted() {
    let Some(server) = TestServer::start_with("quota-hangup", &["k"], |config| {
        config.max_sandboxes_per_tenant = 1;
    })
    .await
    else {
        return;
    };
    // The client gives up long before a sandbox can be ready, and its connection closes.
    let hung_up = server
        .post("/containers")
        .header("x-api-key", "k")
        .json(&json!({"tag": "hung-up"}))
        .timeout(std::time::Duration::from_millis(300))
        .send()
        .await;
    assert!(hung_up.is_err(), "the create answered within 300 ms");
    // The create goes on to its end: the sandbox shows up in the table, holding the quota.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let listed = loop {
        let listed: Value = server
            .get("/containers")
            .header("x-api-key", "k")
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("list JSON");
        if listed["containers"]
            .as_array()
            .is_some_and(|all| !all.is_empty())
        {
            break listed;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the abandoned create never finished"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let ids: Vec<String> = listed["containers"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|sandbox| sandbox["id"].as_str().map(String::from))
        .collect();
    // Docker has exactly what the table has: nothing left behind, nothing uncounted.
    assert_eq!(instance_sandboxes(server.instance()), ids);
    let (status, refused) = create(&server, "k", json!({})).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{refused}");
    assert_eq!(refused["error"]["code"], "tenant_quota_reached");
}

#[tokio::test]
async fn eight_concurrent_creates_against_a_cap_of_three_leave_three() {
    let Some(server) = TestServer::start_with("quota-cap", &["k"], |config| {
        config.max_sandboxes = 3;
        config.max_sandboxes_per_tenant = 3;
    })
    .await
    else {
        return;
    };
    let attempts =
        futures::future::join_all((0..8).map(|_| create(&server, "k", json!({"tag": "cap"}))))
            .await;
    let created = attempts
        .iter()
        .filter(|(status, _)| *status == StatusCode::CREATED)
        .count();
    assert_eq!(created, 3, "{attempts:?}");
    for (status, body) in attempts.iter().filter(|(s, _)| *s != StatusCode::CREATED) {
        assert_eq!(*status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert_eq!(body["error"]["code"], "too_many_sandboxes", "{body}");
    }
    assert_eq!(instance_sandboxes(server.instance()).len(), 3);
}
