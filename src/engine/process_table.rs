//! The state of background processes: each process's replay buffer and end, the per-sandbox
//! tables, and the message shapes readers get. Starting, signalling and feeding them is in
//! `processes`.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use dashmap::DashMap;
use futures::{Stream, StreamExt};
use serde::Serialize;
use tokio::io::AsyncWrite;
use tokio_util::sync::CancellationToken;

use super::error::{EngineError, ProcessError};
use super::validate;

/// Running processes one sandbox may have at once.
pub const MAX_RUNNING: usize = 16;
/// Processes (running or ended) a sandbox remembers; the oldest ended ones are forgotten first.
pub(super) const MAX_REMEMBERED: usize = 64;
/// Longest tag.
pub(super) const MAX_TAG_CHARS: usize = 64;
/// How long a write to a process's stdin may block (a process that does not read).
pub(super) const STDIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the runtime may take to deliver a signal.
pub(super) const SIGNAL_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait [`Engine::read_process_output`] accepts.
pub const MAX_READ_WAIT: Duration = Duration::from_secs(60);
/// Runs the command in its working directory; a missing directory is the command's failure
/// (exit 127 with bash's message on stderr), not the server's.
pub(super) const CD_WRAPPER: &str = r#"cd -- "$1" || exit 127; exec bash -c "$2""#;

/// Signals a caller may send, by name without `SIG`.
pub const SIGNALS: [&str; 9] = [
    "TERM", "KILL", "INT", "HUP", "QUIT", "USR1", "USR2", "STOP", "CONT",
];

/// A process to start.
#[derive(Debug, Clone, Default)]
pub struct StartProcess {
    /// Run by `bash -c`.
    pub command: String,
    /// Working directory, under `/workspace` (relative paths are resolved against it).
    pub cwd: Option<String>,
    pub env: HashMap<String, String>,
    /// A name to address the process by, besides its pid: letters, digits, `.`, `_`, `-`, not
    /// only digits; unique among the sandbox's running processes.
    pub tag: Option<String>,
}

/// Where a process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessState {
    Running,
    /// Ended on its own with an exit code (or with none: its sandbox or the server went away).
    Exited,
    /// Ended by a signal.
    Killed,
}

/// How a process ended: the exit code the runtime reported, and the signal when that code says
/// the process died of one (`128 + n`, as a shell reports it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ExitStatus {
    /// `None` when no exit code could be read (the sandbox went away first).
    pub code: Option<i64>,
    /// Like `SIGTERM`.
    pub signal: Option<&'static str>,
}

impl ExitStatus {
    pub(super) fn from_code(code: Option<i64>) -> Self {
        let signal = code
            .filter(|code| *code > 128)
            .and_then(|code| signal_name(code - 128));
        Self { code, signal }
    }
}

/// The name of signal number `number`, for the ones a process commonly dies of.
pub(super) fn signal_name(number: i64) -> Option<&'static str> {
    Some(match number {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        11 => "SIGSEGV",
        12 => "SIGUSR2",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        _ => return None,
    })
}

/// A signal name as a caller gives it (`TERM`, `SIGTERM`, `sigterm`), checked against
/// [`SIGNALS`]; `None` means `TERM`.
pub fn parse_signal(signal: Option<&str>) -> Result<&'static str, EngineError> {
    let Some(signal) = signal else {
        return Ok("TERM");
    };
    let upper = signal.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    SIGNALS
        .iter()
        .find(|known| **known == bare)
        .copied()
        .ok_or_else(|| EngineError::InvalidInput {
            field: "signal",
            reason: format!(
                "{signal:?} is not one of {}",
                SIGNALS.map(|s| format!("SIG{s}")).join(", ")
            ),
        })
}

/// What a process is, for listings and status answers.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessInfo {
    /// The kernelbox process id: small, per sandbox, never reused within it.
    pub pid: u64,
    /// The process's pid inside the sandbox (its own pid namespace; it leads its process group).
    pub os_pid: u32,
    pub tag: Option<String>,
    pub command: String,
    pub cwd: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub state: ProcessState,
    pub exit_code: Option<i64>,
    pub signal: Option<&'static str>,
    pub stdin_open: bool,
    /// Bytes the process printed so far (stdout and stderr), kept or not.
    pub output_bytes: u64,
    /// The sequence number the next output event will carry: the cursor a reader passes as
    /// `since` to get only what comes after now.
    pub next_seq: u64,
    /// Output events dropped from the front of the replay buffer so far.
    pub dropped_events: u64,
}

/// Which stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// One message of a process's event stream, in the E2B/Colima shapes: `{"type":"stdout",
/// "data"}`, `{"type":"stderr","data"}`, `{"type":"exit","code","signal"}`, `{"type":"error",
/// "message"}`, plus `{"type":"dropped"}` when older output was dropped before the reader's
/// cursor. Output and exit messages carry `seq`, the cursor of the next one is `seq + 1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ProcessMessage {
    Stdout {
        seq: u64,
        data: String,
    },
    Stderr {
        seq: u64,
        data: String,
    },
    Exit {
        seq: u64,
        code: Option<i64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        signal: Option<&'static str>,
    },
    /// Events `seq .. seq + events` were dropped from the replay buffer before this reader
    /// asked for them; the next message is `seq + events`.
    Dropped {
        seq: u64,
        events: u64,
        message: String,
    },
    Error {
        message: String,
    },
}

impl ProcessMessage {
    /// The cursor that follows this message, if it carries one.
    pub fn next_seq(&self) -> Option<u64> {
        match self {
            ProcessMessage::Stdout { seq, .. }
            | ProcessMessage::Stderr { seq, .. }
            | ProcessMessage::Exit { seq, .. } => Some(seq + 1),
            ProcessMessage::Dropped { seq, events, .. } => Some(seq + events),
            ProcessMessage::Error { .. } => None,
        }
    }
}

/// A stream of a process's messages, ending after its exit.
pub type ProcessEvents = Pin<Box<dyn Stream<Item = ProcessMessage> + Send>>;

pub(super) struct Chunk {
    pub(super) seq: u64,
    pub(super) stream: OutputStream,
    pub(super) data: Bytes,
}

/// The replay buffer and the end state, under one lock.
pub(super) struct Log {
    pub(super) chunks: VecDeque<Chunk>,
    /// The seq of the oldest chunk kept (or `next_seq` when none is).
    pub(super) first_seq: u64,
    pub(super) next_seq: u64,
    pub(super) kept_bytes: usize,
    pub(super) capacity: usize,
    pub(super) output_bytes: u64,
    /// Set once the process ended; its exit event has seq `next_seq` at that moment.
    pub(super) exit: Option<(u64, ExitStatus, DateTime<Utc>)>,
}

/// What a reader gets from the buffer from a cursor on.
pub(super) struct Slice {
    pub(super) messages: Vec<ProcessMessage>,
    /// The cursor after these messages.
    pub(super) next: u64,
    pub(super) ended: bool,
}

/// What a kept chunk costs beside its bytes (the chunk and its slot in the queue): counted
/// toward the buffer's capacity, so that a process writing a byte at a time cannot make it hold
/// millions of chunks.
const CHUNK_OVERHEAD: usize = std::mem::size_of::<Chunk>() + 16;
/// Reads smaller than this are copied out of the buffer Docker's stream was read into, so that
/// a small chunk does not keep that whole buffer alive.
const COPY_BELOW: usize = 4096;

impl Log {
    pub(super) fn push(&mut self, stream: OutputStream, mut data: Bytes) {
        self.output_bytes += data.len() as u64;
        if data.len() < COPY_BELOW {
            data = Bytes::copy_from_slice(&data);
        }
        if data.len() > self.capacity {
            // A read larger than the whole buffer (a fast writer, a slow reader): only its newest
            // bytes fit. Its front becomes an event of its own, dropped at once, so that readers
            // are told, and the newest output is kept whatever the size of the read.
            let front = data.split_to(tail_start(&data, self.capacity));
            self.append(stream, front);
        }
        self.append(stream, data);
    }

    fn append(&mut self, stream: OutputStream, data: Bytes) {
        self.kept_bytes += data.len() + CHUNK_OVERHEAD;
        self.chunks.push_back(Chunk {
            seq: self.next_seq,
            stream,
            data,
        });
        self.next_seq += 1;
        // The newest chunk stays, whatever its overhead.
        while self.kept_bytes > self.capacity && self.chunks.len() > 1 {
            let Some(dropped) = self.chunks.pop_front() else {
                break;
            };
            self.kept_bytes -= dropped.data.len() + CHUNK_OVERHEAD;
            self.first_seq = dropped.seq + 1;
        }
    }

    pub(super) fn slice(&self, since: u64) -> Slice {
        let mut messages = Vec::new();
        let mut cursor = since;
        if cursor < self.first_seq {
            messages.push(ProcessMessage::Dropped {
                seq: cursor,
                events: self.first_seq - cursor,
                message: format!(
                    "{} older output events were dropped: the replay buffer keeps the last {} bytes",
                    self.first_seq - cursor,
                    self.capacity
                ),
            });
            cursor = self.first_seq;
        }
        let start = cursor;
        for chunk in self.chunks.iter().filter(|chunk| chunk.seq >= start) {
            let data = String::from_utf8_lossy(&chunk.data).into_owned();
            messages.push(match chunk.stream {
                OutputStream::Stdout => ProcessMessage::Stdout {
                    seq: chunk.seq,
                    data,
                },
                OutputStream::Stderr => ProcessMessage::Stderr {
                    seq: chunk.seq,
                    data,
                },
            });
            cursor = chunk.seq + 1;
        }
        let mut ended = false;
        if let Some((seq, status, _)) = self.exit
            && cursor <= seq
        {
            ended = true;
            match status.code {
                Some(code) => messages.push(ProcessMessage::Exit {
                    seq,
                    code: Some(code),
                    signal: status.signal,
                }),
                None => messages.push(ProcessMessage::Error {
                    message: "the process ended without an exit status: its sandbox or the server went away".into(),
                }),
            }
            cursor = seq + 1;
        } else if self.exit.is_some() {
            ended = true;
        }
        Slice {
            messages,
            next: cursor,
            ended,
        }
    }
}

/// Where the last `capacity` bytes of `data` start, moved forward past UTF-8 continuation bytes
/// so that a character is not cut in two.
fn tail_start(data: &[u8], capacity: usize) -> usize {
    let cut = data.len().saturating_sub(capacity);
    let mut start = cut;
    while start < data.len() && data[start] & 0b1100_0000 == 0b1000_0000 {
        start += 1;
    }
    // Not text at all (only continuation bytes to the end): cut where the bytes fit.
    if start == data.len() { cut } else { start }
}

pub(super) type Stdin = Pin<Box<dyn AsyncWrite + Send>>;

/// One background process.
pub struct Process {
    pub(super) pid: u64,
    pub(super) os_pid: u32,
    pub(super) tag: Option<String>,
    pub(super) command: String,
    pub(super) cwd: String,
    pub(super) started_at: DateTime<Utc>,
    pub(super) container_id: String,
    pub(super) log: Mutex<Log>,
    /// Bumped on every event, so readers wake up.
    pub(super) changed: tokio::sync::watch::Sender<u64>,
    pub(super) stdin: tokio::sync::Mutex<Option<Stdin>>,
    pub(super) stdin_open: std::sync::atomic::AtomicBool,
}

impl Process {
    pub(super) fn log(&self) -> MutexGuard<'_, Log> {
        // A panic while the lock was held leaves a consistent log (every update is one step).
        self.log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn running(&self) -> bool {
        self.log().exit.is_none()
    }

    pub(super) fn record(&self, stream: OutputStream, data: Bytes) {
        self.log().push(stream, data);
        self.changed.send_modify(|count| *count += 1);
    }

    pub(super) fn finish(&self, status: ExitStatus) {
        {
            let mut log = self.log();
            if log.exit.is_none() {
                log.exit = Some((log.next_seq, status, Utc::now()));
            }
        }
        self.stdin_open
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self.changed.send_modify(|count| *count += 1);
    }

    /// What the process is now.
    pub fn info(&self) -> ProcessInfo {
        let log = self.log();
        let (state, exit_code, signal, ended_at) = match log.exit {
            None => (ProcessState::Running, None, None, None),
            Some((_, status, at)) => (
                if status.signal.is_some() {
                    ProcessState::Killed
                } else {
                    ProcessState::Exited
                },
                status.code,
                status.signal,
                Some(at),
            ),
        };
        ProcessInfo {
            pid: self.pid,
            os_pid: self.os_pid,
            tag: self.tag.clone(),
            command: self.command.clone(),
            cwd: self.cwd.clone(),
            started_at: self.started_at,
            ended_at,
            state,
            exit_code,
            signal,
            stdin_open: self.stdin_open.load(std::sync::atomic::Ordering::Relaxed),
            output_bytes: log.output_bytes,
            next_seq: log.next_seq,
            dropped_events: log.first_seq,
        }
    }

    /// The process's messages from cursor `since` on (`0`: everything still kept): first what
    /// the buffer holds, then live output, ending after the exit message. Ends early when
    /// `stop` is cancelled.
    pub fn events(self: &Arc<Self>, since: u64, stop: CancellationToken) -> ProcessEvents {
        let process = self.clone();
        let receiver = self.changed.subscribe();
        let state = (process, receiver, since, false, stop);
        Box::pin(
            futures::stream::unfold(
                state,
                |(process, mut receiver, cursor, done, stop)| async move {
                    if done {
                        return None;
                    }
                    loop {
                        receiver.mark_unchanged();
                        let slice = process.log().slice(cursor);
                        if !slice.messages.is_empty() || slice.ended {
                            let batch = futures::stream::iter(slice.messages);
                            return Some((
                                batch,
                                (process, receiver, slice.next, slice.ended, stop),
                            ));
                        }
                        tokio::select! {
                            changed = receiver.changed() => if changed.is_err() { return None },
                            () = stop.cancelled() => return None,
                        }
                    }
                },
            )
            .flatten(),
        )
    }

    /// The last `tail_bytes` bytes of each stream still in the buffer (after cursor `since`),
    /// and the cursor after them.
    pub(super) fn tail(&self, since: u64, tail_bytes: usize) -> OutputTail {
        let log = self.log();
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        for chunk in log.chunks.iter().filter(|chunk| chunk.seq >= since) {
            match chunk.stream {
                OutputStream::Stdout => stdout.extend_from_slice(&chunk.data),
                OutputStream::Stderr => stderr.extend_from_slice(&chunk.data),
            }
        }
        let clip = |bytes: Vec<u8>| {
            let cut = bytes.len() > tail_bytes;
            let start = bytes.len().saturating_sub(tail_bytes);
            (String::from_utf8_lossy(&bytes[start..]).into_owned(), cut)
        };
        let (stdout, stdout_cut) = clip(stdout);
        let (stderr, stderr_cut) = clip(stderr);
        OutputTail {
            stdout,
            stderr,
            truncated: stdout_cut || stderr_cut || since < log.first_seq,
            next_seq: log.next_seq,
        }
    }
}

/// What [`Engine::read_process_output`] returns.
#[derive(Debug, Clone, Serialize)]
pub struct OutputTail {
    pub stdout: String,
    pub stderr: String,
    /// Some output between the cursor and now is not shown (past the tail, or dropped).
    pub truncated: bool,
    /// Pass this as `since` to read only what comes next.
    pub next_seq: u64,
}

/// One sandbox's processes.
pub(super) struct SandboxProcesses {
    pub(super) list: Mutex<Vec<Arc<Process>>>,
    pub(super) next_pid: std::sync::atomic::AtomicU64,
    /// Cancelled when the sandbox goes: the processes' readers stop.
    pub(super) gone: CancellationToken,
}

/// Every sandbox's processes.
#[derive(Default)]
pub(crate) struct ProcessTable {
    pub(super) sandboxes: DashMap<String, Arc<SandboxProcesses>>,
}

impl ProcessTable {
    /// Forgets a destroyed sandbox's processes (they died with its container).
    pub(crate) fn forget_sandbox(&self, sandbox_id: &str) {
        if let Some((_, processes)) = self.sandboxes.remove(sandbox_id) {
            processes.gone.cancel();
        }
    }

    pub(super) fn of(
        &self,
        sandbox_id: &str,
        shutdown: &CancellationToken,
    ) -> Arc<SandboxProcesses> {
        self.sandboxes
            .entry(sandbox_id.to_string())
            .or_insert_with(|| {
                Arc::new(SandboxProcesses {
                    list: Mutex::new(Vec::new()),
                    next_pid: std::sync::atomic::AtomicU64::new(1),
                    gone: shutdown.child_token(),
                })
            })
            .clone()
    }

    pub(super) fn find(&self, sandbox_id: &str, key: &str) -> Result<Arc<Process>, EngineError> {
        let not_found = || ProcessError::NotFound {
            sandbox_id: sandbox_id.to_string(),
            key: key.to_string(),
        };
        let processes = self.sandboxes.get(sandbox_id).ok_or_else(not_found)?;
        let list = lock(&processes.list);
        let found = match key.parse::<u64>() {
            Ok(pid) => list.iter().find(|process| process.pid == pid),
            Err(_) => list
                .iter()
                .rev()
                .find(|process| process.tag.as_deref() == Some(key)),
        };
        Ok(found.ok_or_else(not_found)?.clone())
    }
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(super) fn validate_tag(tag: &str) -> Result<(), EngineError> {
    let valid = !tag.is_empty()
        && tag.chars().count() <= MAX_TAG_CHARS
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !tag.chars().all(|c| c.is_ascii_digit());
    validate::check(valid, "tag", || {
        format!(
            "must be 1 to {MAX_TAG_CHARS} letters, digits, '.', '_' or '-', and not only digits (those are pids)"
        )
    })
}

/// Why no process can be added now, if so: the running limit, or a running process with the tag.
pub(super) fn room_error(
    id: &str,
    list: &[Arc<Process>],
    tag: Option<&str>,
) -> Option<EngineError> {
    let running: Vec<&Arc<Process>> = list.iter().filter(|p| p.running()).collect();
    if running.len() >= MAX_RUNNING {
        return Some(
            ProcessError::TooMany {
                sandbox_id: id.to_string(),
                limit: MAX_RUNNING,
            }
            .into(),
        );
    }
    if let Some(tag) = tag
        && running.iter().any(|p| p.tag.as_deref() == Some(tag))
    {
        return Some(
            ProcessError::TagTaken {
                tag: tag.to_string(),
            }
            .into(),
        );
    }
    None
}

/// Keeps the table at [`MAX_REMEMBERED`] by forgetting the oldest ended processes.
pub(super) fn forget_oldest_ended(list: &mut Vec<Arc<Process>>) {
    while list.len() > MAX_REMEMBERED {
        match list.iter().position(|p| !p.running()) {
            Some(oldest) => {
                list.remove(oldest);
            }
            None => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(capacity: usize) -> Log {
        Log {
            chunks: VecDeque::new(),
            first_seq: 0,
            next_seq: 0,
            kept_bytes: 0,
            capacity,
            output_bytes: 0,
            exit: None,
        }
    }

    #[test]
    fn the_replay_buffer_drops_the_oldest_and_says_so() {
        let mut log = log(10);
        log.push(OutputStream::Stdout, Bytes::from_static(b"aaaaaa"));
        log.push(OutputStream::Stderr, Bytes::from_static(b"bbbbbb"));
        log.exit = Some((2, ExitStatus::from_code(Some(143)), Utc::now()));
        let slice = log.slice(0);
        assert!(slice.ended);
        assert_eq!(slice.next, 3);
        assert!(matches!(
            slice.messages[0],
            ProcessMessage::Dropped {
                seq: 0,
                events: 1,
                ..
            }
        ));
        assert_eq!(
            slice.messages[1],
            ProcessMessage::Stderr {
                seq: 1,
                data: "bbbbbb".into()
            }
        );
        assert_eq!(
            slice.messages[2],
            ProcessMessage::Exit {
                seq: 2,
                code: Some(143),
                signal: Some("SIGTERM")
            }
        );
        // A reader past everything gets nothing more, and is told the process ended.
        let done = log.slice(3);
        assert!(done.ended && done.messages.is_empty());
    }

    #[test]
    fn a_read_larger_than_the_buffer_keeps_its_newest_bytes() {
        let mut log = log(2);
        log.push(OutputStream::Stdout, Bytes::from_static(b"ab"));
        // The last two bytes are the second of "é" and "9": the cut moves past the character
        // rather than split it.
        log.push(
            OutputStream::Stdout,
            Bytes::from("0123é9".as_bytes().to_vec()),
        );
        let slice = log.slice(0);
        assert!(matches!(
            slice.messages[0],
            ProcessMessage::Dropped {
                seq: 0,
                events: 2,
                ..
            }
        ));
        assert_eq!(
            slice.messages[1],
            ProcessMessage::Stdout {
                seq: 2,
                data: "9".into()
            }
        );
        assert_eq!(log.output_bytes, 9);
        assert_eq!(log.kept_bytes, 1 + CHUNK_OVERHEAD);
    }

    #[test]
    fn a_byte_at_a_time_is_bounded_by_what_its_chunks_cost() {
        let mut log = log(64 * 1024);
        for _ in 0..100_000 {
            log.push(OutputStream::Stdout, Bytes::from_static(b"x"));
        }
        // Counted by their bytes alone, 65,536 chunks would stay.
        assert!(
            log.chunks.len() <= 64 * 1024 / (1 + CHUNK_OVERHEAD) + 1,
            "{}",
            log.chunks.len()
        );
        assert!(log.kept_bytes <= 64 * 1024);
        assert_eq!(log.output_bytes, 100_000);
    }

    #[test]
    fn signals_are_validated() {
        assert_eq!(parse_signal(None).ok(), Some("TERM"));
        assert_eq!(parse_signal(Some("sigkill")).ok(), Some("KILL"));
        assert_eq!(parse_signal(Some("INT")).ok(), Some("INT"));
        for bad in ["", "SIGFOO", "9", "TERM; rm -rf /", "-KILL"] {
            assert!(parse_signal(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn tags_are_names_not_pids() {
        assert!(validate_tag("web-1.server_a").is_ok());
        for bad in ["", "123", "a b", "a/b", &"x".repeat(65)] {
            assert!(validate_tag(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn exit_codes_past_128_name_the_signal() {
        assert_eq!(ExitStatus::from_code(Some(137)).signal, Some("SIGKILL"));
        assert_eq!(ExitStatus::from_code(Some(1)).signal, None);
        assert_eq!(ExitStatus::from_code(None).signal, None);
    }
}
