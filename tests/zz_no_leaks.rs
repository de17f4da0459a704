//! Runs after the other test binaries (cargo runs them in name order): no container with
//! kernelbox labels may be left behind.

use std::process::Command;

#[test]
fn no_kernelbox_container_is_left() {
    let listed = match Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            "label=io.kernelbox.id",
            "--format",
            "{{.Names}} {{.Label \"io.kernelbox.instance\"}}",
        ])
        .output()
    {
        Ok(listed) if listed.status.success() => listed,
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("Docker is required under CI=true")
        }
        _ => return,
    };
    let left = String::from_utf8_lossy(&listed.stdout);
    let test_containers: Vec<&str> = left
        .lines()
        .filter(|line| line.contains(" test-"))
        .collect();
    assert!(
        test_containers.is_empty(),
        "containers left behind: {test_containers:?}"
    );
}
