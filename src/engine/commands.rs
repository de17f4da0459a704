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

/// How long `pip install` may take.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(600);
/// How many packages one install may name.
const MAX_PACKAGES: usize = 64;
/// Exit status `timeout(1)` reports when it stopped the command.
const TIMEOUT_EXIT: i64 = 124;
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
        let sandbox = self.use_sandbox(id, tenant)?;
        if request.command.trim().is_empty() {
            return Err(EngineError::InvalidInput {
                field: "command",
                reason: "must not be empty".into(),
            });
        }
        validate::no_nul("command", &request.command)?;
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
    }

    /// Installs Python packages with pip as the sandbox user (into `~/.local`, which the kernel
    /// imports from without a restart). Each entry is a pip requirement (`pandas`,
    /// `requests==2.32.3`) or a path to a wheel inside the sandbox.
    pub async fn install_packages(
        &self,
        id: &str,
        tenant: &Tenant,
        packages: &[String],
    ) -> Result<CommandResult, EngineError> {
        let sandbox = self.use_sandbox(id, tenant)?;
        validate_packages(packages)?;
        let mut argv: Vec<String> = [
            "python3",
            "-m",
            "pip",
            "install",
            "--no-input",
            "--progress-bar",
            "off",
        ]
        .map(String::from)
        .to_vec();
        argv.extend(packages.iter().cloned());
        let timeout = INSTALL_TIMEOUT.min(self.config.max_exec_timeout);
        self.run_limited(&sandbox, argv, WORKSPACE.to_string(), Vec::new(), timeout)
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
        sandbox.touch();
        Ok(CommandResult {
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            exit_code: output.exit_code,
            timed_out: output.exit_code == TIMEOUT_EXIT || output.exit_code == 128 + 9,
            truncated: output.truncated,
            duration_ms: started.elapsed().as_millis() as u64,
        })
    }
}

/// A package list pip can take as arguments: no options smuggled in, nothing empty.
fn validate_packages(packages: &[String]) -> Result<(), EngineError> {
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
    for package in packages {
        if package.is_empty()
            || package.len() > 256
            || package.starts_with('-')
            || package.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(invalid(format!(
                "{package:?} is not a package requirement (like `pandas` or `requests==2.32.3`)"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_lists_cannot_carry_options() {
        let list = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(
            validate_packages(&list(&["pandas", "requests==2.32.3", "/workspace/x.whl"])).is_ok()
        );
        assert!(validate_packages(&list(&[])).is_err());
        assert!(validate_packages(&list(&["--index-url=http://evil"])).is_err());
        assert!(validate_packages(&list(&["a b"])).is_err());
        assert!(validate_packages(&list(&[""])).is_err());
    }
}
