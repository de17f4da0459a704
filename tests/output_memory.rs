//! Output caps bound the server's memory: 100 MB printed by the kernel, a 50 MB traceback and a
//! 50 MB result are cut with a note, and the process's peak RSS grows by less than twice the
//! cap. A binary of its own, and one test, so no other allocations blur the measurement.

#[path = "it/common.rs"]
#[allow(dead_code)]
mod common;

use std::time::Duration;

use kernelbox::engine::Tenant;
use kernelbox::engine::{ExecuteRequest, ExecutionOutcome};

const CAP: usize = 4 * 1024 * 1024;
const RICH_CAP: usize = 16 * 1024 * 1024;

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .expect("/proc/self/status")
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("an RSS field")
}

#[tokio::test(flavor = "multi_thread")]
async fn hundred_megabytes_of_output_are_capped() {
    let Some(t) = common::TestEngine::start_with("output-cap", |config| {
        config.output_limit_bytes = CAP;
        config.rich_output_limit_bytes = RICH_CAP;
    })
    .await
    else {
        return;
    };
    let id = t.sandbox().await;
    t.run(&id, "print('warm')").await;
    // Reset the peak-RSS counter, then measure the peak during the flood.
    std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM");
    let before = rss_kib("VmRSS:");
    let result = t
        .engine
        .execute(&id, &Tenant::Local,
            ExecuteRequest {
                code: "import sys\nline = 'y' * 1023 + '\\n'\nfor _ in range(100 * 1024):\n    sys.stdout.write(line)".into(),
                timeout: Some(Duration::from_secs(120)),
            },
        )
        .await
        .expect("start")
        .finish()
        .await
        .expect("result");
    let growth_kib = rss_kib("VmHWM:").saturating_sub(before);
    assert_eq!(result.outcome, ExecutionOutcome::Completed);
    assert!(result.truncated);
    assert!(
        result.stdout.contains("[kernelbox: output truncated"),
        "marker missing"
    );
    assert!(result.stdout.len() < CAP + 200);
    eprintln!(
        "peak RSS growth during 100 MB of output: {growth_kib} KiB (cap {} KiB)",
        CAP / 1024
    );
    assert!(
        growth_kib < 2 * CAP as u64 / 1024,
        "RSS grew {growth_kib} KiB"
    );
    assert_eq!(
        t.run(&id, "print('still here')").await.stdout,
        "still here\n"
    );

    // A 50 MB traceback and a 50 MB result: cut to fit, the kernel (and its state) kept.
    t.run(&id, "state = 'kept'").await;
    for (what, code, cap) in [
        (
            "a 50 MB traceback",
            "raise ValueError('e' * 50_000_000)",
            CAP,
        ),
        ("a 50 MB result", "'v' * 50_000_000", RICH_CAP),
        (
            "a 50 MB nested result",
            "from IPython.display import JSON\nJSON({'rows': ['w' * 1000] * 50_000})",
            RICH_CAP,
        ),
    ] {
        std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM");
        let before = rss_kib("VmRSS:");
        let result = t
            .engine
            .execute(
                &id,
                &Tenant::Local,
                ExecuteRequest {
                    code: code.into(),
                    timeout: Some(Duration::from_secs(120)),
                },
            )
            .await
            .expect("start")
            .finish()
            .await
            .expect("result");
        let growth_kib = rss_kib("VmHWM:").saturating_sub(before);
        let kept = result.stdout.len()
            + result.stderr.len()
            + result.error.as_ref().map_or(0, |error| {
                error.ename.len()
                    + error.evalue.len()
                    + error.traceback.iter().map(String::len).sum::<usize>()
            });
        let rich = serde_json::to_string(&result.outputs)
            .expect("outputs")
            .len();
        eprintln!(
            "{what}: peak RSS growth {growth_kib} KiB, kept {kept} B of text and {rich} B of results"
        );
        assert!(kept <= CAP + 4096, "{what}: kept {kept} bytes of text");
        assert!(
            rich <= RICH_CAP + 4096,
            "{what}: kept {rich} bytes of results"
        );
        assert!(
            growth_kib < 2 * cap as u64 / 1024,
            "{what}: RSS grew {growth_kib} KiB against a cap of {} KiB",
            cap / 1024
        );
        let cut_noted = result.truncated
            || result
                .error
                .as_ref()
                .is_some_and(|error| error.traceback.iter().any(|l| l.contains("kernelbox")))
            || serde_json::to_string(&result.outputs)
                .is_ok_and(|outputs| outputs.contains("kernelbox"));
        assert!(cut_noted, "{what}: nothing says the output was cut");
        assert_eq!(
            t.run(&id, "print(state)").await.stdout,
            "kept\n",
            "{what}: the kernel lost its state"
        );
    }
}
