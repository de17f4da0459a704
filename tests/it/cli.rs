//! The real binary: `kernelbox serve` starts, answers `GET /health`, and exits cleanly on
//! SIGTERM.

use kernelbox::engine::Tenant;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{
    TestEngine, docker_required, ensure_image, remove_instance_containers, start_server,
};

/// `GET /health` on a fresh connection (`Connection: close`): the whole response.
pub(crate) async fn get_health(port: u16) -> String {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("response");
    response
}

pub(crate) fn docker_available() -> bool {
    let up = std::process::Command::new("docker")
        .arg("info")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(up || !docker_required(), "Docker is required under CI=true");
    up
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_answers_health_and_stops_on_sigterm() {
    if !docker_available() {
        return;
    }
    ensure_image(&crate::common::sandbox_image());
    let instance = format!(
        "test-cli-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let (mut server, port) = start_server(&instance, &[]).await;
    let response = get_health(port).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"docker\":true"), "{response}");
    assert!(response.contains("\"status\":\"ok\""), "{response}");

    let pid = server.id().expect("pid") as i32;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(20), server.wait())
        .await
        .expect("exits")
        .expect("status");
    assert!(exit.success(), "{exit:?}");
    let mut stdout = String::new();
    server
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .await
        .expect("stdout");
    assert!(stdout.is_empty(), "nothing may go to stdout: {stdout}");
    remove_instance_containers(&instance);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkilled_server_reattaches_its_sandboxes_on_restart() {
    let Some(t) = TestEngine::start("sigkill").await else {
        return;
    };
    let mut ids = Vec::new();
    for value in 0..3 {
        let id = t.sandbox().await;
        t.run(&id, &format!("held = {value}")).await;
        ids.push(id);
    }
    // The server process of the same instance takes them over, is SIGKILLed, and started again.
    let (mut first, port) = start_server(t.instance(), &[]).await;
    assert!(get_health(port).await.contains("\"sandboxes\":3"));
    first.kill().await.expect("SIGKILL");
    let (mut second, port) = start_server(t.instance(), &[]).await;
    assert!(get_health(port).await.contains("\"sandboxes\":3"));
    second.kill().await.expect("SIGKILL");
    // Same ids, variables intact.
    let backend = kernelbox::backend::docker::DockerBackend::connect(Default::default())
        .await
        .expect("docker");
    let again = kernelbox::engine::Engine::new(
        std::sync::Arc::new(backend),
        kernelbox::config::EngineConfig::defaults(t.instance()),
    );
    assert_eq!(again.reattach().await.expect("reattach"), 3);
    for (value, id) in ids.iter().enumerate() {
        let result = again
            .execute(
                id,
                &Tenant::Local,
                kernelbox::engine::ExecuteRequest {
                    code: "print(held)".into(),
                    timeout: None,
                },
            )
            .await
            .expect("execute")
            .finish()
            .await
            .expect("result");
        assert_eq!(result.stdout, format!("{value}\n"));
    }
}

#[tokio::test]
async fn cors_star_without_a_key_is_refused_at_startup() {
    if !docker_available() {
        return;
    }
    ensure_image(&crate::common::sandbox_image());
    let instance = format!(
        "test-cors-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    // With CORS `*` and no key, any web page could read every sandbox: the server refuses.
    let refused = tokio::process::Command::new(env!("CARGO_BIN_EXE_kernelbox"))
        .args([
            "serve",
            "--port",
            "0",
            "--instance",
            &instance,
            "--no-image-build",
            "--cors-origins",
            "*",
        ])
        .env_remove("KERNELBOX_API_KEY")
        .output();
    let refused = tokio::time::timeout(Duration::from_secs(60), refused)
        .await
        .expect("the server exits")
        .expect("run the server");
    remove_instance_containers(&instance);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "it started: {stderr}");
    assert!(
        stderr.contains("--cors-origins '*' without an API key"),
        "{stderr}"
    );
}
