//! Building the sandbox image for Docker: offline (debootstrap + `docker import`, for hosts without a
//! registry) or from `docker/Dockerfile` (for hosts that can pull `debian:bookworm-slim`).
//! The build files are compiled into the binary, so `kernelbox image build` works anywhere.

use std::path::Path;
use std::process::Stdio;

use tokio::process::Command;

/// The build files, embedded.
const BUILD_FILES: &[(&str, &str)] = &[
    (
        "build-offline.sh",
        include_str!("../../../docker/build-offline.sh"),
    ),
    ("provision.sh", include_str!("../../../docker/provision.sh")),
    ("Dockerfile", include_str!("../../../docker/Dockerfile")),
    (
        "IMAGE_VERSION",
        include_str!("../../../docker/IMAGE_VERSION"),
    ),
];

/// The base image `docker build` starts from, unless `KERNELBOX_BASE_IMAGE` names another (a
/// registry mirror, say).
pub const DEFAULT_BASE_IMAGE: &str = "debian:bookworm-slim";

/// How long `docker image inspect` of the base image may take.
const INSPECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Image build failures. Each names what to run to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("could not stage the build files")]
    Stage(#[source] std::io::Error),
    #[error("could not run `{program}`; is it installed?")]
    Spawn {
        program: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the image build failed (exit status {status}); see the output above")]
    Failed { status: i32 },
    #[error(
        "debootstrap is not installed, and the offline image build needs it: run `apt-get install debootstrap`, then `{command}`"
    )]
    NoDebootstrap { command: String },
    #[error(
        "the offline image build must run as root (debootstrap and chroot need it): run `sudo {command}`"
    )]
    NotRoot { command: String },
    #[error(
        "the image build needs the base image {base}, which is not on this host, and Docker could not pull it (no registry reachable?); {fix}"
    )]
    BaseImageUnavailable { base: String, fix: String },
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|uids| uids.split_whitespace().next().map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}

fn has_debootstrap() -> bool {
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join("debootstrap").is_file()))
        .unwrap_or(false)
}

/// Whether this host can build offline: root with debootstrap installed.
pub fn can_build_offline() -> bool {
    is_root() && has_debootstrap()
}

/// The command that builds `image` offline.
fn offline_command(image: &str) -> String {
    if image == crate::config::DEFAULT_IMAGE {
        "kernelbox image build --offline".into()
    } else {
        format!("kernelbox image build --offline --image {image}")
    }
}

/// What to run to build `image` without a registry, from where this host stands.
fn offline_fix(image: &str) -> String {
    let command = offline_command(image);
    match (is_root(), has_debootstrap()) {
        (true, true) => format!("build offline instead: `{command}`"),
        (true, false) => {
            format!("build offline instead: `apt-get install debootstrap`, then `{command}`")
        }
        (false, true) => format!("build offline instead, as root: `sudo {command}`"),
        (false, false) => format!(
            "build offline instead, as root: `sudo apt-get install debootstrap`, then `sudo {command}`"
        ),
    }
}

/// The base image for `docker build`.
fn base_image() -> String {
    std::env::var(crate::config::EnvVars::BASE_IMAGE)
        .ok()
        .filter(|base| !base.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_BASE_IMAGE.to_string())
}

/// Whether Docker has `image` locally (`None`: it did not say, in time).
async fn image_present(image: &str) -> Option<bool> {
    let inspect = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", image])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .status();
    match tokio::time::timeout(INSPECT_TIMEOUT, inspect).await {
        Ok(Ok(status)) => Some(status.success()),
        _ => None,
    }
}

/// Builds `image`. Progress goes to stderr (stdout may be an MCP channel): the build's own step
/// lines, and kernelbox's with the time taken.
pub async fn build(image: &str, offline: bool) -> Result<(), ImageError> {
    if offline {
        let command = offline_command(image);
        if !has_debootstrap() {
            return Err(ImageError::NoDebootstrap { command });
        }
        if !is_root() {
            return Err(ImageError::NotRoot { command });
        }
    }
    let started = std::time::Instant::now();
    let how = if offline {
        "offline (debootstrap + docker import)".to_string()
    } else {
        format!("with `docker build` from {}", base_image())
    };
    eprintln!("kernelbox: building the sandbox image {image} {how}");
    let dir = tempfile_dir().map_err(ImageError::Stage)?;
    let result = build_in(dir.as_path(), image, offline).await;
    let _ = std::fs::remove_dir_all(&dir);
    let result = match result {
        Err(ImageError::Failed { status }) if !offline => {
            let base = base_image();
            match image_present(&base).await {
                Some(false) => Err(ImageError::BaseImageUnavailable {
                    base,
                    fix: format!(
                        "{}, or load {} into Docker (`docker load`) or set {} to an image you can pull",
                        offline_fix(image),
                        DEFAULT_BASE_IMAGE,
                        crate::config::EnvVars::BASE_IMAGE
                    ),
                }),
                _ => Err(ImageError::Failed { status }),
            }
        }
        other => other,
    };
    if result.is_ok() {
        eprintln!(
            "kernelbox: built {image} in {} s",
            started.elapsed().as_secs()
        );
    }
    result
}

async fn build_in(dir: &Path, image: &str, offline: bool) -> Result<(), ImageError> {
    for (name, content) in BUILD_FILES {
        std::fs::write(dir.join(name), content).map_err(ImageError::Stage)?;
    }
    let version = crate::engine::lifecycle::IMAGE_VERSION.trim();
    let (program, mut command) = if offline {
        let mut command = Command::new("bash");
        command.arg(dir.join("build-offline.sh")).arg(image);
        ("bash", command)
    } else {
        let mut command = Command::new("docker");
        command
            .args(["build", "--build-arg"])
            .arg(format!("IMAGE_VERSION={version}"))
            .arg("--build-arg")
            .arg(format!("BASE_IMAGE={}", base_image()))
            .args(["-t", image])
            .arg(dir);
        ("docker", command)
    };
    // Both streams go to our stderr.
    let stderr = std::io::stderr().as_fd_owned().map_err(ImageError::Stage)?;
    command
        .stdout(Stdio::from(stderr))
        .stderr(Stdio::inherit())
        .stdin(Stdio::null());
    let status = command
        .status()
        .await
        .map_err(|source| ImageError::Spawn { program, source })?;
    if status.success() {
        Ok(())
    } else {
        Err(ImageError::Failed {
            status: status.code().unwrap_or(-1),
        })
    }
}

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let dir =
        std::env::temp_dir().join(format!("kernelbox-image-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

trait AsFdOwned {
    fn as_fd_owned(&self) -> std::io::Result<std::os::fd::OwnedFd>;
}

impl AsFdOwned for std::io::Stderr {
    fn as_fd_owned(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd;
        self.as_fd().try_clone_to_owned()
    }
}
