//! Exists, stat, HEAD, mkdir, copy and move through REST and MCP, against a real sandbox: what
//! each answers, that a copy of a tree is byte-identical, that an existing destination needs
//! `overwrite`, and how long a stat takes. (The attacks on them are in `files_attack`.)

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::TestServer;

async fn create(server: &TestServer, key: &str) -> String {
    let created: Value = server
        .post("/containers")
        .header("x-api-key", key)
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("created");
    created["id"].as_str().expect("id").to_string()
}

/// (status, JSON body or null).
async fn answer(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.expect("request");
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn command(server: &TestServer, key: &str, id: &str, cmd: &str) -> String {
    let (status, body) = answer(
        server
            .post(&format!("/containers/{id}/commands"))
            .header("x-api-key", key)
            .json(&json!({ "cmd": cmd })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["exit_code"], 0, "{cmd}: {body}");
    body["stdout"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn exists_stat_mkdir_copy_and_move_over_rest() {
    const KEY: &str = "alice";
    let Some(server) = TestServer::start("file-ops-rest", &[KEY, "bob"]).await else {
        return;
    };
    let id = create(&server, KEY).await;
    let get = |path: &str| {
        server
            .get(&format!("/containers/{id}/{path}"))
            .header("x-api-key", KEY)
    };
    let post = |path: &str| {
        server
            .post(&format!("/containers/{id}/{path}"))
            .header("x-api-key", KEY)
    };
    command(
        &server,
        KEY,
        &id,
        "mkdir -p tree/sub && printf hello > tree/a.txt && head -c 100000 /dev/urandom > tree/sub/blob \
         && chmod 600 tree/a.txt && ln -s a.txt tree/link && touch -d @1700000000 tree/a.txt",
    )
    .await;

    // Exists and stat.
    let (status, body) = answer(get("exists/tree")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"exists": true, "type": "directory"}));
    let (_, body) = answer(get("exists/missing/deeper")).await;
    assert_eq!(body, json!({"exists": false, "type": null}));
    let (_, body) = answer(get("exists/tree/a.txt/under-a-file")).await;
    assert_eq!(body["exists"], false, "{body}");
    let (status, body) = answer(get("stat/tree/a.txt")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["path"], "/workspace/tree/a.txt");
    assert_eq!(body["type"], "file");
    assert_eq!(body["size"], 5);
    assert_eq!(body["mode"], "0600");
    assert_eq!(body["modified_at"], "2023-11-14T22:13:20.000000Z");
    let (_, body) = answer(get("stat/tree/link")).await;
    assert_eq!(body["type"], "symlink", "{body}");
    let (status, body) = answer(get("stat/nothing-here")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "path_not_found");

    // HEAD: the length without the bytes.
    let head = server
        .http
        .head(server.url(&format!("/containers/{id}/files/tree/sub/blob")))
        .header("x-api-key", KEY)
        .send()
        .await
        .expect("head");
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(
        head.headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok()),
        Some("100000")
    );
    assert!(head.bytes().await.expect("body").is_empty());
    let head = server
        .http
        .head(server.url(&format!("/containers/{id}/files/nothing")))
        .header("x-api-key", KEY)
        .send()
        .await
        .expect("head");
    assert_eq!(head.status(), StatusCode::NOT_FOUND);
    let head = server
        .http
        .head(server.url(&format!("/containers/{id}/files/tree")))
        .header("x-api-key", KEY)
        .send()
        .await
        .expect("head");
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(
        head.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );

    // mkdir with parents; again is fine; over a file is a conflict.
    let (status, body) = answer(post("mkdir/made/a/b")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        body,
        json!({"path": "/workspace/made/a/b", "created": true})
    );
    let (status, body) = answer(post("mkdir/made/a/b")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["created"], false);
    let (status, body) = answer(post("mkdir/tree/a.txt")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "path_exists");
    assert_eq!(
        command(&server, KEY, &id, "stat -c '%u %a' made/a/b").await,
        "1000 755\n"
    );

    // Copy a tree: byte-identical, links kept as links, modes kept, owned by the sandbox user.
    let (status, body) =
        answer(post("copy").json(&json!({"source": "tree", "destination": "copies/tree2"}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"source": "/workspace/tree", "destination": "/workspace/copies/tree2", "type": "directory"})
    );
    let digests = command(
        &server,
        KEY,
        &id,
        "cd tree && find . -type f | sort | xargs sha256sum; cd ../copies/tree2 && find . -type f | sort | xargs sha256sum; readlink link; stat -c '%u %a' a.txt",
    )
    .await;
    let lines: Vec<&str> = digests.lines().collect();
    assert_eq!(lines.len(), 6, "{digests}");
    assert_eq!(lines[0..2], lines[2..4], "{digests}");
    assert_eq!(lines[4], "a.txt");
    assert_eq!(lines[5], "1000 600");
    // An existing destination: refused without overwrite, replaced with it.
    let (status, body) =
        answer(post("copy").json(&json!({"source": "tree/a.txt", "destination": "copies/tree2"})))
            .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "path_exists");
    let (status, body) =
        answer(post("copy").json(
            &json!({"source": "tree/link", "destination": "copies/tree2", "overwrite": true}),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["type"], "file",
        "a final link of the source is followed: {body}"
    );
    assert_eq!(
        command(&server, KEY, &id, "cat copies/tree2").await,
        "hello"
    );
    let (status, body) =
        answer(post("copy").json(&json!({"source": "tree", "destination": "tree/sub/inside"})))
            .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, body) =
        answer(post("copy").json(&json!({"source": "nope", "destination": "x"}))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "path_not_found");
    let (status, body) =
        answer(post("copy").json(&json!({"source": "tree", "destination": "x", "extra": 1}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    // Move: a rename; the link moves as a link.
    let (status, body) =
        answer(post("move").json(&json!({"source": "tree/link", "destination": "moved/link"})))
            .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["type"], "symlink");
    let (status, body) =
        answer(post("move").json(&json!({"source": "tree", "destination": "copies"}))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, body) = answer(
        post("move").json(&json!({"source": "tree", "destination": "copies", "overwrite": true})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        command(&server, KEY, &id, "ls; ls copies; readlink moved/link").await,
        "copies\nmade\nmoved\na.txt\nsub\na.txt\n"
    );
    let (status, body) =
        answer(post("move").json(&json!({"source": "copies", "destination": "copies/sub/x"})))
            .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    // Another tenant sees none of it.
    let (status, body) = answer(
        server
            .get(&format!("/containers/{id}/exists/copies"))
            .header("x-api-key", "bob"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "not_found");

    // A stat is one helper call: measured.
    let mut samples = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        let (status, _) = answer(get("stat/copies/a.txt")).await;
        assert_eq!(status, StatusCode::OK);
        samples.push(started.elapsed());
    }
    samples.sort();
    let p50 = samples[samples.len() / 2];
    eprintln!(
        "stat: p50 {:.1} ms, max {:.1} ms",
        p50.as_secs_f64() * 1000.0,
        samples[samples.len() - 1].as_secs_f64() * 1000.0
    );
    assert!(p50 < Duration::from_secs(2), "{p50:?}");
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
async fn the_same_operations_over_mcp() {
    const KEY: &str = "carol";
    let Some(server) = TestServer::start("file-ops-mcp", &[KEY]).await else {
        return;
    };
    let session = crate::mcp_sessions::open_session(&server, KEY).await;
    let next_id = std::sync::atomic::AtomicU64::new(10);
    let call = async |name: &str, arguments: Value| {
        let id = next_id.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let body = json!({
            "jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": name, "arguments": arguments}
        });
        let response = crate::mcp_sessions::mcp_post(&server, KEY, Some(&session), &body)
            .send()
            .await
            .expect("tools/call");
        rpc_result(&response.text().await.expect("body"), id)
    };
    let wrote = call("write_file", json!({"path": "m/a.txt", "content": "mcp"})).await;
    assert_eq!(wrote["isError"], false, "{wrote}");
    let stat = call("stat_file", json!({"path": "m/a.txt"})).await;
    assert_eq!(stat["isError"], false, "{stat}");
    let facts = &stat["structuredContent"];
    assert_eq!(facts["exists"], true);
    assert_eq!(facts["type"], "file");
    assert_eq!(facts["size"], 3);
    assert_eq!(facts["mode"], "0644");
    let missing = call("stat_file", json!({"path": "m/none"})).await;
    assert_eq!(missing["isError"], false, "{missing}");
    assert_eq!(missing["structuredContent"]["exists"], false);
    let made = call("make_directory", json!({"path": "m/d/e"})).await;
    assert_eq!(made["structuredContent"]["created"], true, "{made}");
    let copied = call(
        "copy_file",
        json!({"source": "m/a.txt", "destination": "m/d/e/b.txt", "overwrite": null}),
    )
    .await;
    assert_eq!(copied["isError"], false, "{copied}");
    let again = call(
        "copy_file",
        json!({"source": "m/a.txt", "destination": "m/d/e/b.txt"}),
    )
    .await;
    assert_eq!(again["isError"], true, "{again}");
    assert_eq!(again["structuredContent"]["error"]["code"], "path_exists");
    let moved = call(
        "move_file",
        json!({"source": "m/d", "destination": "n", "overwrite": false}),
    )
    .await;
    assert_eq!(moved["isError"], false, "{moved}");
    assert_eq!(moved["structuredContent"]["type"], "directory");
    let read = call("read_file", json!({"path": "n/e/b.txt"})).await;
    assert!(
        read["content"][0]["text"]
            .as_str()
            .is_some_and(|text| text.ends_with("mcp")),
        "{read}"
    );
    for (name, arguments) in [
        ("stat_file", json!({"path": "../etc/passwd"})),
        ("make_directory", json!({"path": "/etc/kbx"})),
        (
            "copy_file",
            json!({"source": "/etc/passwd", "destination": "p"}),
        ),
        ("move_file", json!({"source": "n", "destination": "../n"})),
    ] {
        let refused = call(name, arguments).await;
        assert_eq!(refused["isError"], true, "{name}: {refused}");
        assert_eq!(
            refused["structuredContent"]["error"]["code"], "path_outside_workspace",
            "{name}: {refused}"
        );
    }
}
