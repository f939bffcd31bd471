//! Arbitrary bytes into both decoders: any result is fine, a panic is a bug.
#![no_main]

use bytes::BytesMut;
use dspex_protocol::{MessageCodec, Request, Response};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let mut client = MessageCodec::<Request, Response>::new(1 << 16);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(_)) = client.decode(&mut buf) {}
    let _ = client.decode_eof(&mut buf);

    let mut worker = MessageCodec::<Response, Request>::new(1 << 16);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(_)) = worker.decode(&mut buf) {}
});
