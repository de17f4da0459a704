//! An execution's output under its caps: what is kept, what is forwarded to the consumer, and
//! the marker that says how much was dropped.

use super::execution::{ExecEvent, ExecutionResult, Output, OutputKind, PythonError};
use crate::kernel::{KernelEvent, MimeBundle};

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
                let error = PythonError {
                    ename,
                    evalue,
                    traceback: traceback.iter().map(|line| strip_ansi(line)).collect(),
                };
                self.error = Some(error.clone());
                Some(ExecEvent::Error(error))
            }
            KernelEvent::Done { .. } => None,
        }
    }

    fn take_text(&mut self, mut text: String, stderr: bool) -> Option<ExecEvent> {
        let room = self.text_limit.saturating_sub(self.text_bytes);
        if text.len() > room {
            let mut cut = room;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            self.dropped_bytes += text.len() - cut;
            text.truncate(cut);
        }
        if text.is_empty() {
            return None;
        }
        self.text_bytes += text.len();
        if stderr {
            self.stderr.push_str(&text);
            Some(ExecEvent::Stderr { text })
        } else {
            self.stdout.push_str(&text);
            Some(ExecEvent::Stdout { text })
        }
    }

    fn take_rich(&mut self, kind: OutputKind, data: MimeBundle) -> Option<ExecEvent> {
        let size: usize = data
            .values()
            .map(|value| value.as_str().map_or(64, str::len))
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
