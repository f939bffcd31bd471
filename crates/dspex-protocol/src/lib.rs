//! The DSPex wire protocol: how Rust talks to a Python worker.
//!
//! A frame is a 4-byte big-endian unsigned length followed by that many bytes
//! of MessagePack. Bodies are maps with string keys (named fields, never
//! positional arrays). The worker's first frame is the [`Ready`] handshake;
//! after it every [`Request`] carries a non-zero id and is answered by exactly
//! one [`Response`] with the same id.
//!
//! This crate has no actors and no processes: it is the codec
//! ([`MessageCodec`], a [`tokio_util::codec`] pair), the typed messages, the
//! error kinds of the contract ([`ErrorKind`]) and the [`ProtocolError`]s a
//! malformed stream produces. Every malformed input is a typed error, never a
//! panic, and a length header above the configured maximum is rejected
//! *before* any buffer is allocated for it.
//!
//! ```
//! use bytes::BytesMut;
//! use dspex_protocol::{Command, MessageCodec, Request, Response};
//! use tokio_util::codec::{Decoder, Encoder};
//!
//! // The Rust side encodes requests and decodes responses.
//! let mut client = MessageCodec::<Request, Response>::default();
//! // A worker does the opposite.
//! let mut worker = MessageCodec::<Response, Request>::default();
//!
//! let mut wire = BytesMut::new();
//! client.encode(Request::new(7, Command::Ping), &mut wire)?;
//! let request = worker.decode(&mut wire)?.expect("one whole frame");
//! assert_eq!(request.id, 7);
//! assert_eq!(request.command, "ping");
//! # Ok::<(), dspex_protocol::ProtocolError>(())
//! ```

mod canonical;
mod codec;
mod error;
mod frames;
mod message;
mod secret;

pub use canonical::{canonical_json, program_hash};
pub use codec::{MessageCodec, decode_body, encode_body};
pub use error::{ErrorKind, ProtocolError, RemoteError};
pub use frames::{CallAnswer, CallError, CallFrame, CallId, EventFrame, HostFrame, WorkerFrame};
pub use message::{
    BatchArgs, Budget, Command, EvaluateArgs, Example, ExecuteArgs, FieldSpec, LmConfig,
    MAX_COMMAND_NAME, MetricSpec, OptimizeArgs, ProgramDefinition, ProgramStateArgs, Ready,
    Request, RequestId, Response, SignatureSpec,
};
pub use secret::{REDACTED, Secret, is_secret_key};
pub use serde_json::{Map, Value};

/// The newest protocol version this crate speaks (Protocol 2: deadlines,
/// events, callbacks, cancellation; see the handshake's `features`).
pub const PROTOCOL_VERSION: u32 = 2;

/// The oldest protocol version a worker may announce and still be served.
pub const MIN_PROTOCOL_VERSION: u32 = 1;

/// The default largest frame body accepted in either direction: 64 MiB.
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024 * 1024;

/// Bytes in a frame header (a big-endian `u32` body length).
pub const HEADER_LEN: usize = 4;
