//! Shared test setup: the sandbox image (built once if missing), a Docker-backed engine with a
//! unique instance name per test, and cleanup of that instance's containers even on failure.

use std::process::Command;
use std::sync::{Arc, OnceLock};

use kernelbox::backend::docker::DockerBackend;
use kernelbox::backend::docker::network::NetworkOptions;
use kernelbox::config::EngineConfig;
use kernelbox::engine::Tenant;
use kernelbox::engine::{CreateSandbox, Engine, ExecuteRequest, ExecutionResult, labels};
use kernelbox::http::auth::ApiKeys;
use kernelbox::http::server::HttpConfig;

/// Under `CI=true` a missing Docker engine fails the test; elsewhere the test is skipped.
pub(crate) fn docker_required() -> bool {
    std::env::var("CI")
        .map(|value| value == "true" || value == "1")
        .unwrap_or(false)
}

/// Checks the image once per test process and builds it (offline) when missing or outdated.
/// The sandbox image the tests use: `KERNELBOX_IMAGE` (which servers the tests start read too),
/// or the default.
pub(crate) fn sandbox_image() -> String {
    std::env::var("KERNELBOX_IMAGE")
        .unwrap_or_else(|_| kernelbox::config::DEFAULT_IMAGE.to_string())
}

pub(crate) fn ensure_image(image: &str) {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let ready = READY.get_or_init(|| {
        let wanted = kernelbox::engine::IMAGE_VERSION.trim();
        let inspect = Command::new("docker")
            .args([
                "image",
                "inspect",
                "--format",
                &format!(
                    "{{{{ index .Config.Labels \"{}\" }}}}",
                    labels::IMAGE_VERSION
                ),
                image,
            ])
            .output()
            .map_err(|error| format!("cannot run docker: {error}"))?;
        if inspect.status.success() && String::from_utf8_lossy(&inspect.stdout).trim() == wanted {
            return Ok(());
        }
        eprintln!("test setup: building the sandbox image {image} (offline)");
        let status = Command::new(env!("CARGO_BIN_EXE_kernelbox"))
            .args(["image", "build", "--offline", "--image", image])
            .status()
            .map_err(|error| format!("cannot run the image build: {error}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("image build failed: {status}"))
        }
    });
    if let Err(error) = ready {
        panic!("sandbox image unavailable: {error}");
    }
}

/// An engine for one test. Dropping it removes every container of its instance.
pub(crate) struct TestEngine {
    pub(crate) engine: Arc<Engine>,
    instance: String,
}

impl TestEngine {
    /// `None` when Docker is unreachable outside CI (the test is skipped).
    pub(crate) async fn start(name: &str) -> Option<Self> {
        Self::start_with(name, |_| {}).await
    }

    pub(crate) async fn start_with(
        name: &str,
        adjust: impl FnOnce(&mut EngineConfig),
    ) -> Option<Self> {
        let instance = format!(
            "test-{name}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        Self::start_on(name, instance, adjust).await
    }

    /// An engine of an existing `instance` (as a restarted server is): it has not reattached
    /// yet.
    pub(crate) async fn start_on(
        name: &str,
        instance: String,
        adjust: impl FnOnce(&mut EngineConfig),
    ) -> Option<Self> {
        let mut config = EngineConfig::defaults(&instance);
        adjust(&mut config);
        let network = NetworkOptions::for_engine(&config).expect("network options");
        let backend = match DockerBackend::connect(network).await {
            Ok(backend) => backend.with_kernel_channel(config.kernel_channel),
            Err(error) if !docker_required() => {
                eprintln!("skipping {name}: Docker unreachable ({error})");
                return None;
            }
            Err(error) => panic!("Docker is required under CI=true: {error}"),
        };
        ensure_image(&config.image);
        let engine = Engine::new(Arc::new(backend), config);
        Some(Self { engine, instance })
    }

    pub(crate) async fn sandbox(&self) -> String {
        self.engine
            .create(CreateSandbox::new(Tenant::Local))
            .await
            .expect("create sandbox")
            .id
    }

    pub(crate) async fn run(&self, id: &str, code: &str) -> Arc<ExecutionResult> {
        self.engine
            .execute(
                id,
                &Tenant::Local,
                ExecuteRequest {
                    code: code.into(),
                    timeout: None,
                },
            )
            .await
            .expect("start execution")
            .finish()
            .await
            .expect("execution result")
    }

    pub(crate) fn instance(&self) -> &str {
        &self.instance
    }
}

impl Drop for TestEngine {
    fn drop(&mut self) {
        remove_instance_containers(&self.instance);
    }
}

/// Every container of an instance, sandboxes and network sidecars (none when Docker cannot be
/// asked).
pub(crate) fn instance_containers(instance: &str) -> Vec<String> {
    let listed = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label={}={instance}", labels::INSTANCE),
        ])
        .output();
    listed
        .map(|listed| {
            String::from_utf8_lossy(&listed.stdout)
                .split_whitespace()
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// Removes every container of an instance with the docker CLI (works from `Drop`, in or out of
/// a runtime, even while a test panics).
pub(crate) fn remove_instance_containers(instance: &str) {
    let ids = instance_containers(instance);
    if !ids.is_empty() {
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v"])
            .args(&ids)
            .output();
    }
}

/// A running sandbox's container id, as Docker names it.
pub(crate) fn sandbox_container(id: &str) -> String {
    let listed = Command::new("docker")
        .args([
            "ps",
            "-q",
            "--no-trunc",
            "--filter",
            &format!("label={}={id}", labels::ID),
        ])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&listed.stdout).trim().to_string()
}

/// A Python with the official MCP SDK, fastmcp and openai-agents, in a venv under the target
/// directory, made once per test process (`pip install` needs PyPI).
pub(crate) fn python_with_mcp() -> std::path::PathBuf {
    static PYTHON: OnceLock<Result<std::path::PathBuf, String>> = OnceLock::new();
    let python = PYTHON.get_or_init(|| {
        let venv = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("mcp-venv");
        let python = venv.join("bin").join("python");
        let marker = venv.join(format!(
            "mcp-{MCP_SDK_VERSION}-fastmcp-{FASTMCP_VERSION}-agents-{OPENAI_AGENTS_VERSION}.installed"
        ));
        if marker.exists() {
            return Ok(python);
        }
        let run = |command: &mut Command| -> Result<(), String> {
            let output = command
                .output()
                .map_err(|error| format!("cannot run {command:?}: {error}"))?;
            if output.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "{command:?} failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                ))
            }
        };
        eprintln!(
            "test setup: installing mcp {MCP_SDK_VERSION}, fastmcp {FASTMCP_VERSION} and openai-agents {OPENAI_AGENTS_VERSION} into {venv:?}"
        );
        if !python.exists() {
            run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
        }
        run(Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            &format!("mcp=={MCP_SDK_VERSION}"),
            &format!("fastmcp=={FASTMCP_VERSION}"),
            &format!("openai-agents=={OPENAI_AGENTS_VERSION}"),
        ]))?;
        std::fs::write(&marker, b"").map_err(|error| error.to_string())?;
        Ok(python)
    });
    match python {
        Ok(python) => python.clone(),
        Err(error) => panic!("the MCP Python SDK is unavailable: {error}"),
    }
}

/// The official MCP Python SDK release the end-to-end tests drive kernelbox with.
pub(crate) const MCP_SDK_VERSION: &str = "2.3.0";
/// fastmcp's release whose `Client` the tests drive kernelbox with, in its default mode.
pub(crate) const FASTMCP_VERSION: &str = "4.1.6";
/// openai-agents' release whose strict schema conversion the tool schemas must pass.
pub(crate) const OPENAI_AGENTS_VERSION: &str = "0.24.0";

/// The sandbox ids of an instance's containers, as Docker lists them (each sandbox once, however
/// many containers it has).
pub(crate) fn instance_sandboxes(instance: &str) -> Vec<String> {
    let listed = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("label={}={instance}", labels::INSTANCE),
            "--format",
            &format!("{{{{.Label \"{}\"}}}}", labels::ID),
        ])
        .output()
        .expect("docker ps");
    let mut ids: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(String::from)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Whether a sandbox's container still exists.
pub(crate) fn container_exists(sandbox_id: &str) -> bool {
    let listed = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label={}={sandbox_id}", labels::ID),
        ])
        .output()
        .expect("docker ps");
    !String::from_utf8_lossy(&listed.stdout).trim().is_empty()
}

/// The real router (REST, `/mcp`) served on a free loopback port, with a Docker-backed engine
/// behind it.
pub(crate) struct TestServer {
    pub(crate) base: String,
    pub(crate) http: reqwest::Client,
    server: tokio::task::JoinHandle<()>,
    shutdown: tokio_util::sync::CancellationToken,
    _engine: TestEngine,
}

impl TestServer {
    pub(crate) async fn start(name: &str, keys: &[&str]) -> Option<Self> {
        Self::start_with(name, keys, |_| {}).await
    }

    pub(crate) async fn start_with(
        name: &str,
        keys: &[&str],
        adjust: impl FnOnce(&mut kernelbox::config::EngineConfig),
    ) -> Option<Self> {
        Self::start_with_cors(name, keys, &[], adjust).await
    }

    /// With CORS origins (`--cors-origins`) as well.
    pub(crate) async fn start_with_cors(
        name: &str,
        keys: &[&str],
        cors_origins: &[&str],
        adjust: impl FnOnce(&mut kernelbox::config::EngineConfig),
    ) -> Option<Self> {
        let engine = TestEngine::start_with(name, adjust).await?;
        Some(Self::serve(engine, keys, cors_origins).await)
    }

    /// A server of an existing `instance`, as after a restart: it reattaches that instance's
    /// sandboxes before it serves.
    pub(crate) async fn start_on_instance(
        name: &str,
        instance: &str,
        keys: &[&str],
    ) -> Option<Self> {
        Self::start_on_instance_with(name, instance, keys, |_| {}).await
    }

    /// [`TestServer::start_on_instance`] with its configuration adjusted.
    pub(crate) async fn start_on_instance_with(
        name: &str,
        instance: &str,
        keys: &[&str],
        adjust: impl FnOnce(&mut kernelbox::config::EngineConfig),
    ) -> Option<Self> {
        let engine = TestEngine::start_on(name, instance.to_string(), adjust).await?;
        engine.engine.reattach().await.expect("reattach");
        Some(Self::serve(engine, keys, &[]).await)
    }

    async fn serve(engine: TestEngine, keys: &[&str], cors_origins: &[&str]) -> Self {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let config = HttpConfig {
            keys: Arc::new(ApiKeys::new(keys)),
            cors_origins: cors_origins
                .iter()
                .map(|origin| origin.to_string())
                .collect(),
            // As `serve` sets them for a loopback bind: every route refuses other `Host` values.
            allowed_hosts: vec!["127.0.0.1".into(), "localhost".into()],
            shutdown: shutdown.clone(),
        };
        let app = kernelbox::http::server::app(engine.engine.clone(), &config).expect("router");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let stop = shutdown.clone();
        // The server's own accept loop, with its default limits, as `kernelbox serve` runs it.
        let server = tokio::spawn(async move {
            let connections = kernelbox::http::listener::Listener::new(
                listener,
                app,
                kernelbox::http::listener::ConnectionLimits::default(),
            )
            .run(stop)
            .await;
            connections
                .drain(tokio::time::Instant::now() + std::time::Duration::from_secs(5))
                .await;
        });
        Self {
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            server,
            shutdown,
            _engine: engine,
        }
    }

    /// The instance name of the server's engine (its containers carry it as a label).
    pub(crate) fn instance(&self) -> &str {
        self._engine.instance()
    }

    /// The engine behind the server, to watch its state.
    pub(crate) fn engine(&self) -> &Arc<kernelbox::engine::Engine> {
        &self._engine.engine
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(crate) fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(self.url(path))
    }

    pub(crate) fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.post(self.url(path))
    }

    pub(crate) fn delete(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.delete(self.url(path))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // Ends MCP sessions first, so their sandboxes are released, then the listener.
        self.shutdown.cancel();
        self.server.abort();
    }
}

/// The MCP scenarios driven by the official Python SDK.
const SCENARIOS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mcp/scenarios.py");

/// Runs one scenario of `tests/mcp/scenarios.py` (it must finish `within`) and returns the facts
/// it printed on its `RESULT` line.
pub(crate) async fn run_scenario(args: &[&str], within: std::time::Duration) -> serde_json::Value {
    let output = tokio::process::Command::new(python_with_mcp())
        .arg(SCENARIOS)
        .args(args)
        .env("KERNELBOX_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(within, output)
        .await
        .unwrap_or_else(|_| panic!("scenario {args:?} did not finish within {within:?}"))
        .expect("run the scenario");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "scenario {args:?} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let line = stdout
        .lines()
        .find_map(|line| line.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("no RESULT line:\n{stdout}\n{stderr}"));
    eprintln!("scenario {}: {line}", args[0]);
    serde_json::from_str(line).expect("RESULT is JSON")
}

/// `curl` with `args`: (status, response headers, body).
pub(crate) async fn curl(args: &[&str]) -> (u16, String, String) {
    let output = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "-D",
            "/dev/stderr",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
        ])
        .args(args)
        .output()
        .await
        .expect("run curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').expect("status line");
    (
        status.trim().parse().expect("status code"),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        body.to_string(),
    )
}

/// Starts `kernelbox serve` for `instance` (plus `extra` flags) on a free port and waits for its
/// "listening" line.
pub(crate) async fn start_server(instance: &str, extra: &[&str]) -> (tokio::process::Child, u16) {
    let (server, port, _log) = start_server_with_log(instance, extra, &[]).await;
    (server, port)
}

/// The lines a server printed on stderr, as they come.
pub(crate) type ServerLog = Arc<std::sync::Mutex<Vec<String>>>;

/// [`start_server`], keeping what the server logs.
pub(crate) async fn start_server_with_log(
    instance: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (tokio::process::Child, u16, ServerLog) {
    use tokio::io::AsyncBufReadExt;

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port")
        .port();
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_kernelbox"))
        .args([
            "serve",
            "--port",
            &port.to_string(),
            "--instance",
            instance,
            "--no-image-build",
        ])
        .args(extra)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn kernelbox serve");
    // Wait for the "listening" log line: the event, not a guess at a delay.
    let mut lines = tokio::io::BufReader::new(server.stderr.take().expect("stderr")).lines();
    let log = ServerLog::default();
    let listening = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            let listening = line.contains("listening");
            log.lock().expect("log").push(line);
            if listening {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        listening,
        Ok(true),
        "server did not start: {:?}",
        log.lock().expect("log")
    );
    // Keep draining stderr so the server never blocks on a full pipe.
    let kept = log.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(mut kept) = kept.lock() {
                kept.push(line);
            }
        }
    });
    (server, port, log)
}
