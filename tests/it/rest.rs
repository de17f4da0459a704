//! The REST API over real HTTP (the real router on `127.0.0.1:0`) against real Docker: the
//! whole flow, SSE timing, streamed files and trees, auth and tenancy, hostile archives, the
//! error shape.

use std::collections::BTreeMap;
use std::io::Read;
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::TestServer as RestServer;

async fn json_of(response: reqwest::Response, expected: StatusCode) -> Value {
    let status = response.status();
    let body = response.text().await.expect("body");
    assert_eq!(status, expected, "unexpected status; body: {body}");
    serde_json::from_str(&body).unwrap_or_else(|error| panic!("not JSON ({error}): {body}"))
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not the error shape: {body}"))
}

async fn create(server: &RestServer, key: Option<&str>) -> String {
    let mut request = server
        .post("/containers")
        .json(&json!({"tag": "rest-test"}));
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    let body = json_of(request.send().await.expect("create"), StatusCode::CREATED).await;
    assert_eq!(body["tag"], "rest-test");
    assert_eq!(body["status"], "running");
    assert!(body["created_at"].is_string() && body["last_used_at"].is_string());
    body["id"].as_str().expect("id").to_string()
}

/// One Server-Sent Event and when it arrived.
#[derive(Debug)]
struct SseEvent {
    name: String,
    data: Value,
    at: Instant,
}

/// Reads an SSE body event by event, stamping each with its arrival time.
async fn read_sse(response: reqwest::Response) -> Vec<SseEvent> {
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let mut events = Vec::new();
    while let Some(chunk) = body.next().await {
        let at = Instant::now();
        buffer.push_str(std::str::from_utf8(&chunk.expect("chunk")).expect("UTF-8"));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut name = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event:") {
                    name = value.trim().to_string();
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push_str(value.trim_start());
                }
            }
            if !name.is_empty() {
                let data = serde_json::from_str(&data).expect("event data is JSON");
                events.push(SseEvent { name, data, at });
            }
        }
    }
    events
}

/// Bytes of every value, in a pseudo-random order.
fn binary_blob(len: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_u32;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 7) as u8
        })
        .collect()
}

/// A tar.gz of `files` (path → content) and empty `dirs`.
fn tar_gz(files: &BTreeMap<String, Vec<u8>>, dirs: &[&str]) -> Vec<u8> {
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut builder = tar::Builder::new(encoder);
    for dir in dirs {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_size(0);
        builder
            .append_data(&mut header, dir, std::io::empty())
            .expect("dir");
    }
    for (path, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(content.len() as u64);
        builder
            .append_data(&mut header, path, &content[..])
            .expect("file");
    }
    builder.into_inner().expect("tar").finish().expect("gzip")
}

/// Files (path → content) and directories of a tar.gz, names without a leading `./`.
fn untar_gz(bytes: &[u8]) -> (BTreeMap<String, Vec<u8>>, Vec<String>) {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    let mut files = BTreeMap::new();
    let mut dirs = Vec::new();
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let name = entry.path().expect("path").to_string_lossy().into_owned();
        let name = name
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        if entry.header().entry_type().is_dir() {
            if !name.is_empty() && name != "." {
                dirs.push(name);
            }
        } else {
            let mut content = Vec::new();
            entry.read_to_end(&mut content).expect("content");
            files.insert(name, content);
        }
    }
    dirs.sort();
    (files, dirs)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_whole_flow_over_http() {
    let Some(server) = RestServer::start("rest-flow", &[]).await else {
        return;
    };
    let health = json_of(
        server.get("/health").send().await.expect("health"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(health["docker"], true);

    // Create; an empty body is the same as {}.
    let id = create(&server, None).await;
    let bare = server.post("/containers").send().await.expect("bare");
    let bare = json_of(bare, StatusCode::CREATED).await;
    let listed = json_of(
        server.get("/containers").send().await.expect("list"),
        StatusCode::OK,
    )
    .await;
    let ids: Vec<&str> = listed["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .filter_map(|container| container["id"].as_str())
        .collect();
    assert_eq!(ids, vec![id.as_str(), bare["id"].as_str().expect("id")]);
    let deleted = server
        .delete(&format!("/containers/{}", bare["id"].as_str().expect("id")))
        .send()
        .await
        .expect("delete bare");
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);

    // Execute: `text` has the output, the value of the last expression too.
    let result = json_of(
        server
            .post(&format!("/containers/{id}/execute"))
            .json(&json!({"code": "print('hello from rest')\n6*7"}))
            .send()
            .await
            .expect("execute"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(result["status"], "completed", "{result}");
    assert_eq!(result["stdout"], "hello from rest\n");
    assert_eq!(result["text"], "hello from rest\n42");
    assert!(result["error"].is_null());
    assert!(result["execution_count"].as_i64().is_some());
    assert!(result["duration_ms"].as_u64().is_some());

    // A plot comes back as a base64 PNG in `images`.
    let plot = json_of(
        server
            .post(&format!("/containers/{id}/execute"))
            .json(&json!({"code": "import matplotlib.pyplot as plt\nplt.plot([1, 2], [3, 4])\nplt.show()"}))
            .send()
            .await
            .expect("plot"),
        StatusCode::OK,
    )
    .await;
    let png = plot["images"][0].as_str().expect("an image");
    assert!(png.starts_with("iVBORw0KGgo"), "a PNG, base64");

    // An exception is a result with `error`.
    let failed = json_of(
        server
            .post(&format!("/containers/{id}/execute"))
            .json(&json!({"code": "1/0"}))
            .send()
            .await
            .expect("raise"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["error"]["name"], "ZeroDivisionError");
    assert!(failed["error"]["traceback"].as_array().is_some());

    // Stream: the first event arrives while the code still sleeps.
    let sent = Instant::now();
    let response = server
        .post(&format!("/containers/{id}/execute/stream"))
        .json(&json!({"code": "import time\nprint('first', flush=True)\ntime.sleep(2)\nprint('second')\n'done'"}))
        .send()
        .await
        .expect("stream");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .expect("type")
            .starts_with("text/event-stream")
    );
    let execution_id = response.headers()["x-execution-id"]
        .to_str()
        .expect("execution id")
        .to_string();
    let events = read_sse(response).await;
    let names: Vec<&str> = events.iter().map(|event| event.name.as_str()).collect();
    assert_eq!(names, ["stdout", "stdout", "result", "done"], "{events:?}");
    assert_eq!(events[0].data["text"], "first\n");
    assert_eq!(events[2].data["data"]["text/plain"], "'done'");
    let first_after = events[0].at - sent;
    let done_after = events[3].at - sent;
    eprintln!(
        "SSE: first event after {} ms, done after {} ms",
        first_after.as_millis(),
        done_after.as_millis()
    );
    assert!(
        events[3].at - events[0].at >= Duration::from_millis(1500),
        "the first event came {first_after:?} after the request, the last {done_after:?}: not streamed"
    );
    let done = &events[3].data;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["execution_id"], execution_id.as_str());
    assert_eq!(done["stdout"], "first\nsecond\n");

    // The execution is remembered.
    let recorded = json_of(
        server
            .get(&format!("/executions/{execution_id}"))
            .send()
            .await
            .expect("execution"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(recorded["status"], "completed");
    assert_eq!(recorded["container_id"], id.as_str());
    assert_eq!(recorded["result"]["stdout"], "first\nsecond\n");
    assert!(recorded["finished_at"].is_string());
    let unknown = server
        .get("/executions/exe_unknown")
        .send()
        .await
        .expect("unknown execution");
    assert_eq!(
        error_code(&json_of(unknown, StatusCode::NOT_FOUND).await),
        "not_found"
    );

    // A file up and down, byte for byte.
    let blob = binary_blob(3 * 1024 * 1024 + 17);
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(blob.clone()).file_name("blob.bin"),
    );
    let uploaded = json_of(
        server
            .post(&format!("/containers/{id}/files/data/sub"))
            .multipart(form)
            .send()
            .await
            .expect("upload"),
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(uploaded["path"], "/workspace/data/sub/blob.bin");
    assert_eq!(uploaded["size"], blob.len());
    let downloaded = server
        .get(&format!("/containers/{id}/files/data/sub/blob.bin"))
        .send()
        .await
        .expect("download");
    assert_eq!(downloaded.status(), StatusCode::OK);
    assert_eq!(
        downloaded.headers()["content-length"],
        blob.len().to_string().as_str()
    );
    let downloaded = downloaded.bytes().await.expect("bytes");
    assert!(downloaded[..] == blob[..], "download differs from upload");
    // The kernel sees the same file.
    let seen = json_of(
        server
            .post(&format!("/containers/{id}/execute"))
            .json(&json!({"code": "import os\nos.path.getsize('data/sub/blob.bin')"}))
            .send()
            .await
            .expect("size"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(seen["text"], blob.len().to_string().as_str());
    // A directory lists as JSON.
    let listing = json_of(
        server
            .get(&format!("/containers/{id}/files/data/sub"))
            .send()
            .await
            .expect("listing"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(listing["entries"][0]["name"], "blob.bin");
    assert_eq!(listing["entries"][0]["kind"], "file");
    // Into the workspace root.
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(b"top".to_vec()).file_name("top.txt"),
    );
    let top = json_of(
        server
            .post(&format!("/containers/{id}/files"))
            .multipart(form)
            .send()
            .await
            .expect("upload to root"),
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(top["path"], "/workspace/top.txt");
    // Delete, then it is gone.
    let deleted = server
        .delete(&format!("/containers/{id}/files/data/sub/blob.bin"))
        .send()
        .await
        .expect("delete file");
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let gone = server
        .get(&format!("/containers/{id}/files/data/sub/blob.bin"))
        .send()
        .await
        .expect("deleted file");
    assert_eq!(
        error_code(&json_of(gone, StatusCode::NOT_FOUND).await),
        "path_not_found"
    );

    // A tree up as tar.gz and back, identical.
    let mut files = BTreeMap::new();
    files.insert("README.md".to_string(), b"# tree\n".to_vec());
    files.insert("a/b/c/deep.bin".to_string(), binary_blob(200_000));
    files.insert("a/b/zeros.bin".to_string(), vec![0u8; 70_000]);
    files.insert(
        format!("a/{}/long-name.txt", "n".repeat(120)),
        b"long path".to_vec(),
    );
    files.insert("x/empty.txt".to_string(), Vec::new());
    let dirs = ["a", "a/b", "a/b/c", "empty-dir", "x"];
    let archive = tar_gz(&files, &dirs);
    let extracted = json_of(
        server
            .post(&format!("/containers/{id}/directories/tree/root"))
            .header("content-type", "application/gzip")
            .body(archive)
            .send()
            .await
            .expect("upload tree"),
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(extracted["path"], "/workspace/tree/root");
    let response = server
        .get(&format!("/containers/{id}/directories/tree/root"))
        .send()
        .await
        .expect("download tree");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/gzip");
    let (back, back_dirs) = untar_gz(&response.bytes().await.expect("tree bytes"));
    assert_eq!(
        back.keys().collect::<Vec<_>>(),
        files.keys().collect::<Vec<_>>()
    );
    for (path, content) in &files {
        assert!(back[path] == *content, "{path} differs");
    }
    let mut expected_dirs: Vec<String> = dirs.iter().map(|dir| dir.to_string()).collect();
    expected_dirs.push(format!("a/{}", "n".repeat(120)));
    expected_dirs.sort();
    assert_eq!(back_dirs, expected_dirs);
    // The whole workspace downloads too.
    let workspace = server
        .get(&format!("/containers/{id}/directories"))
        .send()
        .await
        .expect("workspace tree");
    let (everything, _) = untar_gz(&workspace.bytes().await.expect("workspace bytes"));
    assert!(everything.contains_key("top.txt"));
    assert!(everything.contains_key("tree/root/a/b/c/deep.bin"));

    // A command.
    let command = json_of(
        server
            .post(&format!("/containers/{id}/commands"))
            .json(&json!({"cmd": "echo $GREETING; pwd; ls tree/root; echo oops >&2; exit 3", "env": {"GREETING": "hi"}}))
            .send()
            .await
            .expect("command"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(command["exit_code"], 3);
    assert_eq!(
        command["stdout"],
        "hi\n/workspace\nREADME.md\na\nempty-dir\nx\n"
    );
    assert_eq!(command["stderr"], "oops\n");
    let in_dir = json_of(
        server
            .post(&format!("/containers/{id}/commands"))
            .json(&json!({"cmd": "pwd", "cwd": "tree/root/a", "timeout": 10}))
            .send()
            .await
            .expect("command in cwd"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(in_dir["stdout"], "/workspace/tree/root/a\n");

    // Metrics saw the executions and creations.
    let metrics = server.get("/metrics").send().await.expect("metrics");
    assert_eq!(metrics.status(), StatusCode::OK);
    let metrics = metrics.text().await.expect("metrics text");
    assert!(metrics.contains("kernelbox_sandboxes 1"), "{metrics}");
    assert!(metrics.contains(r#"kernelbox_executions_total{outcome="completed"}"#));
    assert!(metrics.contains(r#"kernelbox_executions_total{outcome="failed"} 1"#));
    assert!(metrics.contains("kernelbox_sandbox_create_duration_seconds_count 2"));

    // Destroy, then 404 everywhere.
    let destroyed = server
        .delete(&format!("/containers/{id}"))
        .send()
        .await
        .expect("destroy");
    assert_eq!(destroyed.status(), StatusCode::NO_CONTENT);
    for response in [
        server.get(&format!("/containers/{id}")).send().await,
        server
            .post(&format!("/containers/{id}/execute"))
            .json(&json!({"code": "1"}))
            .send()
            .await,
        server
            .get(&format!("/containers/{id}/files/top.txt"))
            .send()
            .await,
        server.delete(&format!("/containers/{id}")).send().await,
    ] {
        let body = json_of(response.expect("after destroy"), StatusCode::NOT_FOUND).await;
        assert_eq!(error_code(&body), "not_found");
    }
}

/// Every route of the OpenAPI document (plus the document and the docs page), with sample
/// path parameters.
fn every_route(id: &str) -> Vec<(reqwest::Method, String)> {
    let mut document = kernelbox::http::server::openapi_document();
    // The routes the document declares open (`security: [{}]`, the probes) are not keyed.
    let open = open_routes();
    document.paths.paths.retain(|path, _| !open.contains(path));
    let mut routes = vec![
        (reqwest::Method::GET, "/openapi.json".to_string()),
        (reqwest::Method::GET, "/docs".to_string()),
        (reqwest::Method::GET, "/redoc".to_string()),
        (
            reqwest::Method::GET,
            "/redoc/redoc.standalone.js".to_string(),
        ),
    ];
    for (path, item) in &document.paths.paths {
        let path = path
            .replace("{id}", id)
            .replace("{execution_id}", "exe_x")
            .replace("{path}", "some/file.txt");
        let methods = [
            (item.get.is_some(), reqwest::Method::GET),
            (item.post.is_some(), reqwest::Method::POST),
            (item.put.is_some(), reqwest::Method::PUT),
            (item.delete.is_some(), reqwest::Method::DELETE),
            (item.head.is_some(), reqwest::Method::HEAD),
        ];
        for (present, method) in methods {
            if present {
                routes.push((method, path.clone()));
            }
        }
    }
    routes
}

/// The paths whose every operation the OpenAPI document declares open (an empty security
/// requirement).
fn open_routes() -> Vec<String> {
    let document = serde_json::to_value(kernelbox::http::server::openapi_document())
        .expect("document as JSON");
    let paths = document["paths"].as_object().expect("paths");
    paths
        .iter()
        .filter(|(_, item)| {
            item.as_object().is_some_and(|operations| {
                operations
                    .values()
                    .all(|operation| operation["security"] == serde_json::json!([{}]))
            })
        })
        .map(|(path, _)| path.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_guard_every_route_and_tenants_are_apart() {
    let Some(server) = RestServer::start("rest-auth", &["alpha-key", "beta-key"]).await else {
        return;
    };
    // /health stays open.
    let health = server.get("/health").send().await.expect("health");
    assert_eq!(health.status(), StatusCode::OK);
    // So does /ready, the one route the document declares open.
    assert_eq!(open_routes(), vec!["/ready".to_string()]);
    let ready = server.get("/ready").send().await.expect("ready");
    assert_eq!(ready.status(), StatusCode::OK);

    // Without a key, or with a wrong one, every other route is 401 in the error shape.
    let routes = every_route("sbx_whatever");
    assert!(routes.len() >= 18, "{routes:?}");
    for (method, path) in &routes {
        for key in [None, Some("wrong-key")] {
            let mut request = server.http.request(method.clone(), server.url(path));
            if let Some(key) = key {
                request = request.header("x-api-key", key);
            }
            let response = request.send().await.expect("request");
            assert_eq!(
                response.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {key:?}"
            );
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
            if *method == reqwest::Method::HEAD {
                continue; // no body in a HEAD answer: the status says it
            }
            let body: Value = response.json().await.expect("error body");
            assert_eq!(error_code(&body), "unauthorized", "{method} {path}");
        }
    }

    // Either header works; both name the same tenant.
    let id = create(&server, Some("alpha-key")).await;
    let with_bearer = server
        .get(&format!("/containers/{id}"))
        .bearer_auth("alpha-key")
        .send()
        .await
        .expect("bearer");
    assert_eq!(with_bearer.status(), StatusCode::OK);
    let executed = json_of(
        server
            .post(&format!("/containers/{id}/execute"))
            .bearer_auth("alpha-key")
            .json(&json!({"code": "secret = 41\nsecret + 1"}))
            .send()
            .await
            .expect("execute"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(executed["text"], "42");
    let execution_id = executed["execution_id"].as_str().expect("execution id");
    for path in ["/openapi.json", "/docs", "/redoc", "/metrics"] {
        let response = server
            .get(path)
            .header("x-api-key", "beta-key")
            .send()
            .await
            .expect("open to any tenant");
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }

    // The other tenant sees nothing and touches nothing.
    let beta_list = json_of(
        server
            .get("/containers")
            .header("x-api-key", "beta-key")
            .send()
            .await
            .expect("beta list"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(beta_list["containers"], json!([]));
    for (method, path) in every_route(&id) {
        if path.contains("/containers/") || path.starts_with("/executions/") {
            let path = path.replace("exe_x", execution_id);
            let mut request = server
                .http
                .request(method.clone(), server.url(&path))
                .bearer_auth("beta-key");
            let sends_json = method == reqwest::Method::POST || method == reqwest::Method::PUT;
            if sends_json && !path.contains("/files") {
                request = request.json(&json!({"code": "1", "cmd": "true"}));
            }
            let response = request.send().await.expect("beta request");
            let status = response.status();
            let body = response.text().await.expect("body");
            // A body the route cannot parse may be refused first (422); never a success.
            assert!(
                status == StatusCode::NOT_FOUND || status == StatusCode::UNPROCESSABLE_ENTITY,
                "beta {method} {path}: {status} {body}"
            );
        }
    }
    for (method, path) in [
        (reqwest::Method::GET, format!("/containers/{id}")),
        (reqwest::Method::DELETE, format!("/containers/{id}")),
        (reqwest::Method::GET, format!("/executions/{execution_id}")),
        (
            reqwest::Method::GET,
            format!("/containers/{id}/directories"),
        ),
    ] {
        let response = server
            .http
            .request(method.clone(), server.url(&path))
            .header("x-api-key", "beta-key")
            .send()
            .await
            .expect("beta");
        assert_eq!(
            response.status(),
            StatusCode::NOT_FOUND,
            "beta {method} {path}"
        );
    }

    // The owner still has it, state intact.
    let still = json_of(
        server
            .post(&format!("/containers/{id}/execute"))
            .header("x-api-key", "alpha-key")
            .json(&json!({"code": "secret"}))
            .send()
            .await
            .expect("alpha again"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(still["text"], "41");
    let listed = json_of(
        server
            .get("/containers")
            .header("x-api-key", "alpha-key")
            .send()
            .await
            .expect("alpha list"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(listed["containers"][0]["id"], id.as_str());
}

/// A tar whose entry names are written byte for byte, so hostile names survive.
fn raw_tar(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, kind, link, content) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(*kind);
        header.set_mode(0o777);
        header.set_size(content.len() as u64);
        let bytes = name.as_bytes();
        header.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
        if !link.is_empty() {
            let target = link.as_bytes();
            header.as_old_mut().linkname[..target.len()].copy_from_slice(target);
        }
        header.set_cksum();
        builder.append(&header, *content).expect("append");
    }
    builder.into_inner().expect("tar")
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).expect("gzip");
    encoder.finish().expect("gzip")
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_archives_write_nothing_outside_the_target() {
    let Some(server) = RestServer::start("rest-hostile", &[]).await else {
        return;
    };
    let id = create(&server, None).await;
    let regular = tar::EntryType::Regular;
    let symlink = tar::EntryType::Symlink;
    let hardlink = tar::EntryType::Link;
    let archives: Vec<(&str, Vec<u8>)> = vec![
        (
            "dot-dot",
            raw_tar(&[
                ("fine.txt", regular, "", b"ok"),
                ("../evil", regular, "", b"evil"),
            ]),
        ),
        ("absolute", raw_tar(&[("/etc/x", regular, "", b"evil")])),
        (
            "symlink to / then a file through it",
            raw_tar(&[
                ("root", symlink, "/", b""),
                ("root/tmp/pwned", regular, "", b"evil"),
            ]),
        ),
        (
            "symlink climbing out",
            raw_tar(&[
                ("up", symlink, "../../..", b""),
                ("up/tmp/pwned2", regular, "", b"evil"),
            ]),
        ),
        (
            "hard link to a file outside",
            raw_tar(&[("shadow", hardlink, "/etc/shadow", b"")]),
        ),
    ];
    for (what, archive) in archives {
        let response = server
            .post(&format!("/containers/{id}/directories/target"))
            .body(gzip(&archive))
            .send()
            .await
            .expect("upload");
        let body = json_of(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(error_code(&body), "invalid_request", "{what}: {body}");
        // The same archive as a plain tar is refused the same way.
        let response = server
            .post(&format!("/containers/{id}/directories/target"))
            .header("content-type", "application/x-tar")
            .body(archive)
            .send()
            .await
            .expect("upload plain tar");
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{what} (plain tar)"
        );
    }
    // Check as root: nothing landed outside the target (and no link was made inside it).
    let probe = json_of(
        server
            .post(&format!("/containers/{id}/commands"))
            .json(&json!({"cmd": "for p in /workspace/evil /evil /etc/x /tmp/pwned /tmp/pwned2 /workspace/target/root /workspace/target/up /workspace/target/shadow; do [ -e \"$p\" ] || [ -L \"$p\" ] && echo \"FOUND $p\"; done; echo checked"}))
            .send()
            .await
            .expect("probe"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(probe["stdout"], "checked\n", "{probe}");
    // A path parameter climbing out is refused before anything is read.
    let climbing = server
        .post(&format!("/containers/{id}/directories/..%2F..%2Fetc"))
        .body(gzip(&raw_tar(&[("x", regular, "", b"x")])))
        .send()
        .await
        .expect("climbing path");
    let body = json_of(climbing, StatusCode::BAD_REQUEST).await;
    assert_eq!(error_code(&body), "path_outside_workspace");
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_share_one_shape() {
    let Some(server) = RestServer::start("rest-errors", &[]).await else {
        return;
    };
    let id = create(&server, None).await;
    let execute = format!("/containers/{id}/execute");

    // Bodies: bad JSON, a missing field, an unknown field, the wrong type: 422.
    for body in [
        "{not json",
        "{}",
        r#"{"code": "1", "extra": true}"#,
        r#"{"code": 5}"#,
        r#"{"code": "1", "timeout": -1}"#,
    ] {
        let response = server
            .post(&execute)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("bad body");
        let error = json_of(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(error_code(&error), "invalid_request", "{body}");
    }
    let no_type = server
        .post(&execute)
        .body(r#"{"code": "1"}"#)
        .send()
        .await
        .expect("no content type");
    let error = json_of(no_type, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
    assert_eq!(error_code(&error), "unsupported_media_type");
    let bad_create = server
        .post("/containers")
        .json(&json!({"memory_mb": 1}))
        .send()
        .await
        .expect("bad create");
    assert_eq!(
        error_code(&json_of(bad_create, StatusCode::UNPROCESSABLE_ENTITY).await),
        "invalid_request"
    );
    // Too large: 413.
    let huge = json!({"code": "x".repeat(kernelbox::http::extract::JSON_BODY_LIMIT + 1)});
    let response = server
        .post(&execute)
        .json(&huge)
        .send()
        .await
        .expect("huge");
    assert_eq!(
        error_code(&json_of(response, StatusCode::PAYLOAD_TOO_LARGE).await),
        "too_large"
    );
    // Unknown routes and methods.
    let response = server.get("/nowhere").send().await.expect("no route");
    assert_eq!(
        error_code(&json_of(response, StatusCode::NOT_FOUND).await),
        "not_found"
    );
    let response = server.http.put(server.url("/containers")).send().await;
    let response = response.expect("wrong method");
    assert_eq!(
        error_code(&json_of(response, StatusCode::METHOD_NOT_ALLOWED).await),
        "method_not_allowed"
    );
    // Multipart without a `file` part.
    let form = reqwest::multipart::Form::new().text("other", "x");
    let response = server
        .post(&format!("/containers/{id}/files/dir"))
        .multipart(form)
        .send()
        .await
        .expect("no file part");
    assert_eq!(
        error_code(&json_of(response, StatusCode::UNPROCESSABLE_ENTITY).await),
        "invalid_request"
    );

    // Busy: 409 while a stream runs; the stream's end frees the sandbox.
    let running = server
        .post(&format!("/containers/{id}/execute/stream"))
        .json(&json!({"code": "import time\nprint('go', flush=True)\ntime.sleep(30)"}))
        .send()
        .await
        .expect("long stream");
    assert_eq!(running.status(), StatusCode::OK);
    let execution_id = running.headers()["x-execution-id"]
        .to_str()
        .expect("id")
        .to_string();
    let mut body = running.bytes_stream();
    let first = body.next().await.expect("first event").expect("bytes");
    assert!(String::from_utf8_lossy(&first).contains("go"));
    let busy = server
        .post(&execute)
        .json(&json!({"code": "1"}))
        .send()
        .await
        .expect("busy");
    assert_eq!(
        error_code(&json_of(busy, StatusCode::CONFLICT).await),
        "busy"
    );
    let state = json_of(
        server
            .get(&format!("/executions/{execution_id}"))
            .send()
            .await
            .expect("running execution"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(state["status"], "running");
    assert!(state["result"].is_null());
    // Closing the stream cancels the execution: the next one runs (and state is kept).
    drop(body);
    let after = json_of(
        server
            .post(&execute)
            .json(&json!({"code": "'after'"}))
            .send()
            .await
            .expect("after cancel"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(after["text"], "'after'");
    let state = json_of(
        server
            .get(&format!("/executions/{execution_id}"))
            .send()
            .await
            .expect("cancelled execution"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(state["status"], "cancelled", "{state}");

    // A timeout is a result with status `timeout`.
    let timed_out = json_of(
        server
            .post(&execute)
            .json(&json!({"code": "import time\ntime.sleep(30)", "timeout": 1}))
            .send()
            .await
            .expect("timeout"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(timed_out["status"], "timeout");
    assert_eq!(timed_out["error"]["name"], "TimeoutError");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_open_bind_beyond_loopback_is_refused() {
    let refused = tokio::process::Command::new(env!("CARGO_BIN_EXE_kernelbox"))
        .args(["serve", "--host", "0.0.0.0", "--port", "0"])
        .env_remove("KERNELBOX_API_KEY")
        .output()
        .await
        .expect("run kernelbox serve");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("refusing to serve 0.0.0.0 without an API key"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_past_the_limit_are_413() {
    const LIMIT: u64 = 1024 * 1024;
    let Some(server) = RestServer::start_with("rest-limit", &[], |config| {
        config.max_upload_bytes = LIMIT;
    })
    .await
    else {
        return;
    };
    let id = create(&server, None).await;
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(vec![7u8; 2 * LIMIT as usize]).file_name("big.bin"),
    );
    let response = server
        .post(&format!("/containers/{id}/files/up"))
        .multipart(form)
        .send()
        .await
        .expect("file upload");
    assert_eq!(
        error_code(&json_of(response, StatusCode::PAYLOAD_TOO_LARGE).await),
        "too_large"
    );
    // A tree counts unpacked: 2 MiB of zeros is a tiny tar.gz, and still too large.
    let mut files = BTreeMap::new();
    files.insert("zeros.bin".to_string(), vec![0u8; 2 * LIMIT as usize]);
    let archive = tar_gz(&files, &[]);
    assert!(archive.len() < LIMIT as usize / 10);
    let response = server
        .post(&format!("/containers/{id}/directories/up"))
        .body(archive)
        .send()
        .await
        .expect("tree upload");
    assert_eq!(
        error_code(&json_of(response, StatusCode::PAYLOAD_TOO_LARGE).await),
        "too_large"
    );
    // Under the limit is fine.
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(vec![7u8; LIMIT as usize / 2]).file_name("ok.bin"),
    );
    let response = server
        .post(&format!("/containers/{id}/files/up"))
        .multipart(form)
        .send()
        .await
        .expect("small upload");
    assert_eq!(response.status(), StatusCode::CREATED);
}

/// The ipybox guide's directory upload, exactly as it is documented: `curl -F
/// "file=@data.tar.gz;type=application/x-gzip" $API/containers/$CID/directories/project`. The
/// tree comes back byte-identical; a plain tar in the form works too, and a form without a
/// `file` part is refused in the error shape.
#[tokio::test(flavor = "multi_thread")]
async fn the_seeds_multipart_directory_upload_round_trips() {
    let Some(server) = RestServer::start("rest-multipart-tree", &[]).await else {
        return;
    };
    let id = create(&server, None).await;
    let mut files = BTreeMap::new();
    files.insert("README.md".to_string(), b"# project\n".to_vec());
    files.insert("src/data.bin".to_string(), binary_blob(300_000));
    files.insert("src/empty".to_string(), Vec::new());
    let scratch = tempfile::tempdir().expect("tempdir");
    let gzipped = scratch.path().join("data.tar.gz");
    std::fs::write(&gzipped, tar_gz(&files, &["src"])).expect("write tar.gz");
    let curl = |form: String, target: &str| {
        let output = std::process::Command::new("curl")
            .args(["-sS", "-w", "\n%{http_code}", "-F", &form])
            .arg(server.url(&format!("/containers/{id}/directories/{target}")))
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').expect("status line");
        (status.to_string(), body.to_string())
    };

    let (status, body) = curl(
        format!("file=@{};type=application/x-gzip", gzipped.display()),
        "project",
    );
    assert_eq!(status, "201", "{body}");
    let body: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(body["path"], "/workspace/project");
    let response = server
        .get(&format!("/containers/{id}/directories/project"))
        .send()
        .await
        .expect("download tree");
    assert_eq!(response.status(), StatusCode::OK);
    let (back, back_dirs) = untar_gz(&response.bytes().await.expect("tree bytes"));
    assert_eq!(back_dirs, vec!["src".to_string()]);
    assert_eq!(back.len(), files.len());
    for (path, content) in &files {
        assert!(back.get(path) == Some(content), "{path} differs");
    }

    // A plain tar in the form, whatever type the client gave its part.
    let plain = scratch.path().join("plain.tar");
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_mode(0o644);
    header.set_size(5);
    builder
        .append_data(&mut header, "plain.txt", &b"plain"[..])
        .expect("entry");
    std::fs::write(&plain, builder.into_inner().expect("tar")).expect("write tar");
    let (status, body) = curl(
        format!("file=@{};type=application/octet-stream", plain.display()),
        "plain",
    );
    assert_eq!(status, "201", "{body}");
    let read = server
        .get(&format!("/containers/{id}/files/plain/plain.txt"))
        .send()
        .await
        .expect("read back");
    assert_eq!(read.bytes().await.expect("bytes").as_ref(), b"plain");

    // A form without a `file` part.
    let (status, body) = curl("other=value".to_string(), "nothing");
    assert_eq!(status, "422", "{body}");
    let body: Value = serde_json::from_str(&body).expect("JSON");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|message| message.contains("`file`")),
        "{body}"
    );
    let _ = server
        .http
        .delete(server.url(&format!("/containers/{id}")))
        .send()
        .await;
}
