//! Settings. Every option is a CLI flag and a `KERNELBOX_*` environment variable; the names live
//! in [`EnvVars`] so docs, clap and tests agree.

use std::net::IpAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;

use crate::backend::Limits;
use crate::egress::{DomainName, EgressLayer, EgressPolicy, parse_cidr};
use crate::http::listener::ConnectionLimits;
use crate::packages::{PackagePolicy, PolicyError};

/// Environment variable names, one per option.
pub struct EnvVars;

impl EnvVars {
    /// Address the HTTP server binds (`serve`).
    pub const HOST: &'static str = "KERNELBOX_HOST";
    /// Port the HTTP server binds (`serve`).
    pub const PORT: &'static str = "KERNELBOX_PORT";
    /// API key(s), comma-separated, required on every HTTP route but `/health`.
    pub const API_KEY: &'static str = "KERNELBOX_API_KEY";
    /// `Host` values accepted on `/mcp`, comma-separated.
    pub const ALLOWED_HOSTS: &'static str = "KERNELBOX_ALLOWED_HOSTS";
    /// Allow a non-loopback bind without an API key (`1`/`true`).
    pub const INSECURE: &'static str = "KERNELBOX_INSECURE";
    /// Sandbox image.
    pub const IMAGE: &'static str = "KERNELBOX_IMAGE";
    /// Base image `kernelbox image build` (without `--offline`) builds from.
    pub const BASE_IMAGE: &'static str = "KERNELBOX_BASE_IMAGE";
    /// Further images a create request may ask for, comma-separated.
    pub const ALLOWED_IMAGES: &'static str = "KERNELBOX_ALLOWED_IMAGES";
    /// Sandboxes idle longer than this many seconds are destroyed.
    pub const MAX_IDLE_SECS: &'static str = "KERNELBOX_MAX_IDLE_SECS";
    /// A tenant's default sandbox (calls that name none) idle longer than this is destroyed.
    pub const DEFAULT_SANDBOX_IDLE_SECS: &'static str = "KERNELBOX_DEFAULT_SANDBOX_IDLE_SECS";
    /// How often the idle reaper runs, in seconds.
    pub const CLEANUP_INTERVAL_SECS: &'static str = "KERNELBOX_CLEANUP_INTERVAL_SECS";
    /// Allowed browser origins (comma-separated) for CORS and `/mcp` Origin checks.
    pub const CORS_ORIGINS: &'static str = "KERNELBOX_CORS_ORIGINS";
    /// Log filter, in `tracing` env-filter syntax (`info`, `kernelbox=debug`).
    pub const LOG: &'static str = "KERNELBOX_LOG";
    /// Log line format: `text` or `json` (one JSON object a line).
    pub const LOG_FORMAT: &'static str = "KERNELBOX_LOG_FORMAT";
    /// Most sandboxes alive at once.
    pub const MAX_SANDBOXES: &'static str = "KERNELBOX_MAX_SANDBOXES";
    /// Most sandboxes one tenant (API key) may have alive at once.
    pub const MAX_SANDBOXES_PER_TENANT: &'static str = "KERNELBOX_MAX_SANDBOXES_PER_TENANT";
    /// Largest memory limit a create request may ask for, in MiB.
    pub const MAX_MEMORY_MB: &'static str = "KERNELBOX_MAX_MEMORY_MB";
    /// Largest CPU limit a create request may ask for.
    pub const MAX_CPUS: &'static str = "KERNELBOX_MAX_CPUS";
    /// Largest process limit a create request may ask for.
    pub const MAX_PIDS: &'static str = "KERNELBOX_MAX_PIDS";
    /// Default execution timeout in seconds.
    pub const EXEC_TIMEOUT_SECS: &'static str = "KERNELBOX_EXEC_TIMEOUT_SECS";
    /// Largest execution timeout a request may ask for, in seconds.
    pub const MAX_EXEC_TIMEOUT_SECS: &'static str = "KERNELBOX_MAX_EXEC_TIMEOUT_SECS";
    /// Longest lifetime (`timeout`) a sandbox may be given, in seconds.
    pub const MAX_SANDBOX_TIMEOUT_SECS: &'static str = "KERNELBOX_MAX_SANDBOX_TIMEOUT_SECS";
    /// Memory limit per sandbox, in MiB.
    pub const MEMORY_MB: &'static str = "KERNELBOX_MEMORY_MB";
    /// CPU limit per sandbox (fractions allowed).
    pub const CPUS: &'static str = "KERNELBOX_CPUS";
    /// Process limit per sandbox.
    pub const PIDS: &'static str = "KERNELBOX_PIDS";
    /// Text output (stdout + stderr) kept per execution, in bytes.
    pub const OUTPUT_LIMIT_BYTES: &'static str = "KERNELBOX_OUTPUT_LIMIT_BYTES";
    /// Rich output (images, HTML, JSON) kept per execution, in bytes.
    pub const RICH_OUTPUT_LIMIT_BYTES: &'static str = "KERNELBOX_RICH_OUTPUT_LIMIT_BYTES";
    /// Largest upload (a file, or a directory archive once unpacked from gzip), in bytes.
    pub const MAX_UPLOAD_BYTES: &'static str = "KERNELBOX_MAX_UPLOAD_BYTES";
    /// Bytes all uploads in progress may hold in the server's temporary files together.
    pub const MAX_SPOOL_BYTES: &'static str = "KERNELBOX_MAX_SPOOL_BYTES";
    /// Largest message a kernel may send, in bytes; a larger one restarts the sandbox.
    pub const MAX_KERNEL_MESSAGE_BYTES: &'static str = "KERNELBOX_MAX_KERNEL_MESSAGE_BYTES";
    /// The operator's egress policy: `public`, `deny` or `allowlist`.
    pub const EGRESS: &'static str = "KERNELBOX_EGRESS";
    /// Domains the `allowlist` egress policy allows, comma-separated.
    pub const EGRESS_ALLOWED_DOMAINS: &'static str = "KERNELBOX_EGRESS_ALLOWED_DOMAINS";
    /// Addresses and CIDRs the `allowlist` egress policy allows, comma-separated.
    pub const EGRESS_ALLOWED_IPS: &'static str = "KERNELBOX_EGRESS_ALLOWED_IPS";
    /// Addresses and CIDRs the `public` egress policy refuses besides the private ranges.
    pub const EGRESS_DENIED_IPS: &'static str = "KERNELBOX_EGRESS_DENIED_IPS";
    /// DNS servers the sandboxes' resolvers forward to, comma-separated.
    pub const DNS: &'static str = "KERNELBOX_DNS";
    /// The Docker network the sandboxes' network sidecars attach to.
    pub const NETWORK: &'static str = "KERNELBOX_NETWORK";
    /// Name of this kernelbox instance; it only manages sandboxes carrying its name.
    pub const INSTANCE: &'static str = "KERNELBOX_INSTANCE";
    /// Set to `true` to destroy this instance's sandboxes on shutdown.
    pub const DESTROY_ON_EXIT: &'static str = "KERNELBOX_DESTROY_ON_EXIT";
    /// Set to `true` to refuse to start when the image is missing instead of building it.
    pub const NO_IMAGE_BUILD: &'static str = "KERNELBOX_NO_IMAGE_BUILD";
    /// Seconds a client has to send a complete request head (`serve`).
    pub const HEADER_READ_TIMEOUT_SECS: &'static str = "KERNELBOX_HEADER_READ_TIMEOUT_SECS";
    /// Seconds an idle keep-alive connection stays open (`serve`).
    pub const KEEP_ALIVE_TIMEOUT_SECS: &'static str = "KERNELBOX_KEEP_ALIVE_TIMEOUT_SECS";
    /// Most HTTP connections open at once (`serve`).
    pub const MAX_CONNECTIONS: &'static str = "KERNELBOX_MAX_CONNECTIONS";
    /// Seconds a response may wait for a client that reads nothing before its connection is cut.
    pub const WRITE_STALL_TIMEOUT_SECS: &'static str = "KERNELBOX_WRITE_STALL_TIMEOUT_SECS";
    /// Seconds a guest MCP server may take to answer one request (proxy or tool route).
    pub const GUEST_REQUEST_TIMEOUT_SECS: &'static str = "KERNELBOX_GUEST_REQUEST_TIMEOUT_SECS";
    /// Seconds from SIGINT/SIGTERM to exit, at most.
    pub const SHUTDOWN_TIMEOUT_SECS: &'static str = "KERNELBOX_SHUTDOWN_TIMEOUT_SECS";
    pub const MAX_CONCURRENT_STARTS: &'static str = "KERNELBOX_MAX_CONCURRENT_STARTS";
    /// Sandboxes kept started ahead of requests.
    pub const WARM_POOL: &'static str = "KERNELBOX_WARM_POOL";
    pub const START_QUEUE_TIMEOUT_SECS: &'static str = "KERNELBOX_START_QUEUE_TIMEOUT_SECS";
    /// How the server reaches kernels: `auto`, `direct` or `exec`.
    pub const KERNEL_CHANNEL: &'static str = "KERNELBOX_KERNEL_CHANNEL";
    /// Package allow list: requirement strings separated by `;` (only these may be installed).
    pub const PACKAGE_ALLOW: &'static str = "KERNELBOX_PACKAGE_ALLOW";
    /// Package block rules: requirement strings separated by `;` (`urllib3<1.26.5`).
    pub const PACKAGE_BLOCK: &'static str = "KERNELBOX_PACKAGE_BLOCK";
    /// A package policy file: `allow <rule>` and `block <rule>` lines.
    pub const PACKAGE_POLICY_FILE: &'static str = "KERNELBOX_PACKAGE_POLICY_FILE";
    /// The package index the server's installs use (pip `--index-url`), also given to sandboxes.
    pub const PIP_INDEX_URL: &'static str = "KERNELBOX_PIP_INDEX_URL";
}

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "kernelbox",
    version,
    about = "Stateful Python sandboxes over MCP and REST"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve HTTP: REST routes and `/health`.
    Serve(ServeArgs),
    /// Serve MCP over stdin/stdout (for Claude Desktop).
    Stdio(StdioArgs),
    /// Manage the sandbox image.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build the sandbox image.
    Build(ImageBuildArgs),
}

#[derive(Debug, Args)]
pub struct ImageBuildArgs {
    /// Build without pulling a base image: debootstrap a Debian rootfs and `docker import` it
    /// (needs root and debootstrap).
    #[arg(long)]
    pub offline: bool,
    /// Image tag to build.
    #[arg(long, env = EnvVars::IMAGE, default_value = DEFAULT_IMAGE)]
    pub image: String,
    #[command(flatten)]
    pub log: LogArgs,
}

/// How the logs (on stderr) are filtered and written.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log filter, in `tracing` env-filter syntax (`info`, `kernelbox=debug`).
    #[arg(long = "log", env = EnvVars::LOG, default_value = "info")]
    pub filter: String,
    /// `text` (colours only when stderr is a terminal) or `json`: one object a line, with the
    /// fields of the spans it happened in (request_id, tenant, sandbox_id) beside its own.
    #[arg(long, env = EnvVars::LOG_FORMAT, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// The format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object a line.
    Json,
}

pub const DEFAULT_IMAGE: &str = "kernelbox-sandbox:latest";

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to bind. Binding beyond loopback needs an API key (or `--insecure`).
    #[arg(long, env = EnvVars::HOST, default_value = "127.0.0.1")]
    pub host: IpAddr,
    #[arg(long, env = EnvVars::PORT, default_value_t = 8000)]
    pub port: u16,
    /// API key(s), comma-separated. Each key is a tenant.
    #[arg(long, env = EnvVars::API_KEY, value_delimiter = ',', hide_env_values = true)]
    pub api_key: Vec<String>,
    /// Allowed browser origins, comma-separated.
    #[arg(long, env = EnvVars::CORS_ORIGINS, value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// Allow binding a non-loopback address without an API key.
    #[arg(long, env = EnvVars::INSECURE)]
    pub insecure: bool,
    /// `Host` header values `/mcp` accepts, comma-separated (DNS-rebinding protection). Default:
    /// loopback names when bound to loopback, any host otherwise. Set it behind a reverse proxy.
    #[arg(long, env = EnvVars::ALLOWED_HOSTS, value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,
    /// Seconds a client has to send a complete request head, counted from when its connection
    /// opened or its previous response ended (so it also closes idle keep-alive connections).
    #[arg(long, env = EnvVars::HEADER_READ_TIMEOUT_SECS, default_value_t = 10)]
    pub header_read_timeout_secs: u64,
    /// Seconds a connection with no request in flight may stay silent before it is closed.
    #[arg(long, env = EnvVars::KEEP_ALIVE_TIMEOUT_SECS, default_value_t = 5)]
    pub keep_alive_timeout_secs: u64,
    /// HTTP connections open at once, at most; further ones wait in the listen backlog until one
    /// closes.
    #[arg(long, env = EnvVars::MAX_CONNECTIONS, default_value_t = 1024)]
    pub max_connections: usize,
    /// Seconds a response may wait on a client that takes none of its bytes before the
    /// connection is cut (a slow reader that makes progress is never cut).
    #[arg(long, env = EnvVars::WRITE_STALL_TIMEOUT_SECS, default_value_t = 60)]
    pub write_stall_timeout_secs: u64,
    #[command(flatten)]
    pub engine: EngineArgs,
}

impl ServeArgs {
    /// The HTTP server's connection limits, validated.
    pub fn connection_limits(&self) -> Result<ConnectionLimits, ConfigError> {
        let positive = |value: u64, option| {
            if value == 0 {
                Err(ConfigError::Invalid {
                    option,
                    requirement: "greater than 0",
                })
            } else {
                Ok(Duration::from_secs(value))
            }
        };
        if self.max_connections == 0 {
            return Err(ConfigError::Invalid {
                option: "--max-connections",
                requirement: "greater than 0",
            });
        }
        Ok(ConnectionLimits {
            header_read_timeout: positive(
                self.header_read_timeout_secs,
                "--header-read-timeout-secs",
            )?,
            keep_alive_timeout: positive(
                self.keep_alive_timeout_secs,
                "--keep-alive-timeout-secs",
            )?,
            max_connections: self.max_connections,
            write_stall_timeout: positive(
                self.write_stall_timeout_secs,
                "--write-stall-timeout-secs",
            )?,
        })
    }
}

#[derive(Debug, Args)]
pub struct StdioArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// Engine options shared by `serve` and `stdio`.
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    #[arg(long, env = EnvVars::IMAGE, default_value = DEFAULT_IMAGE)]
    pub image: String,
    /// Further images a create request may ask for by name, comma-separated (built from the
    /// kernelbox image, so they carry its layout and version label).
    #[arg(long, env = EnvVars::ALLOWED_IMAGES, value_delimiter = ',')]
    pub allowed_images: Vec<String>,
    #[arg(long, env = EnvVars::MAX_IDLE_SECS, default_value_t = 3600)]
    pub max_idle_secs: u64,
    /// A tenant's default sandbox idle this long is destroyed (at most `--max-idle-secs`).
    #[arg(long, env = EnvVars::DEFAULT_SANDBOX_IDLE_SECS, default_value_t = 900)]
    pub default_sandbox_idle_secs: u64,
    #[arg(long, env = EnvVars::CLEANUP_INTERVAL_SECS, default_value_t = 60)]
    pub cleanup_interval_secs: u64,
    #[arg(long, env = EnvVars::MAX_SANDBOXES, default_value_t = 32)]
    pub max_sandboxes: usize,
    /// Most live sandboxes per tenant (API key); default: `--max-sandboxes`.
    #[arg(long, env = EnvVars::MAX_SANDBOXES_PER_TENANT)]
    pub max_sandboxes_per_tenant: Option<usize>,
    #[arg(long, env = EnvVars::EXEC_TIMEOUT_SECS, default_value_t = 120)]
    pub exec_timeout_secs: u64,
    #[arg(long, env = EnvVars::MAX_EXEC_TIMEOUT_SECS, default_value_t = 3600)]
    pub max_exec_timeout_secs: u64,
    /// The longest lifetime (`timeout`, from now) a create or a timeout change may give a
    /// sandbox.
    #[arg(long, env = EnvVars::MAX_SANDBOX_TIMEOUT_SECS, default_value_t = 86_400)]
    pub max_sandbox_timeout_secs: u64,
    #[arg(long, env = EnvVars::MEMORY_MB, default_value_t = 1024)]
    pub memory_mb: u64,
    #[arg(long, env = EnvVars::CPUS, default_value_t = 1.0)]
    pub cpus: f64,
    #[arg(long, env = EnvVars::PIDS, default_value_t = 256)]
    pub pids: u64,
    /// Largest `memory_mb` a create request may ask for; default: 4 × `--memory-mb`.
    #[arg(long, env = EnvVars::MAX_MEMORY_MB)]
    pub max_memory_mb: Option<u64>,
    /// Largest `cpus` a create request may ask for; default: 4 × `--cpus`.
    #[arg(long, env = EnvVars::MAX_CPUS)]
    pub max_cpus: Option<f64>,
    /// Largest `pids` a create request may ask for; default: 4 × `--pids`.
    #[arg(long, env = EnvVars::MAX_PIDS)]
    pub max_pids: Option<u64>,
    #[arg(long, env = EnvVars::OUTPUT_LIMIT_BYTES, default_value_t = 4 * 1024 * 1024)]
    pub output_limit_bytes: usize,
    #[arg(long, env = EnvVars::RICH_OUTPUT_LIMIT_BYTES, default_value_t = 16 * 1024 * 1024)]
    pub rich_output_limit_bytes: usize,
    /// Largest upload (a file, or a directory archive after gunzip), in bytes.
    #[arg(long, env = EnvVars::MAX_UPLOAD_BYTES, default_value_t = 8 * 1024 * 1024 * 1024)]
    pub max_upload_bytes: u64,
    /// Bytes that all file uploads in progress may spool to temporary files together; an upload
    /// that would pass it is refused (503) until others finish.
    #[arg(long, env = EnvVars::MAX_SPOOL_BYTES, default_value_t = 16 * 1024 * 1024 * 1024)]
    pub max_spool_bytes: u64,
    /// Largest message a kernel may send, in bytes: a kernel that announces a larger one loses
    /// its connection before anything is buffered, and its sandbox is restarted.
    #[arg(long, env = EnvVars::MAX_KERNEL_MESSAGE_BYTES, default_value_t = 16 * 1024 * 1024)]
    pub max_kernel_message_bytes: usize,
    /// What sandboxes may reach unless a client sets their firewall: `public` (the internet, but
    /// no private, loopback, link-local or metadata address), `deny` (nothing), or `allowlist`
    /// (only `--egress-allowed-domains` and `--egress-allowed-ips`).
    #[arg(long, env = EnvVars::EGRESS, value_enum, default_value_t = EgressMode::Public)]
    pub egress: EgressMode,
    /// Domains the `allowlist` policy allows (each with its subdomains), comma-separated.
    #[arg(long, env = EnvVars::EGRESS_ALLOWED_DOMAINS, value_delimiter = ',')]
    pub egress_allowed_domains: Vec<String>,
    /// Addresses and CIDRs the `allowlist` policy allows, comma-separated.
    #[arg(long, env = EnvVars::EGRESS_ALLOWED_IPS, value_delimiter = ',')]
    pub egress_allowed_ips: Vec<String>,
    /// Addresses and CIDRs `public` refuses besides the special-purpose ranges (the Docker
    /// host's own public addresses, say), comma-separated.
    #[arg(long, env = EnvVars::EGRESS_DENIED_IPS, value_delimiter = ',')]
    pub egress_denied_ips: Vec<String>,
    /// DNS servers the sandboxes' resolvers forward allowed names to (default: Docker's
    /// embedded DNS, which uses the host's).
    #[arg(long, env = EnvVars::DNS, value_delimiter = ',')]
    pub dns: Vec<IpAddr>,
    /// The Docker network the sandboxes' network sidecars attach to (created, with
    /// inter-container traffic off, when missing).
    #[arg(long, env = EnvVars::NETWORK, default_value = "kernelbox")]
    pub network: String,
    /// Instance name (defaults to the mode: `serve` or `stdio`).
    #[arg(long, env = EnvVars::INSTANCE)]
    pub instance: Option<String>,
    #[command(flatten)]
    pub log: LogArgs,
    /// On shutdown (SIGINT/SIGTERM), destroy this instance's sandboxes instead of leaving them
    /// running for the next start to reattach.
    #[arg(long, env = EnvVars::DESTROY_ON_EXIT)]
    pub destroy_on_exit: bool,
    /// Sandboxes that may be starting at once, from container start until the kernel answers;
    /// further creates wait their turn in arrival order. Default: the number of CPUs.
    #[arg(long, env = EnvVars::MAX_CONCURRENT_STARTS)]
    pub max_concurrent_starts: Option<usize>,
    /// How long a create may wait for its turn to start before it is refused (503
    /// `start_queue_timeout`).
    #[arg(long, env = EnvVars::START_QUEUE_TIMEOUT_SECS, default_value_t = 120)]
    pub start_queue_timeout_secs: u64,
    /// Sandboxes of the default configuration kept started, kernels ready, for creates that
    /// fit them (no image, limits, network, dependencies or env of their own). On top of
    /// `--max-sandboxes`; 0 turns the pool off.
    #[arg(long, env = EnvVars::WARM_POOL, default_value_t = 0)]
    pub warm_pool: usize,
    /// Seconds from SIGINT/SIGTERM to exit, at most: executions are interrupted, guest MCP
    /// servers stopped (killed when they do not exit) and connections drained within it.
    #[arg(long, env = EnvVars::SHUTDOWN_TIMEOUT_SECS, default_value_t = 10)]
    pub shutdown_timeout_secs: u64,
    /// Seconds a guest MCP server may take to answer one request, through the proxy or the tool
    /// route; then the request is answered with a timeout error and no longer keeps its session
    /// alive.
    #[arg(long, env = EnvVars::GUEST_REQUEST_TIMEOUT_SECS, default_value_t = 60)]
    pub guest_request_timeout_secs: u64,
    /// Refuse to start when the image is missing, instead of building it.
    #[arg(long, env = EnvVars::NO_IMAGE_BUILD)]
    pub no_image_build: bool,
    /// How the server reaches a sandbox's kernel: `direct` connects to its unix socket through
    /// the sandbox's `/proc/<pid>/root` (the server on the Docker host, as root), `exec` relays
    /// through a `docker exec` (any Docker, local or remote), `auto` uses `direct` where it works.
    #[arg(long, env = EnvVars::KERNEL_CHANNEL, value_enum, default_value_t = KernelChannelMode::Auto)]
    pub kernel_channel: KernelChannelMode,
    #[command(flatten)]
    pub packages: PackageArgs,
}

/// The package policy and index of the server's own installs (`install_packages`, creation
/// `dependencies`).
#[derive(Debug, Clone, Default, Args)]
pub struct PackageArgs {
    /// Only these packages may be installed: requirement strings (`numpy`, `numpy>=1.26`),
    /// separated by `;` or given again. Names are compared PEP 503-normalized.
    #[arg(long, env = EnvVars::PACKAGE_ALLOW, value_delimiter = ';')]
    pub package_allow: Vec<String>,
    /// Versions that may not be installed: requirement strings (`urllib3<1.26.5`, `evil`: every
    /// version), separated by `;` or given again.
    #[arg(long, env = EnvVars::PACKAGE_BLOCK, value_delimiter = ';')]
    pub package_block: Vec<String>,
    /// A file of package rules, one a line: `allow <rule>` or `block <rule>` (`#` comments),
    /// added to `--package-allow` and `--package-block`.
    #[arg(long, env = EnvVars::PACKAGE_POLICY_FILE)]
    pub package_policy_file: Option<std::path::PathBuf>,
    /// The package index the server's installs use (pip `--index-url`; an `http://` index is
    /// also pip's `--trusted-host`). Sandboxes get it as `PIP_INDEX_URL` too. Default: pip's.
    #[arg(long, env = EnvVars::PIP_INDEX_URL)]
    pub pip_index_url: Option<String>,
}

impl PackageArgs {
    /// The policy, with the file's rules read.
    fn policy(&self) -> Result<PackagePolicy, ConfigError> {
        let clean = |rules: &[String]| -> Vec<String> {
            rules
                .iter()
                .map(|rule| rule.trim().to_string())
                .filter(|rule| !rule.is_empty())
                .collect()
        };
        let (mut allow, mut block) = (clean(&self.package_allow), clean(&self.package_block));
        if let Some(path) = &self.package_policy_file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::PolicyFile {
                path: path.clone(),
                source,
            })?;
            PackagePolicy::read_file(&text, &mut allow, &mut block)?;
        }
        Ok(PackagePolicy::parse(&allow, &block)?)
    }

    fn index(&self) -> Result<Option<PipIndex>, ConfigError> {
        self.pip_index_url
            .as_deref()
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(PipIndex::parse)
            .transpose()
    }
}

/// The package index the server's installs use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipIndex {
    /// pip's `--index-url`.
    pub url: String,
    /// The host pip is told to trust (`--trusted-host`) when the index is plain `http://`.
    pub trusted_host: Option<String>,
}

impl PipIndex {
    fn parse(text: &str) -> Result<Self, ConfigError> {
        let invalid = ConfigError::Invalid {
            option: "--pip-index-url",
            requirement: "an http:// or https:// URL with a host",
        };
        let url = url::Url::parse(text).map_err(|_| invalid)?;
        let host = url.host_str().ok_or(ConfigError::Invalid {
            option: "--pip-index-url",
            requirement: "an http:// or https:// URL with a host",
        })?;
        let trusted_host = match url.scheme() {
            "https" => None,
            "http" => Some(match url.port() {
                Some(port) => format!("{host}:{port}"),
                None => host.to_string(),
            }),
            _ => {
                return Err(ConfigError::Invalid {
                    option: "--pip-index-url",
                    requirement: "an http:// or https:// URL with a host",
                });
            }
        };
        Ok(Self {
            url: text.to_string(),
            trusted_host,
        })
    }
}

/// How the server reaches a sandbox's kernel sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum KernelChannelMode {
    /// `direct` when the sandbox's processes are visible to the server, else `exec`.
    #[default]
    Auto,
    /// Only through the sandbox's `/proc/<pid>/root`; a dial fails where that does not work.
    Direct,
    /// Only through a `docker exec` relay.
    Exec,
}

/// The operator's egress policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EgressMode {
    /// The internet, but no private, loopback, link-local or metadata address.
    Public,
    /// Nothing.
    Deny,
    /// Only `--egress-allowed-domains` and `--egress-allowed-ips`.
    Allowlist,
}

fn egress_policy(
    mode: EgressMode,
    domains: &[String],
    ips: &[String],
) -> Result<EgressPolicy, ConfigError> {
    if mode != EgressMode::Allowlist && !(domains.is_empty() && ips.is_empty()) {
        return Err(ConfigError::Invalid {
            option: "--egress-allowed-domains and --egress-allowed-ips",
            requirement: "given only with --egress allowlist",
        });
    }
    let layer = match mode {
        EgressMode::Public => EgressLayer::Public,
        EgressMode::Deny => EgressLayer::Deny,
        EgressMode::Allowlist => EgressLayer::Allow {
            domains: domains
                .iter()
                .map(|domain| {
                    DomainName::new(domain.trim()).map_err(|_| ConfigError::Invalid {
                        option: "--egress-allowed-domains",
                        requirement: "host names",
                    })
                })
                .collect::<Result<_, _>>()?,
            cidrs: ips
                .iter()
                .map(|ip| {
                    parse_cidr(ip.trim()).map_err(|_| ConfigError::Invalid {
                        option: "--egress-allowed-ips",
                        requirement: "IPv4 or IPv6 addresses or CIDRs",
                    })
                })
                .collect::<Result<_, _>>()?,
        },
    };
    EgressPolicy::new(vec![layer]).map_err(|_| ConfigError::Invalid {
        option: "--egress-allowed-domains and --egress-allowed-ips",
        requirement: "at most 256 entries each",
    })
}

/// Invalid settings.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{option} must be {requirement}")]
    Invalid {
        option: &'static str,
        requirement: &'static str,
    },
    #[error("invalid package policy: {0}")]
    PackagePolicy(#[from] PolicyError),
    #[error("cannot read the package policy file {path:?}")]
    PolicyFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A ceiling the operator does not set is this many times the default.
const DEFAULT_CEILING_FACTOR: u64 = 4;

/// The engine's settings, validated.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The image sandboxes run unless a request names another.
    pub image: String,
    /// Further images a request may name.
    pub allowed_images: Vec<String>,
    pub instance: String,
    /// What a sandbox gets unless its create request asks for less (or more, up to `ceilings`).
    pub limits: Limits,
    /// The most a create request may ask for.
    pub ceilings: Limits,
    pub exec_timeout: Duration,
    pub max_exec_timeout: Duration,
    /// The longest lifetime a sandbox may be given (`timeout` on create and on a change).
    pub max_sandbox_timeout: Duration,
    pub max_idle: Duration,
    /// How long a tenant's default sandbox may idle (never longer than `max_idle`).
    pub default_sandbox_idle: Duration,
    pub cleanup_interval: Duration,
    pub max_sandboxes: usize,
    pub max_sandboxes_per_tenant: usize,
    pub output_limit_bytes: usize,
    pub rich_output_limit_bytes: usize,
    /// Largest upload, in bytes (files, and directory archives after gunzip).
    pub max_upload_bytes: u64,
    /// Bytes all uploads in progress may spool together.
    pub max_spool_bytes: u64,
    /// Largest message a kernel may send, in bytes.
    pub max_kernel_message_bytes: usize,
    /// The operator's egress policy.
    pub egress: EgressPolicy,
    /// What `public` refuses besides the special-purpose ranges.
    pub egress_denied: Vec<IpNet>,
    /// DNS servers the sandboxes' resolvers forward to; empty for the backend's default.
    pub dns: Vec<IpAddr>,
    /// The backend network sandboxes attach to.
    pub network: String,
    /// How long a new kernel has to answer.
    pub kernel_ready_timeout: Duration,
    /// Sandboxes that may be starting at once.
    pub max_concurrent_starts: usize,
    /// How long a create waits for its turn to start.
    pub start_queue_timeout: Duration,
    /// Sandboxes kept started ahead (`--warm-pool`).
    pub warm_pool: usize,
    /// How long a guest server may take to answer one proxied request.
    pub guest_request_timeout: Duration,
    /// How long stopping may take, from the signal to exit.
    pub shutdown_timeout: Duration,
    /// How the backend reaches kernels.
    pub kernel_channel: KernelChannelMode,
    /// What the server's installs may install.
    pub package_policy: PackagePolicy,
    /// The package index of the server's installs (and the sandboxes' `PIP_INDEX_URL`).
    pub pip_index: Option<PipIndex>,
}

impl EngineArgs {
    /// Validates the options; `mode` names the default instance.
    pub fn into_config(self, mode: &str) -> Result<EngineConfig, ConfigError> {
        let positive = |value: u64, option| {
            if value == 0 {
                Err(ConfigError::Invalid {
                    option,
                    requirement: "greater than 0",
                })
            } else {
                Ok(value)
            }
        };
        if !(self.cpus > 0.0 && self.cpus <= 1024.0) {
            return Err(ConfigError::Invalid {
                option: "--cpus",
                requirement: "between 0 and 1024",
            });
        }
        if self.memory_mb < 64 {
            return Err(ConfigError::Invalid {
                option: "--memory-mb",
                requirement: "at least 64",
            });
        }
        let limits = Limits {
            memory_mb: self.memory_mb,
            milli_cpus: (self.cpus * 1000.0).round() as u64,
            pids: positive(self.pids, "--pids")?,
        };
        let ceilings = Limits {
            memory_mb: self
                .max_memory_mb
                .unwrap_or(limits.memory_mb * DEFAULT_CEILING_FACTOR),
            milli_cpus: self
                .max_cpus
                .map_or(limits.milli_cpus * DEFAULT_CEILING_FACTOR, |cpus| {
                    (cpus * 1000.0).round() as u64
                }),
            pids: self
                .max_pids
                .unwrap_or(limits.pids * DEFAULT_CEILING_FACTOR),
        };
        if ceilings.memory_mb < limits.memory_mb {
            return Err(ConfigError::Invalid {
                option: "--max-memory-mb",
                requirement: "at least --memory-mb",
            });
        }
        if ceilings.milli_cpus < limits.milli_cpus || self.max_cpus.is_some_and(|c| c > 1024.0) {
            return Err(ConfigError::Invalid {
                option: "--max-cpus",
                requirement: "at least --cpus and at most 1024",
            });
        }
        if ceilings.pids < limits.pids {
            return Err(ConfigError::Invalid {
                option: "--max-pids",
                requirement: "at least --pids",
            });
        }
        let max_sandboxes = positive(self.max_sandboxes as u64, "--max-sandboxes")? as usize;
        let max_sandboxes_per_tenant = match self.max_sandboxes_per_tenant {
            None => max_sandboxes,
            Some(quota) => positive(quota as u64, "--max-sandboxes-per-tenant")? as usize,
        };
        let exec_timeout = positive(self.exec_timeout_secs, "--exec-timeout-secs")?;
        let max_exec_timeout = positive(self.max_exec_timeout_secs, "--max-exec-timeout-secs")?;
        if exec_timeout > max_exec_timeout {
            return Err(ConfigError::Invalid {
                option: "--exec-timeout-secs",
                requirement: "at most --max-exec-timeout-secs",
            });
        }
        let instance = self.instance.unwrap_or_else(|| mode.to_string());
        if instance.is_empty()
            || !instance
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(ConfigError::Invalid {
                option: "--instance",
                requirement: "non-empty ASCII letters, digits, '-', '_' or '.'",
            });
        }
        Ok(EngineConfig {
            image: self.image,
            allowed_images: self
                .allowed_images
                .into_iter()
                .map(|image| image.trim().to_string())
                .filter(|image| !image.is_empty())
                .collect(),
            instance,
            limits,
            ceilings,
            exec_timeout: Duration::from_secs(exec_timeout),
            max_exec_timeout: Duration::from_secs(max_exec_timeout),
            max_sandbox_timeout: Duration::from_secs(positive(
                self.max_sandbox_timeout_secs,
                "--max-sandbox-timeout-secs",
            )?),
            max_idle: Duration::from_secs(positive(self.max_idle_secs, "--max-idle-secs")?),
            default_sandbox_idle: Duration::from_secs(
                positive(
                    self.default_sandbox_idle_secs,
                    "--default-sandbox-idle-secs",
                )?
                .min(self.max_idle_secs),
            ),
            cleanup_interval: Duration::from_secs(positive(
                self.cleanup_interval_secs,
                "--cleanup-interval-secs",
            )?),
            max_sandboxes,
            max_sandboxes_per_tenant,
            output_limit_bytes: self.output_limit_bytes,
            rich_output_limit_bytes: self.rich_output_limit_bytes,
            max_upload_bytes: positive(self.max_upload_bytes, "--max-upload-bytes")?,
            max_spool_bytes: positive(self.max_spool_bytes, "--max-spool-bytes")?,
            max_kernel_message_bytes: self.max_kernel_message_bytes.max(64 * 1024),
            egress: egress_policy(
                self.egress,
                &self.egress_allowed_domains,
                &self.egress_allowed_ips,
            )?,
            egress_denied: self
                .egress_denied_ips
                .iter()
                .map(|cidr| {
                    parse_cidr(cidr).map_err(|_| ConfigError::Invalid {
                        option: "--egress-denied-ips",
                        requirement: "IPv4 or IPv6 addresses or CIDRs",
                    })
                })
                .collect::<Result<_, _>>()?,
            dns: self.dns,
            network: self.network,
            kernel_ready_timeout: Duration::from_secs(60),
            max_concurrent_starts: match self.max_concurrent_starts {
                Some(0) => {
                    return Err(ConfigError::Invalid {
                        option: "--max-concurrent-starts",
                        requirement: "greater than 0",
                    });
                }
                Some(starts) => starts,
                None => std::thread::available_parallelism().map_or(1, usize::from),
            },
            start_queue_timeout: Duration::from_secs(positive(
                self.start_queue_timeout_secs,
                "--start-queue-timeout-secs",
            )?),
            warm_pool: self.warm_pool,
            guest_request_timeout: Duration::from_secs(positive(
                self.guest_request_timeout_secs,
                "--guest-request-timeout-secs",
            )?),
            shutdown_timeout: Duration::from_secs(positive(
                self.shutdown_timeout_secs,
                "--shutdown-timeout-secs",
            )?),
            kernel_channel: self.kernel_channel,
            package_policy: self.packages.policy()?,
            pip_index: self.packages.index()?,
        })
    }
}

impl EngineConfig {
    /// Defaults, for tests and embedding: the same values the CLI uses.
    pub fn defaults(instance: &str) -> Self {
        let cli = Cli::parse_from(["kernelbox", "stdio", "--instance", instance]);
        match cli.command {
            Command::Stdio(args) => args.engine.into_config("stdio"),
            _ => unreachable!("parsed the stdio subcommand"),
        }
        .unwrap_or_else(|error| unreachable!("defaults are valid: {error}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_design() {
        let config = EngineConfig::defaults("test");
        assert_eq!(config.limits.memory_mb, 1024);
        assert_eq!(config.limits.milli_cpus, 1000);
        assert_eq!(config.limits.pids, 256);
        assert_eq!(
            config.ceilings,
            Limits {
                memory_mb: 4096,
                milli_cpus: 4000,
                pids: 1024
            }
        );
        assert_eq!(config.max_sandboxes_per_tenant, config.max_sandboxes);
        assert_eq!(config.exec_timeout, Duration::from_secs(120));
        assert_eq!(config.instance, "test");
    }

    #[test]
    fn http_limits_have_defaults_and_refuse_zero() {
        let cli = Cli::parse_from(["kernelbox", "serve"]);
        let Command::Serve(args) = cli.command else {
            unreachable!()
        };
        assert_eq!(
            args.connection_limits().expect("defaults are valid"),
            ConnectionLimits::default()
        );
        let config = args.engine.into_config("serve").expect("valid");
        assert_eq!(config.guest_request_timeout, Duration::from_secs(60));
        assert_eq!(config.shutdown_timeout, Duration::from_secs(10));
        for flag in [
            "--header-read-timeout-secs",
            "--keep-alive-timeout-secs",
            "--max-connections",
        ] {
            let cli = Cli::parse_from(["kernelbox", "serve", flag, "0"]);
            let Command::Serve(args) = cli.command else {
                unreachable!()
            };
            let error = args.connection_limits().expect_err("0 is refused");
            assert!(error.to_string().contains(flag), "{error}");
        }
    }

    #[test]
    fn the_package_policy_comes_from_flags_and_a_file() {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), "# vulnerable\nblock requests>=2.0,<2.31\n").expect("write");
        let path = file.path().to_string_lossy().into_owned();
        let cli = Cli::parse_from([
            "kernelbox",
            "stdio",
            "--package-allow",
            "numpy;requests; urllib3",
            "--package-block",
            "urllib3<1.26.5",
            "--package-policy-file",
            &path,
            "--pip-index-url",
            "http://index.kb.test:8000/simple/",
        ]);
        let Command::Stdio(args) = cli.command else {
            unreachable!()
        };
        let config = args.engine.into_config("stdio").expect("valid");
        let policy = &config.package_policy;
        let plan = policy
            .check(&["urllib3".to_string()])
            .expect("urllib3 is allowed");
        assert_eq!(plan.constraints, vec!["urllib3>=1.26.5".to_string()]);
        let refused = policy
            .check(&["requests==2.30.0".to_string()])
            .expect_err("blocked by the file's rule");
        assert!(
            refused.to_string().contains("requests>=2.0,<2.31"),
            "{refused}"
        );
        assert!(policy.check(&["pandas".to_string()]).is_err());
        assert_eq!(
            config.pip_index,
            Some(PipIndex {
                url: "http://index.kb.test:8000/simple/".into(),
                trusted_host: Some("index.kb.test:8000".into()),
            })
        );
        let defaults = EngineConfig::defaults("test");
        assert!(defaults.package_policy.is_open() && defaults.pip_index.is_none());
        for bad in [
            ["--package-block", "urllib3 @ http://x"],
            ["--pip-index-url", "ftp://x/simple"],
            ["--package-policy-file", "/nonexistent/policy"],
        ] {
            let cli = Cli::parse_from(["kernelbox", "stdio", bad[0], bad[1]]);
            let Command::Stdio(args) = cli.command else {
                unreachable!()
            };
            assert!(args.engine.into_config("stdio").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bad_values_are_named() {
        let cli = Cli::parse_from(["kernelbox", "stdio", "--cpus", "0"]);
        let Command::Stdio(args) = cli.command else {
            unreachable!()
        };
        let error = args
            .engine
            .into_config("stdio")
            .expect_err("cpus=0 is invalid");
        assert!(error.to_string().contains("--cpus"));
    }
}
