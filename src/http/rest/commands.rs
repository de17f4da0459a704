//! Shell commands: `POST /containers/{id}/commands` runs `bash -c cmd` as the sandbox user;
//! `POST /containers/{id}/packages` runs pip for a package list the package policy admits.

use std::collections::HashMap;

use axum::Extension;
use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::engine::Tenant;
use crate::engine::commands::{CommandRequest, CommandResult};
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{ApiJson, ApiPath, AppState, seconds};

/// A command to run.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunCommand {
    /// Run by `bash -c`.
    pub cmd: String,
    /// Working directory; relative paths are under `/workspace` (default `/workspace`).
    pub cwd: Option<String>,
    /// Seconds before the command is killed (default: the server's `--exec-timeout-secs`).
    #[schema(exclusive_minimum = 0)]
    pub timeout: Option<f64>,
    /// Extra environment variables.
    pub env: Option<HashMap<String, String>>,
}

/// How the command ended.
#[derive(Debug, Serialize, ToSchema)]
pub struct CommandOutput {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: i64,
    /// The command ran past its time limit and was stopped: `exit_code` 124, or 137 when it had
    /// to be killed after that limit.
    pub timed_out: bool,
    /// Output past the cap was dropped.
    pub truncated: bool,
    pub duration_ms: u64,
}

impl From<CommandResult> for CommandOutput {
    fn from(result: CommandResult) -> Self {
        Self {
            stdout: result.stdout,
            stderr: result.stderr,
            exit_code: result.exit_code,
            timed_out: result.timed_out,
            truncated: result.truncated,
            duration_ms: result.duration_ms,
        }
    }
}

/// Run a shell command and wait for it. A non-zero exit is a result, not an error.
#[utoipa::path(
    post,
    path = "/containers/{id}/commands",
    tag = "commands",
    params(("id" = String, Path, description = "Container id")),
    request_body = RunCommand,
    responses(
        (status = 200, description = "The command ended", body = CommandOutput),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such container", body = ErrorBody),
        (status = 422, description = "Invalid body", body = ErrorBody),
        (status = 504, description = "The container runtime did not return in time", body = ErrorBody),
        (status = 503, description = "Docker unreachable", body = ErrorBody),
    )
)]
pub(crate) async fn run(
    State(engine): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    ApiPath(id): ApiPath<String>,
    ApiJson(request): ApiJson<RunCommand>,
) -> Result<Json<CommandOutput>, ApiError> {
    let env = request.env.unwrap_or_default();
    let result = engine
        .run_command(
            &id,
            &tenant,
            CommandRequest {
                command: request.cmd,
                cwd: request.cwd,
                timeout: seconds("timeout", request.timeout)?,
                env,
            },
        )
        .await?;
    Ok(Json(result.into()))
}

/// Packages to install.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstallPackages {
    /// pip requirements (`requests`, `polars==1.9.0`), checked against the server's package
    /// policy; without a policy, paths of wheel files inside the container too. No URLs, paths
    /// or pip options.
    pub packages: Vec<String>,
}

/// Install Python packages with pip as the sandbox user, into its user site (importable at once).
/// A non-zero pip exit is a result, not an error.
#[utoipa::path(
    post,
    path = "/containers/{id}/packages",
    tag = "commands",
    params(("id" = String, Path, description = "Container id")),
    request_body = InstallPackages,
    responses(
        (status = 200, description = "pip ended", body = CommandOutput),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 403, description = "The package policy refuses a package; the message names the rule", body = ErrorBody),
        (status = 404, description = "No such container", body = ErrorBody),
        (status = 422, description = "Invalid body, or an entry that is not a package requirement", body = ErrorBody),
        (status = 504, description = "The container runtime did not return in time", body = ErrorBody),
        (status = 503, description = "Docker unreachable", body = ErrorBody),
    )
)]
pub(crate) async fn install(
    State(engine): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    ApiPath(id): ApiPath<String>,
    ApiJson(request): ApiJson<InstallPackages>,
) -> Result<Json<CommandOutput>, ApiError> {
    let result = engine
        .install_packages(&id, &tenant, &request.packages)
        .await?;
    Ok(Json(result.into()))
}
