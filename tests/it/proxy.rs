//! The MCP proxy end to end: a real third-party stdio MCP server from PyPI (`mcp-server-time`),
//! installed into a sandbox from wheels downloaded on the host (the sandbox has no network),
//! registered over REST, called through the helper routes, and reached through
//! `/containers/{id}/mcp-proxy/{server}` by the official MCP Python SDK, curl and reqwest.

use std::path::{Path, PathBuf};
use std::process::Command as StdCommand;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{TestServer, curl, python_with_mcp, run_scenario};

/// The proxy test server beside mcp-server-time (progress, logs, a slow tool).
const PROGRESS_SERVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mcp/progress_server.py");
/// How the time server is started inside the sandbox.
const TIME_SERVER: &str = "time";
const PROGRESS: &str = "progress";
const SESSION: &str = "mcp-session-id";

fn initialize(id: Value) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-03-26",
            "capabilities": {},
            "clientInfo": {"name": "proxy-test", "version": "1"},
        },
    })
}

fn call(id: Value, tool: &str, arguments: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": arguments}})
}

/// The wheels of mcp-server-time and its dependencies for the sandbox's Python (3.11), downloaded
/// once with the test venv's pip and kept under the target directory.
pub(crate) fn time_server_wheels() -> PathBuf {
    static WHEELS: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let wheels = WHEELS.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("mcp-server-time-wheels");
        let marker = dir.join(".complete");
        if marker.exists() {
            return Ok(dir);
        }
        eprintln!("test setup: downloading mcp-server-time wheels into {dir:?}");
        let output = StdCommand::new(python_with_mcp())
            .args([
                "-m",
                "pip",
                "download",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args([
                "mcp-server-time",
                "--python-version",
                "3.11",
                "--only-binary=:all:",
            ])
            .arg("--dest")
            .arg(&dir)
            .output()
            .map_err(|error| format!("cannot run pip: {error}"))?;
        if !output.status.success() {
            return Err(format!(
                "pip download failed: {}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        std::fs::write(&marker, b"").map_err(|error| error.to_string())?;
        Ok(dir)
    });
    match wheels {
        Ok(dir) => dir.clone(),
        Err(error) => panic!("mcp-server-time wheels unavailable: {error}"),
    }
}

/// A tar of the wheels and the progress server, to unpack under `/workspace/mcp`.
fn bundle() -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    builder
        .append_dir_all("wheels", time_server_wheels())
        .expect("tar the wheels");
    builder
        .append_path_with_name(PROGRESS_SERVER, "progress_server.py")
        .expect("tar the progress server");
    builder.into_inner().expect("tar")
}

fn with_key(request: reqwest::RequestBuilder, key: Option<&str>) -> reqwest::RequestBuilder {
    match key {
        Some(key) => request.header("x-api-key", key),
        None => request,
    }
}

async fn json_of(response: reqwest::Response, expected: StatusCode) -> Value {
    let status = response.status();
    let body = response.text().await.expect("body");
    assert_eq!(status, expected, "unexpected status; body: {body}");
    serde_json::from_str(&body).unwrap_or_else(|error| panic!("not JSON ({error}): {body}"))
}

/// A sandbox with mcp-server-time installed from wheels (no network) and both test servers
/// registered; returns its id and the registration answer of the time server.
async fn sandbox_with_servers(server: &TestServer, key: Option<&str>) -> (String, Value) {
    let created = json_of(
        with_key(server.post("/containers"), key)
            .send()
            .await
            .expect("create"),
        StatusCode::CREATED,
    )
    .await;
    let id = created["id"].as_str().expect("id").to_string();
    let uploaded = with_key(
        server.post(&format!("/containers/{id}/directories/mcp")),
        key,
    )
    .header("content-type", "application/x-tar")
    .body(bundle())
    .send()
    .await
    .expect("upload");
    assert!(
        uploaded.status().is_success(),
        "upload: {}",
        uploaded.status()
    );
    let install = json_of(
        with_key(server.post(&format!("/containers/{id}/commands")), key)
            .json(&json!({
                "cmd": "python3 -m pip install --no-input --no-index --find-links /workspace/mcp/wheels mcp-server-time",
                "timeout": 300,
            }))
            .send()
            .await
            .expect("pip install"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(install["exit_code"], 0, "pip install failed: {install}");
    let registered = json_of(
        with_key(server.http.put(server.url(&format!("/containers/{id}/mcp/{TIME_SERVER}"))), key)
            .json(&json!({"server_params": {"command": "python3", "args": ["-m", "mcp_server_time", "--local-timezone", "Etc/UTC"]}}))
            .send()
            .await
            .expect("register"),
        StatusCode::OK,
    )
    .await;
    json_of(
        with_key(server.http.put(server.url(&format!("/containers/{id}/mcp/{PROGRESS}"))), key)
            .json(&json!({"server_params": {"command": "python3", "args": ["/workspace/mcp/progress_server.py"], "env": {"PYTHONUNBUFFERED": "1"}}}))
            .send()
            .await
            .expect("register the progress server"),
        StatusCode::OK,
    )
    .await;
    (id, registered)
}

/// The pids of processes in the sandbox whose command line contains `pattern`.
async fn processes(server: &TestServer, id: &str, pattern: &str) -> Vec<u32> {
    let listed = json_of(
        server
            .post(&format!("/containers/{id}/commands"))
            .json(&json!({"cmd": "ps -eo pid=,args="}))
            .send()
            .await
            .expect("ps"),
        StatusCode::OK,
    )
    .await;
    listed["stdout"]
        .as_str()
        .expect("stdout")
        .lines()
        .filter(|line| line.contains(pattern) && !line.contains("ps -eo"))
        .filter_map(|line| line.split_whitespace().next()?.parse().ok())
        .collect()
}

/// Waits until `count` processes match `pattern` (processes come and go as events inside the
/// container; ps is the only view of them from here).
async fn wait_for_processes(server: &TestServer, id: &str, pattern: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = processes(server, id, pattern).await;
        if found.len() == count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "expected {count} processes matching {pattern:?}, found {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A proxy client over reqwest: posts JSON-RPC and returns (status, session header, body).
struct ProxyClient<'a> {
    server: &'a TestServer,
    path: String,
}

impl<'a> ProxyClient<'a> {
    fn new(server: &'a TestServer, id: &str, name: &str) -> Self {
        Self {
            server,
            path: format!("/containers/{id}/mcp-proxy/{name}"),
        }
    }

    async fn post(
        &self,
        session: Option<&str>,
        body: &Value,
    ) -> (StatusCode, Option<String>, Value) {
        let mut request = self
            .server
            .post(&self.path)
            .header("accept", "application/json")
            .json(body);
        if let Some(session) = session {
            request = request.header(SESSION, session);
        }
        let response = request.send().await.expect("proxy post");
        let status = response.status();
        let session = response
            .headers()
            .get(SESSION)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string);
        let text = response.text().await.expect("body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|error| panic!("not JSON ({error}): {text}"))
        };
        (status, session, body)
    }

    /// `initialize` plus `notifications/initialized`; returns the session id.
    async fn open(&self) -> String {
        let (status, session, body) = self.post(None, &initialize(json!(0))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body["result"]["serverInfo"]["name"].is_string(), "{body}");
        let session = session.expect("Mcp-Session-Id on the initialize answer");
        let (status, _, _) = self
            .post(
                Some(&session),
                &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED);
        session
    }

    async fn delete(&self, session: &str) -> StatusCode {
        self.server
            .delete(&self.path)
            .header(SESSION, session)
            .send()
            .await
            .expect("delete")
            .status()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn helper_routes_register_list_and_call_a_real_server() {
    let Some(server) = TestServer::start("proxy-helper", &["key-one", "key-two"]).await else {
        return;
    };
    let key = Some("key-one");
    let (id, registered) = sandbox_with_servers(&server, key).await;
    let names = |info: &Value| {
        let mut names: Vec<String> = info["tools"]
            .as_array()
            .expect("tools")
            .iter()
            .map(|tool| tool["name"].as_str().expect("name").to_string())
            .collect();
        names.sort();
        names
    };
    assert_eq!(names(&registered), ["convert_time", "get_current_time"]);
    assert_eq!(registered["server_info"]["name"], "mcp-time");
    assert_eq!(
        registered["proxy_path"],
        format!("/containers/{id}/mcp-proxy/time")
    );

    let listed = json_of(
        with_key(server.get(&format!("/containers/{id}/mcp/time")), key)
            .send()
            .await
            .expect("list"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(names(&listed), ["convert_time", "get_current_time"]);
    assert!(
        listed["tools"][0]["inputSchema"]["properties"].is_object(),
        "{listed}"
    );

    let called = json_of(
        with_key(
            server.post(&format!("/containers/{id}/mcp/time/get_current_time")),
            key,
        )
        .json(&json!({"params": {"timezone": "Asia/Tokyo"}}))
        .send()
        .await
        .expect("call"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(called["isError"], false, "{called}");
    assert_eq!(
        called["structuredContent"]["timezone"], "Asia/Tokyo",
        "{called}"
    );
    assert!(
        called["content"][0]["text"]
            .as_str()
            .expect("text")
            .contains("Asia/Tokyo"),
        "{called}"
    );

    // A tool's own failure is a result with isError, not an HTTP error.
    let failed = json_of(
        with_key(
            server.post(&format!("/containers/{id}/mcp/time/get_current_time")),
            key,
        )
        .json(&json!({"params": {"timezone": "Not/A_Zone"}}))
        .send()
        .await
        .expect("call"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(failed["isError"], true, "{failed}");

    // Errors: unknown server, another tenant, bad bodies, a command that is not an MCP server.
    let unknown = json_of(
        with_key(server.get(&format!("/containers/{id}/mcp/nope")), key)
            .send()
            .await
            .expect("unknown"),
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(unknown["error"]["code"], "mcp_server_not_found");
    for path in [
        format!("/containers/{id}/mcp/time"),
        format!("/containers/{id}/mcp-proxy/time"),
    ] {
        let other = with_key(server.get(&path), Some("key-two"))
            .send()
            .await
            .expect("other tenant");
        assert!(
            other.status() == StatusCode::NOT_FOUND
                || other.status() == StatusCode::METHOD_NOT_ALLOWED,
            "{path}: {}",
            other.status()
        );
    }
    let other = with_key(
        server.post(&format!("/containers/{id}/mcp-proxy/time")),
        Some("key-two"),
    )
    .json(&initialize(json!(1)))
    .send()
    .await
    .expect("other tenant proxy");
    assert_eq!(other.status(), StatusCode::NOT_FOUND);
    let other = with_key(
        server.post(&format!("/containers/{id}/mcp/time/get_current_time")),
        Some("key-two"),
    )
    .json(&json!({"params": {"timezone": "UTC"}}))
    .send()
    .await
    .expect("other tenant call");
    assert_eq!(other.status(), StatusCode::NOT_FOUND);

    let put = |name: &str, body: Value| {
        with_key(
            server
                .http
                .put(server.url(&format!("/containers/{id}/mcp/{name}"))),
            key,
        )
        .json(&body)
        .send()
    };
    for (name, body) in [
        (
            "bad name!",
            json!({"server_params": {"command": "python3"}}),
        ),
        ("x", json!({"server_params": {"command": ""}})),
        (
            "x",
            json!({"server_params": {"command": "python3", "env": {"1BAD": "v"}}}),
        ),
        ("x", json!({"command": "python3"})),
        (
            "x",
            json!({"server_params": {"command": "python3", "extra": 1}}),
        ),
    ] {
        let response = put(name, body.clone()).await.expect("put");
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{name} {body}"
        );
    }
    let not_mcp = json_of(
        put(
            "broken",
            json!({"server_params": {"command": "sh", "args": ["-c", "echo boom >&2; exit 3"]}}),
        )
        .await
        .expect("put"),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(not_mcp["error"]["code"], "mcp_server_failed");
    assert!(
        not_mcp["error"]["message"]
            .as_str()
            .expect("message")
            .contains("boom"),
        "the server's stderr explains the failure: {not_mcp}"
    );
    let missing = put(
        "missing",
        json!({"server_params": {"command": "no-such-program"}}),
    )
    .await
    .expect("put");
    assert_eq!(missing.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let bad_params = with_key(
        server.post(&format!("/containers/{id}/mcp/time/get_current_time")),
        key,
    )
    .json(&json!({"params": [1, 2]}))
    .send()
    .await
    .expect("call");
    assert_eq!(bad_params.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

/// Runs the SDK scenario against the proxy URL.
async fn sdk_scenario(mode: &str, url: &str) -> Value {
    run_scenario(&["proxy", mode, url], Duration::from_secs(300)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn python_sdk_reaches_a_real_server_through_the_proxy() {
    let Some(server) = TestServer::start("proxy-sdk", &[]).await else {
        return;
    };
    let (id, _) = sandbox_with_servers(&server, None).await;
    let url = server.url(&format!("/containers/{id}/mcp-proxy/time"));
    let legacy = sdk_scenario("legacy", &url).await;
    assert_eq!(legacy["tools"], json!(["convert_time", "get_current_time"]));
    // The SDK's default mode falls back to the handshake when the server does not speak
    // 2026-07-28 (mcp-server-time answers initialize with its own revision).
    let auto = sdk_scenario("auto", &url).await;
    assert_eq!(auto["tools"], json!(["convert_time", "get_current_time"]));
    // Each SDK client ended its session (DELETE): only the helper process is left.
    wait_for_processes(&server, &id, "mcp_server_time", 1).await;
}

/// The data lines of an SSE body, parsed.
fn sse_messages(body: &str) -> Vec<Value> {
    body.split("\n\n")
        .filter_map(|event| {
            let data: String = event
                .lines()
                .filter_map(|line| line.strip_prefix("data:"))
                .map(str::trim_start)
                .collect();
            (!data.is_empty()).then(|| serde_json::from_str(&data).expect("SSE data is JSON"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_batches_sse_crashes_and_bad_input() {
    let Some(server) = TestServer::start("proxy-sessions", &[]).await else {
        return;
    };
    let (id, _) = sandbox_with_servers(&server, None).await;
    let time = ProxyClient::new(&server, &id, "time");
    wait_for_processes(&server, &id, "mcp_server_time", 1).await;

    // Two sessions, two processes (beside the helper).
    let first = time.open().await;
    let second = time.open().await;
    assert_ne!(first, second);
    wait_for_processes(&server, &id, "mcp_server_time", 3).await;

    // Concurrent requests in one session with the same id each get their own answer.
    let zones = [
        "Europe/Paris",
        "Asia/Tokyo",
        "America/New_York",
        "Australia/Sydney",
    ];
    let requests: Vec<Value> = zones
        .iter()
        .map(|zone| call(json!(7), "get_current_time", json!({"timezone": zone})))
        .collect();
    let answers = futures::future::join_all(
        requests
            .iter()
            .map(|request| time.post(Some(&first), request)),
    )
    .await;
    for (zone, (status, _, body)) in zones.iter().zip(&answers) {
        assert_eq!(*status, StatusCode::OK, "{body}");
        assert_eq!(body["id"], 7);
        assert_eq!(
            body["result"]["structuredContent"]["timezone"], *zone,
            "{body}"
        );
    }

    // The seed's shorthand.
    let (status, _, body) = time
        .post(
            Some(&first),
            &json!({"jsonrpc": "2.0", "id": "s", "method": "tools/call", "params": {"tool_name": "get_current_time", "params": {"timezone": "Etc/UTC"}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["result"]["structuredContent"]["timezone"], "Etc/UTC",
        "{body}"
    );

    // curl: a batch of two requests is answered by a batch of two responses.
    let url = server.url(&format!("/containers/{id}/mcp-proxy/time"));
    let session_header = format!("{SESSION}: {first}");
    let batch = json!([
        call(json!(1), "get_current_time", json!({"timezone": "Europe/London"})),
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
    ])
    .to_string();
    let (status, _, body) = curl(&[
        "-H",
        "content-type: application/json",
        "-H",
        "accept: application/json",
        "-H",
        &session_header,
        "--data",
        &batch,
        &url,
    ])
    .await;
    assert_eq!(status, 200, "{body}");
    let answers: Value = serde_json::from_str(&body).expect("batch JSON");
    let answers = answers.as_array().expect("a batch answer");
    assert_eq!(answers.len(), 2, "{body}");
    assert_eq!(answers[0]["id"], 1);
    assert_eq!(
        answers[0]["result"]["structuredContent"]["timezone"],
        "Europe/London"
    );
    assert_eq!(answers[1]["id"], 2);
    assert_eq!(
        answers[1]["result"]["tools"]
            .as_array()
            .expect("tools")
            .len(),
        2
    );

    // curl: Accept text/event-stream gets SSE.
    let single = call(
        json!(3),
        "get_current_time",
        json!({"timezone": "Asia/Kolkata"}),
    )
    .to_string();
    let (status, headers, body) = curl(&[
        "-N",
        "-H",
        "content-type: application/json",
        "-H",
        "accept: text/event-stream",
        "-H",
        &session_header,
        "--data",
        &single,
        &url,
    ])
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{headers}"
    );
    let messages = sse_messages(&body);
    assert_eq!(messages.len(), 1, "{body}");
    assert_eq!(messages[0]["id"], 3);
    assert_eq!(
        messages[0]["result"]["structuredContent"]["timezone"],
        "Asia/Kolkata"
    );

    // SSE carries the server's progress and log notifications for the request, then the answer.
    let progress = ProxyClient::new(&server, &id, PROGRESS);
    let progress_session = progress.open().await;
    let countdown = json!({"jsonrpc": "2.0", "id": "c", "method": "tools/call", "params": {"name": "countdown", "arguments": {"steps": 3}, "_meta": {"progressToken": "tok"}}}).to_string();
    let progress_url = server.url(&format!("/containers/{id}/mcp-proxy/{PROGRESS}"));
    let progress_header = format!("{SESSION}: {progress_session}");
    let (status, _, body) = curl(&[
        "-N",
        "-H",
        "content-type: application/json",
        "-H",
        "accept: application/json, text/event-stream",
        "-H",
        &progress_header,
        "--data",
        &countdown,
        &progress_url,
    ])
    .await;
    assert_eq!(status, 200, "{body}");
    let messages = sse_messages(&body);
    let progress_events: Vec<&Value> = messages
        .iter()
        .filter(|message| message["method"] == "notifications/progress")
        .collect();
    assert_eq!(progress_events.len(), 3, "{body}");
    assert!(
        progress_events
            .iter()
            .all(|event| event["params"]["progressToken"] == "tok")
    );
    assert!(
        messages
            .iter()
            .any(|message| message["method"] == "notifications/message"),
        "log notifications: {body}"
    );
    let last = messages.last().expect("an answer");
    assert_eq!(last["id"], "c");
    assert_eq!(last["result"]["content"][0]["text"], "counted 3", "{body}");

    // DELETE stops one session's process; the other keeps working.
    let before = processes(&server, &id, "mcp_server_time").await;
    assert_eq!(time.delete(&second).await, StatusCode::NO_CONTENT);
    let after = processes(&server, &id, "mcp_server_time").await;
    assert_eq!(after.len(), 2, "before {before:?}, after {after:?}");
    let (status, _, body) = time
        .post(
            Some(&second),
            &call(json!(1), "get_current_time", json!({"timezone": "UTC"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], -32001);
    let (status, _, body) = time
        .post(
            Some(&first),
            &call(json!(1), "get_current_time", json!({"timezone": "UTC"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["result"]["isError"], false);
    assert_eq!(time.delete(&second).await, StatusCode::NOT_FOUND);

    // Bad input: JSON-RPC errors with 4xx statuses, and the session is not disturbed.
    let raw = |session: Option<String>, body: &'static str| {
        let mut request = server
            .post(&format!("/containers/{id}/mcp-proxy/time"))
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .body(body);
        if let Some(session) = session {
            request = request.header(SESSION, session);
        }
        request.send()
    };
    let (status, body) = {
        let response = raw(Some(first.clone()), "{not json").await.expect("post");
        (
            response.status(),
            response.json::<Value>().await.expect("JSON"),
        )
    };
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], -32700);
    let response = raw(
        Some(first.clone()),
        r#"{"jsonrpc":"2.0","id":1,"method":5}"#,
    )
    .await
    .expect("post");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        response.json::<Value>().await.expect("JSON")["error"]["code"],
        -32600
    );
    let response = raw(None, r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#)
        .await
        .expect("post");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = raw(
        Some("mcp_unknown".into()),
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
    )
    .await
    .expect("post");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let (status, _, body) = time
        .post(
            Some(&first),
            &json!([{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, "junk"]),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body[0]["id"], 1);
    assert_eq!(body[1]["error"]["code"], -32600, "{body}");
    let unregistered = ProxyClient::new(&server, &id, "nope");
    let (status, _, _) = unregistered.post(None, &initialize(json!(1))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Killing the process mid-request: the waiting request gets a JSON-RPC error at once, the
    // session is gone, and a new initialize starts a fresh process. The request is known to be
    // in flight when its first progress notification arrives.
    let long = json!({"jsonrpc": "2.0", "id": "w", "method": "tools/call", "params": {"name": "countdown", "arguments": {"steps": 100000}, "_meta": {"progressToken": 1}}});
    let response = server
        .post(&format!("/containers/{id}/mcp-proxy/{PROGRESS}"))
        .header(SESSION, &progress_session)
        .header("accept", "text/event-stream")
        .json(&long)
        .send()
        .await
        .expect("long call");
    assert_eq!(response.status(), StatusCode::OK);
    let mut stream = response.bytes_stream();
    let mut received = String::new();
    while !received.contains("notifications/progress") {
        let chunk = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("progress within 30 s")
            .expect("the stream goes on")
            .expect("chunk");
        received.push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
    }
    let killed = json_of(
        server
            .post(&format!("/containers/{id}/commands"))
            .json(&json!({"cmd": "pkill -KILL -f [p]rogress_server.py"}))
            .send()
            .await
            .expect("kill"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(killed["exit_code"], 0, "{killed}");
    let killed_at = Instant::now();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(chunk) = stream.next().await {
            received.push_str(std::str::from_utf8(&chunk.expect("chunk")).expect("UTF-8"));
        }
    })
    .await
    .expect("the waiting request did not hang");
    assert!(
        killed_at.elapsed() < Duration::from_secs(5),
        "the error came long after the kill"
    );
    let last = sse_messages(&received).pop().expect("an answer");
    assert_eq!(last["id"], "w", "{received}");
    assert_eq!(last["error"]["code"], -32002, "{received}");
    let (status, _, _) = progress
        .post(
            Some(&progress_session),
            &call(json!(1), "countdown", json!({"steps": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "a dead session is not found");
    let fresh = progress.open().await;
    let (status, _, body) = progress
        .post(
            Some(&fresh),
            &call(json!(1), "countdown", json!({"steps": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["result"]["content"][0]["text"], "counted 1", "{body}");
    // The helper route starts its process again too.
    let called = json_of(
        server
            .post(&format!("/containers/{id}/mcp/{PROGRESS}/countdown"))
            .json(&json!({"params": {"steps": 1}}))
            .send()
            .await
            .expect("helper call"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(called["content"][0]["text"], "counted 1");
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_sessions_expire_and_their_process_is_gone() {
    let idle = Duration::from_secs(3);
    let Some(server) =
        TestServer::start_with("proxy-idle", &[], |config| config.max_idle = idle).await
    else {
        return;
    };
    let (id, _) = sandbox_with_servers(&server, None).await;
    let time = ProxyClient::new(&server, &id, "time");
    let session = time.open().await;
    wait_for_processes(&server, &id, "mcp_server_time", 2).await;
    let opened = Instant::now();
    // Activity keeps it alive past one idle period.
    while opened.elapsed() < idle + Duration::from_secs(1) {
        let (status, _, _) = time
            .post(
                Some(&session),
                &call(json!(1), "get_current_time", json!({"timezone": "UTC"})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "an active session expired");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Then, left alone, it expires: its process goes (only the helper remains).
    wait_for_processes(&server, &id, "mcp_server_time", 1).await;
    let (status, _, body) = time
        .post(
            Some(&session),
            &call(json!(1), "get_current_time", json!({"timezone": "UTC"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}
