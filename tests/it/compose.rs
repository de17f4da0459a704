//! The server as a container, the way operators run it: `docker/server/build-offline.sh` builds
//! its image (no registry), `docker-compose.yml` runs it with the Docker socket mounted, and from
//! the host a REST client and an MCP client use it; a `docker-compose restart` keeps the
//! sandboxes (the server reattaches, over the exec kernel channel: it cannot see host pids).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{docker_required, ensure_image, remove_instance_containers, run_scenario};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// A compose project of one test: its name, its environment, and, when dropped (even after a
/// failure), `down`, the sandboxes of its instance and the server image removed.
struct Project {
    name: String,
    instance: String,
    server_image: String,
    env: Vec<(String, String)>,
}

impl Project {
    fn compose(&self, args: &[&str]) -> std::process::Output {
        Command::new("docker-compose")
            .args([
                "-p",
                &self.name,
                "-f",
                &format!("{REPO}/docker-compose.yml"),
            ])
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .expect("run docker-compose")
    }

    fn compose_ok(&self, args: &[&str]) -> String {
        let output = self.compose(args);
        assert!(
            output.status.success(),
            "docker-compose {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn logs(&self) -> String {
        let output = self.compose(&["logs", "--no-color"]);
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = self.compose(&["down", "-v", "--remove-orphans", "-t", "5"]);
        remove_instance_containers(&self.instance);
        let _ = Command::new("docker")
            .args(["rmi", "-f", &self.server_image])
            .output();
    }
}

fn compose_available() -> bool {
    let ok = Command::new("docker-compose")
        .arg("version")
        .output()
        .map(|output| output.status.success())
        .unwrap_or(false);
    assert!(
        ok || !docker_required(),
        "docker-compose is required under CI=true"
    );
    ok
}

/// Waits for `GET /ready` to answer 200: the server in the container is up and can work.
async fn wait_ready(http: &reqwest::Client, base: &str, project: &Project) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let ready = http.get(format!("{base}/ready")).send().await;
        if matches!(&ready, Ok(response) if response.status() == 200) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server in the container is not ready ({ready:?}); its log:\n{}",
            project.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn execute(http: &reqwest::Client, base: &str, key: &str, id: &str, code: &str) -> Value {
    let response = http
        .post(format!("{base}/containers/{id}/execute"))
        .header("x-api-key", key)
        .json(&json!({ "code": code }))
        .send()
        .await
        .expect("execute");
    assert_eq!(response.status(), 200);
    response.json().await.expect("result")
}

async fn create(http: &reqwest::Client, base: &str, key: &str) -> String {
    let response = http
        .post(format!("{base}/containers"))
        .header("x-api-key", key)
        .json(&json!({}))
        .send()
        .await
        .expect("create");
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.expect("created");
    body["id"].as_str().expect("id").to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_runs_under_docker_compose_and_keeps_sandboxes_across_a_restart() {
    if !crate::cli::docker_available() || !compose_available() {
        return;
    }
    let sandbox_image = crate::common::sandbox_image();
    ensure_image(&sandbox_image);
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let instance = format!("test-compose-{suffix}");
    let server_image = format!("kernelbox-server:test-{suffix}");
    let key = format!("compose-key-{suffix}");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port")
        .port();
    let project = Project {
        name: format!("kbt-compose-{suffix}"),
        instance: instance.clone(),
        server_image: server_image.clone(),
        env: [
            ("KERNELBOX_SERVER_IMAGE", server_image.as_str()),
            ("KERNELBOX_API_KEY", key.as_str()),
            ("KERNELBOX_INSTANCE", instance.as_str()),
            ("KERNELBOX_IMAGE", sandbox_image.as_str()),
            ("KERNELBOX_HOST_PORT", &port.to_string()),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .to_vec(),
    };

    // The server image, offline, from the binary under test.
    let built = Command::new(Path::new(REPO).join("docker/server/build-offline.sh"))
        .arg(&server_image)
        .env("KERNELBOX_BIN", env!("CARGO_BIN_EXE_kernelbox"))
        .env("KERNELBOX_IMAGE", &sandbox_image)
        .output()
        .expect("run build-offline.sh");
    assert!(
        built.status.success(),
        "the server image build failed: {}",
        String::from_utf8_lossy(&built.stderr)
    );

    project.compose_ok(&["up", "-d", "--no-build"]);
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client");
    wait_ready(&http, &base, &project).await;

    // Published on loopback only.
    let ports = project.compose_ok(&["port", "kernelbox", "8000"]);
    assert_eq!(ports.trim(), format!("127.0.0.1:{port}"), "{ports}");
    // The key from the environment guards it.
    let keyless = http
        .get(format!("{base}/containers"))
        .send()
        .await
        .expect("list");
    assert_eq!(keyless.status(), 401);

    // REST: create → execute → destroy.
    let id = create(&http, &base, &key).await;
    let result = execute(&http, &base, &key, &id, "6*7").await;
    assert_eq!(result["text"], "42", "{result}");
    let destroyed = http
        .delete(format!("{base}/containers/{id}"))
        .header("x-api-key", &key)
        .send()
        .await
        .expect("destroy");
    assert_eq!(destroyed.status(), 204);

    // An MCP client gets 42.
    let mcp = run_scenario(
        &["http-answer", &format!("{base}/mcp"), &key],
        Duration::from_secs(180),
    )
    .await;
    assert_eq!(mcp["stdout"], "42\n", "{mcp}");

    // A sandbox with state survives `docker-compose restart`.
    let kept = create(&http, &base, &key).await;
    let set = execute(&http, &base, &key, &kept, "held = 6*7").await;
    assert_eq!(set["status"], "completed", "{set}");
    project.compose_ok(&["restart", "-t", "10"]);
    wait_ready(&http, &base, &project).await;
    let again = execute(&http, &base, &key, &kept, "print(held)").await;
    assert_eq!(again["stdout"], "42\n", "{again}");
    let logs = project.logs();
    assert!(logs.contains("reattached"), "{logs}");
    // In a container the server cannot reach kernels through host pids: `auto` fell back.
    assert!(
        logs.contains("kernel channels relay through docker exec"),
        "{logs}"
    );

    // Down removes the server container and its network; the sandbox is not compose's.
    project.compose_ok(&["down", "-t", "10"]);
    let listed = project.compose_ok(&["ps", "-q"]);
    assert!(listed.trim().is_empty(), "{listed}");
    assert!(
        crate::common::container_exists(&kept),
        "down removed a sandbox"
    );
}
