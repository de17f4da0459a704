//! Shell commands inside a sandbox, run as the sandbox user with a hard time limit.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::error::EngineError;
use super::lifecycle::Engine;
use super::paths::WORKSPACE;
use super::sandbox::Sandbox;
use super::tenant::Tenant;
use super::validate;
use crate::backend::ExecSpec;
use crate::packages::InstallPlan;

/// How long `pip install` may take.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(600);
/// How many packages one install may name.
const MAX_PACKAGES: usize = 64;
/// Exit status `timeout(1)` reports when it stopped the command.
const TIMEOUT_EXIT: i64 = 124;
/// What a process killed by SIGKILL exits with.
const KILLED_EXIT: i64 = 128 + 9;
/// Carries the constraints file's text to the shell that hands it to pip on its standard input.
const CONSTRAINTS_ENV: &str = "KERNELBOX_PIP_CONSTRAINTS";
/// Extra time the runtime gets beyond the command's own limit before we stop waiting.
const EXEC_SLACK: Duration = Duration::from_secs(15);

/// A shell command to run.
#[derive(Debug, Clone, Default)]
pub struct CommandRequest {
    /// Run by `bash -c`.
    pub command: String,
    /// Working directory; relative paths are under `/workspace`.
    pub cwd: Option<String>,
    pub timeout: Option<Duration>,
    pub env: HashMap<String, String>,
}

/// How a command ended.
#[derive(Debug, Clone, Serialize)]
pub struct CommandResult {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: i64,
    /// The command ran past its time limit and was killed.
    pub timed_out: bool,
    /// Output past the cap was dropped.
    pub truncated: bool,
    pub duration_ms: u64,
}

impl Engine {
    /// Runs `bash -c command` in a sandbox and waits for it.
    pub async fn run_command(
        &self,
        id: &str,
        tenant: &Tenant,
        request: CommandRequest,
    ) -> Result<CommandResult, EngineError> {
        self.on_live(id, tenant, async |sandbox| {
            validate::command(&request.command)?;
            if let Some(cwd) = &request.cwd {
                validate::no_nul("cwd", cwd)?;
            }
            let timeout = validate::timeout(
                request.timeout,
                self.config.exec_timeout,
                self.config.max_exec_timeout,
            )?;
            let env = validate::env(&request.env)?;
            let workdir = match request.cwd.as_deref() {
                None | Some("") => WORKSPACE.to_string(),
                Some(cwd) if cwd.starts_with('/') => cwd.to_string(),
                Some(cwd) => format!("{WORKSPACE}/{cwd}"),
            };
            let argv = ["bash", "-c", &request.command].map(String::from).to_vec();
            self.run_limited(&sandbox, argv, workdir, env, timeout)
                .await
        })
        .await
    }

    /// Installs Python packages with pip as the sandbox user (into `~/.local`, which the kernel
    /// imports from without a restart). Each entry is a pip requirement (`pandas`,
    /// `requests==2.32.3`), checked against the package policy, or, when the server has no
    /// package policy, a path to a wheel inside the sandbox.
    pub async fn install_packages(
        &self,
        id: &str,
        tenant: &Tenant,
        packages: &[String],
    ) -> Result<CommandResult, EngineError> {
        self.on_live(id, tenant, async |sandbox| {
            let plan = self.plan_install(packages)?;
            self.pip_install(&sandbox, &plan).await
        })
        .await
    }

    /// Checks a package list against the policy: what pip is to install, and under which
    /// constraints. Nothing runs yet.
    pub(super) fn plan_install(&self, packages: &[String]) -> Result<InstallPlan, EngineError> {
        let invalid = |reason: String| EngineError::InvalidInput {
            field: "packages",
            reason,
        };
        if packages.is_empty() {
            return Err(invalid("name at least one package".into()));
        }
        if packages.len() > MAX_PACKAGES {
            return Err(invalid(format!("at most {MAX_PACKAGES} packages at once")));
        }
        let policy = &self.config.package_policy;
        let (wheels, named): (Vec<String>, Vec<String>) = packages
            .iter()
            .cloned()
            .partition(|package| policy.is_open() && is_wheel_path(package));
        let mut plan = policy.check(&named)?;
        plan.requirements.extend(wheels);
        Ok(plan)
    }

    /// Runs `pip install` for a checked plan, as the sandbox user. pip runs `--isolated`: the
    /// sandbox's own pip settings (its environment, `~/.config/pip`) cannot add options,
    /// requirements or another index to what the policy admitted; the constraints come on its
    /// standard input, never from a file sandbox code could change.
    pub(super) async fn pip_install(
        &self,
        sandbox: &Sandbox,
        plan: &InstallPlan,
    ) -> Result<CommandResult, EngineError> {
        let mut pip: Vec<String> = [
            "-m",
            "pip",
            "install",
            "--isolated",
            "--user",
            "--no-input",
            "--progress-bar",
            "off",
        ]
        .map(String::from)
        .to_vec();
        if let Some(index) = &self.config.pip_index {
            pip.extend(["--index-url".to_string(), index.url.clone()]);
            if let Some(host) = &index.trusted_host {
                pip.extend(["--trusted-host".to_string(), host.clone()]);
            }
        }
        let mut env = Vec::new();
        let script = if plan.constraints.is_empty() {
            r#"exec python3 "$@""#
        } else {
            pip.extend(["-c".to_string(), "/dev/stdin".to_string()]);
            env.push(format!(
                "{CONSTRAINTS_ENV}={}\n",
                plan.constraints.join("\n")
            ));
            r#"exec python3 "$@" <<<"$KERNELBOX_PIP_CONSTRAINTS""#
        };
        pip.push("--".to_string());
        pip.extend(plan.requirements.iter().cloned());
        let mut argv: Vec<String> = ["bash", "-c", script, "pip"].map(String::from).to_vec();
        argv.extend(pip);
        let timeout = INSTALL_TIMEOUT.min(self.config.max_exec_timeout);
        self.run_limited(sandbox, argv, WORKSPACE.to_string(), env, timeout)
            .await
    }

    /// Runs `argv` under `timeout(1)` and waits for it, a little longer than its own limit.
    async fn run_limited(
        &self,
        sandbox: &Sandbox,
        argv: Vec<String>,
        workdir: String,
        env: Vec<String>,
        timeout: Duration,
    ) -> Result<CommandResult, EngineError> {
        let secs = timeout.as_secs().max(1).to_string();
        let mut limited: Vec<String> = ["timeout", "--kill-after=2", &secs]
            .map(String::from)
            .to_vec();
        limited.extend(argv);
        let spec = ExecSpec {
            argv: limited,
            workdir,
            env,
            user: None,
            output_limit: self.config.output_limit_bytes,
        };
        let started = Instant::now();
        let output = tokio::time::timeout(
            timeout + EXEC_SLACK,
            self.backend.exec(sandbox.container_id(), spec),
        )
        .await
        .map_err(|_| EngineError::CommandTimeout {
            secs: timeout.as_secs(),
        })??;
        let killed = output.exit_code == KILLED_EXIT;
        if killed && sandbox.is_cancelled() {
            // Killed because the sandbox is going away, not by its time limit or its own code:
            // the caller learns that (as `Destroyed` once the sandbox is gone).
            return Err(EngineError::ShuttingDown);
        }
        sandbox.touch();
        let duration = started.elapsed();
        Ok(CommandResult {
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            exit_code: output.exit_code,
            // `timeout` exits 124 when its SIGTERM ended the command, and the command's 137
            // when its later SIGKILL had to; a command that killed itself early did not time out.
            timed_out: output.exit_code == TIMEOUT_EXIT || (killed && duration >= timeout),
            truncated: output.truncated,
            duration_ms: duration.as_millis() as u64,
        })
    }
}

/// An absolute or `./` path to a wheel file (accepted only without a package policy).
fn is_wheel_path(package: &str) -> bool {
    (package.starts_with('/') || package.starts_with("./"))
        && package.ends_with(".whl")
        && package.len() <= 4096
        && !package.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_wheel_paths_pass_as_paths() {
        assert!(is_wheel_path("/workspace/kbdemo-1.0-py3-none-any.whl"));
        assert!(is_wheel_path("./dist/kbdemo-1.0-py3-none-any.whl"));
        assert!(!is_wheel_path("--find-links=/x.whl"));
        assert!(!is_wheel_path("/workspace/a b.whl"));
        assert!(!is_wheel_path("/workspace/setup.py"));
        assert!(!is_wheel_path("kbdemo @ file:///workspace/k.whl"));
    }
}
