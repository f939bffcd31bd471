//! The frame codec: a 4-byte big-endian length, bounded, then a MessagePack
//! map with named fields.

use std::fmt;
use std::io::Cursor;
use std::marker::PhantomData;

use bytes::{Buf, BufMut, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::codec::{Decoder, Encoder};

use crate::{DEFAULT_MAX_FRAME, HEADER_LEN, ProtocolError};

/// Encodes `Out` messages and decodes `In` messages as length-prefixed
/// MessagePack frames.
///
/// The Rust host uses `MessageCodec<Request, Response>`; a worker (or a fake
/// worker in tests) uses `MessageCodec<Response, Request>`.
///
/// Limits hold in both directions: an incoming header above `max_frame` is an
/// error before any buffer is reserved for it, and an outgoing message above
/// `max_frame` is an error before anything is written. After a decode error
/// the stream is out of step and must not be read further; `FramedRead`
/// enforces that by ending the stream.
pub struct MessageCodec<Out, In> {
    max_frame: usize,
    _messages: PhantomData<fn(Out) -> In>,
}

impl<Out, In> MessageCodec<Out, In> {
    /// A codec that accepts bodies of at most `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        // The header is a u32, so no body can exceed u32::MAX anyway.
        let max_frame = max_frame.min(u32::MAX as usize);
        Self {
            max_frame,
            _messages: PhantomData,
        }
    }

    /// The largest body this codec accepts.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }
}

impl<Out, In> Default for MessageCodec<Out, In> {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME)
    }
}

impl<Out, In> fmt::Debug for MessageCodec<Out, In> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageCodec")
            .field("max_frame", &self.max_frame)
            .finish_non_exhaustive()
    }
}

impl<Out, In> Clone for MessageCodec<Out, In> {
    fn clone(&self) -> Self {
        Self::new(self.max_frame)
    }
}

impl<Out, In: DeserializeOwned> Decoder for MessageCodec<Out, In> {
    type Item = In;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, ProtocolError> {
        let Some(len) = body_len(src) else {
            return Ok(None);
        };
        if len > self.max_frame {
            // Checked before any reservation: a hostile header costs nothing.
            return Err(ProtocolError::FrameTooLarge {
                len: len as u64,
                max: self.max_frame,
            });
        }
        let need = HEADER_LEN + len;
        if src.len() < need {
            src.reserve(need - src.len());
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        let body = src.split_to(len);
        decode_body(&body).map(Some)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<In>, ProtocolError> {
        match self.decode(src)? {
            Some(message) => Ok(Some(message)),
            None if src.is_empty() => Ok(None),
            None => Err(truncated(src)),
        }
    }
}

/// The body length announced by the header at the front of `src`, if the
/// header is complete.
fn body_len(src: &[u8]) -> Option<usize> {
    let header: [u8; HEADER_LEN] = src.get(..HEADER_LEN)?.try_into().ok()?;
    Some(u32::from_be_bytes(header) as usize)
}

fn truncated(src: &BytesMut) -> ProtocolError {
    let need = body_len(src).map_or(HEADER_LEN, |len| HEADER_LEN + len);
    ProtocolError::Truncated {
        have: src.len(),
        need,
    }
}

impl<Out: Serialize, In> Encoder<Out> for MessageCodec<Out, In> {
    type Error = ProtocolError;

    fn encode(&mut self, message: Out, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        self.encode(&message, dst)
    }
}

impl<Out: Serialize, In> Encoder<&Out> for MessageCodec<Out, In> {
    type Error = ProtocolError;

    fn encode(&mut self, message: &Out, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        // Serialise straight into the destination behind a placeholder header,
        // so a body is never copied; roll back if it turns out too large.
        let start = dst.len();
        dst.put_u32(0);
        let mut writer = dst.writer();
        let encoded = rmp_serde::encode::write_named(&mut writer, message);
        let dst = writer.into_inner();
        if let Err(error) = encoded {
            dst.truncate(start);
            return Err(error.into());
        }
        let len = dst.len() - start - HEADER_LEN;
        if len > self.max_frame {
            dst.truncate(start);
            return Err(ProtocolError::PayloadTooLarge {
                len,
                max: self.max_frame,
            });
        }
        let header = u32::try_from(len).map_err(|_| ProtocolError::PayloadTooLarge {
            len,
            max: self.max_frame,
        })?;
        dst[start..start + HEADER_LEN].copy_from_slice(&header.to_be_bytes());
        Ok(())
    }
}

/// Decodes one frame body (without its header) as a `T`.
///
/// # Errors
/// [`ProtocolError::Shape`] when the body is not a map,
/// [`ProtocolError::Decode`] when the bytes are not MessagePack of `T`'s
/// shape, [`ProtocolError::TrailingBytes`] when bytes are left after it.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ProtocolError> {
    // The contract's bodies are maps; rmp-serde would also accept a struct
    // as a positional array, which the contract rules out.
    match body.first() {
        Some(0x80..=0x8f | 0xde | 0xdf) => {}
        Some(marker) => {
            return Err(ProtocolError::Shape(format!(
                "a frame body must be a map, found marker byte {marker:#04x}"
            )));
        }
        None => return Err(ProtocolError::Shape("empty frame body".into())),
    }
    let mut cursor = Cursor::new(body);
    let value = T::deserialize(&mut rmp_serde::Deserializer::new(&mut cursor))?;
    let rest = cursor.remaining();
    if rest > 0 {
        return Err(ProtocolError::TrailingBytes(rest));
    }
    Ok(value)
}

/// Encodes a message as a frame body (named fields, without the header).
///
/// # Errors
/// [`ProtocolError::Encode`] if the value cannot be represented.
pub fn encode_body<T: Serialize + ?Sized>(message: &T) -> Result<Vec<u8>, ProtocolError> {
    Ok(rmp_serde::to_vec_named(message)?)
}
