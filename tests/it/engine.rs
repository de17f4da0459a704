//! The engine through its public API: execution, rich output, errors, streaming, files,
//! commands, isolation.

use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use futures::TryStreamExt;
use kernelbox::engine::Tenant;
use kernelbox::engine::commands::CommandRequest;
use kernelbox::engine::{EngineError, ExecEvent, ExecuteRequest, ExecutionOutcome, FileKind};

use crate::common::TestEngine;

#[tokio::test(flavor = "multi_thread")]
async fn state_persists_and_sandboxes_are_isolated() {
    let Some(t) = TestEngine::start("state").await else {
        return;
    };
    let (a, b) = tokio::join!(t.sandbox(), t.sandbox());
    let first = t.run(&a, "print(6*7)").await;
    assert_eq!(first.stdout, "42\n");
    assert_eq!(first.outcome, ExecutionOutcome::Completed);
    t.run(&a, "x = 'kept'").await;
    assert_eq!(t.run(&a, "print(x)").await.stdout, "kept\n");
    let other = t.run(&b, "print(x)").await;
    assert_eq!(
        other.error.as_ref().expect("NameError in b").ename,
        "NameError"
    );
    let result = t.run(&a, "1+1").await;
    assert_eq!(result.result_text(), Some("2"));
    assert!(result.execution_count.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn history_works_in_memory_and_nothing_is_written_to_disk() {
    let Some(t) = TestEngine::start("history").await else {
        return;
    };
    let id = t.sandbox().await;
    t.run(&id, "x = 'remembered'").await;
    let shown = t
        .run(
            &id,
            "import glob, os\n\
             h = get_ipython().history_manager\n\
             print(h.hist_file)\n\
             print([source for _, _, source in h.get_range()][-2])\n\
             print(In[-2])\n\
             print(glob.glob(os.path.expanduser('~/.ipython/profile_*/history.sqlite*')))",
        )
        .await;
    assert_eq!(shown.outcome, ExecutionOutcome::Completed, "{shown:?}");
    assert_eq!(
        shown.stdout, ":memory:\nx = 'remembered'\nx = 'remembered'\n[]\n",
        "{shown:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn matplotlib_plot_gives_a_png() {
    let Some(t) = TestEngine::start("plot").await else {
        return;
    };
    let id = t.sandbox().await;
    let result = t
        .run(
            &id,
            "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.show()",
        )
        .await;
    assert_eq!(result.outcome, ExecutionOutcome::Completed, "{result:?}");
    let png = result
        .outputs
        .iter()
        .find_map(|output| output.data.get("image/png"))
        .and_then(|png| png.as_str())
        .expect("an image/png output");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(png.trim())
        .expect("base64 PNG");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn exceptions_are_reported_and_the_sandbox_stays_usable() {
    let Some(t) = TestEngine::start("error").await else {
        return;
    };
    let id = t.sandbox().await;
    let result = t.run(&id, "1/0").await;
    assert_eq!(result.outcome, ExecutionOutcome::Failed);
    let error = result.error.as_ref().expect("an error");
    assert_eq!(error.ename, "ZeroDivisionError");
    assert!(
        error
            .traceback
            .iter()
            .any(|line| line.contains("ZeroDivisionError"))
    );
    assert!(
        error.traceback.iter().all(|line| !line.contains('\u{1b}')),
        "ANSI codes stripped"
    );
    assert_eq!(t.run(&id, "print('fine')").await.stdout, "fine\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn output_streams_while_the_code_runs() {
    let Some(t) = TestEngine::start("stream").await else {
        return;
    };
    let id = t.sandbox().await;
    let started = Instant::now();
    let mut stream = t
        .engine
        .execute(
            &id,
            &Tenant::Local,
            ExecuteRequest {
                code: "import time\nfor i in range(3):\n    print(i)\n    time.sleep(1)".into(),
                timeout: None,
            },
        )
        .await
        .expect("start");
    let first = stream.next().await.expect("an event");
    let first_at = started.elapsed();
    assert!(
        matches!(first, ExecEvent::Stdout { ref text } if text == "0\n"),
        "{first:?}"
    );
    let mut finished = None;
    while let Some(event) = stream.next().await {
        if let ExecEvent::Finished(result) = event {
            finished = Some(result);
        }
    }
    let total = started.elapsed();
    let result = finished.expect("finished event");
    assert_eq!(result.stdout, "0\n1\n2\n");
    assert!(total >= Duration::from_secs(2));
    assert!(
        first_at < Duration::from_millis(1000),
        "first event after {first_at:?}, total {total:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn second_execution_while_busy_is_refused() {
    let Some(t) = TestEngine::start("busy").await else {
        return;
    };
    let id = t.sandbox().await;
    let running = t
        .engine
        .execute(
            &id,
            &Tenant::Local,
            ExecuteRequest {
                code: "import time; time.sleep(2)".into(),
                timeout: None,
            },
        )
        .await
        .expect("start");
    let second = t
        .engine
        .execute(
            &id,
            &Tenant::Local,
            ExecuteRequest {
                code: "1".into(),
                timeout: None,
            },
        )
        .await;
    assert!(matches!(second, Err(EngineError::Busy { .. })));
    running.finish().await.expect("first finishes");
    assert_eq!(t.run(&id, "print(3)").await.stdout, "3\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn files_round_trip_and_stay_in_the_workspace() {
    let Some(t) = TestEngine::start("files").await else {
        return;
    };
    let id = t.sandbox().await;
    let e = &t.engine;
    let binary: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let written = e
        .write_file(
            &id,
            &Tenant::Local,
            "data/blob.bin",
            Bytes::from(binary.clone()),
        )
        .await
        .expect("write");
    assert_eq!(written, "/workspace/data/blob.bin");
    assert_eq!(
        e.read_file(&id, &Tenant::Local, "/workspace/data/blob.bin", 1 << 30)
            .await
            .expect("read"),
        binary
    );
    let seen = t
        .run(
            &id,
            "import os; print(os.path.getsize('data/blob.bin'), os.stat('data/blob.bin').st_uid)",
        )
        .await;
    assert_eq!(seen.stdout, "70000 1000\n");

    let listing = e
        .list_files(&id, &Tenant::Local, "data")
        .await
        .expect("list");
    assert_eq!(listing.len(), 1);
    assert_eq!(listing[0].name, "blob.bin");
    assert_eq!(listing[0].kind, FileKind::File);
    assert_eq!(listing[0].size, 70_000);

    e.delete_path(&id, &Tenant::Local, "data/blob.bin")
        .await
        .expect("delete");
    assert!(matches!(
        e.read_file(&id, &Tenant::Local, "data/blob.bin", 1 << 30)
            .await,
        Err(EngineError::PathNotFound { .. })
    ));
    assert!(matches!(
        e.delete_path(&id, &Tenant::Local, "data/blob.bin").await,
        Err(EngineError::PathNotFound { .. })
    ));

    // Outside the workspace, lexically and through a symlink.
    for path in ["../x", "/etc/passwd", "a/../../etc/passwd"] {
        let error = e
            .read_file(&id, &Tenant::Local, path, 1 << 30)
            .await
            .expect_err(path);
        assert!(
            matches!(error, EngineError::PathOutsideWorkspace { .. }),
            "{path}: {error:?}"
        );
        let error = e
            .write_file(&id, &Tenant::Local, path, Bytes::from_static(b"x"))
            .await
            .expect_err(path);
        assert!(
            matches!(error, EngineError::PathOutsideWorkspace { .. }),
            "{path}: {error:?}"
        );
    }
    t.run(&id, "import os; os.symlink('/etc', 'etc_link')")
        .await;
    let error = e
        .read_file(&id, &Tenant::Local, "etc_link/passwd", 1 << 30)
        .await
        .expect_err("symlink escape");
    assert!(
        matches!(error, EngineError::PathOutsideWorkspace { .. }),
        "{error:?}"
    );
    let error = e
        .write_file(
            &id,
            &Tenant::Local,
            "etc_link/evil",
            Bytes::from_static(b"x"),
        )
        .await
        .expect_err("symlink escape");
    assert!(
        matches!(error, EngineError::PathOutsideWorkspace { .. }),
        "{error:?}"
    );
    // Deleting the link removes the link, never its target.
    e.delete_path(&id, &Tenant::Local, "etc_link")
        .await
        .expect("delete link");
    assert_eq!(
        t.run(&id, "import os; print(os.path.exists('/etc/passwd'))")
            .await
            .stdout,
        "True\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn directories_round_trip_as_tar() {
    let Some(t) = TestEngine::start("tree").await else {
        return;
    };
    let (a, b) = tokio::join!(t.sandbox(), t.sandbox());
    let e = &t.engine;
    t.run(
        &a,
        "import os\nos.makedirs('tree/sub/deeper')\nopen('tree/top.txt','w').write('top')\nopen('tree/sub/deeper/bin','wb').write(bytes(range(256))*10)",
    )
    .await;
    let tar: Vec<u8> = e
        .download_tree(&a, &Tenant::Local, "tree")
        .await
        .expect("download")
        .try_fold(Vec::new(), |mut all, chunk| async move {
            all.extend_from_slice(&chunk);
            Ok(all)
        })
        .await
        .expect("tar bytes");
    let upload: kernelbox::backend::ByteStream =
        Box::pin(futures::stream::once(async move { Ok(Bytes::from(tar)) }));
    e.upload_tree(&b, &Tenant::Local, "copy", upload)
        .await
        .expect("upload");
    let check = t
        .run(
            &b,
            "print(open('copy/tree/top.txt').read(), open('copy/tree/sub/deeper/bin','rb').read() == bytes(range(256))*10, os.stat('copy/tree/top.txt').st_uid) if (os := __import__('os')) else None",
        )
        .await;
    assert_eq!(check.stdout, "top True 1000\n", "{check:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_archives_write_nothing_outside() {
    let Some(t) = TestEngine::start("hostile").await else {
        return;
    };
    let id = t.sandbox().await;
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Symlink);
    header.set_size(0);
    builder.append_link(&mut header, "root", "/").expect("link");
    let mut header = tar::Header::new_gnu();
    header.set_size(4);
    header.set_mode(0o644);
    builder
        .append_data(&mut header, "root/tmp/pwned", &b"evil"[..])
        .expect("file");
    let archive = builder.into_inner().expect("archive");
    let upload: kernelbox::backend::ByteStream =
        Box::pin(futures::stream::once(
            async move { Ok(Bytes::from(archive)) },
        ));
    let error = t
        .engine
        .upload_tree(&id, &Tenant::Local, "in", upload)
        .await
        .expect_err("refused");
    assert!(
        matches!(
            error,
            EngineError::InvalidInput {
                field: "archive",
                ..
            }
        ),
        "{error:?}"
    );
    let check = t
        .run(
            &id,
            "import os; print(os.path.exists('/tmp/pwned'), os.path.lexists('in/root'))",
        )
        .await;
    assert_eq!(check.stdout, "False False\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn shell_commands_report_output_and_exit_code() {
    let Some(t) = TestEngine::start("command").await else {
        return;
    };
    let id = t.sandbox().await;
    let result = t
        .engine
        .run_command(
            &id,
            &Tenant::Local,
            CommandRequest {
                command: "echo out; echo err >&2; pwd; whoami; exit 3".into(),
                ..Default::default()
            },
        )
        .await
        .expect("command");
    assert_eq!(result.stdout, "out\n/workspace\nsandbox\n");
    assert_eq!(result.stderr, "err\n");
    assert_eq!(result.exit_code, 3);
    assert!(!result.timed_out);

    let slow = t
        .engine
        .run_command(
            &id,
            &Tenant::Local,
            CommandRequest {
                command: "sleep 30".into(),
                timeout: Some(Duration::from_secs(1)),
                ..Default::default()
            },
        )
        .await
        .expect("command");
    assert!(slow.timed_out, "{slow:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn timeout_interrupts_and_keeps_state() {
    let Some(t) = TestEngine::start("timeout").await else {
        return;
    };
    let id = t.sandbox().await;
    t.run(&id, "kept = 41").await;
    let started = Instant::now();
    let result = t
        .engine
        .execute(
            &id,
            &Tenant::Local,
            ExecuteRequest {
                code: "while True: pass".into(),
                timeout: Some(Duration::from_secs(2)),
            },
        )
        .await
        .expect("start")
        .finish()
        .await
        .expect("result");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        result.outcome,
        ExecutionOutcome::Timeout {
            kernel_restarted: false
        }
    );
    assert_eq!(
        result.error.as_ref().expect("timeout error").ename,
        "TimeoutError"
    );
    assert_eq!(t.run(&id, "print(kept + 1)").await.stdout, "42\n");
}

/// A cancel sent the moment an execution starts may reach the kernel before the kernel has
/// begun the code, when ipykernel ignores SIGINT; the interrupt must still stop the code and
/// keep the state, not run into the grace and restart the kernel.
#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_right_after_the_start_interrupts_and_keeps_state() {
    let Some(t) = TestEngine::start("early-cancel").await else {
        return;
    };
    let id = t.sandbox().await;
    t.run(&id, "kept = 41").await;
    for round in 0..30 {
        let started = Instant::now();
        let stream = t
            .engine
            .execute(
                &id,
                &Tenant::Local,
                ExecuteRequest {
                    code: "import time\nwhile True:\n    time.sleep(0.01)".into(),
                    timeout: None,
                },
            )
            .await
            .expect("start");
        let record = t
            .engine
            .cancel_execution(&stream.execution_id, &Tenant::Local)
            .await
            .expect("cancel");
        let result = record.result.expect("ended");
        assert_eq!(
            result.outcome,
            ExecutionOutcome::Cancelled {
                kernel_restarted: false
            },
            "round {round}, after {:?}: {result:?}",
            started.elapsed()
        );
    }
    assert_eq!(t.run(&id, "print(kept + 1)").await.stdout, "42\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_sandbox_is_not_found() {
    let Some(t) = TestEngine::start("unknown").await else {
        return;
    };
    let error = t
        .engine
        .execute(
            "sbx_doesnotexist",
            &Tenant::Local,
            ExecuteRequest {
                code: "1".into(),
                timeout: None,
            },
        )
        .await
        .err()
        .expect("error");
    assert!(matches!(error, EngineError::NotFound { .. }));
    assert!(matches!(
        t.engine.destroy("sbx_doesnotexist", &Tenant::Local).await,
        Err(EngineError::NotFound { .. })
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn destroy_removes_the_container() {
    let Some(t) = TestEngine::start("destroy").await else {
        return;
    };
    let id = t.sandbox().await;
    assert_eq!(t.engine.list(&Tenant::Local).len(), 1);
    t.engine
        .destroy(&id, &Tenant::Local)
        .await
        .expect("destroy");
    assert!(t.engine.list(&Tenant::Local).is_empty());
    let left = std::process::Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=io.kernelbox.id={id}"),
        ])
        .output()
        .expect("docker ps");
    assert!(
        String::from_utf8_lossy(&left.stdout).trim().is_empty(),
        "container left for {id}"
    );
    let _ = t.instance();
}
