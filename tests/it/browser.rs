//! `/redoc` and `/docs` in a real headless browser (Chromium from Debian's packages): the page
//! shows the API's title and every operation's summary from `/openapi.json`, the browser logs no
//! console error (a Content-Security-Policy violation would be one), and a screenshot is a
//! real picture. Skipped without `chromium` outside CI; under `CI=true` a missing one fails.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::common::{TestServer, docker_required};

/// The browser: `KERNELBOX_CHROMIUM`, else `chromium` on PATH.
fn chromium() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("KERNELBOX_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("chromium"))
            .find(|candidate| candidate.is_file())
    })
}

/// Runs headless Chromium on `url` with `mode` (`--dump-dom` or `--screenshot=…`): its stdout
/// and its log (stderr, where console messages go).
async fn run_browser(browser: &Path, url: &str, mode: &str) -> (String, String) {
    let profile = tempfile::tempdir().expect("profile directory");
    let output = tokio::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1280,1600",
            // Virtual time runs until the page is idle (the spec fetched, ReDoc rendered) or
            // this budget passes: no wall-clock sleep.
            "--virtual-time-budget=30000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(mode)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(180), output)
        .await
        .expect("chromium finishes within 3 minutes")
        .expect("run chromium");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "chromium {mode} {url}: {stderr}");
    (stdout, stderr)
}

/// Console errors and policy violations in Chromium's log.
fn console_problems(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|line| {
            line.contains("Content Security Policy")
                || line.contains("Refused to")
                || (line.contains(":CONSOLE") && line.contains("ERROR"))
                || line.contains("Uncaught")
        })
        .collect()
}

/// The text of an HTML document: tags dropped, the common entities decoded.
fn text_of(html: &str) -> String {
    let mut text = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&#39;", "'")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

/// Every operation's summary in the OpenAPI document.
fn summaries(document: &Value) -> Vec<String> {
    let mut found = Vec::new();
    for item in document["paths"].as_object().expect("paths").values() {
        for operation in item.as_object().expect("path item").values() {
            if let Some(summary) = operation["summary"].as_str() {
                found.push(summary.trim().to_string());
            }
        }
    }
    found
}

/// A PNG's width and height, from its IHDR chunk.
fn png_size(png: &[u8]) -> Option<(u32, u32)> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    if png.len() < 24 || !png.starts_with(SIGNATURE) || &png[12..16] != b"IHDR" {
        return None;
    }
    let word = |at: usize| u32::from_be_bytes([png[at], png[at + 1], png[at + 2], png[at + 3]]);
    Some((word(16), word(20)))
}

/// Takes a screenshot of `url` into the test's temporary directory and checks it is a real
/// picture: a PNG of the window's size, far larger than a blank page compresses to.
async fn screenshot(browser: &Path, url: &str, name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.png"));
    let _ = std::fs::remove_file(&path);
    let (_, log) = run_browser(browser, url, &format!("--screenshot={}", path.display())).await;
    let problems = console_problems(&log);
    assert!(problems.is_empty(), "{name}: {problems:#?}");
    let png = std::fs::read(&path).expect("the screenshot was written");
    assert_eq!(
        png_size(&png),
        Some((1280, 1600)),
        "{name}: not a PNG of the window"
    );
    assert!(
        png.len() > 40_000,
        "{name}: {} bytes, a blank page?",
        png.len()
    );
    eprintln!(
        "{name}: screenshot {} ({} bytes)",
        path.display(),
        png.len()
    );
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn redoc_and_docs_render_the_api_in_a_real_browser() {
    let Some(browser) = chromium() else {
        assert!(
            !docker_required(),
            "chromium is required under CI=true (apt-get install chromium)"
        );
        eprintln!("skipping: no chromium");
        return;
    };
    let Some(server) = TestServer::start("browser", &[]).await else {
        return;
    };
    let document: Value = server
        .get("/openapi.json")
        .send()
        .await
        .expect("openapi.json")
        .json()
        .await
        .expect("the document");
    let title = document["info"]["title"]
        .as_str()
        .expect("title")
        .to_string();
    let summaries = summaries(&document);
    assert!(summaries.len() > 30, "{summaries:?}");

    // What the server sends: the page under a policy that admits only itself, the bundle from
    // this server with a long cache.
    let page = server.get("/redoc").send().await.expect("redoc");
    assert_eq!(page.status(), StatusCode::OK);
    let policy = page
        .headers()
        .get("content-security-policy")
        .and_then(|value| value.to_str().ok())
        .expect("a CSP")
        .to_string();
    assert!(policy.contains("default-src 'none'"), "{policy}");
    assert!(policy.contains("script-src 'self';"), "{policy}");
    assert!(!policy.contains("http"), "only this server: {policy}");
    let html = page.text().await.expect("page");
    assert!(
        !html.contains("http"),
        "the page names no other origin: {html}"
    );
    let bundle = server
        .get("/redoc/redoc.standalone.js")
        .send()
        .await
        .expect("bundle");
    assert_eq!(bundle.status(), StatusCode::OK);
    let cache = bundle
        .headers()
        .get("cache-control")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(cache.contains("max-age=31536000"), "{cache}");
    let script = bundle.text().await.expect("bundle");
    assert!(script.len() > 500_000 && !script.contains("cdn.redoc.ly"));
    let licenses = server
        .get("/redoc/redoc.standalone.js.LICENSE.txt")
        .send()
        .await
        .expect("licenses")
        .text()
        .await
        .expect("licenses");
    assert!(licenses.contains("MIT License"), "{licenses}");

    // ReDoc, rendered: the title and every operation's summary are on the page.
    let redoc = server.url("/redoc");
    let (dom, log) = run_browser(&browser, &redoc, "--dump-dom").await;
    let problems = console_problems(&log);
    assert!(problems.is_empty(), "/redoc: {problems:#?}");
    let text = text_of(&dom);
    assert!(
        dom.contains("<h1") && text.contains(&format!("{title} (")),
        "/redoc shows no title: {}",
        &text[..text.len().min(2000)]
    );
    let missing: Vec<&String> = summaries
        .iter()
        .filter(|summary| !text.contains(summary.as_str()))
        .collect();
    assert!(missing.is_empty(), "/redoc lacks operations: {missing:#?}");
    for operation in [
        "Whether a path exists, and what it is.",
        "Copy a file, or a directory with its whole tree, inside `/workspace`.",
        "Run a shell command and wait for it.",
    ] {
        assert!(text.contains(operation), "/redoc lacks {operation:?}");
    }
    screenshot(&browser, &redoc, "redoc").await;

    // /docs, the plain page, the same way.
    let docs = server.url("/docs");
    let (dom, log) = run_browser(&browser, &docs, "--dump-dom").await;
    let problems = console_problems(&log);
    assert!(problems.is_empty(), "/docs: {problems:#?}");
    let text = text_of(&dom);
    assert!(text.contains("kernelbox API"), "/docs: no title");
    let missing: Vec<&String> = summaries
        .iter()
        .filter(|summary| !text.contains(summary.as_str()))
        .collect();
    assert!(missing.is_empty(), "/docs lacks operations: {missing:#?}");
    screenshot(&browser, &docs, "docs").await;
}
