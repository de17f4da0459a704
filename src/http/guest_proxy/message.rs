//! JSON-RPC 2.0 messages as a proxy client sends them: one message or a batch (2025-03-26),
//! each told apart as request, notification, response or invalid. Pure functions, no I/O.
//!
//! The seed's shorthand for tool calls, `{"tool_name": …, "params": {…}}` as the params of
//! `tools/call`, is translated here to the standard `{"name": …, "arguments": {…}}`.

use serde_json::{Map, Value};

use super::error::ProxyError;

/// What a POST body holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    Single(Message),
    Batch(Vec<Message>),
}

/// One message from the client.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// Expects a response; `body` is the whole object, ready to forward.
    Request {
        id: Value,
        method: String,
        body: Value,
    },
    Notification {
        method: String,
        body: Value,
    },
    /// The client's answer to a request the server made.
    Response {
        body: Value,
    },
    /// Not a valid JSON-RPC message; `id` is the request's id when it had a usable one.
    Invalid {
        id: Value,
        reason: &'static str,
    },
}

impl Message {
    pub fn is_initialize(&self) -> bool {
        matches!(self, Message::Request { method, .. } if method == "initialize")
    }
}

impl Incoming {
    /// The messages, in order.
    pub fn messages(&self) -> &[Message] {
        match self {
            Incoming::Single(message) => std::slice::from_ref(message),
            Incoming::Batch(messages) => messages,
        }
    }

    /// Whether anything in it expects an answer in the HTTP response.
    pub fn expects_answer(&self) -> bool {
        self.messages()
            .iter()
            .any(|message| matches!(message, Message::Request { .. } | Message::Invalid { .. }))
    }
}

/// Most messages one batch may hold: each request's answer is held until the last one comes,
/// and each can be up to a guest server's line (16 MiB).
pub const MAX_BATCH: usize = 64;

/// Parses a POST body. Not JSON is a parse error; an empty batch, one of more than
/// [`MAX_BATCH`] messages, or a single invalid message is an invalid request (an invalid
/// message inside a batch gets an error answer of its own).
pub fn parse(body: &[u8]) -> Result<Incoming, ProxyError> {
    let value: Value = serde_json::from_slice(body).map_err(|_| ProxyError::Parse)?;
    match value {
        Value::Array(items) if items.is_empty() => Err(ProxyError::InvalidRequest {
            id: Value::Null,
            reason: "an empty batch",
        }),
        Value::Array(items) if items.len() > MAX_BATCH => Err(ProxyError::InvalidRequest {
            id: Value::Null,
            reason: "a batch of more than 64 messages; send them in smaller batches",
        }),
        Value::Array(items) => Ok(Incoming::Batch(items.into_iter().map(classify).collect())),
        single => match classify(single) {
            Message::Invalid { id, reason } => Err(ProxyError::InvalidRequest { id, reason }),
            message => Ok(Incoming::Single(message)),
        },
    }
}

/// Tells one message apart.
pub fn classify(value: Value) -> Message {
    let Value::Object(mut object) = value else {
        return Message::Invalid {
            id: Value::Null,
            reason: "a message must be a JSON object",
        };
    };
    let id = object.get("id").cloned();
    let usable_id = id
        .clone()
        .filter(|id| id.is_string() || id.is_i64() || id.is_u64());
    let invalid = |reason| Message::Invalid {
        id: usable_id.clone().unwrap_or(Value::Null),
        reason,
    };
    if object.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return invalid("\"jsonrpc\" must be \"2.0\"");
    }
    if let Some(method) = object.get("method") {
        let Some(method) = method.as_str().map(str::to_string) else {
            return invalid("\"method\" must be a string");
        };
        if method.is_empty() {
            return invalid("\"method\" must not be empty");
        }
        if let Some(params) = object.get("params")
            && !params.is_object()
            && !params.is_array()
        {
            return invalid("\"params\" must be an object or an array");
        }
        if method == "tools/call"
            && let Some(Value::Object(params)) = object.get_mut("params")
        {
            translate_shorthand(params);
        }
        return match id {
            None => Message::Notification {
                method,
                body: Value::Object(object),
            },
            Some(_) => match usable_id.clone() {
                Some(id) => Message::Request {
                    id,
                    method,
                    body: Value::Object(object),
                },
                None => invalid("\"id\" must be a string or an integer"),
            },
        };
    }
    let is_response = object.contains_key("result") != object.contains_key("error");
    match (usable_id.is_some(), is_response) {
        (true, true) => Message::Response {
            body: Value::Object(object),
        },
        _ => invalid("neither a request, a notification nor a response"),
    }
}

/// `{"tool_name": t, "params": {…}}` becomes `{"name": t, "arguments": {…}}`; standard params
/// (and `_meta`) are left alone.
pub fn translate_shorthand(params: &mut Map<String, Value>) {
    if params.contains_key("name") {
        return;
    }
    let Some(tool) = params.remove("tool_name") else {
        return;
    };
    params.insert("name".into(), tool);
    if !params.contains_key("arguments") {
        let arguments = params
            .remove("params")
            .unwrap_or_else(|| Value::Object(Map::new()));
        params.insert("arguments".into(), arguments);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_batch_past_the_limit_is_refused_and_says_the_limit() {
        let request = r#"{"jsonrpc": "2.0", "id": 1, "method": "ping"}"#;
        let batch = |count: usize| format!("[{}]", vec![request; count].join(","));
        assert!(matches!(parsed(&batch(MAX_BATCH)), Ok(Incoming::Batch(_))));
        match parsed(&batch(MAX_BATCH + 1)) {
            Err(ProxyError::InvalidRequest { reason, .. }) => {
                assert!(reason.contains(&format!("more than {MAX_BATCH} messages")))
            }
            other => panic!("{:?}", other.map(|_| "parsed")),
        }
    }

    fn parsed(text: &str) -> Result<Incoming, ProxyError> {
        parse(text.as_bytes())
    }

    #[test]
    fn single_messages_are_told_apart() {
        let request = parsed(r#"{"jsonrpc":"2.0","id":"a","method":"tools/list"}"#).expect("ok");
        assert!(matches!(
            request,
            Incoming::Single(Message::Request { ref id, ref method, .. }) if id == "a" && method == "tools/list"
        ));
        assert!(request.expects_answer());
        let notification =
            parsed(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).expect("ok");
        assert!(matches!(
            notification,
            Incoming::Single(Message::Notification { .. })
        ));
        assert!(!notification.expects_answer());
        let response = parsed(r#"{"jsonrpc":"2.0","id":5,"result":{}}"#).expect("ok");
        assert!(matches!(
            response,
            Incoming::Single(Message::Response { .. })
        ));
    }

    #[test]
    fn malformed_json_is_a_parse_error_and_bad_shapes_are_invalid() {
        assert!(matches!(parsed("{not json"), Err(ProxyError::Parse)));
        assert!(matches!(parsed(""), Err(ProxyError::Parse)));
        for bad in [
            r#"[]"#,
            r#"42"#,
            r#"{"id":1,"method":"x"}"#,
            r#"{"jsonrpc":"1.0","id":1,"method":"x"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":7}"#,
            r#"{"jsonrpc":"2.0","id":{"a":1},"method":"x"}"#,
            r#"{"jsonrpc":"2.0","id":1.5,"method":"x"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"x","params":3}"#,
            r#"{"jsonrpc":"2.0","id":1}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{},"error":{}}"#,
        ] {
            assert!(
                matches!(parsed(bad), Err(ProxyError::InvalidRequest { .. })),
                "{bad}"
            );
        }
        match parsed(r#"{"jsonrpc":"1.0","id":9,"method":"x"}"#) {
            Err(ProxyError::InvalidRequest { id, .. }) => assert_eq!(id, 9),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn batches_keep_order_and_answer_invalid_members() {
        let batch = parsed(
            r#"[{"jsonrpc":"2.0","id":1,"method":"a"},{"jsonrpc":"2.0","method":"n"},"junk",{"jsonrpc":"2.0","id":2,"method":"b"}]"#,
        )
        .expect("batch");
        let Incoming::Batch(messages) = batch else {
            panic!("not a batch")
        };
        assert_eq!(messages.len(), 4);
        assert!(matches!(&messages[0], Message::Request { id, .. } if id == 1));
        assert!(matches!(&messages[1], Message::Notification { .. }));
        assert!(matches!(
            &messages[2],
            Message::Invalid {
                id: Value::Null,
                ..
            }
        ));
        assert!(matches!(&messages[3], Message::Request { id, .. } if id == 2));
    }

    #[test]
    fn the_tool_call_shorthand_becomes_name_and_arguments() {
        let incoming = parsed(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"tool_name":"get_current_time","params":{"timezone":"UTC"},"_meta":{"progressToken":3}}}"#,
        )
        .expect("ok");
        let Incoming::Single(Message::Request { body, .. }) = incoming else {
            panic!("not a request")
        };
        assert_eq!(
            body["params"],
            json!({"name": "get_current_time", "arguments": {"timezone": "UTC"}, "_meta": {"progressToken": 3}})
        );
        let mut standard = json!({"name": "t", "arguments": {"a": 1}})
            .as_object()
            .cloned()
            .expect("object");
        let before = standard.clone();
        translate_shorthand(&mut standard);
        assert_eq!(standard, before, "standard params are left alone");
        let mut bare = json!({"tool_name": "t"})
            .as_object()
            .cloned()
            .expect("object");
        translate_shorthand(&mut bare);
        assert_eq!(Value::Object(bare), json!({"name": "t", "arguments": {}}));
    }

    #[test]
    fn shorthand_is_only_for_tool_calls() {
        let incoming =
            parsed(r#"{"jsonrpc":"2.0","id":1,"method":"other","params":{"tool_name":"x"}}"#)
                .expect("ok");
        let Incoming::Single(Message::Request { body, .. }) = incoming else {
            panic!("not a request")
        };
        assert_eq!(body["params"], json!({"tool_name": "x"}));
    }
}
