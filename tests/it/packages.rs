//! The package policy and creation `dependencies`, end to end, through REST and MCP. The packages
//! come from a PEP 503 index the test serves itself: wheels it builds by hand, behind
//! `http.server` in a test host on a network the test made, reached by the sandboxes through
//! the egress allow-list under a name the test's own DNS server answers (`index.kb.test`).
//!
//! The index holds `kbdemo` 1.0 (`VALUE = 42`) and 2.0 (`VALUE = 43`), `kbneeds` (depends on
//! `kbdemo`), `kbevil` (depends on `kbblocked`) and `kbblocked`. The policy allows `kbdemo`,
//! `kbneeds`, `kbevil` and `nosuchpkg` (not on the index), and blocks `kbdemo>=2` and every
//! `kbblocked`. pip left alone would pick `kbdemo` 2.0: getting 1.0 shows the constraint at work.

use std::net::IpAddr;
use std::time::Duration;

use kernelbox::config::PipIndex;
use kernelbox::egress::{DomainName, EgressLayer, EgressPolicy};
use kernelbox::packages::PackagePolicy;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{TestServer, instance_sandboxes};
use crate::mcp_sessions::{mcp_post, open_session};
use crate::net::{TestHost, TestNetwork};

/// Builds the wheels and their index under /srv/simple, then serves /srv on port 8000.
const INDEX: &str = r#"
import base64, hashlib, os, sys, zipfile

def wheel(name, version, module, requires):
    root = f"/srv/simple/{name}"
    os.makedirs(root, exist_ok=True)
    filename = f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    metadata += "".join(f"Requires-Dist: {r}\n" for r in requires)
    files = {
        f"{name}/__init__.py": module,
        f"{info}/METADATA": metadata,
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: kernelbox-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    with zipfile.ZipFile(os.path.join(root, filename), "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
            digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
            record.append(f"{path},sha256={digest},{len(text)}")
        record.append(f"{info}/RECORD,,")
        archive.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return filename

index = {}
for name, version, module, requires in [
    ("kbdemo", "1.0", "VALUE = 42\n", []),
    ("kbdemo", "2.0", "VALUE = 43\n", []),
    ("kbneeds", "1.0", "import kbdemo\nVALUE = kbdemo.VALUE\n", ["kbdemo"]),
    ("kbevil", "1.0", "VALUE = 0\n", ["kbblocked"]),
    ("kbblocked", "1.0", "VALUE = 0\n", []),
]:
    index.setdefault(name, []).append(wheel(name, version, module, requires))
for name, files in index.items():
    links = "".join(f'<a href="{f}">{f}</a><br>' for f in files)
    with open(f"/srv/simple/{name}/index.html", "w") as page:
        page.write(f"<html><body>{links}</body></html>")
os.execvp(sys.executable, [sys.executable, "-u", "-m", "http.server", "8000", "--bind", "::", "-d", "/srv"])
"#;

/// The test's network, index and DNS server, and a server whose sandboxes reach the index (and
/// nothing else) under the package policy above.
struct Fixture {
    server: TestServer,
    _index: TestHost,
    _dns: TestHost,
    _network: TestNetwork,
}

impl Fixture {
    async fn start(name: &str, keys: &[&str]) -> Option<Self> {
        let network = TestNetwork::create(name);
        let index = TestHost::start_with(
            &network,
            "index",
            &[],
            &["python3", "-c", INDEX],
            "Serving HTTP",
        );
        let dns = TestHost::dns(&network, "dns", &[("index.kb.test", index.ip4, index.ip6)]);
        let (network_name, dns_ip) = (network.name.clone(), dns.ip4);
        let server = TestServer::start_with(name, keys, move |config| {
            config.network = network_name;
            config.dns = vec![IpAddr::V4(dns_ip)];
            config.egress = EgressPolicy::new(vec![EgressLayer::Allow {
                domains: vec![DomainName::new("index.kb.test").expect("a name")],
                cidrs: vec![],
            }])
            .expect("policy");
            config.package_policy = PackagePolicy::parse(
                &["kbdemo", "kbneeds", "kbevil", "nosuchpkg"].map(String::from),
                &["kbdemo>=2", "kbblocked"].map(String::from),
            )
            .expect("package policy");
            config.pip_index = Some(PipIndex {
                url: "http://index.kb.test:8000/simple/".into(),
                trusted_host: Some("index.kb.test:8000".into()),
            });
        })
        .await?;
        Some(Self {
            server,
            _index: index,
            _dns: dns,
            _network: network,
        })
    }

    /// `POST /containers` with these dependencies: (status, body).
    async fn create(&self, dependencies: &[&str]) -> (StatusCode, Value) {
        let response = self
            .server
            .post("/containers")
            .json(&json!({ "dependencies": dependencies }))
            .timeout(Duration::from_secs(300))
            .send()
            .await
            .expect("create");
        let status = response.status();
        (status, response.json().await.expect("JSON"))
    }

    /// `POST /containers/{id}/packages`: (status, body).
    async fn install(&self, id: &str, packages: &[&str]) -> (StatusCode, Value) {
        let response = self
            .server
            .post(&format!("/containers/{id}/packages"))
            .json(&json!({ "packages": packages }))
            .timeout(Duration::from_secs(300))
            .send()
            .await
            .expect("install");
        let status = response.status();
        (status, response.json().await.expect("JSON"))
    }

    async fn run(&self, id: &str, code: &str) -> String {
        let result: Value = self
            .server
            .post(&format!("/containers/{id}/execute"))
            .json(&json!({ "code": code }))
            .timeout(Duration::from_secs(120))
            .send()
            .await
            .expect("execute")
            .json()
            .await
            .expect("result");
        assert_eq!(result["status"], "completed", "{result}");
        result["stdout"]
            .as_str()
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    fn sandboxes(&self) -> Vec<String> {
        instance_sandboxes(self.server.instance())
    }
}

fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn rest_dependencies_and_installs_obey_the_package_policy() {
    let Some(f) = Fixture::start("pkgrest", &[]).await else {
        return;
    };

    // Refused by the policy, naming the rule, before any container starts.
    let (status, body) = f.create(&["kbdemo==2.0"]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "package_not_allowed", "{body}");
    assert_eq!(
        message(&body),
        r#""kbdemo==2.0" is blocked by rule "kbdemo>=2""#
    );
    let (status, body) = f.create(&["kbdemo", "Pandas"]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(message(&body).contains(r#""Pandas" is not on"#), "{body}");
    for smuggled in [
        "--index-url=http://evil.kb.test/simple/",
        "-e",
        "kbdemo @ http://index.kb.test:8000/simple/kbdemo/kbdemo-2.0-py3-none-any.whl",
    ] {
        let (status, body) = f.create(&[smuggled]).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{smuggled}: {body}"
        );
        assert_eq!(body["error"]["code"], "invalid_request", "{body}");
    }
    assert_eq!(
        f.sandboxes(),
        Vec::<String>::new(),
        "a refused create left a container"
    );

    // Allowed, but not on the index: pip fails, the error names the package, nothing is left.
    let (status, body) = f.create(&["kbdemo", "nosuchpkg"]).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "dependency_install_failed", "{body}");
    let text = message(&body);
    assert!(
        text.contains(r#"dependencies "nosuchpkg""#) && text.contains("No matching distribution"),
        "{body}"
    );
    assert_eq!(
        f.sandboxes(),
        Vec::<String>::new(),
        "a failed install left a container (or its sidecar)"
    );

    // Allowed and served: installed as the sandbox user, under the constraint that keeps
    // kbdemo below 2 (pip would take 2.0 otherwise).
    let started = std::time::Instant::now();
    let (status, plain) = f.create(&[]).await;
    let plain_ms = started.elapsed().as_millis();
    assert_eq!(status, StatusCode::CREATED, "{plain}");
    let plain_id = plain["id"].as_str().expect("id");
    let deleted = f
        .server
        .delete(&format!("/containers/{plain_id}"))
        .send()
        .await
        .expect("delete");
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let started = std::time::Instant::now();
    let (status, body) = f.create(&["kbdemo"]).await;
    eprintln!(
        "create: {plain_ms} ms without dependencies, {} ms with kbdemo from the test index",
        started.elapsed().as_millis()
    );
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["id"].as_str().expect("id").to_string();
    assert_eq!(
        f.run(&id, "import os, kbdemo; print(kbdemo.VALUE, os.stat(kbdemo.__file__).st_uid, kbdemo.__file__.startswith('/home/'))").await,
        "42 1000 True"
    );

    // install_packages (REST): the same policy.
    let (status, body) = f.install(&id, &["kbdemo==2.0"]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(
        message(&body),
        r#""kbdemo==2.0" is blocked by rule "kbdemo>=2""#
    );
    let (status, body) = f.install(&id, &["requests"]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    for smuggled in [
        "--index-url=http://evil.kb.test/simple/",
        "-e .",
        "-e",
        "kbdemo@http://index.kb.test:8000/simple/kbdemo/kbdemo-2.0-py3-none-any.whl",
        "/workspace/kbdemo-2.0-py3-none-any.whl",
        "kbdemo --pre",
    ] {
        let (status, body) = f.install(&id, &["kbneeds", smuggled]).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{smuggled}: {body}"
        );
    }
    // A dependency pip pulls in is held to the block rules too: kbevil needs kbblocked.
    let (status, body) = f.install(&id, &["kbevil"]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_ne!(
        body["exit_code"], 0,
        "kbblocked came in as a dependency: {body}"
    );
    let output = format!("{}{}", body["stdout"], body["stderr"]);
    assert!(
        output.contains("kbblocked===blocked-by-package-policy"),
        "{body}"
    );
    assert_eq!(
        f.run(
            &id,
            "import importlib.util as u; print(u.find_spec('kbblocked'))"
        )
        .await,
        "None"
    );
    // An allowed install that pulls kbdemo in keeps it below 2.
    let (status, body) = f.install(&id, &["kbneeds"]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["exit_code"], 0, "{body}");
    let (status, body) = f.create(&["kbneeds"]).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let second = body["id"].as_str().expect("id").to_string();
    assert_eq!(
        f.run(&second, "import kbneeds; print(kbneeds.VALUE)").await,
        "42"
    );
    assert_eq!(f.sandboxes().len(), 2);
}

/// Calls an MCP tool in a legacy session; returns the result and the progress messages.
async fn call(
    server: &TestServer,
    session: &str,
    id: u64,
    tool: &str,
    arguments: Value,
) -> (Value, Vec<String>) {
    let body = json!({
        "jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": tool, "arguments": arguments, "_meta": {"progressToken": format!("p{id}")}}
    });
    let text = mcp_post(server, "k", Some(session), &body)
        .timeout(Duration::from_secs(300))
        .send()
        .await
        .expect("tools/call")
        .text()
        .await
        .expect("body");
    let mut progress = Vec::new();
    let mut result = Value::Null;
    for line in text.lines() {
        let Some(data) = line.strip_prefix("data:") else {
            continue;
        };
        let Ok(message) = serde_json::from_str::<Value>(data.trim()) else {
            continue;
        };
        if message["method"] == "notifications/progress" {
            if let Some(text) = message["params"]["message"].as_str() {
                progress.push(text.to_string());
            }
        } else if message["id"] == id {
            result = message["result"].clone();
        }
    }
    assert!(!result.is_null(), "no result: {text}");
    (result, progress)
}

fn result_text(result: &Value) -> String {
    result["content"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|block| block["text"].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn mcp_create_session_and_install_packages_obey_the_package_policy() {
    let Some(f) = Fixture::start("pkgmcp", &["k"]).await else {
        return;
    };
    let server = &f.server;
    let session = open_session(server, "k").await;

    let (refused, _) = call(
        server,
        &session,
        2,
        "create_session",
        json!({"dependencies": ["kbdemo==2.0"]}),
    )
    .await;
    assert_eq!(refused["isError"], true, "{refused}");
    assert!(
        result_text(&refused).contains(r#""kbdemo==2.0" is blocked by rule "kbdemo>=2""#),
        "{refused}"
    );
    let (failed, _) = call(
        server,
        &session,
        3,
        "create_session",
        json!({"dependencies": ["nosuchpkg"]}),
    )
    .await;
    assert_eq!(failed["isError"], true, "{failed}");
    assert!(result_text(&failed).contains(r#""nosuchpkg""#), "{failed}");
    assert_eq!(
        f.sandboxes(),
        Vec::<String>::new(),
        "a failed create_session left a container"
    );

    let (created, progress) = call(
        server,
        &session,
        4,
        "create_session",
        json!({"dependencies": ["kbdemo"]}),
    )
    .await;
    assert_ne!(created["isError"], true, "{created}");
    assert!(
        progress
            .iter()
            .any(|m| m == "installing dependencies: kbdemo")
            && progress
                .iter()
                .any(|m| m.starts_with("dependencies installed")),
        "progress: {progress:?}"
    );
    let id = created["structuredContent"]["session_id"]
        .as_str()
        .expect("session_id")
        .to_string();
    let (ran, _) = call(
        server,
        &session,
        5,
        "execute_code",
        json!({"code": "import kbdemo; print(kbdemo.VALUE)", "session_id": id}),
    )
    .await;
    assert!(result_text(&ran).contains("42"), "{ran}");

    for (n, (packages, expected)) in [
        (json!(["kbdemo==2.0"]), r#"is blocked by rule "kbdemo>=2""#),
        (json!(["KBDemo===2.0"]), r#"is blocked by rule "kbdemo>=2""#),
        (
            json!(["numpy"]),
            "is not on this server's package allow list",
        ),
        (
            json!(["--index-url=http://evil.kb.test/simple/"]),
            "pip options are not accepted",
        ),
        (json!(["-e", "."]), "pip options are not accepted"),
        (
            json!(["kbdemo @ http://index.kb.test:8000/x.whl"]),
            "is not a package requirement",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let (result, _) = call(
            server,
            &session,
            10 + n as u64,
            "install_packages",
            json!({"packages": packages, "session_id": id}),
        )
        .await;
        assert_eq!(result["isError"], true, "{packages}: {result}");
        assert!(
            result_text(&result).contains(expected),
            "{packages}: {result}"
        );
    }
    let (installed, _) = call(
        server,
        &session,
        20,
        "install_packages",
        json!({"packages": ["KBNeeds"], "session_id": id}),
    )
    .await;
    assert_ne!(installed["isError"], true, "{installed}");
    assert_eq!(f.sandboxes(), vec![id]);
}
