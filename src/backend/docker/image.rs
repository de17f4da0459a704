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

/// Image build failures.
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
}

/// Whether this host can build offline: root with debootstrap installed.
pub fn can_build_offline() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|uids| uids.split_whitespace().next().map(|uid| uid == "0"))
        })
        .unwrap_or(false);
    let debootstrap = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join("debootstrap").is_file()))
        .unwrap_or(false);
    root && debootstrap
}

/// Builds `image`. Progress goes to stderr (stdout may be an MCP channel).
pub async fn build(image: &str, offline: bool) -> Result<(), ImageError> {
    let dir = tempfile_dir().map_err(ImageError::Stage)?;
    let result = build_in(dir.as_path(), image, offline).await;
    let _ = std::fs::remove_dir_all(&dir);
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
