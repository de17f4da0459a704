//! The steps a sandbox's creation reports as they happen, for the faces that stream them (MCP
//! progress notifications during `create_session`).

use tokio::sync::mpsc;

/// A step of a sandbox's creation, for the faces that stream (MCP progress notifications).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateProgress {
    /// The container runs; its kernel is starting.
    ContainerStarted,
    /// The kernel answers.
    KernelReady,
    /// pip is installing these requirements.
    Installing { requirements: Vec<String> },
    /// The dependencies are installed.
    Installed { duration_ms: u64 },
}

impl CreateProgress {
    /// A line for people.
    pub fn message(&self) -> String {
        match self {
            CreateProgress::ContainerStarted => "container started; starting the kernel".into(),
            CreateProgress::KernelReady => "kernel ready".into(),
            CreateProgress::Installing { requirements } => {
                format!("installing dependencies: {}", requirements.join(" "))
            }
            CreateProgress::Installed { duration_ms } => {
                format!("dependencies installed in {duration_ms} ms")
            }
        }
    }
}

/// Where a create reports its steps; sending never blocks nor fails the create.
pub(super) fn report(
    progress: Option<&mpsc::UnboundedSender<CreateProgress>>,
    step: CreateProgress,
) {
    if let Some(progress) = progress {
        let _ = progress.send(step);
    }
}
