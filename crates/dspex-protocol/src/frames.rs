//! Protocol 2's frames beside requests and replies: what a worker writes
//! ([`WorkerFrame`]: a reply, an event, a callback) and what the host writes
//! ([`HostFrame`]: a request, a callback's answer).
//!
//! ```text
//! worker → host   {"id", "ok", "result" | "error"}          a reply (exactly one per request)
//!                 {"id", "event", "data"}                    an event of request `id` (before its reply)
//!                 {"id", "call", "name", "args"}             a callback: run `name` on the host
//! host → worker   {"id", "command", "args", ...}             a request
//!                 {"call", "ok", "result" | "error"}         the answer to callback `call`
//! ```

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::{ErrorKind, RemoteError, Request, RequestId, Response};

/// A callback's id, unique within one worker.
pub type CallId = u64;

/// An event of a request that asked for them (`"events": true`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventFrame {
    /// The request the event belongs to.
    pub id: RequestId,
    /// Its kind: `chunk`, `progress`, `usage`, ...
    pub event: String,
    /// Its data (a map).
    #[serde(default)]
    pub data: Value,
}

/// A callback: the worker, running request `id`, asks the host to run the
/// handler `name` with `args` and answer [`CallAnswer`] with `call`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallFrame {
    /// The request being run.
    pub id: RequestId,
    /// The callback's id, for the answer.
    pub call: CallId,
    /// The handler to run (a tool's name, a reward function's name).
    pub name: String,
    /// Its arguments (a map).
    #[serde(default)]
    pub args: Value,
}

/// Any frame a worker writes.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkerFrame {
    /// A reply (the handshake is a reply with id 0).
    Reply(Response),
    /// An event of a request.
    Event(EventFrame),
    /// A callback to the host.
    Call(CallFrame),
}

/// The wire form every worker frame fits.
#[derive(Deserialize)]
struct WireWorkerFrame {
    id: RequestId,
    #[serde(default)]
    ok: Option<bool>,
    #[serde(default)]
    result: Option<Value>,
    #[serde(default)]
    error: Option<RemoteError>,
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    call: Option<CallId>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    args: Option<Value>,
}

impl<'de> Deserialize<'de> for WorkerFrame {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let wire = WireWorkerFrame::deserialize(deserializer)?;
        match (wire.ok, wire.call, wire.event) {
            (Some(ok), None, None) => {
                let outcome = match (ok, wire.result, wire.error) {
                    (true, result, None) => Ok(result.unwrap_or(Value::Null)),
                    (false, _, Some(error)) => Err(error),
                    (true, _, Some(_)) => {
                        return Err(D::Error::custom(
                            "a reply with `ok: true` must not carry an `error`",
                        ));
                    }
                    (false, _, None) => {
                        return Err(D::Error::custom(
                            "a reply with `ok: false` must carry an `error`",
                        ));
                    }
                };
                Ok(Self::Reply(Response {
                    id: wire.id,
                    outcome,
                }))
            }
            (None, Some(call), None) => Ok(Self::Call(CallFrame {
                id: wire.id,
                call,
                name: wire
                    .name
                    .ok_or_else(|| D::Error::custom("a callback frame needs a `name`"))?,
                args: wire
                    .args
                    .unwrap_or_else(|| Value::Object(Default::default())),
            })),
            (None, None, Some(event)) => Ok(Self::Event(EventFrame {
                id: wire.id,
                event,
                data: wire.data.unwrap_or(Value::Null),
            })),
            _ => Err(D::Error::custom(
                "a worker frame is a reply (`ok`), an event (`event`) or a callback (`call`), \
                 and exactly one of them",
            )),
        }
    }
}

impl Serialize for WorkerFrame {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Reply(response) => response.serialize(serializer),
            Self::Event(event) => event.serialize(serializer),
            Self::Call(call) => call.serialize(serializer),
        }
    }
}

/// Why the host could not run a callback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallError {
    /// `ToolError` (the handler failed, panicked, timed out or is unknown)
    /// or `Cancelled` (the request's caller is gone).
    pub kind: ErrorKind,
    /// What happened.
    pub message: String,
    /// More, if any (the handler's name, the reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

impl CallError {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            details: None,
        }
    }
}

/// The host's answer to callback `call`.
#[derive(Debug, Clone, PartialEq)]
pub struct CallAnswer {
    /// The callback answered.
    pub call: CallId,
    /// Its result, or why there is none.
    pub outcome: Result<Value, CallError>,
}

#[derive(Serialize, Deserialize)]
struct WireCallAnswer {
    call: CallId,
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<CallError>,
}

impl Serialize for CallAnswer {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (ok, result, error) = match &self.outcome {
            Ok(result) => (true, Some(result.clone()), None),
            Err(error) => (false, None, Some(error.clone())),
        };
        WireCallAnswer {
            call: self.call,
            ok,
            result,
            error,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for CallAnswer {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let wire = WireCallAnswer::deserialize(deserializer)?;
        let outcome = match (wire.ok, wire.result, wire.error) {
            (true, result, None) => Ok(result.unwrap_or(Value::Null)),
            (false, _, Some(error)) => Err(error),
            _ => {
                return Err(D::Error::custom(
                    "a callback answer is ok with a result, or an error",
                ));
            }
        };
        Ok(Self {
            call: wire.call,
            outcome,
        })
    }
}

/// Any frame the host writes.
#[derive(Debug, Clone, PartialEq)]
pub enum HostFrame {
    /// A request.
    Request(Request),
    /// The answer to a callback.
    Answer(CallAnswer),
}

impl Serialize for HostFrame {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Request(request) => request.serialize(serializer),
            Self::Answer(answer) => answer.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for HostFrame {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let value = Value::deserialize(deserializer)?;
        let is_answer = value.get("call").is_some() && value.get("command").is_none();
        if is_answer {
            serde_json::from_value(value)
                .map(Self::Answer)
                .map_err(D::Error::custom)
        } else {
            serde_json::from_value(value)
                .map(Self::Request)
                .map_err(D::Error::custom)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Command, MessageCodec};
    use bytes::BytesMut;
    use serde_json::json;
    use tokio_util::codec::{Decoder, Encoder};

    fn round_trip_worker(frame: WorkerFrame) -> WorkerFrame {
        let mut wire = BytesMut::new();
        MessageCodec::<WorkerFrame, HostFrame>::default()
            .encode(&frame, &mut wire)
            .unwrap();
        MessageCodec::<HostFrame, WorkerFrame>::default()
            .decode(&mut wire)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn worker_frames_round_trip_and_are_told_apart() {
        let frames = [
            WorkerFrame::Reply(Response::ok(3, json!({"x": 1}))),
            WorkerFrame::Reply(Response::error(
                4,
                RemoteError::new(ErrorKind::LmError, "no"),
            )),
            WorkerFrame::Event(EventFrame {
                id: 5,
                event: "chunk".into(),
                data: json!({"field": "answer", "text": "Hel"}),
            }),
            WorkerFrame::Call(CallFrame {
                id: 6,
                call: 1,
                name: "calculator".into(),
                args: json!({"expression": "2+2"}),
            }),
        ];
        for frame in frames {
            assert_eq!(round_trip_worker(frame.clone()), frame);
        }
    }

    #[test]
    fn ambiguous_worker_frames_are_refused() {
        let both = json!({"id": 1, "ok": true, "event": "chunk"});
        let body = rmp_serde::to_vec_named(&both).unwrap();
        assert!(crate::decode_body::<WorkerFrame>(&body).is_err());
        let neither = json!({"id": 1});
        let body = rmp_serde::to_vec_named(&neither).unwrap();
        assert!(crate::decode_body::<WorkerFrame>(&body).is_err());
    }

    #[test]
    fn host_frames_round_trip() {
        let frames = [
            HostFrame::Request(Request::new(9, Command::Ping)),
            HostFrame::Answer(CallAnswer {
                call: 2,
                outcome: Ok(json!(4)),
            }),
            HostFrame::Answer(CallAnswer {
                call: 3,
                outcome: Err(CallError::new(ErrorKind::Cancelled, "the caller has gone")),
            }),
        ];
        for frame in frames {
            let mut wire = BytesMut::new();
            MessageCodec::<HostFrame, WorkerFrame>::default()
                .encode(&frame, &mut wire)
                .unwrap();
            let back = MessageCodec::<WorkerFrame, HostFrame>::default()
                .decode(&mut wire)
                .unwrap()
                .unwrap();
            assert_eq!(back, frame);
        }
        let answer = serde_json::to_value(CallAnswer {
            call: 7,
            outcome: Err(CallError::new(ErrorKind::ToolError, "boom")),
        })
        .unwrap();
        assert_eq!(
            answer,
            json!({"call": 7, "ok": false, "error": {"kind": "ToolError", "message": "boom"}})
        );
    }
}
