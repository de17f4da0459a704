//! The warm pool (`--warm-pool`) over real HTTP against real Docker: a create that fits takes a
//! ready sandbox, each is used once and the pool refills; creates that do not fit start cold; a
//! restart gives unclaimed members back to the pool and claimed ones to their owner, and removes
//! a claimed one whose binding was never stored; an image change rebuilds the pool.

use std::process::Command;
use std::time::{Duration, Instant};

use kernelbox::engine::labels;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{TestServer, container_exists};
use crate::net::{TestHost, TestNetwork};

/// How long the pool may take to fill (each member is a container start and a kernel).
const FILL_DEADLINE: Duration = Duration::from_secs(240);
/// How long the binding record may take to be written after the claim answered.
const RECORD_DEADLINE: Duration = Duration::from_secs(30);

async fn json_of(response: reqwest::Response, expected: StatusCode) -> Value {
    let status = response.status();
    let body = response.text().await.expect("body");
    assert_eq!(status, expected, "unexpected status; body: {body}");
    serde_json::from_str(&body).unwrap_or_else(|error| panic!("not JSON ({error}): {body}"))
}

fn keyed(request: reqwest::RequestBuilder, key: &str) -> reqwest::RequestBuilder {
    request.header("x-api-key", key)
}

async fn create(server: &TestServer, key: &str, body: Value) -> Value {
    let response = keyed(server.post("/containers"), key)
        .json(&body)
        .send()
        .await
        .expect("create");
    json_of(response, StatusCode::CREATED).await
}

async fn run(server: &TestServer, key: &str, id: &str, code: &str) -> Value {
    let response = keyed(server.post(&format!("/containers/{id}/execute")), key)
        .json(&json!({ "code": code }))
        .send()
        .await
        .expect("execute");
    json_of(response, StatusCode::OK).await
}

/// Waits until at least `members` pool members are ready.
async fn pool_holds(server: &TestServer, members: usize) {
    let mut ready = server.engine().warm_pool();
    tokio::time::timeout(FILL_DEADLINE, ready.wait_for(|ready| *ready >= members))
        .await
        .unwrap_or_else(|_| panic!("the pool did not reach {members} in {FILL_DEADLINE:?}"))
        .expect("the engine is running");
}

fn docker(args: &[&str]) -> String {
    let output = Command::new("docker").args(args).output().expect("docker");
    assert!(
        output.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// The names of an instance's unclaimed pool containers, sorted.
fn unclaimed(instance: &str) -> Vec<String> {
    let listed = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label={}={instance}", labels::INSTANCE),
        "--filter",
        &format!("label={}=1", labels::POOL),
        "--format",
        "{{.Names}}",
    ]);
    let mut names: Vec<String> = listed
        .lines()
        .filter(|name| name.starts_with(labels::POOL_NAME_PREFIX))
        .map(String::from)
        .collect();
    names.sort();
    names
}

/// Whether sandbox `id`'s container came from the pool.
fn from_pool(id: &str) -> bool {
    let name = format!("kernelbox-{}", id.replace('_', "-"));
    docker(&[
        "inspect",
        "--format",
        &format!("{{{{ index .Config.Labels \"{}\" }}}}", labels::POOL),
        &name,
    ]) == "1"
}

/// The sidecar of sandbox `id`, where its records live (named after the pool member it was).
fn sidecar(id: &str) -> String {
    docker(&[
        "inspect",
        "--format",
        &format!(
            "{{{{ index .Config.Labels \"{}\" }}}}",
            kernelbox::backend::docker::network::SIDECAR_LABEL
        ),
        &format!("kernelbox-{}", id.replace('_', "-")),
    ])
}

/// Waits until sandbox `id`'s binding record is stored: it is written after the claim answered,
/// and nothing tells a client when, so the test looks.
async fn binding_stored(id: &str) {
    let deadline = Instant::now() + RECORD_DEADLINE;
    let sidecar = sidecar(id);
    loop {
        let found = Command::new("docker")
            .args([
                "exec",
                &sidecar,
                "test",
                "-s",
                "/var/lib/kernelbox/records/binding.json",
            ])
            .status()
            .expect("docker exec")
            .success();
        if found {
            return;
        }
        assert!(Instant::now() < deadline, "no binding record for {id}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_create_that_fits_takes_a_ready_sandbox_used_once_and_the_pool_refills() {
    let Some(server) = TestServer::start_with("pool-claim", &["key-a", "key-b"], |config| {
        config.warm_pool = 2;
    })
    .await
    else {
        return;
    };
    server.engine().spawn_warm_pool();
    pool_holds(&server, 2).await;
    let members_before = unclaimed(server.instance());
    assert_eq!(members_before.len(), 2, "{members_before:?}");

    let started = Instant::now();
    let first = create(
        &server,
        "key-a",
        json!({"tag": "pooled", "metadata": {"team": "a"}, "timeout": 3600}),
    )
    .await;
    let id = first["id"].as_str().expect("id").to_string();
    let answer = run(&server, "key-a", &id, "print(6*7)").await;
    let took = started.elapsed();
    eprintln!("pool claim -> first result: {took:?}");
    assert_eq!(answer["stdout"], "42\n", "{answer}");
    // The pool's warm-up left no trace: this is the sandbox's first execution.
    assert_eq!(answer["execution_count"], 1, "{answer}");
    assert!(from_pool(&id), "the create did not take a pool member");
    let metrics = keyed(server.get("/metrics"), "key-a")
        .send()
        .await
        .expect("metrics");
    let metrics = metrics.text().await.expect("metrics text");
    assert!(
        metrics.contains("kernelbox_warm_pool_ready "),
        "no pool gauge: {metrics}"
    );
    assert_eq!(first["tag"], "pooled");
    assert_eq!(first["metadata"], json!({"team": "a"}));
    assert_eq!(first["timeout"], 3600);
    // It is the caller's alone: listed with its tag for its tenant, unknown to the other.
    let listed = json_of(
        keyed(server.get("/containers?metadata.team=a"), "key-a")
            .send()
            .await
            .expect("list"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(listed["containers"][0]["id"], id.as_str(), "{listed}");
    let foreign = keyed(server.get(&format!("/containers/{id}")), "key-b")
        .send()
        .await
        .expect("get");
    assert_eq!(foreign.status(), StatusCode::NOT_FOUND);

    // Tenant A leaves state behind; the pool refills, and B's pooled sandbox has none of it.
    run(
        &server,
        "key-a",
        &id,
        "secret = 'of a'\nopen('/workspace/a.txt', 'w').write('a')",
    )
    .await;
    pool_holds(&server, 2).await;
    let members_after = unclaimed(server.instance());
    assert_eq!(members_after.len(), 2, "{members_after:?}");
    let a_container = format!("kernelbox-{}", id.replace('_', "-"));
    assert!(!members_after.contains(&a_container));
    let second = create(&server, "key-b", json!({})).await;
    let other = second["id"].as_str().expect("id").to_string();
    assert_ne!(other, id);
    assert!(from_pool(&other));
    let clean = run(
        &server,
        "key-b",
        &other,
        "import os\nprint('secret' in globals(), os.path.exists('/workspace/a.txt'))",
    )
    .await;
    assert_eq!(clean["stdout"], "False False\n", "{clean}");

    // Destroyed, a claimed sandbox is gone for good; it never goes back to the pool.
    let destroyed = keyed(server.delete(&format!("/containers/{id}")), "key-a")
        .send()
        .await
        .expect("delete");
    assert_eq!(destroyed.status(), StatusCode::NO_CONTENT);
    assert!(!container_exists(&id));
    pool_holds(&server, 2).await;
    assert!(!unclaimed(server.instance()).contains(&a_container));
}

#[tokio::test(flavor = "multi_thread")]
async fn creates_that_do_not_fit_start_cold_and_leave_the_pool_alone() {
    let Some(server) = TestServer::start_with("pool-cold", &["key-a"], |config| {
        config.warm_pool = 1;
    })
    .await
    else {
        return;
    };
    server.engine().spawn_warm_pool();
    pool_holds(&server, 1).await;
    let member = unclaimed(server.instance());
    // Env cannot be given to a kernel that already runs (limits and a network policy can: see
    // `a_claimed_sandbox_holds_the_limits_and_network_policy_asked_for`).
    for body in [json!({"env": {"GREETING": "hello"}})] {
        let created = create(&server, "key-a", body.clone()).await;
        let id = created["id"].as_str().expect("id");
        assert!(!from_pool(id), "{body} took a pool member");
        assert_eq!(unclaimed(server.instance()), member, "{body}");
    }
    // Env reaches a cold sandbox's kernel as asked.
    let with_env = create(&server, "key-a", json!({"env": {"GREETING": "hello"}})).await;
    let id = with_env["id"].as_str().expect("id");
    let answer = run(
        &server,
        "key-a",
        id,
        "import os\nprint(os.environ['GREETING'])",
    )
    .await;
    assert_eq!(answer["stdout"], "hello\n");
}

/// The limits a sandbox's own cgroup holds (v1 or v2), as JSON: memory in bytes, CPUs, processes.
const CGROUP_LIMITS: &str = r#"
import json, os
def read(*paths):
    for path in paths:
        if os.path.exists(path):
            return open(path).read().split()
if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
    memory = int(read("/sys/fs/cgroup/memory.max")[0])
    quota, period = read("/sys/fs/cgroup/cpu.max")
    pids = read("/sys/fs/cgroup/pids.max")[0]
else:
    memory = int(read("/sys/fs/cgroup/memory/memory.limit_in_bytes")[0])
    quota = read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us")[0]
    period = read("/sys/fs/cgroup/cpu/cpu.cfs_period_us", "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us")[0]
    pids = read("/sys/fs/cgroup/pids/pids.max")[0]
print(json.dumps({"memory": memory, "cpus": int(quota) / int(period), "pids": pids}))
"#;

/// A create with limits and a network policy takes a pool member, and the member it gets holds
/// them before the caller can run anything: its cgroup says so, a memory bomb past the new limit
/// kills its kernel, and of two hosts on the test network only the one allowed answers.
#[tokio::test(flavor = "multi_thread")]
async fn a_claimed_sandbox_holds_the_limits_and_network_policy_asked_for() {
    let network = TestNetwork::create("pool-fit");
    let allowed = TestHost::web(&network, "allowed");
    let other = TestHost::web(&network, "other");
    let dns = TestHost::dns(&network, "dns", &[]);
    let (network_name, resolver) = (network.name.clone(), dns.ip4);
    let Some(server) = TestServer::start_with("pool-fit", &["key-a"], move |config| {
        config.warm_pool = 1;
        config.network = network_name;
        config.dns = vec![std::net::IpAddr::V4(resolver)];
    })
    .await
    else {
        return;
    };
    server.engine().spawn_warm_pool();
    pool_holds(&server, 1).await;
    let started = Instant::now();
    let created = create(
        &server,
        "key-a",
        json!({
            "memory_mb": 200,
            "cpus": 0.5,
            "pids": 96,
            "network": {"allowed_ips": [allowed.ip4.to_string()]},
        }),
    )
    .await;
    eprintln!(
        "pool claim with limits and a network policy: {:?}",
        started.elapsed()
    );
    let id = created["id"].as_str().expect("id");
    assert!(from_pool(id), "the create started cold");

    let limits = run(&server, "key-a", id, CGROUP_LIMITS).await;
    let limits: Value = serde_json::from_str(limits["stdout"].as_str().expect("stdout"))
        .unwrap_or_else(|error| panic!("not the limits ({error}): {limits}"));
    assert_eq!(limits["memory"], 200 * 1024 * 1024, "{limits}");
    assert_eq!(limits["cpus"], 0.5, "{limits}");
    assert_eq!(limits["pids"], "96", "{limits}");

    let probe = format!(
        "import socket\nfor host in ['{}', '{}']:\n    s = socket.socket()\n    s.settimeout(3)\n    try:\n        s.connect((host, 8000)); print(host, 'open')\n    except OSError as error:\n        print(host, 'closed', type(error).__name__)\n    finally:\n        s.close()",
        allowed.ip4, other.ip4
    );
    let reached = run(&server, "key-a", id, &probe).await;
    let stdout = reached["stdout"].as_str().unwrap_or_default();
    assert!(
        stdout.contains(&format!("{} open", allowed.ip4)),
        "the allowed host is not reachable: {reached}"
    );
    assert!(
        stdout.contains(&format!("{} closed", other.ip4)),
        "a host the policy does not name answered: {reached}"
    );

    let bomb = run(
        &server,
        "key-a",
        id,
        "chunks = []\nfor _ in range(40):\n    chunks.append(bytearray(10 * 1024 * 1024))\nprint('survived')",
    )
    .await;
    assert_eq!(bomb["status"], "failed", "{bomb}");
    assert!(
        bomb.to_string().contains("out of memory"),
        "400 MiB fit in a 200 MiB sandbox: {bomb}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_keeps_the_pool_and_the_owners_and_removes_a_claim_never_bound() {
    let Some(first) = TestServer::start_with("pool-restart", &["key-a", "key-b"], |config| {
        config.warm_pool = 2;
    })
    .await
    else {
        return;
    };
    first.engine().spawn_warm_pool();
    pool_holds(&first, 2).await;
    let kept = create(
        &first,
        "key-a",
        json!({"tag": "kept", "metadata": {"k": "v"}}),
    )
    .await;
    let kept_id = kept["id"].as_str().expect("id").to_string();
    run(&first, "key-a", &kept_id, "x = 5").await;
    let unbound = create(&first, "key-a", json!({"tag": "unbound"})).await;
    let unbound_id = unbound["id"].as_str().expect("id").to_string();
    binding_stored(&kept_id).await;
    binding_stored(&unbound_id).await;
    // As if the server had stopped between the claim and storing the binding.
    docker(&[
        "exec",
        &sidecar(&unbound_id),
        "rm",
        "/var/lib/kernelbox/records/binding.json",
    ]);
    pool_holds(&first, 2).await;
    let members = unclaimed(first.instance());
    first.engine().shutdown(false).await;

    let Some(second) = TestServer::start_on_instance_with(
        "pool-restart",
        first.instance(),
        &["key-a", "key-b"],
        |config| {
            config.warm_pool = 2;
        },
    )
    .await
    else {
        return;
    };
    // The unclaimed members are back, the same containers, before any refill runs.
    assert_eq!(*second.engine().warm_pool().borrow(), 2);
    assert_eq!(unclaimed(second.instance()), members);
    // The claimed one is its owner's, with its tag, metadata and kernel state.
    let shown = json_of(
        keyed(second.get(&format!("/containers/{kept_id}")), "key-a")
            .send()
            .await
            .expect("get"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(shown["tag"], "kept", "{shown}");
    assert_eq!(shown["metadata"], json!({"k": "v"}));
    assert_eq!(run(&second, "key-a", &kept_id, "x").await["text"], "5");
    let foreign = keyed(second.get(&format!("/containers/{kept_id}")), "key-b")
        .send()
        .await
        .expect("get");
    assert_eq!(foreign.status(), StatusCode::NOT_FOUND);
    // The one claimed without a stored binding went: never anyone's, never the pool's.
    assert!(!container_exists(&unbound_id));
    let missing = keyed(second.get(&format!("/containers/{unbound_id}")), "key-a")
        .send()
        .await
        .expect("get");
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}

/// Builds `tag` from the sandbox image with one label of its own, so that its id differs.
fn build_variant(tag: &str, mark: &str) {
    let dockerfile = format!(
        "FROM {}\nLABEL io.kernelbox.test-variant={mark}\n",
        crate::common::sandbox_image()
    );
    let mut child = Command::new("docker")
        .args(["build", "-q", "-t", tag, "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("docker build");
    std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), dockerfile.as_bytes())
        .expect("write the Dockerfile");
    drop(child.stdin.take());
    assert!(
        child.wait().expect("docker build").success(),
        "docker build {tag}"
    );
}

/// Removes the test's image tags when the test ends, however it ends.
struct ImageTag(String);

impl Drop for ImageTag {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["image", "rm", "-f", &self.0])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_change_rebuilds_the_pool() {
    if Command::new("docker").arg("info").output().is_err() {
        return;
    }
    let tag = format!(
        "kernelbox-sandbox:pool-test-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let _cleanup = ImageTag(tag.clone());
    build_variant(&tag, "one");
    let image = tag.clone();
    let Some(server) = TestServer::start_with("pool-image", &[], move |config| {
        config.warm_pool = 1;
        config.image = image;
    })
    .await
    else {
        return;
    };
    server.engine().spawn_warm_pool();
    pool_holds(&server, 1).await;
    let old = unclaimed(server.instance());
    let old_image = docker(&["inspect", "--format", "{{.Image}}", &old[0]]);
    // The operator rebuilds the image under the same name.
    build_variant(&tag, "two");
    let new_image = docker(&["image", "inspect", "--format", "{{.Id}}", &tag]);
    assert_ne!(old_image, new_image);
    server.engine().prune_warm_pool().await;
    assert_eq!(*server.engine().warm_pool().borrow(), 0);
    let mut ready = server.engine().warm_pool();
    tokio::time::timeout(FILL_DEADLINE, ready.wait_for(|ready| *ready >= 1))
        .await
        .expect("refilled in time")
        .expect("running");
    let rebuilt = unclaimed(server.instance());
    assert_eq!(rebuilt.len(), 1, "{rebuilt:?}");
    assert_ne!(rebuilt, old);
    assert_eq!(
        docker(&["inspect", "--format", "{{.Image}}", &rebuilt[0]]),
        new_image
    );
    // The old image's tag-less id goes with the test.
    let _old = ImageTag(old_image);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_with_a_smaller_pool_or_another_policy_does_not_keep_old_members() {
    let Some(first) = TestServer::start_with("pool-config", &[], |config| {
        config.warm_pool = 2;
    })
    .await
    else {
        return;
    };
    first.engine().spawn_warm_pool();
    pool_holds(&first, 2).await;
    let members = unclaimed(first.instance());
    first.engine().shutdown(false).await;

    // A smaller pool keeps what fits and removes the rest.
    let Some(second) =
        TestServer::start_on_instance_with("pool-config", first.instance(), &[], |config| {
            config.warm_pool = 1;
        })
        .await
    else {
        return;
    };
    assert_eq!(*second.engine().warm_pool().borrow(), 1);
    let kept = unclaimed(second.instance());
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(members.contains(&kept[0]));
    second.engine().shutdown(false).await;

    // Under a tighter egress policy, a member started under the old one is not handed out:
    // its sidecar enforces what it was started with.
    let Some(third) =
        TestServer::start_on_instance_with("pool-config", first.instance(), &[], |config| {
            config.warm_pool = 1;
            config.egress = kernelbox::egress::EgressPolicy::deny();
        })
        .await
    else {
        return;
    };
    assert_eq!(*third.engine().warm_pool().borrow(), 0);
    assert!(unclaimed(third.instance()).is_empty());
    // Its own members are started under the new policy.
    third.engine().spawn_warm_pool();
    pool_holds(&third, 1).await;
    let sandbox = create(&third, "unused", json!({})).await;
    let id = sandbox["id"].as_str().expect("id");
    assert!(from_pool(id));
    let firewall = json_of(
        third
            .get(&format!("/containers/{id}/firewall"))
            .send()
            .await
            .expect("firewall"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(firewall["source"], "operator", "{firewall}");
    assert_eq!(firewall["layers"][0]["kind"], "deny", "{firewall}");
}
