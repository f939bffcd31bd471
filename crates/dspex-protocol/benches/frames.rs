//! Micro-benchmarks of what the host does per request on the protocol
//! side: encoding an `execute_program` frame, decoding its reply, and the
//! program hash (computed once per definition, not per call). `cargo bench
//! -p dspex-protocol`; `dspex bench` measures the whole system.

#![allow(missing_docs)]

use dspex_protocol::{
    FieldSpec, HostFrame, ProgramDefinition, Request, SignatureSpec, Value, WorkerFrame,
    decode_body, encode_body, program_hash,
};
use serde_json::json;

fn main() {
    divan::main();
}

fn execute_request() -> HostFrame {
    HostFrame::Request(Request {
        id: 42,
        command: "execute_program".into(),
        args: json!({
            "program_id": "qa",
            "inputs": {"question": "What is the capital of France?"},
        }),
        session_id: None,
        deadline_ms: Some(30_000),
        events: false,
        logs: false,
    })
}

fn reply_bytes() -> Vec<u8> {
    let reply = json!({
        "id": 42,
        "ok": true,
        "result": {
            "outputs": {"answer": "Paris"},
            "usage": {"dummy": {"prompt_tokens": 120, "completion_tokens": 8, "total_tokens": 128}},
        },
    });
    encode_body(&reply).expect("encodes")
}

fn definition() -> ProgramDefinition {
    let field = |name: &str| FieldSpec {
        name: name.into(),
        ty: "str".into(),
        description: None,
        optional: false,
    };
    ProgramDefinition {
        program_id: "qa".into(),
        signature: SignatureSpec {
            name: "QA".into(),
            instructions: "Answer the question.".into(),
            inputs: vec![field("question")],
            outputs: vec![field("answer")],
        },
        module: "predict".into(),
        demos: vec![json!({"question": "What is 2 + 2?", "answer": "4"})],
        module_args: serde_json::Map::new(),
        state: None,
    }
}

#[divan::bench]
fn encode_execute_request(bencher: divan::Bencher<'_, '_>) {
    let frame = execute_request();
    bencher.bench(|| encode_body(divan::black_box(&frame)).expect("encodes"));
}

#[divan::bench]
fn decode_execute_reply(bencher: divan::Bencher<'_, '_>) {
    let bytes = reply_bytes();
    bencher.bench(|| decode_body::<WorkerFrame>(divan::black_box(&bytes)).expect("decodes"));
}

#[divan::bench]
fn hash_a_program_definition(bencher: divan::Bencher<'_, '_>) {
    let definition = definition();
    bencher.bench(|| program_hash(divan::black_box(&definition)));
}

#[divan::bench]
fn decode_a_value_map(bencher: divan::Bencher<'_, '_>) {
    let bytes = reply_bytes();
    bencher.bench(|| decode_body::<Value>(divan::black_box(&bytes)).expect("decodes"));
}
