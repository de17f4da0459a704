//! Per-sandbox lifetimes and caller metadata over REST and MCP against real Docker: a sandbox is
//! destroyed (with its network sidecar) within 2 s of its expiry, busy or not; extending its
//! timeout keeps it alive; metadata filters the list; bad input is a 422; another tenant's
//! sandbox is "not found"; a changed lifetime survives a server restart.
//!
//! Waiting for a sandbox to go is a poll with a deadline: the REST face has no event for a
//! sandbox's end, and the point is to measure when it happens.

use std::process::Command;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{TestServer, container_exists, instance_sandboxes};

/// How often a test looks whether a sandbox is gone.
const POLL: Duration = Duration::from_millis(50);
/// How late after its expiry a sandbox may still exist.
const EXPIRY_SLACK: chrono::Duration = chrono::Duration::seconds(2);

async fn json_of(response: reqwest::Response, expected: StatusCode) -> Value {
    let status = response.status();
    let body = response.text().await.expect("body");
    assert_eq!(status, expected, "unexpected status; body: {body}");
    serde_json::from_str(&body).unwrap_or_else(|error| panic!("not JSON ({error}): {body}"))
}

fn time_of(value: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(value.as_str().unwrap_or_else(|| panic!("no time: {value}")))
        .expect("RFC 3339")
        .with_timezone(&Utc)
}

async fn create(server: &TestServer, key: Option<&str>, body: Value) -> Value {
    let mut request = server.post("/containers").json(&body);
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    json_of(request.send().await.expect("create"), StatusCode::CREATED).await
}

async fn set_timeout(server: &TestServer, id: &str, timeout: Value) -> reqwest::Response {
    server
        .post(&format!("/containers/{id}/timeout"))
        .json(&json!({ "timeout": timeout }))
        .send()
        .await
        .expect("set timeout")
}

/// Whether the network sidecar of sandbox `id` still exists.
fn sidecar_exists(id: &str) -> bool {
    let listed = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!(
                "label={}={id}",
                kernelbox::backend::docker::network::NETNS_OF_LABEL
            ),
        ])
        .output()
        .expect("docker ps");
    !String::from_utf8_lossy(&listed.stdout).trim().is_empty()
}

/// Waits until sandbox `id` is gone from the API and from Docker (its container and its sidecar),
/// at most until `deadline`; returns when that was seen.
async fn wait_gone(server: &TestServer, id: &str, deadline: DateTime<Utc>) -> DateTime<Utc> {
    loop {
        let answer = server
            .get(&format!("/containers/{id}"))
            .send()
            .await
            .expect("get");
        if answer.status() == StatusCode::NOT_FOUND && !container_exists(id) && !sidecar_exists(id)
        {
            return Utc::now();
        }
        assert!(
            Utc::now() < deadline,
            "sandbox {id} still there at {deadline} (status {})",
            answer.status()
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Sleeps until `at` (wall clock): the tests wait for time itself to pass.
async fn sleep_until(at: DateTime<Utc>) {
    if let Ok(left) = (at - Utc::now()).to_std() {
        tokio::time::sleep(left).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sandbox_is_destroyed_within_two_seconds_of_its_expiry_even_when_busy() {
    let Some(server) = TestServer::start("life-expiry", &[]).await else {
        return;
    };
    let created = create(
        &server,
        None,
        json!({"timeout": 5, "metadata": {"purpose": "expiry"}}),
    )
    .await;
    let id = created["id"].as_str().expect("id").to_string();
    assert_eq!(created["timeout"], 5, "{created}");
    assert_eq!(created["metadata"], json!({"purpose": "expiry"}));
    let expires_at = time_of(&created["expires_at"]);
    let created_at = time_of(&created["created_at"]);
    let lifetime = expires_at - created_at;
    assert!(
        lifetime >= chrono::Duration::seconds(4) && lifetime <= chrono::Duration::seconds(6),
        "lifetime {lifetime}"
    );
    let shown = json_of(
        server
            .get(&format!("/containers/{id}"))
            .send()
            .await
            .expect("get"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(time_of(&shown["expires_at"]), expires_at);
    assert!(container_exists(&id) && sidecar_exists(&id));

    // Busy until long after the expiry: the lifetime is absolute.
    let execution = server
        .post(&format!("/containers/{id}/execute"))
        .json(&json!({"code": "import time; time.sleep(60)", "timeout": 90}))
        .send();
    let execution = tokio::spawn(execution);
    sleep_until(expires_at - chrono::Duration::milliseconds(700)).await;
    let before = server
        .get(&format!("/containers/{id}"))
        .send()
        .await
        .expect("get");
    assert_eq!(before.status(), StatusCode::OK, "gone before its expiry");
    let gone_at = wait_gone(&server, &id, expires_at + EXPIRY_SLACK).await;
    eprintln!(
        "sandbox gone {} ms after its expiry",
        (gone_at - expires_at).num_milliseconds()
    );
    // The execution it ran ends with it: cancelled, at once rather than after its minute.
    let answered = tokio::time::timeout(Duration::from_secs(30), execution)
        .await
        .expect("the execution answers once its sandbox is gone")
        .expect("join");
    let ended = json_of(answered.expect("an answer"), StatusCode::OK).await;
    assert_eq!(ended["status"], "cancelled", "{ended}");
}

/// A hostile schedule for the server: requests on a sandbox keep coming while its lifetime
/// ends. Whatever is under way when it is destroyed (a command, file operations) is told that
/// the sandbox is gone (404), never a 5xx, and never a made-up result: a command killed by the
/// destruction is not reported as having timed out.
#[tokio::test(flavor = "multi_thread")]
async fn requests_under_way_when_a_sandbox_expires_are_told_it_is_gone() {
    let Some(server) = TestServer::start("life-underway", &[]).await else {
        return;
    };
    let created = create(&server, None, json!({"timeout": 6})).await;
    let id = created["id"].as_str().expect("id").to_string();
    let expires_at = time_of(&created["expires_at"]);
    let wrote = json_of(
        server
            .post(&format!("/containers/{id}/commands"))
            .json(&json!({"cmd": "mkdir tree && echo a > tree/a.txt"}))
            .send()
            .await
            .expect("command"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(wrote["exit_code"], 0, "{wrote}");

    // A command that outlives the sandbox: the destruction kills it.
    let command = tokio::spawn(
        server
            .post(&format!("/containers/{id}/commands"))
            .json(&json!({"cmd": "sleep 60", "timeout": 90}))
            .send(),
    );
    // File operations back to back, through the expiry and until the sandbox is gone.
    let mut statuses = Vec::new();
    let mut gone = false;
    let give_up = expires_at + EXPIRY_SLACK + chrono::Duration::seconds(5);
    for round in 0.. {
        let answers = [
            server
                .get(&format!("/containers/{id}/directories/tree"))
                .send()
                .await,
            server
                .get(&format!("/containers/{id}/stat/tree/a.txt"))
                .send()
                .await,
            server
                .post(&format!("/containers/{id}/copy"))
                .json(&json!({"source": "tree", "destination": format!("copy-{round}")}))
                .send()
                .await,
        ];
        for answer in answers {
            let answer = answer.expect("an answer");
            let status = answer.status();
            let body = answer.bytes().await.unwrap_or_default();
            assert!(
                !status.is_server_error(),
                "{status} while the sandbox expired: {}",
                String::from_utf8_lossy(&body)
            );
            if status == StatusCode::NOT_FOUND {
                let error: Value = serde_json::from_slice(&body).expect("a JSON error");
                assert_eq!(error["error"]["code"], "not_found", "{error}");
                gone = true;
            }
            statuses.push(status.as_u16());
        }
        if gone || Utc::now() > give_up {
            break;
        }
    }
    assert!(gone, "the sandbox never went: {statuses:?}");
    assert!(
        statuses.contains(&200),
        "nothing ran before the expiry: {statuses:?}"
    );

    let answered = tokio::time::timeout(Duration::from_secs(30), command)
        .await
        .expect("the command answers once its sandbox is gone")
        .expect("join")
        .expect("an answer");
    let status = answered.status();
    let body: Value = answered.json().await.expect("JSON");
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "not_found", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("destroyed while the request ran"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn extending_the_timeout_keeps_the_sandbox_and_shortening_it_ends_it_early() {
    let Some(server) = TestServer::start("life-extend", &[]).await else {
        return;
    };
    let created = create(&server, None, json!({"timeout": 4})).await;
    let id = created["id"].as_str().expect("id").to_string();
    let first_expiry = time_of(&created["expires_at"]);

    let extended = json_of(set_timeout(&server, &id, json!(60)).await, StatusCode::OK).await;
    assert_eq!(extended["id"], id.as_str());
    assert_eq!(extended["timeout"], 60);
    let extended_expiry = time_of(&extended["expires_at"]);
    assert!(
        extended_expiry > Utc::now() + chrono::Duration::seconds(55),
        "{extended}"
    );

    // Well past the first expiry it is still there and works.
    sleep_until(first_expiry + chrono::Duration::milliseconds(2500)).await;
    let run = json_of(
        server
            .post(&format!("/containers/{id}/execute"))
            .json(&json!({"code": "print('alive')"}))
            .send()
            .await
            .expect("execute"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(run["stdout"], "alive\n", "{run}");
    let listed = json_of(
        server.get("/containers").send().await.expect("list"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(listed["containers"][0]["id"], id.as_str());
    assert_eq!(
        time_of(&listed["containers"][0]["expires_at"]),
        extended_expiry
    );

    // Shortened below what the timer sleeps towards: it wakes for the new, earlier deadline.
    let shortened = json_of(set_timeout(&server, &id, json!(1)).await, StatusCode::OK).await;
    let new_expiry = time_of(&shortened["expires_at"]);
    assert!(new_expiry < extended_expiry);
    let gone_at = wait_gone(&server, &id, new_expiry + EXPIRY_SLACK).await;
    assert!(gone_at >= new_expiry, "gone before its expiry");
}

#[tokio::test(flavor = "multi_thread")]
async fn metadata_filters_the_list() {
    let Some(server) = TestServer::start("life-metadata", &[]).await else {
        return;
    };
    let a = create(
        &server,
        None,
        json!({"metadata": {"team": "red", "job": "one"}}),
    )
    .await;
    let b = create(
        &server,
        None,
        json!({"metadata": {"team": "red", "job": "two"}}),
    )
    .await;
    let c = create(&server, None, json!({})).await;
    assert_eq!(c["metadata"], json!({}));
    assert!(c["timeout"].is_null() && c["expires_at"].is_null(), "{c}");
    let ids = |list: &Value| -> Vec<String> {
        list["containers"]
            .as_array()
            .expect("containers")
            .iter()
            .map(|container| container["id"].as_str().expect("id").to_string())
            .collect()
    };
    let list = |query: &'static str| {
        let request = server.get(&format!("/containers{query}"));
        async move { request.send().await.expect("list") }
    };
    let id = |value: &Value| value["id"].as_str().expect("id").to_string();

    let all = json_of(list("").await, StatusCode::OK).await;
    assert_eq!(ids(&all), vec![id(&a), id(&b), id(&c)]);
    assert_eq!(
        all["containers"][0]["metadata"],
        json!({"team": "red", "job": "one"})
    );
    let red = json_of(list("?metadata.team=red").await, StatusCode::OK).await;
    assert_eq!(ids(&red), vec![id(&a), id(&b)]);
    let two = json_of(
        list("?metadata.team=red&metadata.job=two").await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(ids(&two), vec![id(&b)]);
    let bracketed = json_of(list("?metadata%5Bjob%5D=one").await, StatusCode::OK).await;
    assert_eq!(ids(&bracketed), vec![id(&a)]);
    let none = json_of(list("?metadata.team=blue").await, StatusCode::OK).await;
    assert!(ids(&none).is_empty());

    // The OpenAPI document describes the filter and the timeout route.
    let document = json_of(
        server.get("/openapi.json").send().await.expect("openapi"),
        StatusCode::OK,
    )
    .await;
    let parameter = &document["paths"]["/containers"]["get"]["parameters"][0];
    assert_eq!(parameter["name"], "metadata", "{parameter}");
    assert_eq!(parameter["style"], "deepObject", "{parameter}");
    let timeout_route = &document["paths"]["/containers/{id}/timeout"]["post"];
    assert!(timeout_route["requestBody"].is_object(), "{timeout_route}");
    let container = &document["components"]["schemas"]["Container"]["properties"];
    for field in ["timeout", "expires_at", "metadata"] {
        assert!(container[field].is_object(), "{field}: {container}");
    }
    eprintln!(
        "{parameter}\n{}",
        document["components"]["schemas"]["SetTimeout"]
    );

    for bad in [
        "?team=red",
        "?metadata.=x",
        "?metadata.bad%20name=x",
        "?metadata.team=red&metadata.team=blue",
    ] {
        let body = json_of(list(bad).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(body["error"]["code"], "invalid_request", "{bad}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_timeouts_and_metadata_are_422_and_leave_nothing_behind() {
    let Some(server) = TestServer::start_with("life-invalid", &[], |config| {
        config.max_sandbox_timeout = Duration::from_secs(3600);
    })
    .await
    else {
        return;
    };
    let many: serde_json::Map<String, Value> =
        (0..33).map(|i| (format!("k{i}"), json!("v"))).collect();
    let bad_creates = [
        json!({"timeout": 0}),
        json!({"timeout": -5}),
        json!({"timeout": 1.5}),
        json!({"timeout": "10"}),
        json!({"timeout": 3601}),
        json!({"timeout": u64::MAX}),
        json!({"metadata": {"n": 1}}),
        json!({"metadata": ["a", "b"]}),
        json!({"metadata": {"has space": "x"}}),
        json!({"metadata": {"": "x"}}),
        json!({"metadata": {"k": "line\nbreak"}}),
        json!({"metadata": {"k": "v".repeat(513)}}),
        json!({"metadata": many}),
    ];
    for body in bad_creates {
        let answer = json_of(
            server
                .post("/containers")
                .json(&body)
                .send()
                .await
                .expect("create"),
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        assert_eq!(
            answer["error"]["code"], "invalid_request",
            "{body}: {answer}"
        );
    }
    assert!(instance_sandboxes(server.instance()).is_empty());

    let created = create(&server, None, json!({"timeout": 600})).await;
    let id = created["id"].as_str().expect("id").to_string();
    for timeout in [json!(0), json!(-1), json!(3601), json!("60"), json!(null)] {
        let answer = json_of(
            set_timeout(&server, &id, timeout.clone()).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        assert_eq!(
            answer["error"]["code"], "invalid_request",
            "{timeout}: {answer}"
        );
    }
    for body in [json!({}), json!({"timeout": 60, "extra": 1})] {
        let answer = server
            .post(&format!("/containers/{id}/timeout"))
            .json(&body)
            .send()
            .await
            .expect("set timeout");
        assert_eq!(answer.status(), StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    }
    // Nothing changed.
    let shown = json_of(
        server
            .get(&format!("/containers/{id}"))
            .send()
            .await
            .expect("get"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(shown["timeout"], 600);
    assert_eq!(
        time_of(&shown["expires_at"]),
        time_of(&created["expires_at"])
    );
    let missing = set_timeout(&server, "sbx_aaaaaaaaaaaaaaaaaaaa", json!(60)).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread")]
async fn another_tenants_sandbox_is_not_found_for_the_timeout_route_and_the_filter() {
    let Some(server) = TestServer::start("life-tenants", &["alice", "bob"]).await else {
        return;
    };
    let created = create(
        &server,
        Some("alice"),
        json!({"timeout": 600, "metadata": {"who": "alice"}}),
    )
    .await;
    let id = created["id"].as_str().expect("id").to_string();
    let bob = server
        .post(&format!("/containers/{id}/timeout"))
        .header("x-api-key", "bob")
        .json(&json!({"timeout": 1}))
        .send()
        .await
        .expect("bob sets a timeout");
    let bob = json_of(bob, StatusCode::NOT_FOUND).await;
    assert_eq!(bob["error"]["code"], "not_found");
    let listed = json_of(
        server
            .get("/containers?metadata.who=alice")
            .header("x-api-key", "bob")
            .send()
            .await
            .expect("bob lists"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(listed["containers"], json!([]));
    let alice = json_of(
        server
            .get(&format!("/containers/{id}"))
            .header("x-api-key", "alice")
            .send()
            .await
            .expect("alice looks"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(alice["timeout"], 600);
    assert_eq!(
        time_of(&alice["expires_at"]),
        time_of(&created["expires_at"])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_lifetime_and_the_metadata_survive_a_restart() {
    let Some(first) = TestServer::start("life-restart", &[]).await else {
        return;
    };
    let created = create(
        &first,
        None,
        json!({"timeout": 600, "metadata": {"kept": "yes"}}),
    )
    .await;
    let id = created["id"].as_str().expect("id").to_string();
    let changed = json_of(set_timeout(&first, &id, json!(12)).await, StatusCode::OK).await;
    let changed_expiry = time_of(&changed["expires_at"]);
    assert!(changed_expiry < time_of(&created["expires_at"]));
    // The sandbox's code forges a far-off record where the sidecar keeps the real one, and
    // looks for the sidecar's files through /proc: neither may reach what the server reads.
    let forged = r#"{"timeout_secs":86400,"expires_at":"2099-01-01T00:00:00Z"}"#;
    let attack = json_of(
        first
            .post(&format!("/containers/{id}/commands"))
            .json(&json!({"cmd": format!(
                "mkdir -p /var/lib/kernelbox/records 2>&1; \
                 echo '{forged}' > /var/lib/kernelbox/records/lifetime.json 2>&1; \
                 for root in /proc/[0-9]*/root/var/lib/kernelbox/records; do \
                   echo '{forged}' > \"$root/lifetime.json\" 2>&1 && echo \"wrote $root\"; done; \
                 ls -la /var/lib/kernelbox 2>&1; true"
            )}))
            .send()
            .await
            .expect("attack"),
        StatusCode::OK,
    )
    .await;
    eprintln!("attack: {}", attack["stdout"]);
    // The first server stops and leaves its sandboxes, as on a restart.
    first.engine().shutdown(false).await;
    assert!(container_exists(&id));

    let Some(second) = TestServer::start_on_instance("life-restart", first.instance(), &[]).await
    else {
        return;
    };
    let shown = json_of(
        second
            .get(&format!("/containers/{id}"))
            .send()
            .await
            .expect("get"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(shown["timeout"], 12, "{shown}");
    assert_eq!(time_of(&shown["expires_at"]), changed_expiry, "{shown}");
    assert_eq!(shown["metadata"], json!({"kept": "yes"}));
    let filtered = json_of(
        second
            .get("/containers?metadata.kept=yes")
            .send()
            .await
            .expect("list"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(filtered["containers"][0]["id"], id.as_str());
    // The restarted server ends it at the changed expiry.
    sleep_until(changed_expiry - chrono::Duration::milliseconds(700)).await;
    assert!(container_exists(&id), "gone before its expiry");
    let gone_at = wait_gone(&second, &id, changed_expiry + EXPIRY_SLACK).await;
    eprintln!(
        "restarted server: gone {} ms after the expiry",
        (gone_at - changed_expiry).num_milliseconds()
    );
}

/// The result of JSON-RPC request `id` in an MCP answer (a JSON body or an SSE stream).
fn rpc_result(body: &str, id: u64) -> Value {
    body.lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(str::trim)
        .chain(std::iter::once(body.trim()))
        .filter_map(|message| serde_json::from_str::<Value>(message).ok())
        .find(|message| message["id"] == id && message.get("result").is_some())
        .map(|message| message["result"].clone())
        .unwrap_or_else(|| panic!("no result for {id} in {body}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn mcp_sessions_take_a_timeout_and_metadata_and_set_session_timeout_changes_it() {
    let Some(server) = TestServer::start("life-mcp", &["alice", "bob"]).await else {
        return;
    };
    let call = |key: &'static str, session: String, id: u64, name: &str, arguments: Value| {
        let body = json!({
            "jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": name, "arguments": arguments}
        });
        let request = crate::mcp_sessions::mcp_post(&server, key, Some(&session), &body);
        async move {
            let response = request.send().await.expect("call");
            rpc_result(&response.text().await.expect("body"), id)
        }
    };
    let alice = crate::mcp_sessions::open_session(&server, "alice").await;
    let created = call(
        "alice",
        alice.clone(),
        2,
        "create_session",
        json!({"timeout": 600, "metadata": [{"key": "task", "value": "t-1"}]}),
    )
    .await;
    assert_eq!(created["isError"], false, "{created}");
    let session_id = created["structuredContent"]["session_id"]
        .as_str()
        .expect("session id")
        .to_string();
    assert_eq!(created["structuredContent"]["session"]["timeout"], 600);
    assert_eq!(
        created["structuredContent"]["session"]["metadata"],
        json!({"task": "t-1"})
    );

    let listed = call(
        "alice",
        alice.clone(),
        3,
        "list_sessions",
        json!({"metadata": [{"key": "task", "value": "t-1"}]}),
    )
    .await;
    let sessions = listed["structuredContent"]["sessions"]
        .as_array()
        .expect("sessions")
        .clone();
    assert_eq!(sessions.len(), 1, "{listed}");
    assert_eq!(sessions[0]["id"], session_id.as_str());
    let other = call(
        "alice",
        alice.clone(),
        4,
        "list_sessions",
        json!({"metadata": [{"key": "task", "value": "t-2"}]}),
    )
    .await;
    assert_eq!(other["structuredContent"]["sessions"], json!([]), "{other}");

    // Bob cannot touch it.
    let bob = crate::mcp_sessions::open_session(&server, "bob").await;
    let refused = call(
        "bob",
        bob,
        5,
        "set_session_timeout",
        json!({"timeout": 1, "session_id": session_id}),
    )
    .await;
    assert_eq!(refused["isError"], true, "{refused}");

    let invalid = call(
        "alice",
        alice.clone(),
        6,
        "set_session_timeout",
        json!({"timeout": 0, "session_id": session_id}),
    )
    .await;
    assert_eq!(invalid["isError"], true, "{invalid}");

    let set = call(
        "alice",
        alice.clone(),
        7,
        "set_session_timeout",
        json!({"timeout": 3, "session_id": session_id}),
    )
    .await;
    assert_eq!(set["isError"], false, "{set}");
    assert_eq!(set["structuredContent"]["timeout"], 3, "{set}");
    let expires_at = time_of(&set["structuredContent"]["expires_at"]);
    assert!(expires_at <= Utc::now() + chrono::Duration::seconds(3));
    let text = set["content"][0]["text"].as_str().unwrap_or("");
    assert!(text.contains("expires at"), "{text}");

    // Gone at the new expiry.
    let deadline = expires_at + EXPIRY_SLACK;
    loop {
        if server.engine().sandbox_count() == 0 && !container_exists(&session_id) {
            break;
        }
        assert!(Utc::now() < deadline, "session still there at {deadline}");
        tokio::time::sleep(POLL).await;
    }
    let after = call(
        "alice",
        alice,
        8,
        "list_sessions",
        json!({"metadata": null}),
    )
    .await;
    assert_eq!(after["structuredContent"]["sessions"], json!([]), "{after}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_idle_limit_still_applies_to_a_sandbox_with_a_long_lifetime() {
    let Some(server) = TestServer::start_with("life-idle", &[], |config| {
        config.max_idle = Duration::from_secs(2);
        config.cleanup_interval = Duration::from_secs(1);
    })
    .await
    else {
        return;
    };
    server.engine().spawn_reaper();
    let created = create(&server, None, json!({"timeout": 3600})).await;
    let id = created["id"].as_str().expect("id").to_string();
    // Idle 2 s, found by a reaper pass at most 1 s later, then destroyed.
    let gone_at = wait_gone(&server, &id, Utc::now() + chrono::Duration::seconds(10)).await;
    assert!(gone_at < time_of(&created["expires_at"]));
}
