//! A REST client for a running `kernelbox serve`: create a container, execute code, stream an
//! execution as Server-Sent Events, upload a file, download it and the workspace (tar.gz), run a
//! command, destroy the container.
//!
//! ```sh
//! cargo run -- serve &                       # in another terminal
//! cargo run --example rest_client            # KERNELBOX_URL, KERNELBOX_API_KEY if set
//! ```

use std::io::Read;

use anyhow::{Context, bail};
use futures::StreamExt;
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let base = std::env::var("KERNELBOX_URL").unwrap_or_else(|_| "http://127.0.0.1:8000".into());
    let mut headers = reqwest::header::HeaderMap::new();
    if let Ok(key) = std::env::var("KERNELBOX_API_KEY") {
        let first = key.split(',').next().unwrap_or_default().trim().to_string();
        headers.insert("x-api-key", first.parse()?);
    }
    let http = reqwest::Client::builder()
        .default_headers(headers)
        .build()?;

    // Create.
    let container: Value = checked(
        http.post(format!("{base}/containers"))
            .json(&json!({"tag": "example"}))
            .send()
            .await?,
    )
    .await?;
    let id = container["id"].as_str().context("no id")?.to_string();
    println!("created {id}");

    // Execute, whole result.
    let result: Value = checked(
        http.post(format!("{base}/containers/{id}/execute"))
            .json(&json!({"code": "import sys\nprint(sys.version.split()[0])\nsum(range(10))"}))
            .send()
            .await?,
    )
    .await?;
    println!(
        "execute: status={} text={:?}",
        result["status"], result["text"]
    );

    // Execute, streamed: events print as the kernel produces them.
    let response = http
        .post(format!("{base}/containers/{id}/execute/stream"))
        .json(&json!({"code": "import time\nfor i in range(3):\n    print('tick', i, flush=True)\n    time.sleep(0.5)"}))
        .send()
        .await?;
    if !response.status().is_success() {
        bail!("stream: {}", response.text().await?);
    }
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    'events: while let Some(chunk) = body.next().await {
        buffer.push_str(&String::from_utf8_lossy(&chunk?));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let name = field(&event, "event:");
            let data = field(&event, "data:");
            match name {
                "stdout" | "stderr" => {
                    let data: Value = serde_json::from_str(data)?;
                    print!("[{name}] {}", data["text"].as_str().unwrap_or_default());
                }
                "done" => {
                    let data: Value = serde_json::from_str(data)?;
                    println!("[done] status={}", data["status"]);
                    break 'events;
                }
                "" => {} // keep-alive comment
                other => println!("[{other}] {data}"),
            }
        }
    }

    // Upload a file (multipart, field `file`), then download it.
    let content = b"a,b\n1,2\n".to_vec();
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(content.clone()).file_name("data.csv"),
    );
    let uploaded: Value = checked(
        http.post(format!("{base}/containers/{id}/files/inputs"))
            .multipart(form)
            .send()
            .await?,
    )
    .await?;
    println!("uploaded {}", uploaded["path"]);
    let downloaded = http
        .get(format!("{base}/containers/{id}/files/inputs/data.csv"))
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    println!(
        "downloaded {} bytes, identical: {}",
        downloaded.len(),
        downloaded[..] == content[..]
    );

    // The whole workspace as tar.gz.
    let archive = http
        .get(format!("{base}/containers/{id}/directories"))
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    let mut entries = tar::Archive::new(flate2::read::GzDecoder::new(&archive[..]));
    for entry in entries.entries()? {
        let mut entry = entry?;
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes)?;
        println!(
            "  workspace: {} ({} bytes)",
            entry.path()?.display(),
            bytes.len()
        );
    }

    // A shell command.
    let command: Value = checked(
        http.post(format!("{base}/containers/{id}/commands"))
            .json(&json!({"cmd": "wc -l inputs/data.csv"}))
            .send()
            .await?,
    )
    .await?;
    println!(
        "command: exit={} stdout={:?}",
        command["exit_code"], command["stdout"]
    );

    // Destroy.
    http.delete(format!("{base}/containers/{id}"))
        .send()
        .await?
        .error_for_status()?;
    println!("destroyed {id}");
    Ok(())
}

/// The JSON body of a successful answer; the error shape's message otherwise.
async fn checked(response: reqwest::Response) -> anyhow::Result<Value> {
    let status = response.status();
    let body: Value = response.json().await?;
    if !status.is_success() {
        bail!("{status}: {}", body["error"]["message"]);
    }
    Ok(body)
}

/// The value of an SSE field in one event block.
fn field<'a>(event: &'a str, name: &str) -> &'a str {
    event
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .map(str::trim)
        .unwrap_or_default()
}
