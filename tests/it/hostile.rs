//! A hostile sandbox against the server: code that sends a 300 MB frame on its own kernel's
//! iopub, or a signed message whose JSON would parse to many times its size, and code that
//! replaces its kernel with a peer announcing a 2^62-byte frame, before and
//! across a server restart. The server's memory stays put, the other sandbox keeps working, and
//! the offending sandbox is restarted with an error that says why. And a guest MCP server that
//! answers with a 300 MB line: the server reads 16 MiB of it, answers with an error that says
//! why, and kills the process.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{ServerLog, docker_required, ensure_image, remove_instance_containers};

/// Replaces the kernel: stops the kernel's supervisor (so nothing starts a new kernel), kills the
/// kernel, and serves its three sockets with a ZMTP peer that completes the handshake and then
/// announces a 2^62-byte frame. Says "up" on the FIFO `/tmp/kbx-up` once it listens.
const FAKE_KERNEL: &str = r#"
import os, signal, socket, struct, threading

def processes():
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/cmdline" % entry, "rb") as f:
                    yield int(entry), f.read().split(b"\0")
            except OSError:
                pass

kernel = next(pid for pid, argv in processes() if argv[:3] == [b"python3", b"-m", b"ipykernel_launcher"])
with open("/proc/%d/stat" % kernel) as f:
    supervisor = int(f.read().rsplit(")", 1)[1].split()[1])
os.kill(supervisor, signal.SIGSTOP)
os.kill(kernel, signal.SIGKILL)

greeting = b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00" + b"NULL" + b"\0" * 16 + b"\x00" + b"\0" * 31
def ready(kind):
    body = b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", len(kind)) + kind
    return bytes([0x04, len(body)]) + body
huge = bytes([0x02]) + struct.pack(">Q", 1 << 62)

held = []
def serve(listener, kind):
    while True:
        connection, _ = listener.accept()
        held.append(connection)
        try:
            connection.sendall(greeting + ready(kind) + huge)
        except OSError:
            pass

listeners = []
for number, kind in [(1, b"ROUTER"), (2, b"PUB"), (4, b"ROUTER")]:
    path = "/run/kernelbox/kernel-%d" % number
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(16)
    listeners.append((listener, kind))
for listener, kind in listeners:
    threading.Thread(target=serve, args=(listener, kind), daemon=True).start()
with open("/tmp/kbx-up", "w") as up:
    up.write("up\n")
threading.Event().wait()
"#;

/// The shell command that starts [`FAKE_KERNEL`] detached and returns once it listens.
fn fake_kernel_command() -> String {
    format!(
        "cat > /tmp/fake_kernel.py <<'PY'\n{FAKE_KERNEL}PY\nrm -f /tmp/kbx-up && mkfifo /tmp/kbx-up && (setsid python3 /tmp/fake_kernel.py </dev/null >/tmp/fake_kernel.log 2>&1 &) && read line < /tmp/kbx-up && echo \"$line\""
    )
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .expect("field")
}

/// Resets the process's peak RSS, so the next VmHWM is the peak from now on.
fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset VmHWM");
}

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    async fn create(&self) -> String {
        let created: Value = self
            .http
            .post(format!("{}/containers", self.base))
            .send()
            .await
            .expect("create")
            .json()
            .await
            .expect("container");
        created["id"].as_str().expect("id").to_string()
    }

    async fn execute(&self, id: &str, code: &str) -> Value {
        let response = self
            .http
            .post(format!("{}/containers/{id}/execute", self.base))
            .json(&json!({"code": code}))
            .send()
            .await
            .expect("execute");
        let status = response.status();
        let body = response
            .text()
            .await
            .unwrap_or_else(|error| error.to_string());
        serde_json::from_str(&body)
            .unwrap_or_else(|error| panic!("execute {code:?}: {status}, {error}: {body}"))
    }

    async fn command(&self, id: &str, command: &str) -> Value {
        self.http
            .post(format!("{}/containers/{id}/commands", self.base))
            .json(&json!({"cmd": command}))
            .send()
            .await
            .expect("command")
            .json()
            .await
            .expect("result")
    }

    /// Opens a session on a guest server's proxy (`initialize` in `protocol`); returns its id.
    async fn proxy_session(&self, proxy: &str, protocol: &str) -> String {
        let opened = self
            .http
            .post(proxy)
            .header("accept", "application/json, text/event-stream")
            .json(&json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": protocol, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}))
            .send()
            .await
            .expect("initialize");
        opened
            .headers()
            .get("mcp-session-id")
            .and_then(|value| value.to_str().ok())
            .expect("a session")
            .to_string()
    }

    async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }
}

fn logged(log: &ServerLog, needle: &str) -> bool {
    log.lock()
        .expect("log")
        .iter()
        .any(|line| line.contains(needle))
}

async fn start(instance: &str) -> (tokio::process::Child, Client, ServerLog) {
    let (server, port, log) = crate::common::start_server_with_log(instance, &[], &[]).await;
    let client = Client {
        http: reqwest::Client::new(),
        base: format!("http://127.0.0.1:{port}"),
    };
    (server, client, log)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_kernel_cannot_inflate_or_stop_the_server() {
    if !crate::cli::docker_available() && !docker_required() {
        return;
    }
    ensure_image(&crate::common::sandbox_image());
    let instance = format!(
        "test-hostile-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            remove_instance_containers(&self.0);
        }
    }
    let _cleanup = Cleanup(instance.clone());

    let (mut server, client, log) = start(&instance).await;
    let pid = server.id().expect("pid");
    let (hostile, bystander) = tokio::join!(client.create(), client.create());
    assert_eq!(
        client.execute(&bystander, "x = 'kept'").await["status"],
        "completed"
    );

    // A message not signed with the kernel's key is dropped, and counted.
    let forged = client
        .execute(
            &hostile,
            "get_ipython().kernel.iopub_socket.send_multipart([b'<IDS|MSG>', b'0' * 64, b'{\"msg_id\": \"f\", \"session\": \"s\", \"msg_type\": \"stream\"}', b'{}', b'{}', b'{\"name\": \"stdout\", \"text\": \"forged\"}'])\nprint('real')",
        )
        .await;
    assert_eq!(forged["stdout"], "real\n", "{forged}");
    let metrics = client.metrics().await;
    assert!(
        metrics.lines().any(|line| line
            .starts_with("kernelbox_kernel_messages_rejected_total{reason=\"bad_signature\"}")
            && !line.ends_with(" 0")),
        "{metrics}"
    );

    // One 300 MB frame on its own iopub.
    reset_peak(pid);
    let before = status_kib(pid, "VmRSS:");
    let (frame, meanwhile) = tokio::join!(
        client.execute(
            &hostile,
            "get_ipython().kernel.iopub_socket.send(b'x' * 300_000_000)\nimport time; time.sleep(5)"
        ),
        async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            client.execute(&bystander, "print(x)").await
        }
    );
    let growth_mib = status_kib(pid, "VmHWM:").saturating_sub(before) as f64 / 1024.0;
    eprintln!("300 MB frame: server RSS {before} KiB, peak growth {growth_mib:.1} MiB");
    assert!(growth_mib < 16.0, "the server grew by {growth_mib:.1} MiB");
    assert_eq!(frame["status"], "failed", "{frame}");
    assert_eq!(frame["error"]["name"], "KernelProtocolError", "{frame}");
    let why = frame["error"]["value"].as_str().unwrap_or_default();
    assert!(why.contains("300000") && why.contains("limit"), "{why}");
    assert_eq!(
        meanwhile["stdout"], "kept\n",
        "the other sandbox: {meanwhile}"
    );
    let after = client.execute(&hostile, "print(2)").await;
    assert_eq!(after["stdout"], "2\n", "the restarted sandbox: {after}");

    // A message signed with the kernel's key and within the byte limit (14 MB), whose content is
    // 3.5 million empty lists: parsed, over 110 MB. It is dropped unparsed, and counted.
    reset_peak(pid);
    let before = status_kib(pid, "VmRSS:");
    let swarm = client
        .execute(
            &hostile,
            "k = get_ipython().kernel\nk.session.send(k.iopub_socket, 'display_data', {'data': {'application/json': [[]] * 3_500_000}, 'metadata': {}}, parent=k.get_parent())\nprint('sent')",
        )
        .await;
    let growth_mib = status_kib(pid, "VmHWM:").saturating_sub(before) as f64 / 1024.0;
    eprintln!("14 MB message of 3.5 million values: peak growth {growth_mib:.1} MiB");
    assert!(growth_mib < 40.0, "the server grew by {growth_mib:.1} MiB");
    assert_eq!(swarm["status"], "completed", "{swarm}");
    assert_eq!(swarm["stdout"], "sent\n", "{swarm}");
    assert!(
        !swarm.to_string().contains("[[]"),
        "the swarm reached the result: {swarm}"
    );
    let metrics = client.metrics().await;
    assert!(
        metrics.lines().any(|line| line
            .starts_with("kernelbox_kernel_messages_rejected_total{reason=\"malformed\"}")
            && !line.ends_with(" 0")),
        "{metrics}"
    );

    // A peer in the kernel's place announcing a 2^62-byte frame.
    reset_peak(pid);
    let before = status_kib(pid, "VmRSS:");
    let replaced = client.command(&hostile, &fake_kernel_command()).await;
    assert_eq!(replaced["stdout"], "up\n", "{replaced}");
    // The first call may still find the old connection, whose kernel just died under it.
    let mut after = client.execute(&hostile, "print(3)").await;
    if after["status"] == "failed" {
        assert_eq!(after["error"]["name"], "KernelDied", "{after}");
        after = client.execute(&hostile, "print(3)").await;
    }
    assert_eq!(after["stdout"], "3\n", "after the fake kernel: {after}");
    assert_eq!(
        client.execute(&bystander, "print(x)").await["stdout"],
        "kept\n"
    );
    let growth_mib = status_kib(pid, "VmHWM:").saturating_sub(before) as f64 / 1024.0;
    eprintln!("2^62 frame: peak growth {growth_mib:.1} MiB");
    assert!(growth_mib < 16.0, "the server grew by {growth_mib:.1} MiB");
    assert!(
        logged(&log, "restarting the sandbox after a protocol violation")
            && logged(&log, "4611686018427387904"),
        "no clear error in the log"
    );
    let metrics = client.metrics().await;
    assert!(
        metrics.contains("kernelbox_kernel_violations_total 2"),
        "{metrics}"
    );

    // The same, with the server down while the peer takes the kernel's place: the next server
    // starts, reattaches, restarts that sandbox, and serves both.
    server.kill().await.expect("kill the server");
    let container = String::from_utf8(
        std::process::Command::new("docker")
            .args([
                "ps",
                "-q",
                "--filter",
                &format!("label=io.kernelbox.id={hostile}"),
            ])
            .output()
            .expect("docker ps")
            .stdout,
    )
    .expect("utf-8");
    let replaced = std::process::Command::new("docker")
        .args(["exec", container.trim(), "sh", "-c", &fake_kernel_command()])
        .output()
        .expect("docker exec");
    assert_eq!(String::from_utf8_lossy(&replaced.stdout), "up\n");
    let (mut server, client, log) = start(&instance).await;
    let after = client.execute(&hostile, "print(4)").await;
    assert_eq!(after["stdout"], "4\n", "after a restart: {after}");
    assert_eq!(
        client.execute(&bystander, "print(x)").await["stdout"],
        "kept\n"
    );
    assert!(logged(
        &log,
        "restarting the sandbox after a protocol violation"
    ));
    let pid = server.id().expect("pid");
    eprintln!("restarted server RSS {} KiB", status_kib(pid, "VmRSS:"));
    let _ = server.kill().await;
}

/// A guest MCP server that answers the handshake, then answers a tool call with 300 MB and no
/// newline, and stays alive (a write error does not stop it).
const FLOODING_SERVER: &str = r#"
import json, sys, time
for line in sys.stdin:
    message = json.loads(line)
    method = message.get("method")
    if method == "initialize":
        result = {"protocolVersion": message["params"]["protocolVersion"], "capabilities": {"tools": {}}, "serverInfo": {"name": "flood", "version": "1"}}
    elif method == "tools/list":
        result = {"tools": [{"name": name, "inputSchema": {"type": "object"}} for name in ["flood", "swarm", "big"]]}
    elif method == "tools/call" and message["params"]["name"] == "big":
        result = {"content": [{"type": "text", "text": "x" * 10_000_000}]}
    elif method == "tools/call" and message["params"]["name"] == "swarm":
        # Within the byte limit (14 MB), but 3.5 million values: over 110 MB parsed.
        result = {"content": [[]] * 3_500_000}
    elif method == "tools/call":
        try:
            chunk = "x" * 1_000_000
            for _ in range(300):
                sys.stdout.write(chunk)
                sys.stdout.flush()
        except OSError:
            pass
        time.sleep(600)
        continue
    else:
        continue
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result}) + "\n")
    sys.stdout.flush()
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_guest_server_cannot_inflate_the_server() {
    if !crate::cli::docker_available() && !docker_required() {
        return;
    }
    ensure_image(&crate::common::sandbox_image());
    let instance = format!(
        "test-flood-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            remove_instance_containers(&self.0);
        }
    }
    let _cleanup = Cleanup(instance.clone());
    let (mut server, client, log) = start(&instance).await;
    let pid = server.id().expect("pid");
    let id = client.create().await;
    let written = client
        .command(
            &id,
            &format!("cat > /tmp/flood_server.py <<'PY'\n{FLOODING_SERVER}PY\necho ok"),
        )
        .await;
    assert_eq!(written["stdout"], "ok\n", "{written}");
    let registered = client
        .http
        .put(format!("{}/containers/{id}/mcp/flood", client.base))
        .json(&json!({"server_params": {"command": "python3", "args": ["-u", "/tmp/flood_server.py"]}}))
        .send()
        .await
        .expect("register");
    assert_eq!(registered.status(), 200, "{:?}", registered.text().await);
    let running = || async {
        client
            .command(&id, "pgrep -f '/tmp/[f]lood_server.py' | wc -l")
            .await["stdout"]
            .as_str()
            .unwrap_or_default()
            .trim()
            .parse::<u32>()
            .unwrap_or(u32::MAX)
    };
    assert_eq!(running().await, 1, "the helper process runs");

    // Through the plain tool route (the helper process) and through a proxy session.
    for via in ["route", "proxy"] {
        reset_peak(pid);
        let before = status_kib(pid, "VmRSS:");
        let answer: Value = if via == "route" {
            let response = client
                .http
                .post(format!("{}/containers/{id}/mcp/flood/flood", client.base))
                .json(&json!({}))
                .send()
                .await
                .expect("call");
            assert_eq!(response.status(), 502);
            response.json().await.expect("a JSON error")
        } else {
            let proxy = format!("{}/containers/{id}/mcp-proxy/flood", client.base);
            let session = client.proxy_session(&proxy, "2025-06-18").await;
            let response = client
                .http
                .post(&proxy)
                .header("accept", "application/json")
                .header("mcp-session-id", &session)
                .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "flood", "arguments": {}}}))
                .send()
                .await
                .expect("tools/call");
            let text = response.text().await.expect("body");
            serde_json::from_str(&text).unwrap_or_else(|_| json!({"raw": text}))
        };
        let growth_mib = status_kib(pid, "VmHWM:").saturating_sub(before) as f64 / 1024.0;
        eprintln!("300 MB line via the {via}: peak growth {growth_mib:.1} MiB ({answer})");
        assert!(growth_mib < 40.0, "the server grew by {growth_mib:.1} MiB");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("longer than 16777216 bytes"), "{answer}");
        // The process that flooded is killed (and none runs until the next call).
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while running().await != 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the flooding process still runs: {}; the server logged:\n{}",
                client.command(&id, "ps -eo pid,pgid,stat,args").await,
                log.lock().expect("log").join("\n")
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // A line within the byte limit whose JSON, parsed, would take many times its size.
    reset_peak(pid);
    let before = status_kib(pid, "VmRSS:");
    let response = client
        .http
        .post(format!("{}/containers/{id}/mcp/flood/swarm", client.base))
        .json(&json!({}))
        .send()
        .await
        .expect("call");
    assert_eq!(response.status(), 502);
    let answer: Value = response.json().await.expect("a JSON error");
    let growth_mib = status_kib(pid, "VmHWM:").saturating_sub(before) as f64 / 1024.0;
    eprintln!("14 MB line of 3.5 million values: peak growth {growth_mib:.1} MiB ({answer})");
    assert!(growth_mib < 40.0, "the server grew by {growth_mib:.1} MiB");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("JSON values"), "{answer}");

    // Batches through a proxy session: one of more than 64 messages is refused; the answers to
    // one of 40 calls answered with 10 MB each are held up to 32 MiB, the rest dropped as they
    // come, each replaced by an error that says so.
    let proxy = format!("{}/containers/{id}/mcp-proxy/flood", client.base);
    let session = client.proxy_session(&proxy, "2025-03-26").await;
    // A batch of `count` calls of the 10 MB tool, posted in the session.
    let post_batch = |count: usize| {
        let calls: Value = (1..=count)
            .map(|n| json!({"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": {"name": "big", "arguments": {}}}))
            .collect();
        client
            .http
            .post(&proxy)
            .header("accept", "application/json")
            .header("mcp-session-id", &session)
            .json(&calls)
            .send()
    };
    let refused = post_batch(65).await.expect("batch");
    assert_eq!(refused.status(), 400);
    let refused: Value = refused.json().await.expect("JSON-RPC error");
    assert_eq!(refused["error"]["code"], -32600, "{refused}");
    reset_peak(pid);
    let before = status_kib(pid, "VmRSS:");
    let answered = post_batch(40).await.expect("batch");
    assert_eq!(answered.status(), 200);
    let answers: Vec<Value> = answered.json().await.expect("answers");
    let growth_mib = status_kib(pid, "VmHWM:").saturating_sub(before) as f64 / 1024.0;
    let dropped = answers
        .iter()
        .filter(|answer| {
            answer["error"]["message"]
                .as_str()
                .is_some_and(|message| message.contains("passed 33554432 bytes"))
        })
        .count();
    eprintln!("a batch of 40 answers of 10 MB: {dropped} dropped, peak growth {growth_mib:.1} MiB");
    assert_eq!(answers.len(), 40);
    assert!((36..40).contains(&dropped), "{dropped} of 40 dropped");
    assert!(growth_mib < 150.0, "the server grew by {growth_mib:.1} MiB");

    assert_eq!(client.execute(&id, "print(5)").await["stdout"], "5\n");
    let _ = server.kill().await;
}

/// A directory upload of a few hundred KB of gzip that inflates to a tar whose first record, a
/// GNU long name, is 512 MiB (the tar reader reads such a record whole into memory): refused at
/// its header with the reason, and the server's memory stays put.
#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_archive_cannot_inflate_the_server() {
    if !crate::cli::docker_available() && !docker_required() {
        return;
    }
    ensure_image(&crate::common::sandbox_image());
    let instance = format!(
        "test-archive-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    struct Cleanup(String, std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            remove_instance_containers(&self.0);
            let _ = std::fs::remove_file(&self.1);
        }
    }
    let header_file = std::env::temp_dir().join(format!("{instance}.tar-header"));
    let _cleanup = Cleanup(instance.clone(), header_file.clone());
    const LONG_NAME_BYTES: u64 = 512 * 1024 * 1024;
    let mut header = tar::Header::new_gnu();
    header.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    header.set_mode(0o644);
    header.set_size(LONG_NAME_BYTES);
    header.set_entry_type(tar::EntryType::GNULongName);
    header.set_cksum();
    std::fs::write(&header_file, header.as_bytes()).expect("header");
    let compressed = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "(cat '{}'; head -c {LONG_NAME_BYTES} /dev/zero) | gzip -1",
            header_file.display()
        ))
        .output()
        .expect("gzip");
    assert!(compressed.status.success());
    let body = compressed.stdout;

    let (mut server, client, _log) = start(&instance).await;
    let pid = server.id().expect("pid");
    let id = client.create().await;
    reset_peak(pid);
    let before = status_kib(pid, "VmRSS:");
    let response = client
        .http
        .post(format!(
            "{}/containers/{id}/directories/target",
            client.base
        ))
        .body(body.clone())
        .send()
        .await
        .expect("upload");
    let status = response.status();
    let answer: Value = response.json().await.expect("a JSON error");
    let growth_mib = status_kib(pid, "VmHWM:").saturating_sub(before) as f64 / 1024.0;
    eprintln!(
        "{} KB of gzip, a 512 MiB long name: {status}, peak growth {growth_mib:.1} MiB ({answer})",
        body.len() / 1000
    );
    assert_eq!(status, 422, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("extension header"), "{answer}");
    assert!(growth_mib < 64.0, "the server grew by {growth_mib:.1} MiB");
    assert_eq!(client.execute(&id, "print(6)").await["stdout"], "6\n");
    let _ = server.kill().await;
}
