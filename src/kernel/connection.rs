//! Kernel connection info: the JSON file ipykernel reads, and the channels a client opens.
//!
//! A kernel listens on ZeroMQ `ipc` sockets, unix sockets in its own sandbox's filesystem, and
//! on no network port at all: nothing outside the sandbox can connect to it except through the
//! container runtime, which only the server drives. Each sandbox has its own random HMAC key.

use rand::RngCore;
use serde::{Deserialize, Serialize};

/// Where a kernel's sockets live inside its sandbox: `{IPC_PREFIX}-1` (shell) to `-5` (hb).
pub const IPC_PREFIX: &str = "/run/kernelbox/kernel";

/// The channels a client talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelChannel {
    /// Requests and replies (ROUTER in the kernel).
    Shell,
    /// Output and status broadcasts (PUB in the kernel).
    IoPub,
    /// Interrupts and shutdowns, answered even while code runs (ROUTER in the kernel).
    Control,
}

impl KernelChannel {
    /// The channel's name in the Jupyter protocol.
    pub fn name(self) -> &'static str {
        match self {
            Self::Shell => "shell",
            Self::IoPub => "iopub",
            Self::Control => "control",
        }
    }

    /// The "port" ipykernel appends to the ipc prefix for this channel.
    fn port(self) -> u16 {
        match self {
            Self::Shell => 1,
            Self::IoPub => 2,
            Self::Control => 4,
        }
    }

    /// The path of the channel's unix socket inside the sandbox.
    pub fn socket_path(self) -> String {
        format!("{IPC_PREFIX}-{}", self.port())
    }
}

/// A Jupyter connection file, as ipykernel reads it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectionInfo {
    pub ip: String,
    pub transport: String,
    pub shell_port: u16,
    pub iopub_port: u16,
    pub stdin_port: u16,
    pub control_port: u16,
    pub hb_port: u16,
    pub key: String,
    pub signature_scheme: String,
    pub kernel_name: String,
}

impl ConnectionInfo {
    /// Connection info for a new sandbox: ipc sockets under [`IPC_PREFIX`] and a fresh random
    /// 256-bit HMAC key.
    pub fn for_sandbox() -> Self {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        Self::with_key(hex::encode(key))
    }

    /// The same around an existing key (used when reattaching).
    pub fn with_key(key: String) -> Self {
        Self {
            ip: IPC_PREFIX.into(),
            transport: "ipc".into(),
            shell_port: KernelChannel::Shell.port(),
            iopub_port: KernelChannel::IoPub.port(),
            stdin_port: 3,
            control_port: KernelChannel::Control.port(),
            hb_port: 5,
            key,
            signature_scheme: "hmac-sha256".into(),
            kernel_name: "python3".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_and_256_bit() {
        let a = ConnectionInfo::for_sandbox();
        let b = ConnectionInfo::for_sandbox();
        assert_eq!(a.key.len(), 64);
        assert_ne!(a.key, b.key);
        assert_eq!(a.signature_scheme, "hmac-sha256");
    }

    #[test]
    fn channels_live_where_the_connection_file_puts_them() {
        let info = ConnectionInfo::for_sandbox();
        assert_eq!(info.transport, "ipc");
        let path = |port: u16| format!("{}-{port}", info.ip);
        assert_eq!(KernelChannel::Shell.socket_path(), path(info.shell_port));
        assert_eq!(KernelChannel::IoPub.socket_path(), path(info.iopub_port));
        assert_eq!(
            KernelChannel::Control.socket_path(),
            path(info.control_port)
        );
    }
}
