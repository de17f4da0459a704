//! What runs inside the sandbox for a file operation: the helper program (`helper.py`), run as
//! the sandbox user with a root-owned interpreter, and the reading of its answers, which are
//! bounded and parsed as hostile (the helper runs with the same rights as the sandbox's code,
//! so that code could make it print anything).

use std::io;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use super::super::error::{EngineError, HelperFailure};
use super::super::paths::WORKSPACE;
use super::super::sandbox::Sandbox;
use crate::backend::{Backend, BackendError, ByteStream, ExecChunk, ExecSpec, SANDBOX_UID};

/// The helper's source, passed whole to `python3 -c`.
const HELPER: &str = include_str!("helper.py");
/// Root-owned in the image; named by its absolute path, so no PATH lookup happens.
const PYTHON: &str = "/usr/bin/python3";
/// Overrides for what the container's environment could carry into the exec (`-I` already
/// makes Python ignore every `PYTHON*` variable).
const HELPER_ENV: [&str; 6] = [
    "LD_PRELOAD=",
    "LD_LIBRARY_PATH=",
    "LD_AUDIT=",
    "PATH=/usr/bin:/bin",
    "LC_ALL=C.UTF-8",
    "HOME=/nonexistent",
];
/// The longest answer line accepted from the helper, except a listing's.
pub(super) const ANSWER_LIMIT: usize = 64 * 1024;
/// The longest listing accepted.
pub(super) const LISTING_LIMIT: usize = 16 * 1024 * 1024;
/// How much of the helper's stderr is kept for the log.
const STDERR_LIMIT: usize = 4096;
/// How long an operation that moves no bulk data may take in all.
pub(super) const OPERATION_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a transfer may go without the helper taking or giving a byte.
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How much of a message from the helper reaches a caller.
const MESSAGE_LIMIT: usize = 512;

/// Kind of a directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    File,
    Directory,
    Symlink,
    #[serde(other)]
    Other,
}

/// One entry of a directory listing.
#[derive(Debug, Clone, Serialize)]
pub struct FileEntry {
    pub name: String,
    /// Absolute path inside the sandbox.
    pub path: String,
    pub kind: FileKind,
    pub size: u64,
    /// Seconds since the Unix epoch.
    pub modified: f64,
}

/// A refusal the helper reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Refusal {
    Outside,
    NotFound,
    IsDir,
    NotDir,
    Denied,
    /// Something already has the name (a copy's or a move's destination, a file where a
    /// directory is to be made).
    Exists,
    Invalid,
    Interrupted,
    #[serde(other)]
    Io,
}

/// Which path of a copy or a move a refusal is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Side {
    Destination,
}

/// The helper's answer line: `{"ok": …}` or `{"error": kind, "message": text}`.
#[derive(Debug, Deserialize)]
struct Answer<T> {
    ok: Option<T>,
    error: Option<Refusal>,
    #[serde(default)]
    message: String,
    /// The archive entry refused, when it was one.
    #[serde(default)]
    entry: Option<String>,
    /// The destination of a copy or a move was refused, not its source.
    #[serde(default)]
    side: Option<Side>,
}

/// A refusal with the helper's message, cut and stripped of control characters.
#[derive(Debug)]
pub(super) struct Refused {
    pub(super) kind: Refusal,
    pub(super) message: String,
    /// The archive entry refused (cleaned like the message), when it was one.
    pub(super) entry: Option<String>,
    pub(super) side: Option<Side>,
}

impl Refused {
    /// The engine error for a refusal about the caller's `path`.
    pub(super) fn into_error(self, path: &str) -> EngineError {
        let path = path.to_string();
        match self.kind {
            Refusal::Outside => EngineError::PathOutsideWorkspace { path },
            Refusal::NotFound => EngineError::PathNotFound { path },
            Refusal::IsDir => EngineError::IsADirectory { path },
            Refusal::Denied => EngineError::PermissionDenied { path },
            Refusal::Exists => EngineError::PathExists { path },
            Refusal::NotDir => EngineError::InvalidInput {
                field: "path",
                reason: format!("{path} is not a directory"),
            },
            Refusal::Invalid | Refusal::Interrupted | Refusal::Io => EngineError::InvalidInput {
                field: "path",
                reason: format!("cannot use {path}: {}", self.message),
            },
        }
    }
}

fn clean_message(message: &str) -> String {
    message
        .chars()
        .filter(|c| !c.is_control())
        .take(MESSAGE_LIMIT)
        .collect()
}

/// A running helper.
pub(super) struct Helper {
    stdin: Option<Pin<Box<dyn tokio::io::AsyncWrite + Send>>>,
    output: Pin<Box<dyn Stream<Item = Result<ExecChunk, BackendError>> + Send>>,
    exit: Pin<Box<dyn std::future::Future<Output = Result<i64, BackendError>> + Send>>,
    /// Stdout read past the answer line.
    pending: BytesMut,
    stderr: Vec<u8>,
    /// Input is still going in: no idle deadline on the output meanwhile (the feed has its own).
    feeding: bool,
}

/// Starts the helper's `op` on `args` (paths are relative to the workspace).
pub(super) async fn start(
    backend: &dyn Backend,
    sandbox: &Sandbox,
    op: &str,
    args: &[&str],
) -> Result<Helper, EngineError> {
    let mut argv: Vec<String> = [PYTHON, "-I", "-S", "-c", HELPER, op, WORKSPACE]
        .map(String::from)
        .to_vec();
    argv.extend(args.iter().map(|arg| arg.to_string()));
    let spec = ExecSpec {
        argv,
        workdir: "/".into(),
        env: HELPER_ENV.map(String::from).to_vec(),
        // The sandbox user and group: the helper has exactly its rights.
        user: Some(format!("{SANDBOX_UID}:{SANDBOX_UID}")),
        output_limit: 0,
    };
    let exec = backend.exec_streaming(sandbox.container_id(), spec).await?;
    Ok(Helper {
        stdin: Some(exec.stdin),
        output: exec.output,
        exit: exec.exit,
        pending: BytesMut::new(),
        stderr: Vec::new(),
        feeding: false,
    })
}

/// A workspace path (as [`super::super::paths::workspace_path`] makes it) relative to the
/// workspace, as the helper takes it.
pub(super) fn relative(lexical: &str) -> &str {
    lexical
        .strip_prefix(WORKSPACE)
        .unwrap_or(lexical)
        .trim_start_matches('/')
}

impl Helper {
    /// The next stdout bytes, stderr kept aside; `None` at the end. A silence longer than
    /// [`IDLE_TIMEOUT`] is a failure, unless the helper is still being fed (it says nothing
    /// while it reads its input).
    async fn next_stdout(&mut self) -> Result<Option<Bytes>, EngineError> {
        loop {
            let next = self.output.next();
            let chunk = if self.feeding {
                next.await
            } else {
                tokio::time::timeout(IDLE_TIMEOUT, next)
                    .await
                    .map_err(|_| HelperFailure::Stalled {
                        waited: IDLE_TIMEOUT,
                    })?
            };
            match chunk {
                None => return Ok(None),
                Some(Err(error)) => return Err(error.into()),
                Some(Ok(ExecChunk::Stdout(bytes))) => return Ok(Some(bytes)),
                Some(Ok(ExecChunk::Stderr(bytes))) => {
                    let room = STDERR_LIMIT.saturating_sub(self.stderr.len());
                    self.stderr
                        .extend_from_slice(&bytes[..bytes.len().min(room)]);
                }
            }
        }
    }

    /// Reads the answer line (at most `limit` bytes): the value on success, the refusal
    /// otherwise. What follows the line stays for [`Helper::payload`].
    pub(super) async fn answer<T: DeserializeOwned>(
        &mut self,
        limit: usize,
    ) -> Result<Result<T, Refused>, EngineError> {
        // Bytes already searched for the newline: a long listing arriving in small chunks is
        // scanned once, not once per chunk.
        let mut scanned = 0;
        let line = loop {
            if let Some(end) = self.pending[scanned..]
                .iter()
                .position(|byte| *byte == b'\n')
            {
                break self.pending.split_to(scanned + end + 1);
            }
            scanned = self.pending.len();
            if self.pending.len() > limit {
                return Err(HelperFailure::AnswerTooLong { limit }.into());
            }
            match self.next_stdout().await? {
                Some(bytes) => self.pending.extend_from_slice(&bytes),
                None => {
                    let failure = self.failure().await;
                    return Err(failure.into());
                }
            }
        };
        let answer: Answer<T> = serde_json::from_slice(&line).map_err(HelperFailure::BadAnswer)?;
        match (answer.ok, answer.error) {
            (Some(ok), None) => Ok(Ok(ok)),
            (_, Some(kind)) => Ok(Err(Refused {
                kind,
                message: clean_message(&answer.message),
                entry: answer.entry.as_deref().map(clean_message),
                side: answer.side,
            })),
            (None, None) => Err(HelperFailure::NoAnswer.into()),
        }
    }

    /// Why the helper ended without an answer: its exit code and stderr.
    async fn failure(&mut self) -> HelperFailure {
        match (&mut self.exit).await {
            Ok(0) | Err(_) => HelperFailure::NoAnswer,
            Ok(code) => HelperFailure::Exit {
                code,
                stderr: String::from_utf8_lossy(&self.stderr).into_owned(),
            },
        }
    }

    /// Drains the output (a little: a helper that keeps printing has failed) and checks that
    /// the helper exited 0.
    pub(super) async fn finish(mut self) -> Result<(), EngineError> {
        self.stdin = None;
        let mut extra = self.pending.len();
        while let Some(bytes) = self.next_stdout().await? {
            extra += bytes.len();
            if extra > ANSWER_LIMIT {
                return Err(HelperFailure::AnswerTooLong {
                    limit: ANSWER_LIMIT,
                }
                .into());
            }
        }
        match (&mut self.exit).await? {
            0 => Ok(()),
            code => Err(HelperFailure::Exit {
                code,
                stderr: String::from_utf8_lossy(&self.stderr).into_owned(),
            }
            .into()),
        }
    }

    /// Writes `input` to the helper's stdin, then closes it. Each write must go through within
    /// [`IDLE_TIMEOUT`]. An error from `input` is returned as is; the helper sees its stdin end.
    pub(super) async fn feed(
        stdin: &mut Option<Pin<Box<dyn tokio::io::AsyncWrite + Send>>>,
        mut input: ByteStream,
    ) -> io::Result<()> {
        let Some(mut writer) = stdin.take() else {
            return Ok(());
        };
        while let Some(chunk) = input.next().await {
            let chunk = chunk?;
            tokio::time::timeout(IDLE_TIMEOUT, writer.write_all(&chunk))
                .await
                .map_err(|_| {
                    io::Error::new(io::ErrorKind::TimedOut, "the helper stopped reading")
                })??;
        }
        tokio::time::timeout(IDLE_TIMEOUT, writer.shutdown())
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the helper stopped reading"))?
    }

    /// Feeds `input` to stdin while reading the answer (the helper answers once it has read
    /// all of it, or at once when it refuses, and then the feed is dropped). The feed's own
    /// error is returned beside the answer.
    pub(super) async fn feed_and_answer<T: DeserializeOwned>(
        &mut self,
        input: ByteStream,
        limit: usize,
    ) -> (io::Result<()>, Result<Result<T, Refused>, EngineError>) {
        let mut stdin = self.stdin.take();
        // The input is dropped with the feed: a producer writing into it stops then instead of
        // waiting for a reader that is gone.
        let fed = Self::feed(&mut stdin, input);
        tokio::pin!(fed);
        let mut fed_result = None;
        self.feeding = true;
        let answer = {
            let answer = self.answer::<T>(limit);
            tokio::pin!(answer);
            tokio::select! {
                done = &mut fed => {
                    fed_result = Some(done);
                    None
                }
                answered = &mut answer => Some(answered),
            }
        };
        match answer {
            // The answer came first: a refusal (the feed is dropped), or success, which means
            // every byte went in; the feed has only its shutdown left.
            Some(Ok(Ok(value))) => {
                self.feeding = false;
                (fed.await, Ok(Ok(value)))
            }
            Some(other) => {
                self.feeding = false;
                (Ok(()), other)
            }
            None => {
                self.feeding = false;
                let answered = self.answer::<T>(limit).await;
                (fed_result.unwrap_or(Ok(())), answered)
            }
        }
    }

    /// The stdout after the answer line, exactly `size` bytes when given (the stream ends with
    /// an error when fewer come, and whatever is more is dropped); at the end, an error item
    /// unless the helper exited 0.
    pub(super) fn payload(mut self, size: Option<u64>) -> ByteStream {
        self.stdin = None;
        let pending = std::mem::take(&mut self.pending).freeze();
        let state = (self, Some(pending), size, false);
        Box::pin(futures::stream::unfold(
            state,
            |(mut helper, mut first, mut left, done)| async move {
                if done {
                    return None;
                }
                loop {
                    if left == Some(0) {
                        let checked = helper.finish().await.map_err(io::Error::other);
                        return match checked {
                            Ok(()) => None,
                            Err(error) => Some((Err(error), (Helper::ended(), None, left, true))),
                        };
                    }
                    let next = match first.take() {
                        Some(bytes) => Ok(Some(bytes)),
                        None => helper.next_stdout().await,
                    };
                    let mut bytes = match next {
                        Ok(Some(bytes)) if bytes.is_empty() => continue,
                        Ok(Some(bytes)) => bytes,
                        Ok(None) => {
                            let error = match (left, helper.finish().await) {
                                (Some(_), _) => io::Error::new(
                                    io::ErrorKind::UnexpectedEof,
                                    "the file ended before its size",
                                ),
                                (None, Ok(())) => return None,
                                (None, Err(error)) => io::Error::other(error),
                            };
                            return Some((Err(error), (Helper::ended(), None, left, true)));
                        }
                        Err(error) => {
                            let error = io::Error::other(error);
                            return Some((Err(error), (Helper::ended(), None, left, true)));
                        }
                    };
                    if let Some(rest) = left.as_mut() {
                        if bytes.len() as u64 > *rest {
                            bytes.truncate(*rest as usize);
                        }
                        *rest -= bytes.len() as u64;
                    }
                    return Some((Ok(bytes), (helper, None, left, false)));
                }
            },
        ))
    }

    /// A helper that is over: what the payload stream keeps once it ended.
    fn ended() -> Helper {
        Helper {
            stdin: None,
            output: Box::pin(futures::stream::empty()),
            exit: Box::pin(async { Ok(0) }),
            pending: BytesMut::new(),
            stderr: Vec::new(),
            feeding: false,
        }
    }
}

/// Runs an operation without bulk data: starts the helper, reads its answer (at most `limit`
/// bytes), waits for its exit, all within [`OPERATION_TIMEOUT`].
pub(super) async fn run<T: DeserializeOwned>(
    backend: &dyn Backend,
    sandbox: &Sandbox,
    op: &str,
    args: &[&str],
    limit: usize,
) -> Result<Result<T, Refused>, EngineError> {
    let work = async {
        let mut helper = start(backend, sandbox, op, args).await?;
        helper.stdin = None;
        let answer = helper.answer::<T>(limit).await?;
        if answer.is_ok() {
            helper.finish().await?;
        }
        Ok(answer)
    };
    tokio::time::timeout(OPERATION_TIMEOUT, work)
        .await
        .map_err(|_| HelperFailure::Timeout {
            waited: OPERATION_TIMEOUT,
        })?
}

/// A listing as the helper sends it.
#[derive(Debug, Deserialize)]
pub(super) struct Listing {
    pub(super) path: String,
    pub(super) entries: Vec<ListedEntry>,
}

#[derive(Debug, Deserialize)]
pub(super) struct ListedEntry {
    pub(super) name: String,
    pub(super) kind: FileKind,
    #[serde(default)]
    pub(super) size: u64,
    #[serde(default)]
    pub(super) modified: f64,
}

/// An operation that succeeded (the helper also says where it acted; nothing needs it).
#[derive(Debug, Deserialize)]
pub(super) struct Done {}

/// A file about to be read: its size, then its bytes follow.
#[derive(Debug, Deserialize)]
pub(super) struct Opened {
    pub(super) size: u64,
}

/// A file written.
#[derive(Debug, Deserialize)]
pub(super) struct Written {
    pub(super) path: String,
    pub(super) size: u64,
}

/// What `stat` found: nothing, or the final component itself.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Stated {
    pub(super) exists: bool,
    pub(super) kind: Option<FileKind>,
    pub(super) size: Option<u64>,
    pub(super) mode: Option<u32>,
    pub(super) modified: Option<f64>,
}

/// A directory made, or found there already.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Made {
    pub(super) created: bool,
}

/// A copy or a move done: what kind of entry went.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Moved {
    pub(super) kind: FileKind,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_defensively() {
        let ok: Answer<Written> =
            serde_json::from_str(r#"{"ok":{"path":"/workspace/a","size":2}}"#).expect("ok");
        assert_eq!(ok.ok.map(|done| done.path).as_deref(), Some("/workspace/a"));
        assert!(serde_json::from_str::<Answer<Written>>(r#"{"ok":{"path":7}}"#).is_err());
        let refused: Answer<Done> =
            serde_json::from_str(r#"{"error":"outside","message":"x"}"#).expect("refusal");
        assert_eq!(refused.error, Some(Refusal::Outside));
        let unknown: Answer<Done> =
            serde_json::from_str(r#"{"error":"whatever","message":"x"}"#).expect("unknown kind");
        assert_eq!(unknown.error, Some(Refusal::Io));
        assert_eq!(clean_message("a\nb\u{1b}[31m"), "ab[31m");
        assert_eq!(clean_message(&"x".repeat(10_000)).len(), MESSAGE_LIMIT);
        assert_eq!(relative("/workspace"), "");
        assert_eq!(relative("/workspace/a/b"), "a/b");
    }

    /// Runs the helper on the host against `root` (a temporary directory standing in for the
    /// workspace); `None` when there is no `/usr/bin/python3` here.
    fn helper(root: &std::path::Path, args: &[&str], stdin: &[u8]) -> Option<(String, Vec<u8>)> {
        use std::io::Write;
        if !std::path::Path::new(PYTHON).exists() {
            eprintln!("skipping: no {PYTHON}");
            return None;
        }
        let mut child = std::process::Command::new(PYTHON)
            .args(["-I", "-S", "-c", HELPER, args[0]])
            .arg(root)
            .args(&args[1..])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run the helper");
        let mut input = child.stdin.take().expect("stdin");
        let _ = input.write_all(stdin);
        drop(input);
        let output = child.wait_with_output().expect("helper output");
        let end = output
            .stdout
            .iter()
            .position(|byte| *byte == b'\n')
            .expect("an answer line");
        let line = String::from_utf8_lossy(&output.stdout[..end]).into_owned();
        Some((line, output.stdout[end + 1..].to_vec()))
    }

    fn tar_of(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, kind, link, content) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_mode(0o644);
            header.set_size(content.len() as u64);
            header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
            header.set_cksum();
            builder.append(&header, *content).expect("append");
        }
        builder.into_inner().expect("tar")
    }

    #[test]
    fn the_helper_never_leaves_its_root() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let root = dir.path().join("ws");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("in")).expect("root");
        std::fs::create_dir_all(&outside).expect("outside");
        std::fs::write(outside.join("secret"), b"secret").expect("secret");
        std::fs::write(root.join("in/file"), b"inside").expect("file");
        let link = |target: &std::path::Path, name: &str| {
            std::os::unix::fs::symlink(target, root.join(name)).expect("link")
        };
        link(&outside, "abs_out");
        link(std::path::Path::new("../outside"), "rel_out");
        link(&root.join("in"), "abs_in");
        link(std::path::Path::new("in/file"), "rel_in");
        let Some((answer, bytes)) = helper(&root, &["read", "abs_in/file", "100"], b"") else {
            return;
        };
        assert!(answer.starts_with(r#"{"ok":{"size":6"#), "{answer}");
        assert_eq!(bytes, b"inside");
        let (answer, bytes) = helper(&root, &["read", "rel_in", "100"], b"").expect("helper");
        assert!(answer.contains(r#""ok""#) && bytes == b"inside", "{answer}");
        for path in ["abs_out/secret", "rel_out/secret", "in/../rel_out/secret"] {
            let (answer, bytes) = helper(&root, &["read", path, "100"], b"").expect("helper");
            assert!(answer.contains(r#""error":"outside""#), "{path}: {answer}");
            assert!(bytes.is_empty());
            let (answer, _) = helper(&root, &["write", path, "4"], b"evil").expect("helper");
            assert!(answer.contains(r#""error":"outside""#), "{path}: {answer}");
        }
        // A dangling link leading out is not a way to create a file outside either.
        link(&outside.join("created"), "dangling");
        let (answer, _) = helper(&root, &["write", "dangling", "4"], b"evil").expect("helper");
        assert!(answer.contains(r#""error":"outside""#), "{answer}");
        // Archives: a chain of links, a hard link out, a file through a planted link.
        let archives = [
            tar_of(&[
                ("a", tar::EntryType::Symlink, ".", b""),
                ("a/b", tar::EntryType::Symlink, "..", b""),
                ("b/outside/chain", tar::EntryType::Regular, "", b"evil"),
            ]),
            tar_of(&[("h", tar::EntryType::Link, "rel_out/secret", b"")]),
            tar_of(&[("abs_out/x", tar::EntryType::Regular, "", b"evil")]),
        ];
        for archive in archives {
            let (answer, _) = helper(&root, &["untar", ""], &archive).expect("helper");
            assert!(answer.contains(r#""error""#), "{answer}");
        }
        let (answer, _) = helper(&root, &["delete", "abs_out"], b"").expect("helper");
        assert!(answer.contains(r#""ok""#), "{answer}");
        let mut left: Vec<String> = std::fs::read_dir(&outside)
            .expect("outside")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        left.sort();
        assert_eq!(left, ["secret"], "only the secret is outside");
        assert_eq!(
            std::fs::read(outside.join("secret")).expect("secret"),
            b"secret"
        );
    }

    #[test]
    fn the_helper_fits_in_one_argument() {
        // Linux refuses an exec whose single argument passes MAX_ARG_STRLEN (32 pages).
        assert!(HELPER.len() < 128 * 1024, "{} bytes", HELPER.len());
    }

    #[test]
    fn stat_mkdir_copy_and_move_never_leave_the_root() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let root = dir.path().join("ws");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("in/sub")).expect("root");
        std::fs::create_dir_all(&outside).expect("outside");
        std::fs::write(outside.join("secret"), b"secret").expect("secret");
        std::fs::write(root.join("in/file"), b"inside").expect("file");
        std::os::unix::fs::symlink(&outside, root.join("abs_out")).expect("link");
        std::os::unix::fs::symlink("../outside", root.join("rel_out")).expect("link");
        std::os::unix::fs::symlink("/etc", root.join("in/sub/etc")).expect("link");
        let Some((answer, _)) = helper(&root, &["stat", "in/file"], b"") else {
            return;
        };
        let stated: Answer<Stated> = serde_json::from_str(&answer).expect("stat");
        assert_eq!(stated.ok.and_then(|stat| stat.size), Some(6));
        for path in ["abs_out", "rel_out/secret", "in/sub/etc/passwd"] {
            let mut cases = vec![
                vec!["stat", path],
                vec!["mkdir", path],
                vec!["copy", path, "got", "0"],
                vec!["move", path, "got", "0"],
            ];
            // A link as the destination itself is replaced, not followed: only paths through one.
            if path.contains('/') {
                cases.push(vec!["copy", "in/file", path, "1"]);
                cases.push(vec!["move", "in/file", path, "1"]);
            }
            for args in cases {
                let (answer, _) = helper(&root, &args, b"").expect("helper");
                assert!(
                    answer.contains(r#""error":"outside""#),
                    "{args:?}: {answer}"
                );
            }
        }
        for args in [
            ["copy", "in", "in/sub/again", "0"],
            ["move", "in", "in/sub/x", "0"],
        ] {
            let (answer, _) = helper(&root, &args, b"").expect("helper");
            assert!(
                answer.contains(r#""error":"invalid""#),
                "{args:?}: {answer}"
            );
        }
        let (answer, _) = helper(&root, &["copy", "in", "copy", "0"], b"").expect("helper");
        assert!(answer.contains(r#""ok""#), "{answer}");
        assert_eq!(
            std::fs::read_link(root.join("copy/sub/etc")).expect("a link"),
            std::path::Path::new("/etc")
        );
        let (answer, _) = helper(&root, &["copy", "in/file", "copy", "0"], b"").expect("helper");
        assert!(answer.contains(r#""error":"exists""#), "{answer}");
        let (answer, _) = helper(&root, &["move", "copy", "moved", "1"], b"").expect("helper");
        assert!(answer.contains(r#""ok""#), "{answer}");
        assert_eq!(
            std::fs::read(root.join("moved/file")).expect("moved"),
            b"inside"
        );
        let left: Vec<_> = std::fs::read_dir(&outside).expect("outside").collect();
        assert_eq!(left.len(), 1, "only the secret is outside");
    }

    #[test]
    fn the_helper_lists_odd_names_and_archives_links_as_links() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().expect("temporary directory");
        let root = dir.path().join("ws");
        std::fs::create_dir_all(root.join("t")).expect("root");
        let odd = std::ffi::OsStr::from_bytes(b"bad\xffname\nline");
        std::fs::write(root.join("t").join(odd), b"x").expect("odd name");
        std::os::unix::fs::symlink("/etc", root.join("t/etc")).expect("link");
        let Some((answer, _)) = helper(&root, &["list", "t"], b"") else {
            return;
        };
        let listing: Answer<Listing> = serde_json::from_str(&answer).expect("listing");
        let entries = listing.ok.expect("ok").entries;
        let names: Vec<(&str, FileKind)> = entries
            .iter()
            .map(|entry| (entry.name.as_str(), entry.kind))
            .collect();
        assert_eq!(
            names,
            [
                ("bad\u{fffd}name\nline", FileKind::File),
                ("etc", FileKind::Symlink)
            ]
        );
        let (answer, tar) = helper(&root, &["tar", "t", "dir"], b"").expect("helper");
        assert!(answer.contains(r#""ok""#), "{answer}");
        let mut archive = tar::Archive::new(&tar[..]);
        let mut seen = Vec::new();
        for entry in archive.entries().expect("entries") {
            let entry = entry.expect("entry");
            let link = entry
                .link_name()
                .expect("link name")
                .map(|link| link.to_string_lossy().into_owned());
            seen.push((
                entry.path().expect("path").to_string_lossy().into_owned(),
                link,
            ));
        }
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert_eq!(seen[0].0, "./");
        assert_eq!(seen[2], ("./etc".to_string(), Some("/etc".to_string())));
    }
}
