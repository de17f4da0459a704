//! What operators see of a running server: its logs (plain when captured, JSON on request, with
//! the request id, tenant and sandbox id) and its readiness probe.

use std::time::Duration;

use serde_json::{Value, json};

use crate::cli::docker_available;
use crate::common::{ServerLog, ensure_image, remove_instance_containers, start_server_with_log};

fn unique_instance(name: &str) -> String {
    format!(
        "test-{name}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Removes the instance's containers when the test ends, however it ends.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        remove_instance_containers(&self.0);
    }
}

/// Creates a sandbox, runs code in it and destroys it over REST, with `request_id` on every
/// request; returns the sandbox id.
async fn sandbox_round_trip(port: u16, key: &str, request_id: &str) -> String {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client");
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let created = client
        .post(url("/containers"))
        .header("x-api-key", key)
        .header("x-request-id", request_id)
        .json(&json!({}))
        .send()
        .await
        .expect("create");
    assert_eq!(created.status(), 201);
    assert_eq!(
        created.headers().get("x-request-id").map(|v| v.as_bytes()),
        Some(request_id.as_bytes()),
        "the client's request id comes back"
    );
    let created: Value = created.json().await.expect("json");
    let id = created["id"].as_str().expect("id").to_string();
    let executed = client
        .post(url(&format!("/containers/{id}/execute")))
        .header("x-api-key", key)
        .header("x-request-id", request_id)
        .json(&json!({"code": "import sys\nprint('to stderr', file=sys.stderr)\nraise ValueError('boom')"}))
        .send()
        .await
        .expect("execute");
    assert_eq!(executed.status(), 200);
    // A request without an id gets a fresh uuid.
    let destroyed = client
        .delete(url(&format!("/containers/{id}")))
        .header("x-api-key", key)
        .send()
        .await
        .expect("destroy");
    assert!(destroyed.status().is_success(), "{}", destroyed.status());
    let generated = destroyed
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("a generated request id");
    assert!(uuid::Uuid::parse_str(generated).is_ok(), "{generated}");
    id
}

/// Waits until the log holds a line containing `needle` (the server logs after it answers).
async fn wait_for_line(log: &ServerLog, needle: &str) {
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if log.lock().expect("log").iter().any(|l| l.contains(needle)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        found.is_ok(),
        "no {needle:?} in {:?}",
        log.lock().expect("log")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn piped_logs_are_plain_text_without_escape_bytes() {
    if !docker_available() {
        return;
    }
    ensure_image(&crate::common::sandbox_image());
    let instance = unique_instance("plainlog");
    let _cleanup = Cleanup(instance.clone());
    // stderr is a pipe here; debug makes the server log every request too.
    let (mut server, port, log) = start_server_with_log(
        &instance,
        &["--api-key", "plain-key", "--log", "info,kernelbox=debug"],
        &[("KERNELBOX_LOG_FORMAT", "text")],
    )
    .await;
    let id = sandbox_round_trip(port, "plain-key", "plain-req-1").await;
    wait_for_line(&log, "sandbox destroyed").await;
    server.kill().await.expect("kill");
    let lines = log.lock().expect("log").clone();
    assert!(lines.iter().any(|line| line.contains(&id)), "{lines:?}");
    assert!(
        lines.iter().any(|line| line.contains("plain-req-1")),
        "{lines:?}"
    );
    for line in &lines {
        assert!(!line.contains('\u{1b}'), "an escape byte in {line:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_parse_and_carry_request_tenant_and_sandbox() {
    if !docker_available() {
        return;
    }
    ensure_image(&crate::common::sandbox_image());
    let instance = unique_instance("jsonlog");
    let _cleanup = Cleanup(instance.clone());
    let (mut server, port, log) = start_server_with_log(
        &instance,
        &[
            "--api-key",
            "json-key",
            "--log",
            "info,kernelbox=debug",
            "--log-format",
            "json",
        ],
        &[],
    )
    .await;
    let id = sandbox_round_trip(port, "json-key", "json-req-1").await;
    wait_for_line(&log, "sandbox destroyed").await;
    server.kill().await.expect("kill");
    let lines = log.lock().expect("log").clone();
    let parsed: Vec<Value> = lines
        .iter()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
        })
        .collect();
    for line in &parsed {
        assert!(
            line["timestamp"].is_string() && line["level"].is_string(),
            "{line}"
        );
        assert!(line["message"].is_string(), "{line}");
    }
    // The field, at the top level: the event's own, or one of the spans it happened in.
    let field = |line: &Value, name: &str| line[name].as_str().map(str::to_string);
    // Every line a request for this sandbox caused carries its id, the request id and the
    // tenant; and the sandbox's lifecycle lines carry the id.
    let ours: Vec<&Value> = parsed
        .iter()
        .filter(|line| field(line, "request_id").as_deref() == Some("json-req-1"))
        .collect();
    assert!(ours.len() >= 2, "too few lines of the request: {lines:?}");
    let tenant = field(ours[0], "tenant").expect("a tenant");
    assert!(tenant.starts_with("key_"), "{tenant}");
    for line in &ours {
        assert_eq!(
            field(line, "tenant").as_deref(),
            Some(tenant.as_str()),
            "{line}"
        );
        let path = field(line, "path").unwrap_or_default();
        if path.starts_with("/containers/") {
            assert_eq!(
                field(line, "sandbox_id").as_deref(),
                Some(id.as_str()),
                "{line}"
            );
        }
    }
    for message in ["sandbox ready", "sandbox destroyed"] {
        let line = parsed
            .iter()
            .find(|line| line["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} line in {lines:?}"));
        assert_eq!(
            field(line, "sandbox_id").as_deref(),
            Some(id.as_str()),
            "{line}"
        );
    }
}

/// A Docker API relay the test switches on and off: socat in a test container of our own, from
/// TCP port 2375 to the Docker socket, in its own process group so that stopping it ends the
/// connections it forwards too.
struct DockerRelay {
    host: crate::net::TestHost,
}

impl DockerRelay {
    fn start(network: &crate::net::TestNetwork) -> Self {
        let host = crate::net::TestHost::start_with(
            network,
            "relay",
            &["-v", "/var/run/docker.sock:/var/run/docker.sock"],
            &["sh", "-c", "echo relay-host-up; exec sleep infinity"],
            "relay-host-up",
        );
        let relay = Self { host };
        relay.switch_on();
        relay
    }

    fn address(&self) -> std::net::SocketAddr {
        (self.host.ip4, 2375).into()
    }

    /// Starts socat and waits until its port takes connections.
    fn switch_on(&self) {
        crate::net::docker_ok(&[
            "exec",
            "-d",
            &self.host.name,
            "setsid",
            "sh",
            "-c",
            "echo $$ > /tmp/relay.pid; exec socat TCP-LISTEN:2375,fork,reuseaddr UNIX-CONNECT:/var/run/docker.sock",
        ]);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect_timeout(&self.address(), Duration::from_secs(1)).is_err()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the relay did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Ends socat's process group (the listener and every forwarded connection) and waits until
    /// the port refuses.
    fn switch_off(&self) {
        crate::net::docker_ok(&[
            "exec",
            &self.host.name,
            "sh",
            "-c",
            "kill -KILL -$(cat /tmp/relay.pid)",
        ]);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect_timeout(&self.address(), Duration::from_secs(1)).is_ok()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the relay did not stop"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `GET /ready` without a key: the status and the JSON body.
async fn ready(port: u16) -> (u16, Value) {
    let response = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/ready"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("GET /ready");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON body"))
}

/// Asks `/ready` until it answers `status` (the answer is cached for 2 s), for 20 s at most.
async fn wait_for_ready_status(port: u16, status: u16) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (got, body) = ready(port).await;
        if got == status {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/ready stayed {got} ({body}), wanted {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ready_follows_the_docker_api_while_health_stays_live() {
    if !docker_available() {
        return;
    }
    ensure_image(&crate::common::sandbox_image());
    let network = crate::net::TestNetwork::create("ready");
    let relay = DockerRelay::start(&network);
    let docker_host = format!("tcp://{}", relay.address());
    let instance = unique_instance("ready");
    let _cleanup = Cleanup(instance.clone());
    let (mut server, port, _log) = start_server_with_log(
        &instance,
        &["--api-key", "ready-key"],
        &[("DOCKER_HOST", docker_host.as_str())],
    )
    .await;
    // Open without a key, like /health.
    let (status, body) = ready(port).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("ready")),
        "{body}"
    );

    relay.switch_off();
    let body = wait_for_ready_status(port, 503).await;
    assert_eq!(body["status"], "not_ready", "{body}");
    assert_eq!(body["reason"], "docker_unreachable", "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    // Liveness does not follow Docker: the process is fine.
    let health = crate::cli::get_health(port).await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");

    relay.switch_on();
    let body = wait_for_ready_status(port, 200).await;
    assert_eq!(body["status"], "ready", "{body}");
    assert!(body.get("reason").is_none(), "{body}");
    let _ = server.kill().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_names_a_missing_image_and_a_shutdown() {
    if !docker_available() {
        return;
    }
    let instance = unique_instance("ready-image");
    let backend = kernelbox::backend::docker::DockerBackend::connect(Default::default())
        .await
        .expect("docker");
    let mut config = kernelbox::config::EngineConfig::defaults(&instance);
    config.image = format!("kernelbox-sandbox:absent-{instance}");
    let engine = kernelbox::engine::Engine::new(std::sync::Arc::new(backend), config);
    let readiness = engine.readiness().await;
    assert_eq!(
        readiness.not_ready,
        Some(kernelbox::engine::readiness::NotReady::ImageMissing),
        "{readiness:?}"
    );
    assert!(
        readiness
            .message
            .contains("kernelbox image build --offline"),
        "{readiness:?}"
    );
    let app = kernelbox::http::server::app(engine.clone(), &Default::default()).expect("app");
    let _ = engine
        .shutdown_until(false, tokio::time::Instant::now() + Duration::from_secs(5))
        .await;
    use tower::ServiceExt;
    let response = app
        .oneshot(
            axum::http::Request::get("/ready")
                .header("host", "localhost")
                .body(axum::body::Body::empty())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(response.status(), 503);
    let body = axum::body::to_bytes(response.into_body(), 1 << 16)
        .await
        .expect("body");
    let body: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(body["reason"], "shutting_down", "{body}");
}

/// A directory holding only a `docker` link: a PATH on which debootstrap is not installed.
fn path_without_debootstrap() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let docker = std::process::Command::new("sh")
        .args(["-c", "command -v docker"])
        .output()
        .expect("which docker");
    let docker = String::from_utf8_lossy(&docker.stdout).trim().to_string();
    std::os::unix::fs::symlink(&docker, dir.path().join("docker")).expect("link docker");
    dir
}

/// Runs the binary with `args` and `env`, for 120 s at most; (success, stdout, stderr).
async fn run_kernelbox(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_kernelbox"))
            .args(args)
            .envs(env.iter().copied())
            .env_remove("KERNELBOX_IMAGE")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("kernelbox ends within 120 s")
    .expect("run kernelbox");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_offline_build_without_debootstrap_says_how_to_install_it() {
    let bin = path_without_debootstrap();
    let path = bin.path().to_string_lossy().into_owned();
    let tag = format!("kernelbox-sandbox:{}", unique_instance("nodeboot"));
    let (ok, _, stderr) = run_kernelbox(
        &["image", "build", "--offline", "--image", &tag],
        &[("PATH", path.as_str())],
    )
    .await;
    assert!(!ok, "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.contains("`apt-get install debootstrap`"), "{stderr}");
    assert!(
        last.contains(&format!("`kernelbox image build --offline --image {tag}`")),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_without_registry_or_debootstrap_names_the_command_that_fixes_it() {
    if !docker_available() {
        return;
    }
    let bin = path_without_debootstrap();
    let path = bin.path().to_string_lossy().into_owned();
    let instance = unique_instance("noregistry");
    let _cleanup = Cleanup(instance.clone());
    // A base image on a registry that is not there (nothing listens on loopback port 1): the
    // pull fails as it does on a host without a registry.
    let base = format!("127.0.0.1:1/kernelbox-test/absent:{instance}");
    let image = format!("kernelbox-sandbox:absent-{instance}");
    let (ok, stdout, stderr) = run_kernelbox(
        &[
            "serve",
            "--port",
            "0",
            "--instance",
            &instance,
            "--image",
            &image,
        ],
        &[
            ("PATH", path.as_str()),
            ("KERNELBOX_BASE_IMAGE", base.as_str()),
        ],
    )
    .await;
    assert!(!ok, "the server started: {stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(!stderr.contains("listening"), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains(&base),
        "the base image is not named: {stderr}"
    );
    assert!(last.contains("`apt-get install debootstrap`"), "{stderr}");
    assert!(
        last.contains(&format!(
            "`kernelbox image build --offline --image {image}`"
        )),
        "{stderr}"
    );
    let present = std::process::Command::new("docker")
        .args(["image", "inspect", &image])
        .output()
        .expect("docker");
    assert!(!present.status.success(), "an image was built");
}
