//! A new sandbox's `dependencies`: installed with pip, as the sandbox user and under the package
//! policy, after its kernel answers and before it is handed out.

use std::collections::HashMap;
use std::time::Instant;

use tokio::sync::mpsc;

use super::create_progress::{CreateProgress, report};
use super::error::EngineError;
use super::lifecycle::Engine;
use super::sandbox::Sandbox;
use crate::packages::{InstallPlan, normalize_name};

/// How much of pip's output a failed install reports.
const OUTPUT_TAIL_LINES: usize = 20;
const OUTPUT_TAIL_BYTES: usize = 4096;

impl Engine {
    /// Gives the sandbox the server's package index (`PIP_INDEX_URL`, and `PIP_TRUSTED_HOST` for
    /// a plain `http://` one), so its own `pip install` finds the same packages; variables the
    /// request sets itself win.
    pub(super) fn pip_index_env(&self, requested: &HashMap<String, String>, env: &mut Vec<String>) {
        let Some(index) = &self.config.pip_index else {
            return;
        };
        if !requested.contains_key("PIP_INDEX_URL") {
            env.push(format!("PIP_INDEX_URL={}", index.url));
        }
        if let Some(host) = &index.trusted_host
            && !requested.contains_key("PIP_TRUSTED_HOST")
        {
            env.push(format!("PIP_TRUSTED_HOST={host}"));
        }
    }

    /// Installs a checked plan into a sandbox that is not handed out yet. A failure names the
    /// requirements pip's errors name and carries the end of its output.
    pub(super) async fn install_dependencies(
        &self,
        sandbox: &Sandbox,
        plan: &InstallPlan,
        progress: Option<&mpsc::UnboundedSender<CreateProgress>>,
    ) -> Result<(), EngineError> {
        report(
            progress,
            CreateProgress::Installing {
                requirements: plan.requirements.clone(),
            },
        );
        let started = Instant::now();
        let result = self.pip_install(sandbox, plan).await?;
        if result.exit_code == 0 && !result.timed_out {
            report(
                progress,
                CreateProgress::Installed {
                    duration_ms: started.elapsed().as_millis() as u64,
                },
            );
            return Ok(());
        }
        let output = format!("{}{}", result.stdout, result.stderr);
        Err(EngineError::DependencyInstallFailed {
            packages: named_in_errors(&plan.requirements, &output),
            exit_code: result.exit_code,
            output: tail(&output),
        })
    }
}

/// The requirements whose names pip's `ERROR:` lines mention, quoted and comma-separated; all of
/// them when it mentions none.
fn named_in_errors(requirements: &[String], output: &str) -> String {
    let errors: Vec<String> = output
        .lines()
        .filter(|line| line.starts_with("ERROR:"))
        .map(|line| {
            line.split(|c: char| !(c.is_ascii_alphanumeric() || "-_.".contains(c)))
                .filter_map(normalize_name)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let named: Vec<&String> = requirements
        .iter()
        .filter(|requirement| {
            let name = requirement
                .split(|c: char| !(c.is_ascii_alphanumeric() || "-_.".contains(c)))
                .next()
                .and_then(normalize_name);
            name.is_some_and(|name| {
                errors
                    .iter()
                    .any(|line| line.split(' ').any(|word| word == name))
            })
        })
        .collect();
    let shown: Vec<&String> = if named.is_empty() {
        requirements.iter().collect()
    } else {
        named
    };
    shown
        .iter()
        .map(|requirement| format!("{requirement:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The last lines of pip's output, within a byte budget.
fn tail(output: &str) -> String {
    let lines: Vec<&str> = output.trim_end().lines().collect();
    let start = lines.len().saturating_sub(OUTPUT_TAIL_LINES);
    let mut text = lines[start..].join("\n");
    if text.len() > OUTPUT_TAIL_BYTES {
        let mut cut = text.len() - OUTPUT_TAIL_BYTES;
        while !text.is_char_boundary(cut) {
            cut += 1;
        }
        text = text[cut..].to_string();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_names_the_package_pip_could_not_install() {
        let output = "Looking in indexes: http://index.kb.test:8000/simple/\nERROR: Could not find a version that satisfies the requirement no-such_pkg (from versions: none)\nERROR: No matching distribution found for no-such_pkg\n";
        let requirements = vec!["kbdemo".to_string(), "No.Such-Pkg".to_string()];
        assert_eq!(named_in_errors(&requirements, output), r#""No.Such-Pkg""#);
        assert_eq!(
            named_in_errors(&requirements, "killed\n"),
            r#""kbdemo", "No.Such-Pkg""#
        );
    }

    #[test]
    fn the_tail_keeps_the_last_lines() {
        let output: String = (0..100).map(|n| format!("line {n}\n")).collect();
        let tail = tail(&output);
        assert!(
            tail.starts_with("line 80") && tail.ends_with("line 99"),
            "{tail}"
        );
    }
}
