//! Jupyter wire format: `[identities…, "<IDS|MSG>", signature, header, parent, metadata, content,
//! buffers…]`, signed with HMAC-SHA256 over the four JSON frames exactly as sent.

use bytes::Bytes;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;

use crate::json_budget::{MAX_JSON_VALUES, within_budget};

const DELIMITER: &[u8] = b"<IDS|MSG>";
const PROTOCOL_VERSION: &str = "5.3";

/// A malformed or forged message.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("message has no <IDS|MSG> delimiter")]
    NoDelimiter,
    #[error("message has {frames} frames after the delimiter, need at least 5")]
    TooFewFrames { frames: usize },
    #[error("message signature does not match")]
    BadSignature,
    #[error("message frame {frame} is not valid JSON")]
    Json {
        frame: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("message frame {frame} holds more than {MAX_JSON_VALUES} JSON values (about {values})")]
    TooManyValues { frame: &'static str, values: usize },
}

/// A message header.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Header {
    pub msg_id: String,
    pub session: String,
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub date: String,
    pub msg_type: String,
    #[serde(default)]
    pub version: String,
}

/// A decoded message. The parent header is kept as JSON: only its `msg_id` is needed.
#[derive(Debug, Clone)]
pub struct Message {
    pub header: Header,
    pub parent_header: Value,
    pub content: Value,
}

impl Message {
    /// The `msg_id` of the request this message answers, if any.
    pub fn parent_msg_id(&self) -> Option<&str> {
        self.parent_header.get("msg_id").and_then(Value::as_str)
    }

    pub fn msg_type(&self) -> &str {
        &self.header.msg_type
    }
}

/// Signs outgoing and verifies incoming messages with one session's key.
#[derive(Clone)]
pub struct Codec {
    mac: Hmac<Sha256>,
    session: String,
}

impl Codec {
    pub fn new(key: &str) -> Self {
        // HMAC accepts keys of any length, so this cannot fail.
        let mac = Hmac::<Sha256>::new_from_slice(key.as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        Self {
            mac,
            session: uuid::Uuid::new_v4().to_string(),
        }
    }

    /// Builds and signs a request. Returns the message and its `msg_id`.
    pub fn request(&self, msg_type: &str, content: &Value) -> (Vec<Bytes>, String) {
        let msg_id = uuid::Uuid::new_v4().to_string();
        let header = Header {
            msg_id: msg_id.clone(),
            session: self.session.clone(),
            username: "kernelbox".into(),
            date: chrono::Utc::now().to_rfc3339(),
            msg_type: msg_type.into(),
            version: PROTOCOL_VERSION.into(),
        };
        let frames = [
            to_bytes(&header),
            Bytes::from_static(b"{}"),
            Bytes::from_static(b"{}"),
            to_bytes(content),
        ];
        let signature = hex::encode(self.sign(&frames));
        let mut message = Vec::with_capacity(6);
        message.push(Bytes::from_static(DELIMITER));
        message.push(Bytes::from(signature));
        message.extend(frames);
        (message, msg_id)
    }

    /// Verifies and decodes a message received from the kernel.
    pub fn decode(&self, frames: Vec<Bytes>) -> Result<Message, WireError> {
        let start = frames
            .iter()
            .position(|frame| frame.as_ref() == DELIMITER)
            .ok_or(WireError::NoDelimiter)?;
        let rest = &frames[start + 1..];
        if rest.len() < 5 {
            return Err(WireError::TooFewFrames { frames: rest.len() });
        }
        let signature = hex::decode(&rest[0]).map_err(|_| WireError::BadSignature)?;
        let mut mac = self.mac.clone();
        for frame in &rest[1..5] {
            mac.update(frame);
        }
        mac.verify_slice(&signature)
            .map_err(|_| WireError::BadSignature)?;
        let parse = |frame: &'static str, bytes: &Bytes| {
            within_budget(bytes).map_err(|values| WireError::TooManyValues { frame, values })?;
            serde_json::from_slice::<Value>(bytes)
                .map_err(|source| WireError::Json { frame, source })
        };
        let header =
            serde_json::from_slice::<Header>(&rest[1]).map_err(|source| WireError::Json {
                frame: "header",
                source,
            })?;
        Ok(Message {
            header,
            parent_header: parse("parent_header", &rest[2])?,
            content: parse("content", &rest[4])?,
        })
    }

    fn sign(&self, frames: &[Bytes]) -> Vec<u8> {
        let mut mac = self.mac.clone();
        for frame in frames {
            mac.update(frame);
        }
        mac.finalize().into_bytes().to_vec()
    }
}

fn to_bytes<T: Serialize>(value: &T) -> Bytes {
    // Serializing plain structs and `Value`s to JSON cannot fail.
    Bytes::from(serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reply_to(codec: &Codec, request: &[Bytes], msg_type: &str, content: Value) -> Vec<Bytes> {
        let parent: Value = serde_json::from_slice(&request.get(2).cloned().unwrap_or_default())
            .unwrap_or(Value::Null);
        let header = json!({"msg_id": "r1", "session": "k", "msg_type": msg_type});
        let frames = [
            to_bytes(&header),
            to_bytes(&parent),
            to_bytes(&json!({})),
            to_bytes(&content),
        ];
        let mut message = vec![
            Bytes::from_static(b"identity"),
            Bytes::from_static(DELIMITER),
            Bytes::from(hex::encode(codec.sign(&frames))),
        ];
        message.extend(frames);
        message
    }

    #[test]
    fn round_trip_matches_parent() {
        let codec = Codec::new("secret");
        let (request, msg_id) = codec.request("execute_request", &json!({"code": "1+1"}));
        let reply = reply_to(&codec, &request, "execute_reply", json!({"status": "ok"}));
        let decoded = codec.decode(reply).expect("valid message");
        assert_eq!(decoded.parent_msg_id(), Some(msg_id.as_str()));
        assert_eq!(decoded.msg_type(), "execute_reply");
        assert_eq!(decoded.content["status"], "ok");
    }

    #[test]
    fn wrong_key_is_rejected() {
        let ours = Codec::new("secret");
        let theirs = Codec::new("other");
        let (request, _) = ours.request("kernel_info_request", &json!({}));
        let forged = reply_to(&theirs, &request, "kernel_info_reply", json!({}));
        assert!(matches!(ours.decode(forged), Err(WireError::BadSignature)));
    }

    #[test]
    fn tampered_content_is_rejected() {
        let codec = Codec::new("secret");
        let (request, _) = codec.request("execute_request", &json!({}));
        let reply = reply_to(&codec, &request, "execute_reply", json!({"status": "ok"}));
        let mut tampered = reply;
        let last = tampered.len() - 1;
        tampered[last] = Bytes::from_static(b"{\"status\":\"error\"}");
        assert!(matches!(
            codec.decode(tampered),
            Err(WireError::BadSignature)
        ));
    }

    #[test]
    fn a_frame_of_countless_tiny_values_is_refused_before_it_is_parsed() {
        let codec = Codec::new("secret");
        let (request, _) = codec.request("execute_request", &json!({}));
        // 3 bytes a value: about 1.5 MB of text, parsed it would be over 25 MB.
        let tiny = vec![json!([]); MAX_JSON_VALUES * 2];
        let flood = reply_to(&codec, &request, "display_data", json!({ "data": tiny }));
        assert!(matches!(
            codec.decode(flood),
            Err(WireError::TooManyValues {
                frame: "content",
                ..
            })
        ));
        // Large output of few values passes.
        let text = "x".repeat(4 * 1024 * 1024);
        let big = reply_to(
            &codec,
            &request,
            "stream",
            json!({"name": "stdout", "text": text}),
        );
        assert!(codec.decode(big).is_ok());
    }

    #[test]
    fn missing_delimiter_is_rejected() {
        let codec = Codec::new("secret");
        let message = vec![Bytes::from_static(b"junk")];
        assert!(matches!(codec.decode(message), Err(WireError::NoDelimiter)));
    }
}
