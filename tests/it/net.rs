//! Test networks and test hosts the isolation tests own: a Docker network (IPv4 and IPv6) made for
//! one test, and containers on it from the sandbox image (web servers, DNS servers). Every address
//! a test sends traffic to is one of these, and every name it resolves is served by one of its
//! own DNS servers (under `kb.test`). Both are removed when dropped, even when the test fails.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;

use serde_json::Value;

pub(crate) fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker").args(args).output().expect("docker")
}

pub(crate) fn docker_ok(args: &[&str]) -> String {
    let output = docker(args);
    assert!(
        output.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// A Docker network made for one test: a bridge with inter-container traffic on (so what keeps
/// sandboxes apart is kernelbox's own rules, not Docker's), IPv4 and IPv6.
pub(crate) struct TestNetwork {
    pub(crate) name: String,
    pub(crate) gateway4: Ipv4Addr,
    pub(crate) gateway6: Ipv6Addr,
}

impl TestNetwork {
    pub(crate) fn create(test: &str) -> Self {
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let name = format!("kbt-{test}-{suffix}");
        // A unique-local /64 of our own for IPv6; Docker picks a free IPv4 subnet.
        let prefix = format!(
            "fd{}:{}:{:x}",
            &suffix[..2],
            &suffix[2..6],
            u16::from_str_radix(&suffix[6..8], 16).unwrap_or(1)
        );
        docker_ok(&[
            "network",
            "create",
            "--ipv6",
            "--subnet",
            &format!("{prefix}::/64"),
            "--gateway",
            &format!("{prefix}::1"),
            "--label",
            "io.kernelbox.test=true",
            &name,
        ]);
        let inspect: Value =
            serde_json::from_str(&docker_ok(&["network", "inspect", &name])).expect("inspect");
        let configs = inspect[0]["IPAM"]["Config"]
            .as_array()
            .expect("IPAM config")
            .clone();
        let gateway = |v6: bool| {
            configs
                .iter()
                .filter_map(|config| config["Gateway"].as_str())
                .filter_map(|gateway| gateway.parse::<IpAddr>().ok())
                .find(|gateway| gateway.is_ipv6() == v6)
        };
        let (Some(IpAddr::V4(gateway4)), Some(IpAddr::V6(gateway6))) =
            (gateway(false), gateway(true))
        else {
            panic!("network {name} lacks a gateway: {configs:?}");
        };
        Self {
            name,
            gateway4,
            gateway6,
        }
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        // Containers still attached (a test that failed half way) go first.
        let attached = docker(&[
            "network",
            "inspect",
            "--format",
            "{{range $id, $c := .Containers}}{{$id}} {{end}}",
            &self.name,
        ]);
        let ids: Vec<String> = String::from_utf8_lossy(&attached.stdout)
            .split_whitespace()
            .map(String::from)
            .collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(ids.iter().map(String::as_str));
            let _ = docker(&args);
        }
        let _ = docker(&["network", "rm", &self.name]);
    }
}

/// A container of the sandbox image on a test network, running a command as root.
pub(crate) struct TestHost {
    pub(crate) name: String,
    pub(crate) ip4: Ipv4Addr,
    pub(crate) ip6: Ipv6Addr,
}

impl TestHost {
    pub(crate) fn start(network: &TestNetwork, role: &str, command: &[&str]) -> Self {
        Self::run(network, role, &[], command)
    }

    /// A host started with extra `docker run` options, ready once its log shows `ready`.
    pub(crate) fn start_with(
        network: &TestNetwork,
        role: &str,
        options: &[&str],
        command: &[&str],
        ready: &str,
    ) -> Self {
        let host = Self::run(network, role, options, command);
        host.wait_for_log(ready);
        host
    }

    fn run(network: &TestNetwork, role: &str, options: &[&str], command: &[&str]) -> Self {
        let name = format!("{}-{role}", network.name);
        let mut args = vec![
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            &network.name,
            "--user",
            "0:0",
            "--label",
            "io.kernelbox.test=true",
        ];
        args.extend_from_slice(options);
        let image = crate::common::sandbox_image();
        args.push(&image);
        args.extend_from_slice(command);
        docker_ok(&args);
        let address = |field: &str| {
            docker_ok(&[
                "inspect",
                "--format",
                &format!("{{{{range .NetworkSettings.Networks}}}}{{{{.{field}}}}}{{{{end}}}}"),
                &name,
            ])
        };
        let ip4 = address("IPAddress").parse().expect("an IPv4 address");
        let ip6 = address("GlobalIPv6Address")
            .parse()
            .expect("an IPv6 address");
        Self { name, ip4, ip6 }
    }

    /// A web server answering `GET /` with its own name, on port 8000 (v4 and v6).
    pub(crate) fn web(network: &TestNetwork, role: &str) -> Self {
        let script = format!(
            "mkdir -p /srv && echo {role} > /srv/index.html && cd /srv && exec python3 -m http.server 8000 --bind ::"
        );
        let host = Self::start(network, role, &["sh", "-c", &script]);
        host.wait_for_log("Serving HTTP");
        host
    }

    /// A DNS server for `kb.test` answering only `names` (each name → an IPv4 and an IPv6
    /// address); every other name under `kb.test` is NXDOMAIN, and nothing is forwarded.
    pub(crate) fn dns(
        network: &TestNetwork,
        role: &str,
        names: &[(&str, Ipv4Addr, Ipv6Addr)],
    ) -> Self {
        let mut command = vec![
            "dnsmasq".to_string(),
            "--keep-in-foreground".into(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            "--user=root".into(),
            "--log-facility=-".into(),
            "--local=/kb.test/".into(),
        ];
        for (name, ip4, ip6) in names {
            command.push(format!("--address=/{name}/{ip4}"));
            command.push(format!("--address=/{name}/{ip6}"));
        }
        let command: Vec<&str> = command.iter().map(String::as_str).collect();
        let host = Self::start(network, role, &command);
        host.wait_for_log("started, version");
        host
    }

    /// Waits until the host's log shows `marker` (what its server prints once it listens).
    fn wait_for_log(&self, marker: &str) {
        use std::io::BufRead;
        let mut logs = Command::new("sh")
            .args(["-c", &format!("exec docker logs -f {} 2>&1", self.name)])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("docker logs");
        let stdout = logs.stdout.take().expect("stdout");
        let (found, wait) = std::sync::mpsc::channel();
        let marker = marker.to_string();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains(&marker) {
                    let _ = found.send(());
                    return;
                }
            }
        });
        let ready = wait.recv_timeout(std::time::Duration::from_secs(60));
        let _ = logs.kill();
        let _ = logs.wait();
        assert!(ready.is_ok(), "test host {} did not come up", self.name);
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", "-v", &self.name]);
    }
}

/// The container id of a sandbox's network sidecar.
pub(crate) fn sidecar_of(container_id: &str) -> String {
    docker_ok(&[
        "inspect",
        "--format",
        "{{index .Config.Labels \"io.kernelbox.network\"}}",
        container_id,
    ])
}

/// The sidecar's IPv4 address on `network`: the address other containers see a sandbox at.
pub(crate) fn sandbox_ip(container_id: &str, network: &TestNetwork) -> Ipv4Addr {
    docker_ok(&[
        "inspect",
        "--format",
        &format!(
            "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
            network.name
        ),
        &sidecar_of(container_id),
    ])
    .parse()
    .expect("an address")
}

/// The ruleset in force in a sandbox's namespace, as `nft -j` prints it (read in the sidecar).
pub(crate) fn ruleset(container_id: &str) -> Value {
    serde_json::from_str(&docker_ok(&[
        "exec",
        &sidecar_of(container_id),
        "nft",
        "-j",
        "list",
        "ruleset",
    ]))
    .expect("nft JSON")
}
