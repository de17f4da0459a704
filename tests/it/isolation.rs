//! Isolation, played as attacks: a sandbox that tries to reach another sandbox, the host, test
//! servers and resolvers it was not allowed, and to lift its own firewall; and the firewall API
//! that allows what it names. Every address a probe sends to belongs to a network or container
//! the test made; every name resolves through a DNS server the test runs (`*.kb.test`). That the
//! link-local and metadata ranges are refused is read from the rules in force, never probed.

use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::time::Duration;

use kernelbox::engine::{EngineError, ExecuteRequest, Tenant};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{TestEngine, TestServer, sandbox_container};
use crate::net::{TestHost, TestNetwork, ruleset, sandbox_ip};

/// Probes run inside a sandbox; each prints one JSON line.
const PROBES: &str = r#"
import json, socket, struct, time

def tcp(host, port, timeout=3.0):
    started = time.monotonic()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect((host, port))
        result = "open"
    except ConnectionRefusedError:
        result = "refused"
    except socket.timeout:
        result = "timeout"
    except OSError as error:
        result = "error %d" % error.errno
    finally:
        sock.close()
    return {"result": result, "ms": round((time.monotonic() - started) * 1000, 1)}

def http(host, port=8000, timeout=3.0):
    started = time.monotonic()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect((host, port))
            sock.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            body = b""
            while chunk := sock.recv(65536):
                body += chunk
        result = body.split(b"\r\n\r\n", 1)[-1].decode().strip()
    except ConnectionRefusedError:
        result = "refused"
    except socket.timeout:
        result = "timeout"
    except OSError as error:
        result = "error %d" % error.errno
    return {"result": result, "ms": round((time.monotonic() - started) * 1000, 1)}

def resolve(name):
    try:
        return sorted({info[4][0] for info in socket.getaddrinfo(name, 80, proto=socket.IPPROTO_TCP)})
    except socket.gaierror as error:
        return "unresolved"

def dns(server, name, timeout=3.0):
    started = time.monotonic()
    query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"".join(
        bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\x00\x00\x01\x00\x01"
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            sock.sendto(query, (server, 53))
            answer = sock.recv(512)
        result = "answered" if answer[:2] == query[:2] else "garbage"
    except socket.timeout:
        result = "timeout"
    except OSError as error:
        result = "error %d" % error.errno
    return {"result": result, "ms": round((time.monotonic() - started) * 1000, 1)}
"#;

/// Runs `expression` (Python, using [`PROBES`]) in the sandbox and returns its JSON value.
async fn probe(t: &TestEngine, id: &str, expression: &str) -> Value {
    let code = format!("{PROBES}\nprint(json.dumps({expression}))");
    let result = t.run(id, &code).await;
    assert!(
        result.error.is_none(),
        "probe {expression} failed: {:?}",
        result.error
    );
    serde_json::from_str(result.stdout.trim()).unwrap_or_else(|_| panic!("{}", result.stdout))
}

/// A connection the firewall refused: quickly (within 1 s), and not by letting it hang.
fn refused(probe: &Value, what: &str) {
    let result = probe["result"].as_str().unwrap_or_default();
    assert!(
        result != "open" && result != "timeout" && !result.is_empty(),
        "{what}: {probe}"
    );
    assert!(
        probe["ms"].as_f64().unwrap_or(f64::MAX) < 1000.0,
        "{what} took too long: {probe}"
    );
}

fn container_of(t: &TestEngine, id: &str) -> String {
    t.engine
        .get(id, &Tenant::Local)
        .expect("sandbox")
        .container_id()
        .to_string()
}

/// Whether `ip` is inside one of a set's elements, as `nft -j` lists them.
fn set_covers(set: &Value, ip: IpAddr) -> bool {
    let within = |net: &str| {
        net.parse::<ipnet::IpNet>()
            .map(|net| net.contains(&ip))
            .unwrap_or(false)
    };
    set["elem"].as_array().into_iter().flatten().any(|element| {
        if let Some(address) = element.as_str() {
            return address.parse::<IpAddr>().ok() == Some(ip);
        }
        if let Some(prefix) = element.get("prefix") {
            return within(&format!(
                "{}/{}",
                prefix["addr"].as_str().unwrap_or_default(),
                prefix["len"]
            ));
        }
        if let Some([low, high]) = element
            .get("range")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
        {
            let (Ok(low), Ok(high)) = (
                low.as_str().unwrap_or_default().parse::<IpAddr>(),
                high.as_str().unwrap_or_default().parse::<IpAddr>(),
            ) else {
                return false;
            };
            return low <= ip && ip <= high;
        }
        false
    })
}

/// The policy in force refuses `ip` through `layer0`'s denied set: read from the rules, not by
/// sending anything there.
fn refused_by_rules(rules: &Value, ip: IpAddr) -> bool {
    let items = rules["nftables"].as_array().expect("nftables");
    let family = if ip.is_ipv4() { "v4" } else { "v6" };
    let set_name = format!("public_denied_{family}");
    let set = items
        .iter()
        .filter_map(|item| item.get("set"))
        .find(|set| set["name"] == set_name.as_str())
        .expect("the public layer's denied set");
    let refusing_rule = items
        .iter()
        .filter_map(|item| item.get("rule"))
        .any(|rule| {
            rule["chain"] == "layer0"
                && rule.to_string().contains(&format!("@{set_name}"))
                && rule.to_string().contains("\"goto\"")
        });
    let output_jumps = items
        .iter()
        .filter_map(|item| item.get("rule"))
        .any(|rule| {
            rule["chain"] == "output"
                && rule
                    .to_string()
                    .contains("\"jump\":{\"target\":\"layer0\"}")
        });
    set_covers(set, ip) && refusing_rule && output_jumps
}

#[tokio::test(flavor = "multi_thread")]
async fn sandboxes_reach_neither_each_other_nor_the_host_nor_private_addresses() {
    let network = TestNetwork::create("iso");
    let web = TestHost::web(&network, "web");
    let dns = TestHost::dns(&network, "dns", &[("a.kb.test", web.ip4, web.ip6)]);
    let Some(t) = TestEngine::start_with("isolation", |config| {
        config.network = network.name.clone();
        config.dns = vec![IpAddr::V4(dns.ip4)];
    })
    .await
    else {
        return;
    };
    let (victim, attacker) = tokio::join!(t.sandbox(), t.sandbox());
    let victim_container = container_of(&t, &victim);
    let victim_ip = sandbox_ip(&victim_container, &network);

    // The victim serves on 9000 and prints a secret while the attacker tries everything.
    let served = t
        .engine
        .run_command(
            &victim,
            &Tenant::Local,
            kernelbox::engine::commands::CommandRequest {
                command: "nohup python3 -m http.server 9000 --bind :: >/dev/null 2>&1 &".into(),
                ..Default::default()
            },
        )
        .await
        .expect("serve");
    assert_eq!(served.exit_code, 0);
    let printing = t
        .engine
        .execute(
            &victim,
            &Tenant::Local,
            ExecuteRequest {
                code: "import time\nfor _ in range(100):\n    print('SECRET-42', flush=True)\n    time.sleep(0.1)".into(),
                timeout: None,
            },
        )
        .await
        .expect("printing");

    // Its kernel's old ports, its server, the zmq subscription that once read another sandbox.
    let ports = probe(
        &t,
        &attacker,
        &format!(
            "{{str(port): tcp('{victim_ip}', port) for port in [50001, 50002, 50003, 50004, 50005, 9000]}}"
        ),
    )
    .await;
    for port in ["50001", "50002", "50003", "50004", "50005", "9000"] {
        refused(&ports[port], &format!("the other sandbox's port {port}"));
    }
    let eavesdrop = t
        .run(
            &attacker,
            &format!(
                "import zmq\nctx = zmq.Context()\nsub = ctx.socket(zmq.SUB)\nsub.setsockopt(zmq.SUBSCRIBE, b'')\nsub.setsockopt(zmq.RCVTIMEO, 2000)\nsub.connect('tcp://{victim_ip}:50002')\ntry:\n    print('GOT', sub.recv())\nexcept zmq.Again:\n    print('nothing')"
            ),
        )
        .await;
    assert_eq!(eavesdrop.stdout.trim(), "nothing", "{eavesdrop:?}");
    let finished = printing.finish().await.expect("the victim's run");
    assert!(finished.stdout.contains("SECRET-42"));

    // The host, through the network's gateways.
    let host4 = TcpListener::bind((network.gateway4, 0)).expect("a host listener on the gateway");
    let host6 =
        TcpListener::bind((network.gateway6, 0)).expect("a host listener on the v6 gateway");
    let gateways = probe(
        &t,
        &attacker,
        &format!(
            "[tcp('{}', {}), tcp('{}', {})]",
            network.gateway4,
            host4.local_addr().expect("addr").port(),
            network.gateway6,
            host6.local_addr().expect("addr").port()
        ),
    )
    .await;
    refused(&gateways[0], "the host on the bridge gateway");
    refused(&gateways[1], "the host on the IPv6 gateway");

    // Private test servers under the default (public) policy, and their resolver directly.
    let private = probe(
        &t,
        &attacker,
        &format!(
            "[http('{}'), http('{}'), dns('{}', 'a.kb.test'), dns('{}', 'a.kb.test')]",
            web.ip4, web.ip6, dns.ip4, dns.ip6
        ),
    )
    .await;
    refused(&private[0], "a private IPv4 test server");
    refused(&private[1], "a private IPv6 test server");
    refused(&private[2], "a DNS server queried directly");
    refused(&private[3], "a DNS server queried directly over IPv6");

    // With its own firewall opened to the victim and the web server, the attacker reaches the
    // web server (the network works) and still not the victim, whose namespace takes nothing
    // new from outside.
    t.engine
        .set_firewall(
            &attacker,
            &Tenant::Local,
            kernelbox::engine::EgressRequest::Replace(
                kernelbox::engine::AllowList::parse(
                    &[],
                    &[victim_ip.to_string(), web.ip4.to_string()],
                )
                .expect("valid"),
            ),
        )
        .await
        .expect("open the attacker's firewall");
    let opened = probe(
        &t,
        &attacker,
        &format!("[http('{}'), tcp('{victim_ip}', 9000, 2.0)]", web.ip4),
    )
    .await;
    assert_eq!(opened[0]["result"], "web", "{opened}");
    assert_ne!(
        opened[1]["result"], "open",
        "the victim took a connection: {opened}"
    );

    // Nothing comes in: not from a test host, not from the host.
    let inbound = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from((victim_ip, 9000)),
        Duration::from_millis(1500),
    );
    assert!(inbound.is_err(), "the host reached a sandbox's server");

    // Link-local, metadata and the other special ranges are refused by the rules in force.
    let rules = ruleset(&victim_container);
    for ip in [
        "169.254.169.254",
        "100.100.100.200",
        "10.0.0.1",
        "172.16.0.1",
        "192.168.0.1",
        "127.0.0.2",
        "fe80::1",
        "fd00:ec2::254",
        "::ffff:169.254.169.254",
        "::1",
    ] {
        let ip: IpAddr = ip.parse().expect("address");
        assert!(
            refused_by_rules(&rules, ip),
            "{ip} is not refused by the rules in force"
        );
    }
    assert!(!refused_by_rules(
        &rules,
        IpAddr::V4(Ipv4Addr::new(93, 184, 215, 14))
    ));

    // No port is published for a sandbox, and no docker-proxy runs for one.
    let published = std::process::Command::new("docker")
        .args([
            "inspect",
            "--format",
            "{{json .HostConfig.PortBindings}} {{json .NetworkSettings.Ports}}",
            &victim_container,
            &crate::net::sidecar_of(&victim_container),
        ])
        .output()
        .expect("inspect");
    for line in String::from_utf8_lossy(&published.stdout).lines() {
        assert!(
            !line.contains("HostPort"),
            "a sandbox publishes a port: {line}"
        );
    }
    let proxies = std::process::Command::new("pgrep")
        .args(["-x", "docker-proxy"])
        .output()
        .expect("pgrep");
    assert!(
        proxies.stdout.is_empty(),
        "docker-proxy runs: {}",
        String::from_utf8_lossy(&proxies.stdout)
    );
}

/// A server whose sandboxes sit on `network`, resolving through `dns`.
async fn firewall_server(name: &str, network: &TestNetwork, dns: &TestHost) -> Option<TestServer> {
    let (network, dns) = (network.name.clone(), dns.ip4);
    TestServer::start_with(name, &[], move |config| {
        config.network = network;
        config.dns = vec![IpAddr::V4(dns)];
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_firewall_allows_what_it_names_and_nothing_lifts_it() {
    let network = TestNetwork::create("fw");
    let a = TestHost::web(&network, "a");
    let b = TestHost::web(&network, "b");
    let dns = TestHost::dns(
        &network,
        "dns",
        &[("a.kb.test", a.ip4, a.ip6), ("b.kb.test", b.ip4, b.ip6)],
    );
    let second_resolver = TestHost::dns(&network, "dns2", &[("b.kb.test", b.ip4, b.ip6)]);
    let Some(server) = firewall_server("firewall", &network, &dns).await else {
        return;
    };
    let created: Value = server
        .post("/containers")
        .json(&json!({"network": {"allowed_ips": [a.ip4.to_string(), a.ip6.to_string()]}}))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("container");
    let id = created["id"].as_str().expect("id").to_string();
    let run = |code: String| {
        let server = &server;
        let id = id.clone();
        async move {
            let result: Value = server
                .post(&format!("/containers/{id}/execute"))
                .json(&json!({"code": format!("{PROBES}\nprint(json.dumps({code}))")}))
                .send()
                .await
                .expect("execute")
                .json()
                .await
                .expect("result");
            assert_eq!(result["status"], "completed", "{result}");
            serde_json::from_str::<Value>(result["stdout"].as_str().unwrap_or_default().trim())
                .expect("probe JSON")
        }
    };
    let set = |rules: Value| {
        let server = &server;
        let id = id.clone();
        async move {
            let response = server
                .post(&format!("/containers/{id}/firewall"))
                .json(&rules)
                .send()
                .await
                .expect("firewall");
            assert_eq!(response.status(), StatusCode::OK);
            response.json::<Value>().await.expect("firewall state")
        }
    };

    // Allowed by IP (v4 and v6): A answers, B is refused.
    let by_ip = run(format!(
        "[http('{}'), http('{}'), http('{}'), http('{}')]",
        a.ip4, a.ip6, b.ip4, b.ip6
    ))
    .await;
    assert_eq!(by_ip[0]["result"], "a", "{by_ip}");
    assert_eq!(by_ip[1]["result"], "a", "{by_ip}");
    refused(&by_ip[2], "B by IPv4 while A is allowed by IP");
    refused(&by_ip[3], "B by IPv6 (a disallowed v6 destination)");
    let state: Value = server
        .get(&format!("/containers/{id}/firewall"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("state");
    assert_eq!(state["source"], "client");
    assert_eq!(
        state["allowed_ips"].as_array().map(Vec::len),
        Some(2),
        "{state}"
    );

    // Allowed by a name our DNS serves: the same, and other names do not resolve.
    let state = set(json!({"allowed_domains": ["a.kb.test"]})).await;
    assert_eq!(state["allowed_domains"], json!(["a.kb.test"]));
    let by_name = run(format!(
        "[resolve('a.kb.test'), http('a.kb.test'), http('{}'), resolve('b.kb.test'), dns('{}', 'b.kb.test')]",
        b.ip4, second_resolver.ip4
    ))
    .await;
    assert!(
        by_name[0]
            .as_array()
            .is_some_and(|ips| ips.contains(&json!(a.ip4.to_string()))),
        "{by_name}"
    );
    assert_eq!(by_name[1]["result"], "a", "{by_name}");
    refused(&by_name[2], "B while A is allowed by name");
    assert_eq!(
        by_name[3], "unresolved",
        "a name outside the allow-list resolved"
    );
    refused(&by_name[4], "a second resolver queried directly");

    // An empty list refuses both.
    set(json!({"allowed_domains": [], "allowed_ips": []})).await;
    let closed = run(format!("[http('{}'), http('{}')]", a.ip4, b.ip4)).await;
    refused(&closed[0], "A after an empty list");
    refused(&closed[1], "B after an empty list");

    // The sandbox user cannot lift it: no capability, no writable file, no proxy variable.
    set(json!({"allowed_ips": [a.ip4.to_string()]})).await;
    // A default route through B, asked of the kernel over netlink (RTM_NEWROUTE): refused.
    let route = format!(
        r#"import socket, struct
sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
gateway = socket.inet_aton("{}")
attr = struct.pack("HH", 8, 5) + gateway
body = struct.pack("BBBBBBBBI", socket.AF_INET, 0, 0, 0, 254, 4, 0, 1, 0) + attr
header = struct.pack("IHHII", 16 + len(body), 24, 0x1 | 0x4 | 0x400 | 0x200, 1, 0)
sock.send(header + body)
answer = sock.recv(4096)
print("route=%d" % -struct.unpack("i", answer[16:20])[0])
"#,
        b.ip4
    );
    let put = server
        .post(&format!("/containers/{id}/commands"))
        .json(&json!({"cmd": format!("cat > /tmp/route.py <<'PY'\n{route}PY")}))
        .send()
        .await
        .expect("write the route probe");
    assert_eq!(put.status(), StatusCode::OK);
    let lifted: Value = server
        .post(&format!("/containers/{id}/commands"))
        .json(&json!({"cmd": concat!(
            "nft flush ruleset 2>&1; echo nft=$?; ",
            "nft add table inet lifted 2>&1; echo table=$?; ",
            "echo 'nameserver 1.1.1.1' > /etc/resolv.conf 2>&1; echo resolv=$?; ",
            "python3 /tmp/route.py; ",
            "cat /proc/sys/net/ipv4/ip_unprivileged_port_start"
        )}))
        .send()
        .await
        .expect("lift")
        .json()
        .await
        .expect("command");
    let output = lifted["stdout"].as_str().unwrap_or_default();
    for attempt in ["nft=1", "table=1", "resolv=1", "route=1"] {
        assert!(output.contains(attempt), "{attempt} missing: {output}");
    }
    assert!(output.trim_end().ends_with("1024"), "{output}");
    let after = run(format!(
        "(lambda os: (os.environ.update(HTTP_PROXY='http://{b}:8000', ALL_PROXY='http://{b}:8000'), [http('{a}'), http('{b}')])[1])(__import__('os'))",
        a = a.ip4,
        b = b.ip4
    ))
    .await;
    assert_eq!(after[0]["result"], "a", "{after}");
    refused(&after[1], "B after the lift attempts");
    let rules = ruleset(&sandbox_container(&id));
    assert!(rules.to_string().contains("kernelbox"), "the table is gone");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_may_narrow_the_policy_but_never_widen_it() {
    let network = TestNetwork::create("narrow");
    let a = TestHost::web(&network, "a");
    let dns = TestHost::dns(&network, "dns", &[("a.kb.test", a.ip4, a.ip6)]);
    let Some(t) = TestEngine::start_with("narrowing", |config| {
        config.network = network.name.clone();
        config.dns = vec![IpAddr::V4(dns.ip4)];
    })
    .await
    else {
        return;
    };
    let narrow = |domains: &[&str], ips: &[&str]| {
        let strings = |items: &[&str]| {
            items
                .iter()
                .map(|item| item.to_string())
                .collect::<Vec<_>>()
        };
        kernelbox::engine::EgressRequest::Narrow(
            kernelbox::engine::AllowList::parse(&strings(domains), &strings(ips)).expect("valid"),
        )
    };
    let widening = t
        .engine
        .create(kernelbox::engine::CreateSandbox {
            network: Some(narrow(&[], &[&a.ip4.to_string()])),
            ..kernelbox::engine::CreateSandbox::new(Tenant::Local)
        })
        .await;
    assert!(
        matches!(widening, Err(EngineError::EgressWidening { .. })),
        "a private address widened the public policy: {widening:?}"
    );
    let narrowed = t
        .engine
        .create(kernelbox::engine::CreateSandbox {
            network: Some(narrow(&["a.kb.test"], &["93.184.215.14"])),
            ..kernelbox::engine::CreateSandbox::new(Tenant::Local)
        })
        .await
        .expect("a narrower policy");
    let firewall = t
        .engine
        .firewall(&narrowed.id, &Tenant::Local)
        .expect("firewall");
    assert_eq!(firewall.policy.layers.len(), 2);
    // The name is allowed and resolves, but it points at a private address the operator's
    // public policy refuses: stacked, both must allow it.
    let stacked = probe(
        &t,
        &narrowed.id,
        "[resolve('a.kb.test'), http('a.kb.test')]",
    )
    .await;
    assert!(stacked[0].is_array(), "{stacked}");
    refused(
        &stacked[1],
        "a private address through a narrowed policy's name",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_drives_a_docker_api_over_tcp_and_needs_no_published_port() {
    if !crate::cli::docker_available() && !crate::common::docker_required() {
        return;
    }
    crate::common::ensure_image(&crate::common::sandbox_image());
    // The Docker API on a TCP port of a container of our own, on a network of our own: an
    // address that is not the server's loopback. The relay is as hasty as a relay can be: with
    // `-t 0` socat closes a connection as soon as the client half-closes it, so an exec fed on
    // stdin (the egress policy's apply) loses its stream while its process still runs, and the
    // server has to wait for the exit rather than read a missing exit code as a failure.
    let network = TestNetwork::create("tcp");
    let api = TestHost::start_with(
        &network,
        "dockerd",
        &["-v", "/var/run/docker.sock:/var/run/docker.sock"],
        &[
            "socat",
            "-d",
            "-d",
            "-t",
            "0",
            "TCP-LISTEN:2375,fork,reuseaddr",
            "UNIX-CONNECT:/var/run/docker.sock",
        ],
        "listening on",
    );
    let docker_host = format!("tcp://{}:2375", api.ip4);
    let instance = format!(
        "test-tcp-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            crate::common::remove_instance_containers(&self.0);
        }
    }
    let _cleanup = Cleanup(instance.clone());
    let (mut server, port, log) = crate::common::start_server_with_log(
        &instance,
        &[],
        &[("DOCKER_HOST", docker_host.as_str())],
    )
    .await;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let created: Value = http
        .post(format!("{base}/containers"))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("container");
    let Some(id) = created["id"].as_str() else {
        let log = log.lock().map(|lines| lines.join("\n")).unwrap_or_default();
        panic!("the create over a TCP Docker API failed: {created}\nserver log:\n{log}");
    };
    let result: Value = http
        .post(format!("{base}/containers/{id}/execute"))
        .json(&json!({"code": "print(6*7)"}))
        .send()
        .await
        .expect("execute")
        .json()
        .await
        .expect("result");
    assert_eq!(result["stdout"], "42\n", "{result}");

    // Every connection the server keeps open goes to that API (or is one of ours to it).
    let pid = server.id().expect("pid");
    let sockets = std::process::Command::new("ss")
        .args(["-Htnp", "state", "established"])
        .output()
        .expect("ss");
    let mine: Vec<String> = String::from_utf8_lossy(&sockets.stdout)
        .lines()
        .filter(|line| line.contains(&format!("pid={pid},")))
        .map(String::from)
        .collect();
    assert!(!mine.is_empty(), "the server has no connection open");
    for line in &mine {
        let peer = line.split_whitespace().nth(3).unwrap_or_default();
        let to_api = peer == format!("{}:2375", api.ip4);
        let from_us =
            line.split_whitespace().nth(2).unwrap_or_default() == format!("127.0.0.1:{port}");
        assert!(to_api || from_us, "a connection elsewhere: {line}");
    }
    let unix = std::process::Command::new("ss")
        .args(["-Hxp"])
        .output()
        .expect("ss");
    assert!(
        !String::from_utf8_lossy(&unix.stdout)
            .lines()
            .any(|line| line.contains(&format!("pid={pid},")) && line.contains("docker.sock")),
        "the server uses the local Docker socket"
    );
    let deleted = http
        .delete(format!("{base}/containers/{id}"))
        .send()
        .await
        .expect("delete");
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let _ = server.kill().await;
}

/// Plants, as the sandbox's own code, what a hostile sandbox could put where its kernel's sockets
/// live: a symlink to a socket on the host, a FIFO, and (as root, playing an image that ships a
/// root daemon's socket there) a socket the sandbox's user could not reach. The direct channel
/// refuses each without touching the host's socket, while a kernel's real socket opens.
#[tokio::test(flavor = "multi_thread")]
async fn the_direct_kernel_channel_opens_only_the_sandbox_users_own_sockets() {
    use kernelbox::backend::Backend;
    use kernelbox::backend::docker::DockerBackend;
    use kernelbox::config::KernelChannelMode;
    use kernelbox::kernel::KernelChannel;

    let Some(t) = TestEngine::start_with("direct-channel", |config| {
        config.kernel_channel = KernelChannelMode::Direct;
    })
    .await
    else {
        return;
    };
    // A sandbox whose kernel is reached only through the direct channel answers.
    let id = t.sandbox().await;
    let result = t.run(&id, "print(6 * 7)").await;
    assert_eq!(result.stdout.trim(), "42", "{result:?}");
    let container = container_of(&t, &id);
    let backend = DockerBackend::connect(Default::default())
        .await
        .expect("docker")
        .with_kernel_channel(KernelChannelMode::Direct);
    backend
        .open_kernel_channel(&container, KernelChannel::Control)
        .await
        .expect("the kernel's own control socket opens");

    // A socket on the host, at a path the sandbox names through a symlink.
    let host_dir = tempfile::tempdir().expect("tempdir");
    let host_socket = host_dir.path().join("host.sock");
    let listener = std::os::unix::net::UnixListener::bind(&host_socket).expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let plant = format!(
        r#"
import os
for name in ("kernel-1", "kernel-2"):
    os.unlink("/run/kernelbox/" + name)
os.symlink({host:?}, "/run/kernelbox/kernel-1")
os.mkfifo("/run/kernelbox/kernel-2")
print("planted")
"#,
        host = host_socket.display().to_string()
    );
    let planted = t.run(&id, &plant).await;
    assert_eq!(planted.stdout.trim(), "planted", "{planted:?}");
    // The operator's image could hold a root-owned socket: the sandbox's user cannot reach it,
    // so neither does the server. (Root inside the sandbox has no capability to write there, so
    // the test plays the operator, from the host.)
    let pid = std::process::Command::new("docker")
        .args(["inspect", "--format", "{{.State.Pid}}", &container])
        .output()
        .expect("docker inspect");
    let pid = String::from_utf8_lossy(&pid.stdout).trim().to_string();
    let rooted = format!("/proc/{pid}/root/run/kernelbox/kernel-4");
    std::fs::remove_file(&rooted).expect("remove the control socket");
    let _rooted = std::os::unix::net::UnixListener::bind(&rooted).expect("a root-owned socket");

    for (channel, why) in [
        (KernelChannel::Shell, "symbolic link"),
        (KernelChannel::IoPub, "not a socket"),
        (KernelChannel::Control, "uid 0"),
    ] {
        let error = match backend.open_kernel_channel(&container, channel).await {
            Ok(_) => panic!("{channel:?}: a planted path was opened"),
            Err(error) => error,
        };
        let detail = format!("{:?}", std::error::Error::source(&error));
        assert!(detail.contains(why), "{channel:?}: {detail}");
    }
    match listener.accept() {
        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the host's socket was reached: {other:?}"),
    }

    // A socket of the sandbox's user whose backlog its code keeps full and never accepts: the
    // dial gives up after its retries instead of blocking a server thread for good.
    let jammed = t
        .run(
            &id,
            r#"
import os, socket
os.unlink("/run/kernelbox/kernel-1")
jam_listener = socket.socket(socket.AF_UNIX)
jam_listener.bind("/run/kernelbox/kernel-1")
jam_listener.listen(0)
jam_clients = []
while True:
    client = socket.socket(socket.AF_UNIX)
    client.setblocking(False)
    try:
        client.connect("/run/kernelbox/kernel-1")
    except BlockingIOError:
        break
    jam_clients.append(client)
print("jammed", len(jam_clients))
"#,
        )
        .await;
    assert!(jammed.stdout.starts_with("jammed"), "{jammed:?}");
    let dial = tokio::time::timeout(
        Duration::from_secs(30),
        backend.open_kernel_channel(&container, KernelChannel::Shell),
    )
    .await
    .expect("the dial of a jammed socket returns");
    let error = match dial {
        Ok(_) => panic!("a jammed socket was connected"),
        Err(error) => error,
    };
    let detail = format!("{:?}", std::error::Error::source(&error));
    assert!(detail.contains("NotListening"), "{detail}");
}

/// Tries every way a sandbox's code has to change `/usr`, which all sandboxes of the image share
/// (the image layer's own tree, bind-mounted): a write, a remount, a remount from a new user
/// namespace. Each outcome is printed as JSON.
const USR_ATTACK: &str = r#"
import json, os, subprocess
outcome = {}
def mount_of(path):
    with open("/proc/self/mountinfo") as mounts:
        for line in mounts:
            fields = line.split()
            if fields[4] == path:
                return fields[5]
    return None
outcome["usr_mount"] = mount_of("/usr")
for target in ["/usr/kbx-planted", "/usr/lib/python3/dist-packages/kbx_planted.py"]:
    try:
        with open(target, "w") as planted:
            planted.write("import os\n")
        outcome[target] = "written"
    except OSError as error:
        outcome[target] = error.errno
def run(*argv):
    done = subprocess.run(list(argv), capture_output=True, text=True)
    return [done.returncode, (done.stdout + done.stderr)[-300:]]
outcome["remount"] = run("mount", "-o", "remount,rw", "/usr")
outcome["userns_remount"] = run("unshare", "-rm", "sh", "-c", "mount -o remount,rw,bind /usr && touch /usr/kbx-planted")
outcome["planted"] = os.path.exists("/usr/kbx-planted")
print(json.dumps(outcome))
"#;

#[tokio::test(flavor = "multi_thread")]
async fn the_shared_usr_is_read_only_to_everything_in_a_sandbox() {
    let Some(t) = TestEngine::start("sharedusr").await else {
        return;
    };
    let (attacker, neighbour) = (t.sandbox().await, t.sandbox().await);
    let result = t.run(&attacker, USR_ATTACK).await;
    assert!(result.error.is_none(), "{:?}", result.error);
    let outcome: Value = serde_json::from_str(result.stdout.trim()).expect(&result.stdout);
    // The image is one layer: its `/usr` is the shared, read-only mount, not the container's own.
    let options = outcome["usr_mount"].as_str().unwrap_or_default();
    assert!(
        options.split(',').any(|option| option == "ro"),
        "/usr is not a read-only mount of its own: {outcome}"
    );
    for target in [
        "/usr/kbx-planted",
        "/usr/lib/python3/dist-packages/kbx_planted.py",
    ] {
        assert!(outcome[target].is_i64(), "{target}: {outcome}");
    }
    for attempt in ["remount", "userns_remount"] {
        assert_ne!(outcome[attempt][0], 0, "{attempt}: {outcome}");
    }
    assert_eq!(outcome["planted"], false, "{outcome}");

    // Root in the sidecar, the most privileged process a sandbox has, cannot write it either.
    let sidecar = crate::net::sidecar_of(&container_of(&t, &attacker));
    let as_root = crate::net::docker(&[
        "exec",
        "-u",
        "0",
        &sidecar,
        "sh",
        "-c",
        "echo planted > /usr/kbx-planted",
    ]);
    assert!(
        !as_root.status.success()
            && String::from_utf8_lossy(&as_root.stderr).contains("Read-only file system"),
        "root in the sidecar wrote the shared /usr: {as_root:?}"
    );

    // And the neighbour, reading the same layer, sees none of it.
    let seen = t
        .run(
            &neighbour,
            "import os; print(os.path.exists('/usr/kbx-planted'), os.path.exists('/usr/lib/python3/dist-packages/kbx_planted.py'))",
        )
        .await;
    assert_eq!(seen.stdout.trim(), "False False", "{seen:?}");
}

/// The resolver's user opens a flow to the upstream DNS server from a source port, as dnsmasq
/// does for every lookup it forwards; then sandbox code binds that same port and sends its own
/// query to the upstream server on that flow. The flow is the resolver's: the query is refused,
/// though the connection tracker knows the flow as established (the established-flows rule came
/// first, so such a query got through, and with it any name, to the host's resolvers).
#[tokio::test(flavor = "multi_thread")]
async fn sandbox_code_cannot_take_over_the_resolvers_flow_to_its_upstream() {
    let network = TestNetwork::create("dns-flow");
    let web = TestHost::web(&network, "a");
    let dns = TestHost::dns(&network, "dns", &[("a.kb.test", web.ip4, web.ip6)]);
    let Some(server) = firewall_server("dns-flow", &network, &dns).await else {
        return;
    };
    let created = rest_json(
        server
            .post("/containers")
            .json(&json!({"network": {"allowed_domains": ["a.kb.test"]}})),
    )
    .await;
    let id = created["id"].as_str().expect("id").to_string();
    let container = sandbox_container(&id);
    let sidecar = crate::net::sidecar_of(&container);
    const PORT: u16 = 40123;
    let query = |who: &str| {
        format!(
            "import socket, sys\nquery = b'\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x01a\\x02kb\\x04test\\x00\\x00\\x01\\x00\\x01'\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('0.0.0.0', {PORT}))\ns.connect(('{}', 53))\ns.settimeout(3)\ntry:\n    s.send(query)\n    print('{who}', 'answered' if s.recv(512)[:2] == query[:2] else 'garbage')\nexcept OSError as error:\n    print('{who}', 'refused', type(error).__name__)\n",
            dns.ip4
        )
    };
    // The resolver's user (as dnsmasq) asks the upstream server from the port.
    let resolver = crate::net::docker_ok(&[
        "exec",
        "-u",
        kernelbox::backend::docker::firewall::DEFAULT_DNS_USER,
        &sidecar,
        "python3",
        "-c",
        &query("resolver"),
    ]);
    assert_eq!(resolver, "resolver answered", "the resolver's own lookup");
    // Sandbox code on the same port, to the same server, on the same flow.
    let execute = |code: String| {
        rest_json(
            server
                .post(&format!("/containers/{id}/execute"))
                .json(&json!({ "code": code })),
        )
    };
    let result = execute(query("sandbox")).await;
    let stdout = result["stdout"].as_str().unwrap_or_default();
    assert!(
        stdout.starts_with("sandbox refused"),
        "sandbox code used the resolver's flow: {result}"
    );
    // Its own lookups through the resolver still work.
    let through_resolver =
        execute("import socket\nprint(socket.gethostbyname('a.kb.test'))".into()).await;
    assert_eq!(
        through_resolver["stdout"],
        format!("{}\n", web.ip4),
        "{through_resolver}"
    );
}

/// The JSON answer to a request.
async fn rest_json(request: reqwest::RequestBuilder) -> Value {
    request
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("a JSON answer")
}

/// A connection opened while the policy allows its destination is cut when the policy is
/// narrowed to exclude it: the policy is checked on every packet, not only on a flow's first.
#[tokio::test(flavor = "multi_thread")]
async fn narrowing_the_policy_cuts_the_connections_it_no_longer_allows() {
    let network = TestNetwork::create("fw-cut");
    let a = TestHost::web(&network, "a");
    let dns = TestHost::dns(&network, "dns", &[]);
    let Some(server) = firewall_server("fw-cut", &network, &dns).await else {
        return;
    };
    let created = rest_json(
        server
            .post("/containers")
            .json(&json!({"network": {"allowed_ips": [a.ip4.to_string()]}})),
    )
    .await;
    let id = created["id"].as_str().expect("id").to_string();
    let execute = |code: String| {
        rest_json(
            server
                .post(&format!("/containers/{id}/execute"))
                .json(&json!({ "code": code })),
        )
    };
    // Opened while A is allowed; the request is not sent yet (the server waits for it).
    let opened = execute(format!(
        "import socket\nheld = socket.create_connection(('{}', 8000), timeout=3)\nprint('open')",
        a.ip4
    ))
    .await;
    assert_eq!(opened["stdout"], "open\n", "{opened}");
    let narrowed = server
        .post(&format!("/containers/{id}/firewall"))
        .json(&json!({"allowed_domains": [], "allowed_ips": []}))
        .send()
        .await
        .expect("firewall");
    assert_eq!(narrowed.status(), StatusCode::OK);
    let after = execute(
        "try:\n    held.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\n    body = held.recv(65536)\n    print('answered' if body else 'closed')\nexcept OSError as error:\n    print('cut', type(error).__name__)".into(),
    )
    .await;
    let stdout = after["stdout"].as_str().unwrap_or_default();
    assert!(
        stdout.starts_with("cut"),
        "the connection outlived the narrowed policy: {after}"
    );
}
