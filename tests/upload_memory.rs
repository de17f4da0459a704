//! Uploads stream: a 1 GiB file goes through the real `kernelbox serve` process while its peak
//! RSS stays under 100 MB, and comes out intact. The server is its own process, so its RSS
//! (read from /proc) is its own; the client generates the body as a stream, never whole.

#[path = "it/common.rs"]
#[allow(dead_code)]
mod common;

use std::time::Instant;

use bytes::Bytes;
use sha2::{Digest, Sha256};

const CHUNK: usize = 1024 * 1024;
const CHUNKS: usize = 1024;
const RSS_LIMIT_KIB: u64 = 100 * 1000;

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("/proc/<pid>/status")
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("an RSS field")
}

/// One pseudo-random MiB; the body is this chunk 1024 times, each with its index in front so
/// no two chunks are equal.
fn chunk(index: usize, base: &Bytes) -> Bytes {
    let mut chunk = base.to_vec();
    chunk[..8].copy_from_slice(&(index as u64).to_le_bytes());
    Bytes::from(chunk)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gibibyte_upload_keeps_the_server_small() {
    if std::process::Command::new("docker")
        .arg("version")
        .output()
        .map(|output| !output.status.success())
        .unwrap_or(true)
    {
        assert!(!common::docker_required(), "Docker is required under CI");
        eprintln!("skipping: Docker unreachable");
        return;
    }
    common::ensure_image(&common::sandbox_image());
    let instance = format!(
        "test-upload-mem-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let _cleanup = Cleanup(instance.clone());
    let (mut server, port) = common::start_server(&instance, &["--destroy-on-exit"]).await;
    let pid = server.id().expect("server pid");

    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let created: serde_json::Value = http
        .post(format!("{base}/containers"))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("created");
    let id = created["id"].as_str().expect("id").to_string();
    let before_kib = status_kib(pid, "VmRSS:");

    let seed = Bytes::from(
        (0..CHUNK)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect::<Vec<u8>>(),
    );
    let mut expected = Sha256::new();
    for index in 0..CHUNKS {
        expected.update(chunk(index, &seed));
    }
    let expected = hex::encode(expected.finalize());
    let body = futures::stream::iter(
        (0..CHUNKS).map(move |index| Ok::<_, std::io::Error>(chunk(index, &seed))),
    );
    let part =
        reqwest::multipart::Part::stream(reqwest::Body::wrap_stream(body)).file_name("big.bin");
    let started = Instant::now();
    let response = http
        .post(format!("{base}/containers/{id}/files/big"))
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await
        .expect("upload");
    let elapsed = started.elapsed();
    let status = response.status();
    let uploaded: serde_json::Value = response.json().await.expect("upload answer");
    assert_eq!(status, reqwest::StatusCode::CREATED, "{uploaded}");
    assert_eq!(uploaded["size"], (CHUNK * CHUNKS) as u64);
    let peak_kib = status_kib(pid, "VmHWM:");
    let mib_per_s = (CHUNK * CHUNKS) as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64();
    eprintln!(
        "1 GiB upload: {:.1} s ({mib_per_s:.0} MiB/s); server RSS {before_kib} KiB before, peak {peak_kib} KiB",
        elapsed.as_secs_f64()
    );
    assert!(
        peak_kib < RSS_LIMIT_KIB,
        "server peak RSS {peak_kib} KiB during a 1 GiB upload"
    );

    // The file is whole: same size and digest inside the container.
    let digest: serde_json::Value = http
        .post(format!("{base}/containers/{id}/commands"))
        .json(&serde_json::json!({"cmd": "sha256sum big/big.bin | cut -d' ' -f1; stat -c %s big/big.bin; stat -c %U big/big.bin"}))
        .send()
        .await
        .expect("digest")
        .json()
        .await
        .expect("digest answer");
    assert_eq!(
        digest["stdout"],
        format!("{expected}\n{}\nsandbox\n", CHUNK * CHUNKS),
        "{digest}"
    );

    // And it streams back down without growing the server either.
    let started = Instant::now();
    let response = http
        .get(format!("{base}/containers/{id}/files/big/big.bin"))
        .send()
        .await
        .expect("download");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let mut body = response.bytes_stream();
    let mut downloaded = Sha256::new();
    let mut size = 0usize;
    while let Some(piece) = futures::StreamExt::next(&mut body).await {
        let piece = piece.expect("download chunk");
        size += piece.len();
        downloaded.update(&piece);
    }
    let down_elapsed = started.elapsed();
    assert_eq!(size, CHUNK * CHUNKS);
    assert_eq!(hex::encode(downloaded.finalize()), expected);
    let peak_kib = status_kib(pid, "VmHWM:");
    eprintln!(
        "1 GiB download: {:.1} s; server peak RSS {peak_kib} KiB",
        down_elapsed.as_secs_f64()
    );
    assert!(
        peak_kib < RSS_LIMIT_KIB,
        "server peak RSS {peak_kib} KiB after a 1 GiB download"
    );

    let deleted = http
        .delete(format!("{base}/containers/{id}"))
        .send()
        .await
        .expect("destroy");
    assert_eq!(deleted.status(), reqwest::StatusCode::NO_CONTENT);
    let _ = server.kill().await;
}

/// Removes the instance's containers even when the test fails.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        common::remove_instance_containers(&self.0);
    }
}
