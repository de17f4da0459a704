//! Kernel connection info: the JSON file ipykernel reads, and the host-side endpoints.

use rand::RngCore;
use serde::{Deserialize, Serialize};

/// Ports the kernel listens on inside its container. They are fixed because each container has
/// its own network namespace; the host reaches them through published ports.
pub const CONTAINER_PORTS: KernelPorts = KernelPorts {
    shell: 50001,
    iopub: 50002,
    stdin: 50003,
    control: 50004,
    hb: 50005,
};

/// The five ports of a kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelPorts {
    pub shell: u16,
    pub iopub: u16,
    pub stdin: u16,
    pub control: u16,
    pub hb: u16,
}

impl KernelPorts {
    /// Every port, with its channel name.
    pub fn named(&self) -> [(&'static str, u16); 5] {
        [
            ("shell", self.shell),
            ("iopub", self.iopub),
            ("stdin", self.stdin),
            ("control", self.control),
            ("hb", self.hb),
        ]
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
    /// Connection info for a kernel in a container: listen on every interface, fixed ports and a
    /// fresh random 256-bit HMAC key.
    pub fn for_container() -> Self {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        Self::with_key(hex::encode(key))
    }

    /// Container connection info around an existing key (used when reattaching).
    pub fn with_key(key: String) -> Self {
        let ports = CONTAINER_PORTS;
        Self {
            ip: "0.0.0.0".into(),
            transport: "tcp".into(),
            shell_port: ports.shell,
            iopub_port: ports.iopub,
            stdin_port: ports.stdin,
            control_port: ports.control,
            hb_port: ports.hb,
            key,
            signature_scheme: "hmac-sha256".into(),
            kernel_name: "python3".into(),
        }
    }
}

/// Where the host reaches a kernel: an address, its five ports and the signing key.
#[derive(Debug, Clone)]
pub struct KernelEndpoint {
    pub host: String,
    pub ports: KernelPorts,
    pub key: String,
}

impl KernelEndpoint {
    pub(crate) fn url(&self, port: u16) -> String {
        format!("tcp://{}:{}", self.host, port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_and_256_bit() {
        let a = ConnectionInfo::for_container();
        let b = ConnectionInfo::for_container();
        assert_eq!(a.key.len(), 64);
        assert_ne!(a.key, b.key);
        assert_eq!(a.signature_scheme, "hmac-sha256");
    }
}
