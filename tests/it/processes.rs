//! Background processes end to end over the real router and real Docker: a web server started in
//! the background and reached from inside the sandbox, output streamed over a real WebSocket
//! client and over SSE (curl) with replay, signals, stdin, the per-sandbox limit, tenancy and
//! path attacks, and the MCP tools through the official Python SDK.

use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::common::{TestServer, curl, run_scenario};

/// How long any one wait for a process's event may take.
const EVENT_DEADLINE: Duration = Duration::from_secs(60);

async fn json_of(response: reqwest::Response, expected: StatusCode) -> Value {
    let status = response.status();
    let body = response.text().await.expect("body");
    assert_eq!(status, expected, "unexpected status; body: {body}");
    serde_json::from_str(&body).unwrap_or_else(|error| panic!("not JSON ({error}): {body}"))
}

fn code_of(body: &Value) -> &str {
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not the error shape: {body}"))
}

/// A request with the API key, when one is given.
fn keyed(request: reqwest::RequestBuilder, key: Option<&str>) -> reqwest::RequestBuilder {
    match key {
        Some(key) => request.header("x-api-key", key),
        None => request,
    }
}

async fn create(server: &TestServer, key: Option<&str>) -> String {
    let request = keyed(server.post("/containers"), key).json(&json!({}));
    let body = json_of(request.send().await.expect("create"), StatusCode::CREATED).await;
    body["id"].as_str().expect("id").to_string()
}

async fn start(server: &TestServer, key: Option<&str>, id: &str, body: Value) -> Value {
    let request = keyed(server.post(&format!("/containers/{id}/processes")), key).json(&body);
    json_of(request.send().await.expect("start"), StatusCode::CREATED).await
}

async fn status(server: &TestServer, id: &str, pid: &str) -> Value {
    let request = server.get(&format!("/containers/{id}/processes/{pid}"));
    json_of(request.send().await.expect("status"), StatusCode::OK).await
}

async fn command(server: &TestServer, id: &str, cmd: &str) -> Value {
    let request = server
        .post(&format!("/containers/{id}/commands"))
        .json(&json!({ "cmd": cmd }));
    json_of(request.send().await.expect("command"), StatusCode::OK).await
}

/// Reads a process's SSE stream (from `since`) until `done` says so about the messages so far;
/// returns them. Panics past the deadline.
async fn sse_until(
    server: &TestServer,
    id: &str,
    pid: &str,
    since: u64,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let response = server
        .get(&format!(
            "/containers/{id}/processes/{pid}/events?since={since}"
        ))
        .send()
        .await
        .expect("events");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let mut messages = Vec::new();
    let read = async {
        while let Some(chunk) = body.next().await {
            buffer.push_str(std::str::from_utf8(&chunk.expect("chunk")).expect("UTF-8"));
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                if let Some(data) = block.lines().find_map(|line| line.strip_prefix("data: ")) {
                    messages.push(serde_json::from_str::<Value>(data).expect("JSON data"));
                }
                if done(&messages) {
                    return;
                }
            }
        }
    };
    tokio::time::timeout(EVENT_DEADLINE, read)
        .await
        .unwrap_or_else(|_| panic!("no such event within {EVENT_DEADLINE:?}"));
    messages
}

/// Everything the messages carry on stdout and stderr.
fn printed(messages: &[Value]) -> String {
    messages
        .iter()
        .filter(|m| m["type"] == "stdout" || m["type"] == "stderr")
        .filter_map(|m| m["data"].as_str())
        .collect()
}

/// Checks that `messages` cover every event from 0 to the exit without a gap or a repeat, each
/// kept one as itself and the rest in `dropped` markers, and that the lines printed, all of
/// the form `%06d`, come in order.
fn assert_accounted_for(messages: &[Value]) {
    let mut next = 0;
    for message in messages {
        let seq = message["seq"].as_u64().expect("a seq on every message");
        assert_eq!(seq, next, "a gap or a repeat at {message}");
        next = match message["type"].as_str() {
            Some("dropped") => seq + message["events"].as_u64().expect("events"),
            _ => seq + 1,
        };
    }
    assert_eq!(messages.last().map(|m| &m["type"]), Some(&json!("exit")));
    // Between two drops the output is whole; a drop may cut a line on either side of it (a
    // read holds any number of bytes), so the first and last line of a stretch may be partial.
    let mut stretches = vec![String::new()];
    for message in messages {
        match message["type"].as_str() {
            Some("dropped") => stretches.push(String::new()),
            Some("stdout") => stretches
                .last_mut()
                .expect("a stretch")
                .push_str(message["data"].as_str().expect("data")),
            _ => {}
        }
    }
    let mut numbers: Vec<u64> = Vec::new();
    for (index, stretch) in stretches.iter().enumerate() {
        let lines: Vec<&str> = stretch.split_inclusive('\n').collect();
        let whole = lines
            .iter()
            .enumerate()
            .filter(|(position, line)| !(index > 0 && *position == 0) && line.len() == 7)
            .map(|(_, line)| line.trim_end().parse::<u64>().expect("a number per line"));
        numbers.extend(whole);
    }
    assert!(
        numbers.windows(2).all(|pair| pair[0] < pair[1]),
        "out of order"
    );
}

fn has_exit(messages: &[Value]) -> bool {
    messages.iter().any(|m| m["type"] == "exit")
}

/// A WebSocket to a process's stream.
async fn websocket(
    server: &TestServer,
    id: &str,
    pid: &str,
    since: u64,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let url = format!(
        "{}/containers/{id}/processes/{pid}/ws?since={since}",
        server.base.replace("http://", "ws://")
    );
    let request = url.into_client_request().expect("request");
    let (socket, response) =
        tokio::time::timeout(EVENT_DEADLINE, tokio_tungstenite::connect_async(request))
            .await
            .expect("connect in time")
            .expect("WebSocket handshake");
    assert_eq!(response.status(), 101);
    socket
}

/// The next JSON text message of a socket, with when it arrived; `None` once it closed.
async fn next_message(
    socket: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Option<(Value, Instant)> {
    loop {
        let message = tokio::time::timeout(EVENT_DEADLINE, socket.next())
            .await
            .expect("a message in time")?;
        match message.expect("WebSocket message") {
            Message::Text(text) => {
                return Some((serde_json::from_str(&text).expect("JSON"), Instant::now()));
            }
            Message::Close(_) => return None,
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_web_server_in_the_background_answers_then_dies_of_its_signal() {
    let Some(server) = TestServer::start("proc-web", &[]).await else {
        return;
    };
    let id = create(&server, None).await;
    let started = start(
        &server,
        None,
        &id,
        json!({"cmd": "python3 -m http.server 8080", "tag": "web", "env": {"PYTHONUNBUFFERED": "1"}}),
    )
    .await;
    assert_eq!(started["pid"], 1, "{started}");
    assert_eq!(started["state"], "running");
    assert_eq!(started["cwd"], "/workspace");
    assert!(started["os_pid"].as_u64().expect("os pid") > 1, "{started}");

    // Ready when it says so, not after a guess at a delay.
    let ready = sse_until(&server, &id, "web", 0, |m| {
        printed(m).contains("Serving HTTP") || has_exit(m)
    })
    .await;
    assert!(printed(&ready).contains("Serving HTTP"), "{ready:?}");

    let listed = json_of(
        server
            .get(&format!("/containers/{id}/processes"))
            .send()
            .await
            .expect("list"),
        StatusCode::OK,
    )
    .await;
    let processes = listed["processes"].as_array().expect("list");
    assert_eq!(processes.len(), 1, "{listed}");
    assert_eq!(processes[0]["tag"], "web");
    assert_eq!(processes[0]["state"], "running");

    // The image has no curl: Python's urllib, run as a command inside the sandbox.
    let fetched = command(
        &server,
        &id,
        "python3 -c \"import urllib.request as u; r = u.urlopen('http://localhost:8080/'); print(r.status, 'Directory listing' in r.read().decode())\"",
    )
    .await;
    assert_eq!(fetched["stdout"], "200 True\n", "{fetched}");
    // The server logged the request on its stderr.
    let logged = sse_until(&server, &id, "1", 0, |m| printed(m).contains("GET / HTTP")).await;
    assert!(logged.iter().any(|m| m["type"] == "stderr"), "{logged:?}");

    // The process runs as the sandbox user, not root.
    let os_pid = started["os_pid"].as_u64().expect("os pid");
    let owner = command(&server, &id, &format!("stat -c %u /proc/{os_pid}")).await;
    assert_eq!(owner["stdout"], "1000\n", "{owner}");

    // SIGTERM by default: the process ends, and its status names the signal.
    let killed = server
        .post(&format!("/containers/{id}/processes/web/kill"))
        .json(&json!({}))
        .send()
        .await
        .expect("kill");
    assert_eq!(killed.status(), StatusCode::OK);
    let all = sse_until(&server, &id, "web", 0, has_exit).await;
    let exit = all.last().expect("exit");
    assert_eq!(
        (
            exit["type"].as_str(),
            exit["code"].as_i64(),
            exit["signal"].as_str()
        ),
        (Some("exit"), Some(143), Some("SIGTERM")),
        "{all:?}"
    );
    let ended = status(&server, &id, "web").await;
    assert_eq!(ended["state"], "killed", "{ended}");
    assert_eq!(ended["signal"], "SIGTERM");
    assert_eq!(ended["exit_code"], 143);
    let gone = command(&server, &id, "python3 -c \"import urllib.request as u; u.urlopen('http://localhost:8080/')\" 2>&1 | tail -1").await;
    assert!(
        gone["stdout"]
            .as_str()
            .is_some_and(|out| out.starts_with("urllib.error.URLError")),
        "{gone}"
    );
    // Killing an ended process is a conflict; an unknown pid is not found.
    let again = server
        .post(&format!("/containers/{id}/processes/web/kill"))
        .json(&json!({"signal": "SIGKILL"}))
        .send()
        .await
        .expect("kill again");
    assert_eq!(
        code_of(&json_of(again, StatusCode::CONFLICT).await),
        "process_ended"
    );
    for unknown in ["2", "nope", "99999999999999999999999"] {
        let response = server
            .get(&format!("/containers/{id}/processes/{unknown}"))
            .send()
            .await
            .expect("unknown");
        assert_eq!(
            code_of(&json_of(response, StatusCode::NOT_FOUND).await),
            "process_not_found"
        );
    }

    // The SSE stream over curl, with the same message shapes and event ids as cursors.
    let url = server.url(&format!("/containers/{id}/processes/web/events"));
    let (code, headers, body) = curl(&["-N", &url]).await;
    assert_eq!(code, 200, "{headers}");
    assert!(headers.contains("text/event-stream"), "{headers}");
    assert!(
        body.contains("event: stdout\nid: 0\ndata: {\"type\":\"stdout\",\"seq\":0,\"data\":\""),
        "{body}"
    );
    assert!(body.contains("event: stderr\n"), "{body}");
    assert!(
        body.contains("event: exit\n") && body.contains("\"type\":\"exit\",\"seq\":"),
        "{body}"
    );
    assert!(
        body.trim_end()
            .ends_with("\"code\":143,\"signal\":\"SIGTERM\"}"),
        "{body}"
    );
    // Last-Event-ID resumes after that event: only the exit is left after the last output.
    let last_output = all.len() as u64 - 2;
    let (code, _, resumed) =
        curl(&["-N", "-H", &format!("Last-Event-ID: {last_output}"), &url]).await;
    assert_eq!(code, 200);
    assert_eq!(resumed.matches("data: ").count(), 1, "{resumed}");
    assert!(resumed.contains("\"type\":\"exit\""), "{resumed}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_gets_lines_as_printed_then_the_exit_and_a_reconnect_replays() {
    let Some(server) = TestServer::start("proc-ws", &[]).await else {
        return;
    };
    let id = create(&server, None).await;
    let started = start(
        &server,
        None,
        &id,
        json!({"cmd": "for i in 1 2 3 4 5 6; do echo line $i; sleep 0.4; done; exit 3"}),
    )
    .await;
    let pid = started["pid"].to_string();
    let mut socket = websocket(&server, &id, &pid, 0).await;
    let mut lines = Vec::new();
    let mut first_at = None;
    while lines.len() < 2 {
        let (message, at) = next_message(&mut socket).await.expect("a line");
        assert_eq!(message["type"], "stdout", "{message}");
        first_at.get_or_insert(at);
        lines.push(message);
    }
    // The client goes away after two lines, while the loop still runs.
    let _ = socket.close(None).await;
    drop(socket);
    let first_at = first_at.expect("first line");
    let cursor = lines.last().expect("line")["seq"].as_u64().expect("seq") + 1;

    let mut socket = websocket(&server, &id, &pid, cursor).await;
    let mut rest = Vec::new();
    let mut exit = None;
    while let Some((message, at)) = next_message(&mut socket).await {
        if message["type"] == "exit" {
            exit = Some((message, at));
        } else {
            rest.push(message);
        }
    }
    let (exit, exit_at) = exit.expect("an exit message");
    assert_eq!(exit["code"], 3, "{exit}");
    assert!(exit.get("signal").is_none(), "{exit}");
    // The first line came while the loop was still running (it runs about 2.4 s).
    assert!(
        exit_at.duration_since(first_at) > Duration::from_millis(1200),
        "first line {first_at:?}, exit {exit_at:?}"
    );
    let text = |messages: &[Value]| printed(messages);
    assert!(text(&lines).starts_with("line 1\n"), "{lines:?}");
    // The reconnect replayed exactly what the first client missed, and nothing twice.
    let mut all = text(&lines);
    all.push_str(&text(&rest));
    assert_eq!(
        all, "line 1\nline 2\nline 3\nline 4\nline 5\nline 6\n",
        "{lines:?} {rest:?}"
    );
    // A late client from the start sees the whole run.
    let mut late = websocket(&server, &id, &pid, 0).await;
    let mut replay = Vec::new();
    while let Some((message, _)) = next_message(&mut late).await {
        replay.push(message);
    }
    assert_eq!(printed(&replay), all);
    assert_eq!(replay.last().expect("exit")["type"], "exit");
    let ended = status(&server, &id, &pid).await;
    assert_eq!(
        (ended["state"].as_str(), ended["exit_code"].as_i64()),
        (Some("exited"), Some(3))
    );

    // Not a WebSocket handshake: a 4xx JSON error, never a 5xx.
    let plain = server
        .get(&format!("/containers/{id}/processes/{pid}/ws"))
        .send()
        .await
        .expect("plain GET");
    let plain_status = plain.status();
    assert!(plain_status.is_client_error(), "{plain_status}");
    let body = json_of(plain, plain_status).await;
    assert!(!code_of(&body).is_empty(), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn stdin_reaches_the_process_and_closing_it_ends_it() {
    let Some(server) = TestServer::start("proc-stdin", &[]).await else {
        return;
    };
    let id = create(&server, None).await;
    let started = start(&server, None, &id, json!({"cmd": "cat", "tag": "cat"})).await;
    assert_eq!(started["stdin_open"], true);
    let write = |body: Value| {
        server
            .post(&format!("/containers/{id}/processes/cat/stdin"))
            .json(&body)
            .send()
    };
    json_of(
        write(json!({"data": "hello\n"})).await.expect("write"),
        StatusCode::OK,
    )
    .await;
    let echoed = sse_until(&server, &id, "cat", 0, |m| printed(m) == "hello\n").await;
    assert!(!has_exit(&echoed));
    let closed = json_of(
        write(json!({"data": "bye", "close": true}))
            .await
            .expect("write"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(closed["stdin_open"], false, "{closed}");
    let all = sse_until(&server, &id, "cat", 0, has_exit).await;
    assert_eq!(printed(&all), "hello\nbye");
    assert_eq!(all.last().expect("exit")["code"], 0);
    let refused = write(json!({"data": "more"})).await.expect("write");
    assert_eq!(
        code_of(&json_of(refused, StatusCode::CONFLICT).await),
        "stdin_closed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_tenants_paths_signals_and_the_sandbox_end_bound_processes() {
    // A small replay buffer, to see old output dropped and said so.
    let Some(server) = TestServer::start_with("proc-attack", &["key-a", "key-b"], |config| {
        config.output_limit_bytes = 16 * 1024;
    })
    .await
    else {
        return;
    };
    let a = Some("key-a");
    let id = create(&server, a).await;
    let post = |path: String, key: Option<&str>, body: Value| {
        keyed(server.post(&path), key).json(&body).send()
    };
    let base = format!("/containers/{id}/processes");

    // The group: a kill takes the process's children along.
    let group = start(
        &server,
        a,
        &id,
        json!({"cmd": "sleep 1000 & sleep 1001 & wait", "tag": "group"}),
    )
    .await;
    assert_eq!(group["state"], "running");

    // Another tenant sees none of it, and can touch none of it.
    let b = Some("key-b");
    for (method, path) in [
        ("GET", base.clone()),
        ("GET", format!("{base}/group")),
        ("GET", format!("{base}/1")),
        ("GET", format!("{base}/1/events")),
        ("GET", format!("{base}/1/ws")),
        ("POST", format!("{base}/1/kill")),
        ("POST", format!("{base}/1/stdin")),
        ("POST", base.clone()),
    ] {
        let request = match method {
            "GET" => keyed(server.get(&path), b),
            _ => keyed(server.post(&path), b).json(&json!({"cmd": "id", "signal": null})),
        };
        let response = request.send().await.expect("attack");
        let status = response.status();
        assert!(
            status == StatusCode::NOT_FOUND || status == StatusCode::UNPROCESSABLE_ENTITY,
            "{method} {path}: {status}"
        );
        if status == StatusCode::NOT_FOUND {
            let body = json_of(response, StatusCode::NOT_FOUND).await;
            assert_eq!(code_of(&body), "not_found", "{method} {path}: {body}");
        }
    }
    // The kill and the stdin attacks with valid bodies: still not found.
    for (path, body) in [
        (format!("{base}/1/kill"), json!({"signal": "SIGKILL"})),
        (
            format!("{base}/1/stdin"),
            json!({"data": "x", "close": true}),
        ),
    ] {
        let response = post(path, b, body).await.expect("attack");
        assert_eq!(
            code_of(&json_of(response, StatusCode::NOT_FOUND).await),
            "not_found"
        );
    }
    assert_eq!(
        keyed(server.get(&format!("{base}/group")), a)
            .send()
            .await
            .expect("get")
            .status(),
        StatusCode::OK
    );

    // The working directory stays inside /workspace.
    for cwd in ["../etc", "/etc", "/workspace/../root", "a/../../tmp"] {
        let response = post(base.clone(), a, json!({"cmd": "pwd", "cwd": cwd}))
            .await
            .expect("start");
        assert_eq!(
            code_of(&json_of(response, StatusCode::BAD_REQUEST).await),
            "path_outside_workspace",
            "{cwd}"
        );
    }
    let inside = start(
        &server,
        a,
        &id,
        json!({"cmd": "mkdir -p /workspace/sub && cd sub && pwd", "cwd": "."}),
    )
    .await;
    let pid = inside["pid"].to_string();
    let done = sse_until_keyed(&server, a, &id, &pid).await;
    assert_eq!(printed(&done), "/workspace/sub\n");
    let missing = start(&server, a, &id, json!({"cmd": "pwd", "cwd": "no/such/dir"})).await;
    let done = sse_until_keyed(&server, a, &id, &missing["pid"].to_string()).await;
    assert_eq!(done.last().expect("exit")["code"], 127, "{done:?}");

    // Bad input is a 4xx.
    for (body, expected) in [
        (json!({"cmd": ""}), StatusCode::UNPROCESSABLE_ENTITY),
        (
            json!({"cmd": "id", "tag": "123"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"cmd": "id", "tag": "a b"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"cmd": "id", "env": {"KERNELBOX_X": "1"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"cmd": "id", "bogus": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"cmd": "sleep 1", "tag": "group"}),
            StatusCode::CONFLICT,
        ),
    ] {
        let response = post(base.clone(), a, body.clone()).await.expect("start");
        assert_eq!(response.status(), expected, "{body}");
    }
    for signal in ["SIGBOGUS", "9", "-KILL", "TERM; id"] {
        let response = post(format!("{base}/group/kill"), a, json!({"signal": signal}))
            .await
            .expect("kill");
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{signal}"
        );
    }

    // More output than the replay buffer holds: a late reader is told the oldest was dropped.
    let loud = start(&server, a, &id, json!({"cmd": "python3 -c \"import sys\nfor i in range(4000): sys.stdout.write('%06d\\n' % i); sys.stdout.flush()\""})).await;
    let loud_pid = loud["pid"].to_string();
    // Whether a reader from the start keeps up depends on the machine, since the process is
    // never held back for it; what it gets still adds up: every event up to the exit, in order,
    // as output or counted by a dropped marker. One after the end was too late.
    let live = sse_until_keyed(&server, a, &id, &loud_pid).await;
    assert_accounted_for(&live);
    let tail = printed(&live);
    assert!(
        tail.ends_with("003999\n"),
        "{:?}",
        &live[live.len().saturating_sub(4)..]
    );
    let info = json_of(
        keyed(server.get(&format!("{base}/{loud_pid}")), a)
            .send()
            .await
            .expect("status"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(info["output_bytes"], 4000 * 7, "{info}");
    let all = sse_until_keyed(&server, a, &id, &loud_pid).await;
    assert_accounted_for(&all);
    assert_eq!(all[0]["type"], "dropped", "{:?}", &all[..2]);
    assert!(printed(&all).ends_with("003999\n"));
    assert!(printed(&all).len() <= 16 * 1024);

    // The per-sandbox limit of running processes: a clear 429.
    let running = json_of(
        keyed(server.get(&base), a).send().await.expect("list"),
        StatusCode::OK,
    )
    .await;
    let already = running["processes"]
        .as_array()
        .expect("list")
        .iter()
        .filter(|p| p["state"] == "running")
        .count();
    for _ in already..16 {
        start(&server, a, &id, json!({"cmd": "sleep 300"})).await;
    }
    let over = post(base.clone(), a, json!({"cmd": "sleep 300"}))
        .await
        .expect("start");
    let body = json_of(over, StatusCode::TOO_MANY_REQUESTS).await;
    assert_eq!(code_of(&body), "too_many", "{body}");

    // SIGKILL to the group leaves none of its sleeps behind.
    let killed = post(format!("{base}/group/kill"), a, json!({"signal": "KILL"}))
        .await
        .expect("kill");
    assert_eq!(killed.status(), StatusCode::OK);
    let exit = sse_until_keyed(&server, a, &id, "group").await;
    assert_eq!(exit.last().expect("exit")["signal"], "SIGKILL", "{exit:?}");
    let ps = keyed(server.post(&format!("/containers/{id}/commands")), a)
        .json(&json!({"cmd": "ps -eo args | grep -c '^sleep 100[01]' || true"}))
        .send()
        .await
        .expect("ps");
    assert_eq!(json_of(ps, StatusCode::OK).await["stdout"], "0\n");
    // With one slot free again, a start succeeds.
    start(&server, a, &id, json!({"cmd": "sleep 300"})).await;

    // The processes end with their sandbox: its table is gone with it.
    let destroyed = keyed(server.delete(&format!("/containers/{id}")), a)
        .send()
        .await
        .expect("destroy");
    assert!(destroyed.status().is_success());
    let after = keyed(server.get(&base), a).send().await.expect("list");
    assert_eq!(
        code_of(&json_of(after, StatusCode::NOT_FOUND).await),
        "not_found"
    );
}

/// [`sse_until`] with an API key, until the exit.
async fn sse_until_keyed(
    server: &TestServer,
    key: Option<&str>,
    id: &str,
    pid: &str,
) -> Vec<Value> {
    let response = keyed(
        server.get(&format!("/containers/{id}/processes/{pid}/events")),
        key,
    )
    .send()
    .await
    .expect("events");
    assert_eq!(response.status(), StatusCode::OK);
    let body = tokio::time::timeout(EVENT_DEADLINE, response.text())
        .await
        .expect("the process ends in time")
        .expect("body");
    body.lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .map(|data| serde_json::from_str(data).expect("JSON"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn mcp_tools_start_read_and_kill_a_process() {
    let Some(server) = TestServer::start("proc-mcp", &[]).await else {
        return;
    };
    let facts = run_scenario(
        &["processes", &server.url("/mcp")],
        Duration::from_secs(300),
    )
    .await;
    assert_eq!(facts["state"], "killed", "{facts}");
    assert_eq!(facts["signal"], "SIGKILL");
    assert_eq!(facts["exit_code"], 137);
    assert_eq!(facts["bad_signal"], "invalid_request");
    assert_eq!(facts["unknown"], "process_not_found");
    assert_eq!(facts["escape"], "path_outside_workspace");
    assert_eq!(facts["too_long"], "invalid_request");
}
