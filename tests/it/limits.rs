//! The HTTP server's limits and its stop, against the real binary: slow request heads are cut
//! at the header-read timeout while `/health` keeps answering, the connection cap holds and
//! recovers, a guest MCP server that never answers gets a timeout error through the proxy, and
//! SIGTERM during a busy execution and stuck guest servers exits within the deadline, leaving
//! sandboxes the next start reattaches and uses.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cli::docker_available;
use crate::common::{
    ServerLog, ensure_image, remove_instance_containers, sandbox_image, start_server_with_log,
};

/// Removes an instance's containers when the test ends, passed or not.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        remove_instance_containers(&self.0);
    }
}

/// A fresh instance name, its cleanup, or `None` when Docker is not there (outside CI).
fn instance(name: &str) -> Option<(String, Cleanup)> {
    if !docker_available() {
        return None;
    }
    ensure_image(&sandbox_image());
    let instance = format!(
        "test-{name}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    Some((instance.clone(), Cleanup(instance)))
}

/// `GET /health` on a fresh connection: the status line and how long the whole exchange took.
async fn fresh_health(port: u16) -> (String, Duration) {
    let started = Instant::now();
    let response = crate::cli::get_health(port).await;
    let status = response.lines().next().unwrap_or_default().to_string();
    (status, started.elapsed())
}

/// The server's open file descriptors, and how many of them are sockets.
fn descriptors(pid: u32) -> (usize, usize) {
    let entries: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the server's fds")
        .filter_map(Result::ok)
        .collect();
    let sockets = entries
        .iter()
        .filter_map(|entry| std::fs::read_link(entry.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count();
    (entries.len(), sockets)
}

/// Reads until the peer closes (EOF or reset). Returns when that happened, or `None` if it did
/// not within `within`.
async fn closed_by_peer(stream: &mut TcpStream, within: Duration) -> Option<Instant> {
    let mut buffer = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return Instant::now(),
                // A 408 answer, say; the close follows.
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_request_heads_are_cut_and_health_still_answers() {
    let Some((instance, _cleanup)) = instance("slowhead") else {
        return;
    };
    let header_timeout = Duration::from_secs(2);
    let (server, port, _log) =
        start_server_with_log(&instance, &["--header-read-timeout-secs", "2"], &[]).await;
    let pid = server.id().expect("pid");
    let (fds_before, _) = descriptors(pid);

    // 300 connections that send a few bytes of a request head, then stall.
    let opened = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..300 {
        let mut stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect a slow client");
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHo")
            .await
            .expect("a few bytes");
        slow.push(stream);
    }
    let opening = opened.elapsed();

    // While they are open, a fresh connection gets its answer at once.
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        let (status, took) = fresh_health(port).await;
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        worst = worst.max(took);
    }
    // By now the server has taken every slow connection (the fresh ones came after them).
    let (fds_during, _) = descriptors(pid);
    eprintln!(
        "300 slow heads opened in {opening:?}; server fds {fds_before} -> {fds_during}; worst fresh /health {worst:?}"
    );
    assert!(
        worst < Duration::from_secs(1),
        "/health took {worst:?} with 300 slow clients open"
    );

    // Each slow connection is closed by the server after the header timeout, not before.
    let mut closes = Vec::new();
    for stream in &mut slow {
        let closed = closed_by_peer(stream, Duration::from_secs(20))
            .await
            .expect("the server closes a slow connection");
        closes.push(closed.duration_since(opened));
    }
    let first = closes.iter().min().copied().unwrap_or_default();
    let last = closes.iter().max().copied().unwrap_or_default();
    eprintln!("slow connections closed between {first:?} and {last:?} after opening");
    assert!(
        first + opening >= header_timeout,
        "a slow connection was closed before the header timeout: {first:?}"
    );
    assert!(
        last <= header_timeout + opening + Duration::from_secs(5),
        "the last slow connection closed only after {last:?}"
    );
    drop(slow);
    let (fds_after, _) = descriptors(pid);
    eprintln!("server fds after the slow clients were cut: {fds_after}");
    assert!(
        fds_after < fds_before + 20,
        "fds {fds_before} before, {fds_after} after"
    );
    let (status, _) = fresh_health(port).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    // The metrics tell the operator what happened.
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("kernelbox_http_header_timeouts_total 300\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kernelbox_http_connections 1\n"),
        "{metrics}"
    );
    assert!(metrics.trim_end().ends_with("# EOF"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_connection_cap_holds_and_recovers() {
    let Some((instance, _cleanup)) = instance("conncap") else {
        return;
    };
    let (server, port, _log) = start_server_with_log(
        &instance,
        &[
            "--max-connections",
            "4",
            "--header-read-timeout-secs",
            "60",
            "--keep-alive-timeout-secs",
            "60",
        ],
        &[],
    )
    .await;
    let pid = server.id().expect("pid");
    let (_, sockets_before) = descriptors(pid);

    // Four connections take every slot (each sends a byte, so the server has surely taken it).
    let mut holders = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect a holder");
        stream.write_all(b"G").await.expect("a byte");
        holders.push(stream);
    }
    // Twenty more wait in the backlog: they connect, send a request, and get nothing yet.
    let mut waiters = Vec::new();
    for _ in 0..20 {
        let mut stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("the kernel accepts into the backlog");
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .expect("request");
        waiters.push(stream);
    }
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(1500), waiters[0].read(&mut byte)).await;
    assert!(
        early.is_err(),
        "a connection beyond the cap was served: {early:?}"
    );
    let (_, sockets_during) = descriptors(pid);
    eprintln!(
        "cap 4 with 24 clients: server sockets {sockets_before} -> {sockets_during} (4 holders, 20 waiting in the backlog)"
    );
    assert!(
        sockets_during <= sockets_before + 4 + 2,
        "the waiting connections took file handles: {sockets_before} -> {sockets_during}"
    );

    // The holders go away: every waiter is served.
    let released = Instant::now();
    drop(holders);
    for (index, stream) in waiters.iter_mut().enumerate() {
        let mut response = String::new();
        tokio::time::timeout(
            Duration::from_secs(10),
            stream.read_to_string(&mut response),
        )
        .await
        .unwrap_or_else(|_| panic!("waiter {index} was not served after the cap freed"))
        .expect("response");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    }
    eprintln!(
        "20 waiting connections served {:?} after the holders closed",
        released.elapsed()
    );
    let (status, took) = fresh_health(port).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(took < Duration::from_secs(1), "{took:?}");
}

/// A guest MCP server that answers the handshake and `tools/list`, then never answers a tool
/// call. The tool `block` also stops it reading stdin and makes it ignore SIGTERM and SIGINT.
const STUCK_SERVER: &str = r#"
import json, os, signal, sys, time
for line in sys.stdin:
    try:
        message = json.loads(line)
    except ValueError:
        continue
    method = message.get("method")
    if method == "initialize":
        result = {"protocolVersion": message["params"]["protocolVersion"], "capabilities": {"tools": {}}, "serverInfo": {"name": "stuck", "version": "1"}}
    elif method == "tools/list":
        result = {"tools": [{"name": "hang", "inputSchema": {"type": "object"}}, {"name": "block", "inputSchema": {"type": "object"}}]}
    elif method == "tools/call" and message["params"]["name"] == "block":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with open("/tmp/blocked", "w") as marker:
            marker.write(str(os.getpid()))
        while True:
            time.sleep(3600)
    else:
        continue
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result}) + "\n")
    sys.stdout.flush()
"#;

/// A REST client of one server.
#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    fn new(port: u16) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    async fn json(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or_else(|_| json!({ "raw": text }));
        (status, body)
    }

    async fn create(&self) -> String {
        let (status, created) = self
            .json(self.http.post(format!("{}/containers", self.base)))
            .await;
        assert_eq!(status, 201, "{created}");
        created["id"].as_str().expect("id").to_string()
    }

    async fn execute(&self, id: &str, code: &str) -> Value {
        self.json(
            self.http
                .post(format!("{}/containers/{id}/execute", self.base))
                .json(&json!({ "code": code })),
        )
        .await
        .1
    }

    async fn command(&self, id: &str, command: &str) -> Value {
        self.json(
            self.http
                .post(format!("{}/containers/{id}/commands", self.base))
                .json(&json!({ "cmd": command })),
        )
        .await
        .1
    }

    /// Installs [`STUCK_SERVER`] and registers it as `stuck`.
    async fn register_stuck_server(&self, id: &str) {
        let written = self
            .command(
                id,
                &format!("cat > /tmp/stuck_server.py <<'PY'\n{STUCK_SERVER}PY\necho ok"),
            )
            .await;
        assert_eq!(written["stdout"], "ok\n", "{written}");
        let (status, registered) = self
            .json(
                self.http
                    .put(format!("{}/containers/{id}/mcp/stuck", self.base))
                    .json(&json!({"server_params": {"command": "python3", "args": ["-u", "/tmp/stuck_server.py"]}})),
            )
            .await;
        assert_eq!(status, 200, "{registered}");
    }

    /// Opens a proxy session to `stuck`; returns its id.
    async fn open_session(&self, id: &str) -> String {
        let response = self
            .http
            .post(format!("{}/containers/{id}/mcp-proxy/stuck", self.base))
            .header("accept", "application/json, text/event-stream")
            .json(&json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}))
            .send()
            .await
            .expect("initialize");
        assert_eq!(response.status(), 200);
        response
            .headers()
            .get("mcp-session-id")
            .and_then(|value| value.to_str().ok())
            .expect("a session")
            .to_string()
    }

    /// A proxied request on a session, answered as JSON.
    fn proxy(&self, id: &str, session: &str, message: &Value) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}/containers/{id}/mcp-proxy/stuck", self.base))
            .header("accept", "application/json")
            .header("mcp-session-id", session)
            .json(message)
    }

    /// How many processes of the stuck server run in the sandbox.
    async fn stuck_processes(&self, id: &str) -> usize {
        self.command(id, "pgrep -f '/tmp/[s]tuck_server.py' | wc -l")
            .await["stdout"]
            .as_str()
            .unwrap_or_default()
            .trim()
            .parse()
            .unwrap_or(usize::MAX)
    }
}

/// Prints how many bytes wait unread on the stdin pipe of the guest that blocked (0 until then).
const STDIN_QUEUED: &str = r#"python3 - <<'PY'
import fcntl, os, struct, termios
try:
    pid = open("/tmp/blocked").read().strip()
    with open(f"/proc/{pid}/fd/0", "rb", buffering=0) as pipe:
        print(struct.unpack("i", fcntl.ioctl(pipe.fileno(), termios.FIONREAD, b"\0" * 4))[0])
except OSError:
    print(0)
PY"#;

fn tool_call(id: i64, tool: &str, arguments: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": arguments}})
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_request_that_is_never_answered_times_out() {
    let Some((instance, _cleanup)) = instance("guesttimeout") else {
        return;
    };
    let (_server, port, _log) = start_server_with_log(
        &instance,
        &[
            "--guest-request-timeout-secs",
            "3",
            "--max-idle-secs",
            "4",
            "--cleanup-interval-secs",
            "3600",
        ],
        &[],
    )
    .await;
    let client = Client::new(port);
    let id = client.create().await;
    client.register_stuck_server(&id).await;
    let session = client.open_session(&id).await;
    assert_eq!(client.stuck_processes(&id).await, 2, "helper and session");

    let started = Instant::now();
    let (status, answer) = client
        .json(client.proxy(&id, &session, &tool_call(7, "hang", json!({}))))
        .await;
    let waited = started.elapsed();
    eprintln!("unanswered request: {status} after {waited:?}: {answer}");
    assert_eq!(status, 200, "a JSON-RPC error in a 200 answer: {answer}");
    assert_eq!(answer["id"], 7, "{answer}");
    assert_eq!(answer["error"]["code"], -32003, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("did not answer within 3s"),
        "a clear message: {message}"
    );
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_secs(10),
        "{waited:?}"
    );

    // The REST tool route (the registration's helper process) has the same limit, as a 504.
    let started = Instant::now();
    let (status, refused) = client
        .json(
            client
                .http
                .post(format!("{}/containers/{id}/mcp/stuck/hang", client.base))
                .json(&json!({"params": {}})),
        )
        .await;
    let waited = started.elapsed();
    eprintln!("unanswered tool route: {status} after {waited:?}: {refused}");
    assert_eq!(status, 504, "{refused}");
    assert_eq!(refused["error"]["code"], "timeout", "{refused}");
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_secs(10),
        "{waited:?}"
    );

    // The same through SSE: the error arrives as the stream's message.
    let response = client
        .proxy(&id, &session, &tool_call(8, "hang", json!({})))
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("SSE request");
    assert_eq!(response.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(15), response.text())
        .await
        .expect("the SSE answer ends")
        .expect("body");
    assert!(body.contains("-32003"), "{body}");

    // The timed-out requests no longer keep the session busy: it idles out, its process goes.
    let idle_from = Instant::now();
    let deadline = idle_from + Duration::from_secs(30);
    while client.stuck_processes(&id).await != 1 {
        assert!(
            Instant::now() < deadline,
            "the session of the timed-out requests is still alive"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "session ended {:?} after its last request timed out",
        idle_from.elapsed()
    );
    let (status, gone) = client
        .json(client.proxy(&id, &session, &tool_call(9, "hang", json!({}))))
        .await;
    assert_eq!(status, 404, "{gone}");
}

/// The server's final "stopped" log line, once it has been read from its stderr.
async fn stopped_line(log: &ServerLog) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = log
            .lock()
            .expect("log")
            .iter()
            .find(|line| line.contains("kernelbox::http::server: stopped"))
            .cloned();
        if let Some(line) = found {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "no final log line:\n{}",
            log.lock().expect("log").join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_within_the_deadline_despite_stuck_work() {
    let Some((instance, _cleanup)) = instance("deadline") else {
        return;
    };
    let deadline = Duration::from_secs(10);
    let (mut server, port, log) = start_server_with_log(&instance, &[], &[]).await;
    let client = Client::new(port);
    let id = client.create().await;
    assert_eq!(
        client.execute(&id, "kept = 41").await["status"],
        "completed"
    );
    client.register_stuck_server(&id).await;
    let session = client.open_session(&id).await;

    // The session's process stops reading stdin and ignores SIGTERM; a 4 MiB request to it then
    // blocks in the write to its stdin. A `while True` runs in the kernel.
    let block = tokio::spawn({
        let client = client.clone();
        let (id, session) = (id.clone(), session.clone());
        async move {
            client
                .proxy(&id, &session, &tool_call(1, "block", json!({})))
                .send()
                .await
                .map(|response| response.status().as_u16())
        }
    });
    let big = tokio::spawn({
        let client = client.clone();
        let (id, session) = (id.clone(), session.clone());
        async move {
            let payload = "x".repeat(4 * 1024 * 1024);
            client
                .proxy(
                    &id,
                    &session,
                    &tool_call(2, "hang", json!({ "payload": payload })),
                )
                .send()
                .await
                .map(|response| response.status().as_u16())
        }
    });
    let busy = tokio::spawn({
        let client = client.clone();
        let id = id.clone();
        async move {
            client
                .http
                .post(format!("{}/containers/{id}/execute", client.base))
                .json(&json!({"code": "while True:\n    pass"}))
                .send()
                .await
                .map(|response| response.status().as_u16())
        }
    });
    // Wait until the kernel is busy and the big write has been forwarded (the server logs
    // nothing for it, so look at the sandbox: the guest runs, the kernel spins).
    let busy_from = Instant::now();
    loop {
        let status: Value = client
            .json(client.http.get(format!("{}/containers/{id}", client.base)))
            .await
            .1;
        if status.to_string().contains("busy") {
            break;
        }
        assert!(
            busy_from.elapsed() < Duration::from_secs(20),
            "the execution did not start: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And until the guest blocked, with its stdin pipe full: the big write is stuck.
    let stuck_from = Instant::now();
    loop {
        let queued = client.command(&id, STDIN_QUEUED).await;
        let queued: usize = queued["stdout"]
            .as_str()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(0);
        if queued >= 65536 {
            eprintln!("the blocked guest has {queued} bytes queued on its stdin");
            break;
        }
        assert!(
            stuck_from.elapsed() < Duration::from_secs(30),
            "the guest's stdin never filled: {queued}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!block.is_finished() && !big.is_finished() && !busy.is_finished());
    // And clients half-way through a request head, which must not hold the stop up until their
    // header timeout (10 s, as long as the deadline).
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect a slow client");
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHo")
            .await
            .expect("a few bytes");
        slow.push(stream);
    }

    let pid = server.id().expect("pid");
    let signalled = Instant::now();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let exit = tokio::time::timeout(deadline + Duration::from_secs(20), server.wait())
        .await
        .expect("the server exits")
        .expect("exit status");
    let took = signalled.elapsed();
    let (busy, block, big) = (
        busy.await.expect("execute task"),
        block.await.expect("block task"),
        big.await.expect("big task"),
    );
    eprintln!(
        "SIGTERM to exit: {took:?} (deadline {deadline:?}), {exit:?}; clients got: execute {busy:?}, block {block:?}, big {big:?}"
    );
    assert!(
        took < deadline,
        "the server took {took:?}; log:\n{}",
        log.lock().expect("log").join("\n")
    );
    assert!(
        exit.success(),
        "exited by the watchdog or with an error: {exit:?}"
    );
    // The server's last line may still be on its way through the pipe.
    let stopped = stopped_line(&log).await;
    assert!(
        stopped.contains("dropped_connections=0"),
        "connections had to be dropped at the deadline: {stopped}"
    );
    drop(slow);
    // Every client got an answer before its connection closed: the interrupted execution, and
    // the two requests to the guest that was killed.
    assert_eq!(busy.ok(), Some(200), "the interrupted execution's answer");
    assert!(block.is_ok() && big.is_ok(), "{block:?} {big:?}");

    // No guest process survives in the sandbox, whatever it ignored.
    let container = String::from_utf8(
        std::process::Command::new("docker")
            .args([
                "ps",
                "-q",
                "--filter",
                &format!("label=io.kernelbox.id={id}"),
            ])
            .output()
            .expect("docker ps")
            .stdout,
    )
    .expect("utf-8");
    assert!(!container.trim().is_empty(), "the sandbox keeps running");
    let left = std::process::Command::new("docker")
        .args([
            "exec",
            container.trim(),
            "sh",
            "-c",
            "pgrep -f '/tmp/[s]tuck_server.py' | wc -l",
        ])
        .output()
        .expect("docker exec");
    assert_eq!(
        String::from_utf8_lossy(&left.stdout).trim(),
        "0",
        "guest processes left running"
    );

    // The next start reattaches the sandbox; it executes code and kept its state.
    let (mut again, port, _log) = start_server_with_log(&instance, &[], &[]).await;
    let client = Client::new(port);
    let result = client.execute(&id, "print(kept + 1)").await;
    assert_eq!(result["stdout"], "42\n", "{result}");
    let signalled = Instant::now();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &again.id().expect("pid").to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let exit = tokio::time::timeout(deadline + Duration::from_secs(20), again.wait())
        .await
        .expect("exits")
        .expect("status");
    eprintln!("idle server: SIGTERM to exit {:?}", signalled.elapsed());
    assert!(exit.success());
}
