//! An execution's output under its caps: what is kept, what is forwarded to the consumer, and
//! the marker that says how much was dropped.

use super::execution::{ExecEvent, ExecutionResult, Output, OutputKind, PythonError};
use crate::json_budget::value_footprint;
use crate::kernel::{KernelEvent, MimeBundle};

/// An error's name is kept up to this many bytes even past the cap, so a result always says
/// what went wrong.
const ERROR_NAME_BYTES: usize = 256;

/// Accumulates an execution's output under the caps and decides what to forward.
pub(super) struct Collector {
    text_limit: usize,
    rich_limit: usize,
    text_bytes: usize,
    rich_bytes: usize,
    dropped_bytes: usize,
    stdout: String,
    stderr: String,
    outputs: Vec<Output>,
    pub(super) error: Option<PythonError>,
}

impl Collector {
    pub(super) fn new(text_limit: usize, rich_limit: usize) -> Self {
        Self {
            text_limit,
            rich_limit,
            text_bytes: 0,
            rich_bytes: 0,
            dropped_bytes: 0,
            stdout: String::new(),
            stderr: String::new(),
            outputs: Vec::new(),
            error: None,
        }
    }

    /// Records an event; returns what to forward (nothing once past the cap).
    pub(super) fn take(&mut self, event: KernelEvent) -> Option<ExecEvent> {
        match event {
            KernelEvent::Stdout { text } => self.take_text(text, false),
            KernelEvent::Stderr { text } => self.take_text(text, true),
            KernelEvent::Display { data } => self.take_rich(OutputKind::Display, data),
            KernelEvent::Result { data } => self.take_rich(OutputKind::Result, data),
            KernelEvent::Error {
                ename,
                evalue,
                traceback,
            } => {
                // The first error always gets through (a result says what went wrong); once
                // the cap is used up, further ones are only counted as dropped.
                if self.error.is_some() && self.text_room() == 0 {
                    self.dropped_bytes += ename.len()
                        + evalue.len()
                        + traceback.iter().map(String::len).sum::<usize>();
                    return None;
                }
                let error = self.take_error(ename, evalue, &traceback);
                self.error = Some(error.clone());
                Some(ExecEvent::Error(error))
            }
            KernelEvent::Done { .. } => None,
        }
    }

    /// Room left under the text cap.
    fn text_room(&self) -> usize {
        self.text_limit.saturating_sub(self.text_bytes)
    }

    /// Keeps what fits of `text` under the text cap and counts it; the rest is dropped.
    fn keep_text(&mut self, text: &mut String) {
        let room = self.text_room();
        self.dropped_bytes += truncate(text, room);
        self.text_bytes += text.len();
    }

    /// An error counts toward the text cap like printed text: its name (always, up to
    /// [`ERROR_NAME_BYTES`]), its value and its traceback lines as far as they fit.
    fn take_error(
        &mut self,
        mut ename: String,
        mut evalue: String,
        traceback: &[String],
    ) -> PythonError {
        self.dropped_bytes += truncate(&mut ename, ERROR_NAME_BYTES);
        self.text_bytes += ename.len();
        self.keep_text(&mut evalue);
        let mut kept = Vec::new();
        let mut dropped_lines = 0usize;
        for line in traceback {
            if self.text_room() == 0 {
                dropped_lines += 1;
                self.dropped_bytes += line.len();
                continue;
            }
            let mut line = strip_ansi(line);
            self.keep_text(&mut line);
            kept.push(line);
        }
        if dropped_lines > 0 {
            kept.push(format!(
                "[kernelbox: {dropped_lines} traceback lines dropped past the per-execution limit]"
            ));
        }
        PythonError {
            ename,
            evalue,
            traceback: kept,
        }
    }

    fn take_text(&mut self, mut text: String, stderr: bool) -> Option<ExecEvent> {
        self.keep_text(&mut text);
        if text.is_empty() {
            return None;
        }
        if stderr {
            self.stderr.push_str(&text);
            Some(ExecEvent::Stderr { text })
        } else {
            self.stdout.push_str(&text);
            Some(ExecEvent::Stdout { text })
        }
    }

    fn take_rich(&mut self, kind: OutputKind, data: MimeBundle) -> Option<ExecEvent> {
        // Every value counts, whatever its JSON type, by what it holds in memory.
        let size: usize = data
            .iter()
            .map(|(mime, value)| mime.len() + value_footprint(value))
            .sum();
        if self.rich_bytes + size > self.rich_limit {
            self.dropped_bytes += size;
            return None;
        }
        self.rich_bytes += size;
        self.outputs.push(Output {
            kind,
            data: data.clone(),
        });
        Some(match kind {
            OutputKind::Display => ExecEvent::Display { data },
            OutputKind::Result => ExecEvent::Result { data },
        })
    }

    pub(super) fn finish(mut self, mut result: ExecutionResult) -> ExecutionResult {
        if self.dropped_bytes > 0 {
            let marker = format!(
                "\n[kernelbox: output truncated, {} bytes dropped past the per-execution limit]\n",
                self.dropped_bytes
            );
            self.stdout.push_str(&marker);
            result.truncated = true;
        }
        result.stdout = self.stdout;
        result.stderr = self.stderr;
        result.outputs = self.outputs;
        result.error = result.error.or(self.error);
        result
    }
}

/// Cuts `text` to at most `room` bytes at a character boundary; returns the bytes cut.
fn truncate(text: &mut String, room: usize) -> usize {
    if text.len() <= room {
        return 0;
    }
    let mut cut = room;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let dropped = text.len() - cut;
    text.truncate(cut);
    dropped
}

/// Removes ANSI escape sequences (IPython colours tracebacks).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // CSI: parameters and intermediates, then one final byte in @..~.
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::execution::ExecutionOutcome;
    use chrono::Utc;

    #[test]
    fn ansi_colours_are_removed() {
        let coloured = "\u{1b}[0;31mZeroDivisionError\u{1b}[0m: division by zero";
        assert_eq!(strip_ansi(coloured), "ZeroDivisionError: division by zero");
        assert_eq!(strip_ansi("plain"), "plain");
    }

    #[test]
    fn text_past_the_cap_is_dropped_with_a_marker() {
        let mut collector = Collector::new(10, 100);
        assert!(
            collector
                .take(KernelEvent::Stdout {
                    text: "12345678".into()
                })
                .is_some()
        );
        let forwarded = collector.take(KernelEvent::Stdout {
            text: "abcdef".into(),
        });
        assert!(matches!(forwarded, Some(ExecEvent::Stdout { ref text }) if text == "ab"));
        assert!(
            collector
                .take(KernelEvent::Stderr {
                    text: "more".into()
                })
                .is_none()
        );
        let result = collector.finish(empty_result());
        assert!(result.truncated);
        assert!(
            result
                .stdout
                .starts_with("12345678ab\n[kernelbox: output truncated, 8 bytes")
        );
    }

    #[test]
    fn truncation_respects_utf8_boundaries() {
        let mut collector = Collector::new(3, 100);
        collector.take(KernelEvent::Stdout {
            text: "aé€".into()
        });
        let result = collector.finish(empty_result());
        assert!(result.stdout.starts_with("aé\n"));
    }

    #[test]
    fn errors_and_non_string_values_count_toward_the_caps() {
        let mut collector = Collector::new(100, 1000);
        collector.take(KernelEvent::Stdout {
            text: "x".repeat(60),
        });
        let traceback: Vec<String> = (0..50)
            .map(|i| format!("line {i:02} {}", "t".repeat(20)))
            .collect();
        let Some(ExecEvent::Error(error)) = collector.take(KernelEvent::Error {
            ename: "ValueError".into(),
            evalue: "v".repeat(10),
            traceback,
        }) else {
            panic!("the error is forwarded");
        };
        assert_eq!(error.ename, "ValueError");
        assert_eq!(error.evalue, "v".repeat(10));
        let kept: usize = error.traceback.iter().map(String::len).sum();
        assert!(
            kept < 100,
            "traceback kept {kept} bytes past a 100-byte cap"
        );
        assert!(
            error
                .traceback
                .last()
                .is_some_and(|line| line.contains("traceback lines dropped"))
        );
        // A nested JSON value is counted by its size, not as a token 64 bytes.
        let big: serde_json::Value = serde_json::json!({"rows": vec!["y".repeat(100); 20]});
        let mut bundle = MimeBundle::new();
        bundle.insert("application/json".into(), big);
        assert!(
            collector
                .take(KernelEvent::Result { data: bundle })
                .is_none()
        );
        // Past the cap, a further error is dropped, not forwarded.
        assert!(
            collector
                .take(KernelEvent::Error {
                    ename: "E".into(),
                    evalue: "again".into(),
                    traceback: vec!["x".into()],
                })
                .is_none()
        );
        let result = collector.finish(empty_result());
        assert!(result.truncated && result.outputs.is_empty());
        assert_eq!(
            result.error.map(|error| error.ename),
            Some("ValueError".into())
        );
    }

    fn empty_result() -> ExecutionResult {
        ExecutionResult {
            execution_id: "exe".into(),
            sandbox_id: "sbx".into(),
            outcome: ExecutionOutcome::Completed,
            stdout: String::new(),
            stderr: String::new(),
            outputs: Vec::new(),
            error: None,
            execution_count: None,
            started_at: Utc::now(),
            duration_ms: 0,
            truncated: false,
        }
    }
}
