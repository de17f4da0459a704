//! One `execute_request` as a stream of [`KernelEvent`]s. It is finished only when both the
//! shell `execute_reply` and the iopub `status: idle` have arrived: they race, and stopping at
//! the first loses output.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::KernelError;
use super::routing::{Channel, Route, Routed};

/// A MIME bundle: `{"text/plain": "...", "image/png": "<base64>", ...}`.
pub type MimeBundle = Map<String, Value>;

/// What the kernel produced, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum KernelEvent {
    Stdout {
        text: String,
    },
    Stderr {
        text: String,
    },
    /// `display_data` / `update_display_data`.
    Display {
        data: MimeBundle,
    },
    /// `execute_result`: the value of the last expression.
    Result {
        data: MimeBundle,
    },
    Error {
        ename: String,
        evalue: String,
        traceback: Vec<String>,
    },
    /// The execution finished; `status` is `ok`, `error` or `aborted`.
    Done {
        status: String,
        execution_count: Option<i64>,
    },
}

/// An execution in flight.
pub struct KernelExecution {
    route: Route,
    reply: Option<Value>,
    idle: bool,
    /// The kernel has begun running the code: its `execute_input` arrived.
    started: bool,
    finished: bool,
}

impl KernelExecution {
    pub(crate) fn new(route: Route) -> Self {
        Self {
            route,
            reply: None,
            idle: false,
            started: false,
            finished: false,
        }
    }

    /// The request's `msg_id`.
    pub fn msg_id(&self) -> &str {
        self.route.msg_id()
    }

    /// The next event. After `Done` it returns `Ok(None)`. `Err(Closed)` means the kernel
    /// connection dropped mid-way (the kernel died or was restarted).
    pub async fn next(&mut self) -> Result<Option<KernelEvent>, KernelError> {
        loop {
            if self.finished {
                return Ok(None);
            }
            if let Some(event) = self.step().await? {
                return Ok(Some(event));
            }
        }
    }

    /// Waits until the kernel has begun running the code, or the execution has finished;
    /// what it printed meanwhile is dropped. This is for an execution about to be interrupted:
    /// ipykernel ignores SIGINT between requests, so an interrupt that reaches it before it
    /// starts the code is lost and the code then runs on. A silent execution publishes no
    /// `execute_input`: for it this waits until it finishes, so bound it with a deadline.
    pub async fn discard_until_started(&mut self) -> Result<(), KernelError> {
        while !self.started && !self.finished {
            self.step().await?;
        }
        Ok(())
    }

    /// Waits until the kernel is idle again after this request, whether or not it replied;
    /// what it printed meanwhile is dropped. This is for an interrupted execution: a
    /// KeyboardInterrupt that lands in ipykernel's own code around the cell ends the request
    /// with no `execute_reply` ("KeyboardInterrupt caught in kernel"), but still with `idle`.
    pub async fn discard_until_idle(&mut self) -> Result<(), KernelError> {
        while !self.idle && !self.finished {
            self.step().await?;
        }
        Ok(())
    }

    /// Takes one message from the kernel and returns the event it makes, if any; `Done` once
    /// both the reply and `idle` are in.
    async fn step(&mut self) -> Result<Option<KernelEvent>, KernelError> {
        if self.idle
            && let Some(reply) = self.reply.take()
        {
            self.finished = true;
            return Ok(Some(KernelEvent::Done {
                status: str_field(&reply, "status").unwrap_or_else(|| "ok".into()),
                execution_count: reply.get("execution_count").and_then(Value::as_i64),
            }));
        }
        let Routed { channel, message } = self.route.recv().await.ok_or(KernelError::Closed)?;
        let content = message.content;
        Ok(match (channel, message.header.msg_type.as_str()) {
            (Channel::Shell, "execute_reply") => {
                self.reply = Some(content);
                None
            }
            (Channel::IoPub, "status")
                if content.get("execution_state").and_then(Value::as_str) == Some("idle") =>
            {
                self.idle = true;
                None
            }
            (Channel::IoPub, "execute_input") => {
                self.started = true;
                None
            }
            (Channel::IoPub, "stream") => {
                let text = str_field(&content, "text").unwrap_or_default();
                Some(match content.get("name").and_then(Value::as_str) {
                    Some("stderr") => KernelEvent::Stderr { text },
                    _ => KernelEvent::Stdout { text },
                })
            }
            (Channel::IoPub, "display_data" | "update_display_data") => {
                Some(KernelEvent::Display {
                    data: bundle(content),
                })
            }
            (Channel::IoPub, "execute_result") => Some(KernelEvent::Result {
                data: bundle(content),
            }),
            (Channel::IoPub, "error") => {
                let traceback = content
                    .get("traceback")
                    .and_then(Value::as_array)
                    .map(|lines| {
                        lines
                            .iter()
                            .filter_map(Value::as_str)
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default();
                Some(KernelEvent::Error {
                    ename: str_field(&content, "ename").unwrap_or_default(),
                    evalue: str_field(&content, "evalue").unwrap_or_default(),
                    traceback,
                })
            }
            // clear_output, comm traffic: nothing to report.
            _ => None,
        })
    }
}

fn str_field(content: &Value, field: &str) -> Option<String> {
    content.get(field).and_then(Value::as_str).map(String::from)
}

fn bundle(mut content: Value) -> MimeBundle {
    match content.get_mut("data").map(Value::take) {
        Some(Value::Object(data)) => data,
        _ => Map::new(),
    }
}
