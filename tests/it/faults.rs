//! Faults: stuck kernels, dead kernels, bombs, dropped callers, restarts, idle cleanup and
//! several kernelbox instances on one daemon.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kernelbox::backend::docker::DockerBackend;
use kernelbox::config::EngineConfig;
use kernelbox::engine::Tenant;
use kernelbox::engine::commands::CommandRequest;
use kernelbox::engine::{
    CreateSandbox, Engine, EngineError, ExecEvent, ExecuteRequest, ExecutionOutcome, SandboxStatus,
};

use crate::common::{
    TestEngine, instance_containers, remove_instance_containers, sandbox_container,
};
use crate::net::docker_ok;

fn code(code: &str, timeout_secs: u64) -> ExecuteRequest {
    ExecuteRequest {
        code: code.into(),
        timeout: Some(Duration::from_secs(timeout_secs)),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn code_ignoring_interrupts_gets_its_kernel_restarted() {
    let Some(t) = TestEngine::start("sigint").await else {
        return;
    };
    let id = t.sandbox().await;
    t.run(&id, "lost = 1").await;
    let stubborn =
        "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(1000)";
    let result = t
        .engine
        .execute(&id, &Tenant::Local, code(stubborn, 2))
        .await
        .expect("start")
        .finish()
        .await
        .expect("result");
    assert_eq!(
        result.outcome,
        ExecutionOutcome::Timeout {
            kernel_restarted: true
        }
    );
    let error = result.error.as_ref().expect("timeout error");
    assert!(error.evalue.contains("restarted"), "{error:?}");
    assert!(error.evalue.contains("lost"), "{error:?}");
    let after = t.run(&id, "print('lost' in globals())").await;
    assert_eq!(after.stdout, "False\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_bomb_reports_out_of_memory_and_recovers() {
    let Some(t) = TestEngine::start("oom").await else {
        return;
    };
    let small = t
        .engine
        .create(CreateSandbox {
            memory_mb: Some(512),
            ..CreateSandbox::new(Tenant::Local)
        })
        .await
        .expect("create")
        .id;
    let neighbour = t.sandbox().await;
    t.run(&neighbour, "survivor = 'here'").await;
    let result = t
        .engine
        .execute(
            &small,
            &Tenant::Local,
            code("x = b'\\x01' * (4 * 1024**3)", 60),
        )
        .await
        .expect("start")
        .finish()
        .await
        .expect("result");
    assert_eq!(
        result.outcome,
        ExecutionOutcome::KernelDied {
            out_of_memory: true
        },
        "{result:?}"
    );
    assert!(
        result
            .error
            .as_ref()
            .expect("error")
            .evalue
            .contains("out of memory")
    );
    assert_eq!(t.run(&small, "print('back')").await.stdout, "back\n");
    assert_eq!(t.run(&neighbour, "print(survivor)").await.stdout, "here\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn crashing_kernel_is_restarted() {
    let Some(t) = TestEngine::start("crash").await else {
        return;
    };
    let id = t.sandbox().await;
    for crash in [
        "import os; os._exit(1)",
        "import ctypes; ctypes.string_at(0)",
    ] {
        let result = t
            .engine
            .execute(&id, &Tenant::Local, code(crash, 30))
            .await
            .expect("start")
            .finish()
            .await
            .expect("result");
        assert_eq!(
            result.outcome,
            ExecutionOutcome::KernelDied {
                out_of_memory: false
            },
            "{crash}: {result:?}"
        );
        assert_eq!(
            t.run(&id, "print('alive')").await.stdout,
            "alive\n",
            "after {crash}"
        );
    }
    assert_eq!(
        t.engine.info(&id, &Tenant::Local).expect("info").status,
        SandboxStatus::Running
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fork_bomb_stays_inside_the_pids_limit() {
    let Some(t) = TestEngine::start("forkbomb").await else {
        return;
    };
    let (bombed, other) = tokio::join!(t.sandbox(), t.sandbox());
    let engine = t.engine.clone();
    let bomb_id = bombed.clone();
    let bomb = tokio::spawn(async move {
        engine
            .run_command(
                &bomb_id,
                &Tenant::Local,
                CommandRequest {
                    command: "bomb() { bomb | bomb & }; bomb; sleep 8".into(),
                    timeout: Some(Duration::from_secs(6)),
                    ..Default::default()
                },
            )
            .await
    });
    // While the bomb goes off, the engine and the other sandbox keep answering.
    for _ in 0..5 {
        let started = Instant::now();
        assert_eq!(t.run(&other, "print(1)").await.stdout, "1\n");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "slow: {:?}",
            started.elapsed()
        );
        assert_eq!(t.engine.list(&Tenant::Local).len(), 2);
    }
    let _ = bomb.await.expect("bomb task");
    let pids = t.run(&other, "print(open('/sys/fs/cgroup/pids/pids.max').read().strip() if __import__('os').path.exists('/sys/fs/cgroup/pids/pids.max') else open('/sys/fs/cgroup/pids.max').read().strip())").await;
    assert_eq!(pids.stdout, "256\n");
    // Whatever the bomb left behind, the sandbox can always be destroyed.
    t.engine
        .destroy(&bombed, &Tenant::Local)
        .await
        .expect("destroy the bombed sandbox");
    assert_eq!(t.run(&other, "print('after')").await.stdout, "after\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn dropped_execution_does_not_block_the_next() {
    let Some(t) = TestEngine::start("drop").await else {
        return;
    };
    let id = t.sandbox().await;
    let mut stream = t
        .engine
        .execute(
            &id,
            &Tenant::Local,
            code(
                "import time\nwhile True:\n    print('tick', flush=True)\n    time.sleep(0.1)",
                60,
            ),
        )
        .await
        .expect("start");
    assert!(matches!(
        stream.next().await,
        Some(ExecEvent::Stdout { .. })
    ));
    drop(stream);
    let started = Instant::now();
    let next = t
        .engine
        .execute(&id, &Tenant::Local, code("print('next')", 10))
        .await
        .expect("next starts");
    let result = next.finish().await.expect("result");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "next took {:?}",
        started.elapsed()
    );
    assert_eq!(result.stdout, "next\n", "{result:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn reattach_after_a_crash_keeps_ids_and_variables() {
    let Some(t) = TestEngine::start("reattach").await else {
        return;
    };
    let mut ids = Vec::new();
    for value in 0..3 {
        let id = t.sandbox().await;
        t.run(&id, &format!("value = {value}")).await;
        ids.push(id);
    }
    // A second engine of the same instance, as after a SIGKILL and restart: the first is
    // abandoned without any shutdown.
    let backend = DockerBackend::connect(Default::default())
        .await
        .expect("docker");
    let config = EngineConfig::defaults(t.instance());
    let restarted = Engine::new(Arc::new(backend), config);
    assert_eq!(restarted.reattach().await.expect("reattach"), 3);
    let mut listed: Vec<String> = restarted
        .list(&Tenant::Local)
        .into_iter()
        .map(|info| info.id)
        .collect();
    listed.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(listed, expected);
    for (value, id) in ids.iter().enumerate() {
        let result = restarted
            .execute(id, &Tenant::Local, code("print(value)", 10))
            .await
            .expect("execute")
            .finish()
            .await
            .expect("result");
        assert_eq!(result.stdout, format!("{value}\n"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_sandboxes_are_reaped_and_the_cap_holds() {
    let Some(t) = TestEngine::start_with("idle", |config| {
        config.max_idle = Duration::from_secs(2);
        config.cleanup_interval = Duration::from_millis(500);
        config.max_sandboxes = 1;
    })
    .await
    else {
        return;
    };
    let first = t.sandbox().await;
    let refused = t
        .engine
        .create(CreateSandbox::new(Tenant::Local))
        .await
        .expect_err("cap");
    assert!(matches!(
        refused,
        EngineError::TooManySandboxes { limit: 1 }
    ));
    assert!(refused.to_string().contains("limit of 1"));
    t.engine.spawn_reaper();
    let deadline = Instant::now() + Duration::from_secs(15);
    let container_exists = || {
        let listed = std::process::Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=io.kernelbox.id={first}"),
            ])
            .output()
            .expect("docker ps");
        !String::from_utf8_lossy(&listed.stdout).trim().is_empty()
    };
    while t.engine.info(&first, &Tenant::Local).is_ok() || container_exists() {
        assert!(Instant::now() < deadline, "idle sandbox was not reaped");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The cap frees up.
    t.sandbox().await;
    t.engine.shutdown(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_only_touch_their_own_sandboxes() {
    let Some(mine) = TestEngine::start_with("inst-a", |config| {
        config.max_idle = Duration::from_millis(1);
    })
    .await
    else {
        return;
    };
    let Some(theirs) = TestEngine::start("inst-b").await else {
        return;
    };
    let their_id = theirs.sandbox().await;
    let my_id = mine.sandbox().await;
    // A restarted "mine" reattaches only its own sandbox.
    let backend = DockerBackend::connect(Default::default())
        .await
        .expect("docker");
    let mut config = EngineConfig::defaults(mine.instance());
    config.max_idle = Duration::from_millis(1);
    let restarted = Engine::new(Arc::new(backend), config);
    assert_eq!(restarted.reattach().await.expect("reattach"), 1);
    assert_eq!(restarted.list(&Tenant::Local)[0].id, my_id);
    // Its reaper removes its own idle sandbox and never the other instance's.
    let reaped = restarted.reap_idle().await;
    assert_eq!(reaped, vec![my_id]);
    assert_eq!(
        theirs.run(&their_id, "print('untouched')").await.stdout,
        "untouched\n"
    );
    remove_instance_containers(mine.instance());
}

/// A file Docker cannot delete (`chattr +i`) in a container's writable layer, so that removing
/// the container fails the way a daemon in trouble fails it ("failed to remove root
/// filesystem"). Dropping it makes the file deletable again, even when the test panics.
struct Undeletable {
    path: std::path::PathBuf,
}

impl Undeletable {
    fn plant(container: &str) -> Self {
        let upper = docker_ok(&["inspect", "-f", "{{.GraphDriver.Data.UpperDir}}", container]);
        assert!(
            upper.starts_with('/'),
            "no writable layer for {container}: {upper:?}"
        );
        let path = std::path::Path::new(&upper).join("kernelbox-test-undeletable");
        std::fs::write(&path, b"").expect("write into the container's layer");
        let status = std::process::Command::new("chattr")
            .arg("+i")
            .arg(&path)
            .status()
            .expect("chattr");
        assert!(status.success(), "chattr +i {}", path.display());
        Self { path }
    }
}

impl Drop for Undeletable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.path)
            .status();
    }
}

/// The container of a sandbox, or of its network sidecar.
fn container_of(sandbox_id: &str, sidecar: bool) -> String {
    let container = sandbox_container(sandbox_id);
    assert!(!container.is_empty(), "no container for {sandbox_id}");
    if sidecar {
        crate::net::sidecar_of(&container)
    } else {
        container
    }
}

/// Docker fails to remove a sandbox's container, or only its network sidecar: the DELETE says
/// so (503 `removal_pending`), the sandbox is gone for its client, and once Docker can remove
/// the containers again the server does, without being asked (no container is left behind).
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_removal_is_reported_and_finished_in_the_background() {
    let Some(server) = crate::common::TestServer::start("removal-retry", &[]).await else {
        return;
    };
    for sidecar in [false, true] {
        let created = server
            .post("/containers")
            .json(&serde_json::json!({}))
            .send()
            .await
            .expect("create");
        assert_eq!(created.status(), reqwest::StatusCode::CREATED);
        let created: serde_json::Value = created.json().await.expect("created");
        let id = created["id"].as_str().expect("id").to_string();
        let stuck = Undeletable::plant(&container_of(&id, sidecar));

        let deleted = server
            .delete(&format!("/containers/{id}"))
            .send()
            .await
            .expect("delete");
        let status = deleted.status();
        let body: serde_json::Value = deleted.json().await.expect("error body");
        assert_eq!(
            status,
            reqwest::StatusCode::SERVICE_UNAVAILABLE,
            "sidecar {sidecar}: {body}"
        );
        assert_eq!(body["error"]["code"], "removal_pending", "{body}");
        let gone = server
            .get(&format!("/containers/{id}"))
            .send()
            .await
            .expect("get");
        assert_eq!(gone.status(), reqwest::StatusCode::NOT_FOUND);
        assert!(
            !instance_containers(server.instance()).is_empty(),
            "sidecar {sidecar}: every container is gone although Docker could not remove one"
        );

        drop(stuck);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = instance_containers(server.instance());
            if left.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "sidecar {sidecar}: containers left 30 s after Docker could remove them: {left:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Sandbox code writing to its container's own stdout (the kernel's fd 1, which Docker logs)
/// cannot fill the host's disk: 20 MB written leaves a log of about 1 MB.
#[tokio::test(flavor = "multi_thread")]
async fn a_sandbox_cannot_fill_the_disk_through_its_container_log() {
    let Some(t) = TestEngine::start("log-flood").await else {
        return;
    };
    let id = t.sandbox().await;
    let flood = t
        .run(
            &id,
            // ipykernel captures fd 1 for the execution's output; the container's own stdout
            // is the copy it keeps of the original (or PID 1's).
            "import os, sys\nfd = getattr(sys.stdout, '_original_stdstream_copy', None)\nif fd is None:\n    fd = os.open('/proc/1/fd/1', os.O_WRONLY)\nline = b'x' * 1023 + b'\\n'\nfor _ in range(20 * 1024):\n    os.write(fd, line)\nprint('written')",
        )
        .await;
    assert_eq!(
        flood.stdout,
        "written\n",
        "{} bytes of output, error {:?}",
        flood.stdout.len(),
        flood.error
    );
    let log_path = docker_ok(&["inspect", "-f", "{{.LogPath}}", &container_of(&id, false)]);
    let size = std::fs::metadata(&log_path)
        .unwrap_or_else(|error| panic!("the log {log_path:?}: {error}"))
        .len();
    eprintln!("20 MB written to the container's stdout: its log holds {size} bytes");
    assert!(size <= 2 * 1024 * 1024, "the log holds {size} bytes");
    // Whatever the daemon's defaults (here 3 files of 10 MB), both containers carry the cap.
    for sidecar in [false, true] {
        let config: serde_json::Value = serde_json::from_str(&docker_ok(&[
            "inspect",
            "-f",
            "{{json .HostConfig.LogConfig}}",
            &container_of(&id, sidecar),
        ]))
        .expect("the log config");
        assert_eq!(config["Type"], "json-file", "sidecar {sidecar}: {config}");
        assert_eq!(
            config["Config"]["max-size"], "1m",
            "sidecar {sidecar}: {config}"
        );
        assert_eq!(
            config["Config"]["max-file"], "1",
            "sidecar {sidecar}: {config}"
        );
    }
}
