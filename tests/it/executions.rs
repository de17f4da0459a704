//! Executions beyond the blocking call, over real HTTP against real Docker: fire and poll
//! (`"wait": false`, `GET /executions/{id}`), cancellation by id, and the NDJSON stream.

use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::TestServer;

/// How long any one step may take before the test gives up.
const STEP_DEADLINE: Duration = Duration::from_secs(60);

async fn json_of(response: reqwest::Response, expected: StatusCode) -> Value {
    let status = response.status();
    let body = response.text().await.expect("body");
    assert_eq!(status, expected, "unexpected status; body: {body}");
    serde_json::from_str(&body).unwrap_or_else(|error| panic!("not JSON ({error}): {body}"))
}

fn keyed(request: reqwest::RequestBuilder, key: &str) -> reqwest::RequestBuilder {
    request.header("x-api-key", key)
}

async fn create(server: &TestServer, key: &str) -> String {
    let response = keyed(server.post("/containers"), key)
        .json(&json!({}))
        .send()
        .await
        .expect("create");
    json_of(response, StatusCode::CREATED).await["id"]
        .as_str()
        .expect("id")
        .to_string()
}

async fn execute(server: &TestServer, key: &str, id: &str, body: Value) -> reqwest::Response {
    keyed(server.post(&format!("/containers/{id}/execute")), key)
        .json(&body)
        .send()
        .await
        .expect("execute")
}

async fn execution(server: &TestServer, key: &str, execution_id: &str) -> Value {
    let response = keyed(server.get(&format!("/executions/{execution_id}")), key)
        .send()
        .await
        .expect("poll");
    json_of(response, StatusCode::OK).await
}

/// Polls an execution, as a fire-and-poll client does, until it is no longer running.
async fn poll_until_ended(server: &TestServer, key: &str, execution_id: &str) -> Value {
    let deadline = Instant::now() + STEP_DEADLINE;
    loop {
        let state = execution(server, key, execution_id).await;
        if state["status"] != "running" {
            return state;
        }
        assert!(Instant::now() < deadline, "still running: {state}");
        // The client's polling cadence: there is no event to wait for in this protocol.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fire_and_poll_answers_at_once_and_the_result_comes_later() {
    let Some(server) = TestServer::start("exec-poll", &["key-a", "key-b"]).await else {
        return;
    };
    let id = create(&server, "key-a").await;
    let code = "import time\nprint('begun', flush=True)\ntime.sleep(3)\nprint('ended')\n6 * 7";
    let sent = Instant::now();
    let response = execute(&server, "key-a", &id, json!({"code": code, "wait": false})).await;
    let answered = sent.elapsed();
    let location = response
        .headers()
        .get("location")
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    let started = json_of(response, StatusCode::ACCEPTED).await;
    eprintln!("a 3 s execution answered 202 in {answered:?}");
    // Far less than the execution takes: the answer did not wait for it.
    assert!(answered < Duration::from_millis(1500), "{answered:?}");
    assert_eq!(started["status"], "running", "{started}");
    assert_eq!(started["container_id"], id.as_str());
    assert!(started["result"].is_null());
    let execution_id = started["execution_id"].as_str().expect("id").to_string();
    assert_eq!(
        location.as_deref(),
        Some(format!("/executions/{execution_id}").as_str())
    );

    // Still running when polled right away; one execution at a time still holds.
    assert_eq!(
        execution(&server, "key-a", &execution_id).await["status"],
        "running"
    );
    let busy = execute(&server, "key-a", &id, json!({"code": "1"})).await;
    assert_eq!(
        json_of(busy, StatusCode::CONFLICT).await["error"]["code"],
        "busy"
    );
    // Another tenant does not see it.
    let foreign = keyed(server.get(&format!("/executions/{execution_id}")), "key-b")
        .send()
        .await
        .expect("poll");
    assert_eq!(foreign.status(), StatusCode::NOT_FOUND);

    let ended = poll_until_ended(&server, "key-a", &execution_id).await;
    assert_eq!(ended["status"], "completed", "{ended}");
    assert_eq!(ended["result"]["stdout"], "begun\nended\n");
    assert_eq!(ended["result"]["text"], "begun\nended\n42");
    assert!(ended["duration_ms"].as_u64().expect("duration") >= 3000);
    assert!(ended["finished_at"].is_string());

    // A stream always follows its execution: `wait: false` there is a clear 422.
    let refused = keyed(
        server.post(&format!("/containers/{id}/execute/stream")),
        "key-a",
    )
    .json(&json!({"code": "1", "wait": false}))
    .send()
    .await
    .expect("stream");
    let body = json_of(refused, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(body["error"]["code"], "invalid_request");
    // Bad input for the detached form is refused before anything runs.
    for bad in [
        json!({"code": "1", "wait": "no"}),
        json!({"code": "1", "wait": false, "timeout": -1}),
    ] {
        let response = execute(&server, "key-a", &id, bad.clone()).await;
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_execution_is_cancelled_by_id_and_the_kernel_keeps_its_state() {
    let Some(server) = TestServer::start("exec-cancel", &["key-a", "key-b"]).await else {
        return;
    };
    let id = create(&server, "key-a").await;
    let set = execute(&server, "key-a", &id, json!({"code": "x = 41"})).await;
    assert_eq!(json_of(set, StatusCode::OK).await["status"], "completed");

    let response = execute(
        &server,
        "key-a",
        &id,
        json!({"code": "import time\nprint('looping', flush=True)\nwhile True: time.sleep(0.05)", "wait": false}),
    )
    .await;
    let execution_id = json_of(response, StatusCode::ACCEPTED).await["execution_id"]
        .as_str()
        .expect("id")
        .to_string();
    let cancel = |key: &'static str| {
        keyed(
            server.post(&format!("/executions/{execution_id}/cancel")),
            key,
        )
        .send()
    };
    // Another tenant cannot cancel it, and an unknown id is not found.
    assert_eq!(
        cancel("key-b").await.expect("cancel").status(),
        StatusCode::NOT_FOUND
    );
    let unknown = keyed(server.post("/executions/exe_unknown/cancel"), "key-a")
        .send()
        .await
        .expect("cancel");
    assert_eq!(
        json_of(unknown, StatusCode::NOT_FOUND).await["error"]["code"],
        "not_found"
    );
    assert_eq!(
        execution(&server, "key-a", &execution_id).await["status"],
        "running"
    );

    let cancelled = json_of(cancel("key-a").await.expect("cancel"), StatusCode::OK).await;
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    assert_eq!(
        cancelled["result"]["kernel_restarted"], false,
        "{cancelled}"
    );
    // Cancelling what already ended changes nothing.
    let again = json_of(cancel("key-a").await.expect("cancel"), StatusCode::OK).await;
    assert_eq!(again["status"], "cancelled");
    assert_eq!(again["duration_ms"], cancelled["duration_ms"]);

    // The kernel was interrupted, not restarted: its variables are still there.
    let after = execute(&server, "key-a", &id, json!({"code": "x + 1"})).await;
    assert_eq!(json_of(after, StatusCode::OK).await["text"], "42");
}

/// Reads an NDJSON body line by line, calling `on_line` with each parsed line as it arrives.
async fn read_ndjson(
    response: reqwest::Response,
    mut on_line: impl AsyncFnMut(&Value),
) -> Vec<Value> {
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|value| value.to_str().ok()),
        Some("application/x-ndjson")
    );
    let mut body = response.bytes_stream();
    let mut buffer = Vec::new();
    let mut lines = Vec::new();
    while let Some(chunk) = tokio::time::timeout(STEP_DEADLINE, body.next())
        .await
        .expect("the stream goes on in time")
    {
        buffer.extend_from_slice(&chunk.expect("chunk"));
        while let Some(end) = buffer.iter().position(|byte| *byte == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            let value: Value = serde_json::from_slice(&line).unwrap_or_else(|error| {
                panic!(
                    "not a JSON line ({error}): {}",
                    String::from_utf8_lossy(&line)
                )
            });
            on_line(&value).await;
            lines.push(value);
        }
    }
    assert!(buffer.is_empty(), "a partial last line: {buffer:?}");
    lines
}

async fn ndjson_stream(server: &TestServer, id: &str, code: &str) -> reqwest::Response {
    let response = keyed(
        server.post(&format!("/containers/{id}/execute/stream")),
        "key-a",
    )
    .header("accept", "application/x-ndjson")
    .json(&json!({ "code": code }))
    .send()
    .await
    .expect("stream");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().contains_key("x-execution-id"));
    response
}

#[tokio::test(flavor = "multi_thread")]
async fn ndjson_streams_text_images_and_errors_as_they_come() {
    let Some(server) = TestServer::start("exec-ndjson", &["key-a"]).await else {
        return;
    };
    let id = create(&server, "key-a").await;
    // The code waits, after its first line, for a file that the test writes only once it has
    // read that line: so the line came before the execution ended, on any machine.
    let code = "import os, time\n\
        print('first', flush=True)\n\
        deadline = time.time() + 60\n\
        while not os.path.exists('/workspace/go'):\n\
        \x20   assert time.time() < deadline, 'the test never wrote the file'\n\
        \x20   time.sleep(0.02)\n\
        import matplotlib.pyplot as plt\n\
        plt.plot([1, 2, 3], [1, 4, 9])\n\
        plt.show()\n\
        print('after the plot')";
    let response = ndjson_stream(&server, &id, code).await;
    let mut released = false;
    let lines = read_ndjson(response, async |line: &Value| {
        if !released && line["text"] == "first\n" {
            released = true;
            let form = reqwest::multipart::Form::new().part(
                "file",
                reqwest::multipart::Part::bytes(b"go".as_slice()).file_name("go"),
            );
            let upload = keyed(server.post(&format!("/containers/{id}/files")), "key-a")
                .multipart(form)
                .send()
                .await
                .expect("upload");
            assert!(upload.status().is_success(), "{}", upload.status());
        }
    })
    .await;
    assert!(released, "no first line: {lines:?}");
    assert_eq!(lines[0], json!({"text": "first\n", "stream": "stdout"}));
    let image = lines
        .iter()
        .find(|line| line.get("image").is_some())
        .unwrap_or_else(|| panic!("no image line: {lines:?}"));
    assert_eq!(image["format"], "png");
    let png = base64_decode(image["image"].as_str().expect("base64"));
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(
        lines
            .iter()
            .any(|line| line["text"] == "after the plot\n" && line["stream"] == "stdout")
    );
    let last = lines.last().expect("a last line");
    assert_eq!(last["status"], "completed", "{last}");
    assert!(
        last["execution_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("exe_"))
    );

    // An exception is an `error` line with its traceback; stderr is marked as such.
    let response = ndjson_stream(
        &server,
        &id,
        "import sys\nprint('warned', file=sys.stderr, flush=True)\nraise ValueError('no good')",
    )
    .await;
    let lines = read_ndjson(response, async |_: &Value| {}).await;
    assert!(
        lines.contains(&json!({"text": "warned\n", "stream": "stderr"})),
        "{lines:?}"
    );
    let error = lines
        .iter()
        .find(|line| line.get("error").is_some())
        .unwrap_or_else(|| panic!("no error line: {lines:?}"));
    assert_eq!(error["error"], "ValueError: no good");
    assert!(error["traceback"].as_array().is_some_and(|lines| {
        lines
            .iter()
            .any(|line| line.as_str().is_some_and(|l| l.contains("ValueError")))
    }));
    assert_eq!(lines.last().expect("last")["status"], "failed");

    // Without the Accept header, the same route still speaks SSE.
    let response = keyed(
        server.post(&format!("/containers/{id}/execute/stream")),
        "key-a",
    )
    .json(&json!({"code": "print(1)"}))
    .send()
    .await
    .expect("stream");
    assert!(
        response
            .headers()
            .get("content-type")
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("text/event-stream"))
    );
    let body = response.text().await.expect("body");
    assert!(body.contains("event: done"), "{body}");
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("valid base64")
}
