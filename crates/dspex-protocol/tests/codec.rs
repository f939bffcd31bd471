//! The frame codec against good, bad and hostile input.

use bytes::{BufMut, BytesMut};
use dspex_protocol::{
    Command, ErrorKind, ExecuteArgs, FieldSpec, LmConfig, MessageCodec, ProgramDefinition,
    ProtocolError, Ready, RemoteError, Request, Response, SignatureSpec, Value, decode_body,
    encode_body,
};
use proptest::prelude::*;
use serde_json::json;
use tokio_util::codec::{Decoder, Encoder};

type Client = MessageCodec<Request, Response>;
type Worker = MessageCodec<Response, Request>;

fn frame(body: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    buf.put_u32(u32::try_from(body.len()).unwrap());
    buf.put_slice(body);
    buf
}

#[test]
fn request_round_trip_uses_named_fields() {
    let request = Request::new(
        42,
        Command::ExecuteProgram(ExecuteArgs {
            program_id: "qa".into(),
            inputs: json!({"question": "why?"}).as_object().unwrap().clone(),
            program: None,
            lm: Some(LmConfig::dummy()),
            ..ExecuteArgs::default()
        }),
    )
    .with_session("s1")
    .with_deadline_ms(500);

    let mut wire = BytesMut::new();
    Client::default().encode(&request, &mut wire).unwrap();
    // Named fields: the body is a map, and its keys are on the wire.
    assert_eq!(wire[4] & 0xf0, 0x80, "body must be a fixmap");
    assert!(wire.windows(7).any(|w| w == b"command"));

    let decoded = Worker::default().decode(&mut wire).unwrap().unwrap();
    assert_eq!(decoded, request);
    assert!(wire.is_empty());
}

#[test]
fn responses_round_trip_both_outcomes() {
    let mut error = RemoteError::new(ErrorKind::InvalidArguments, "missing input `question`");
    error.details = Some(json!({"field": "question"}));
    for response in [
        Response::ok(3, json!({"outputs": {"answer": "x"}})),
        Response::error(4, error),
    ] {
        let mut wire = BytesMut::new();
        Worker::default().encode(&response, &mut wire).unwrap();
        assert_eq!(
            Client::default().decode(&mut wire).unwrap().unwrap(),
            response
        );
    }
}

#[test]
fn partial_frames_wait_for_more_bytes() {
    let mut whole = BytesMut::new();
    Client::default()
        .encode(Request::new(1, Command::Ping), &mut whole)
        .unwrap();
    let mut codec = Worker::default();
    let mut buf = BytesMut::new();
    for (i, byte) in whole.iter().enumerate() {
        buf.put_u8(*byte);
        let decoded = codec.decode(&mut buf).unwrap();
        assert_eq!(decoded.is_some(), i == whole.len() - 1);
    }
}

#[test]
fn oversize_header_is_rejected_before_allocating() {
    let mut codec = Client::new(1024);
    // A header claiming 3 GiB, then nothing.
    let mut buf = BytesMut::with_capacity(16);
    buf.put_u32(3 * 1024 * 1024 * 1024);
    let capacity = buf.capacity();
    match codec.decode(&mut buf) {
        Err(ProtocolError::FrameTooLarge { len, max }) => {
            assert_eq!(len, 3 * 1024 * 1024 * 1024);
            assert_eq!(max, 1024);
        }
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    assert_eq!(
        buf.capacity(),
        capacity,
        "no buffer growth for a rejected frame"
    );
}

#[test]
fn max_frame_is_inclusive() {
    let mut codec = MessageCodec::<Value, Value>::new(16);
    // A one-entry map: 1 (fixmap) + 2 ("k") + 1 + 12 (fixstr) = 16 bytes.
    let at_limit = json!({"k": "x".repeat(12)});
    let mut buf = frame(&encode_body(&at_limit).unwrap());
    assert_eq!(buf.len(), 4 + 16);
    assert_eq!(codec.decode(&mut buf).unwrap(), Some(at_limit));
    let mut buf = frame(&encode_body(&json!({"k": "x".repeat(13)})).unwrap());
    assert!(matches!(
        codec.decode(&mut buf),
        Err(ProtocolError::FrameTooLarge { len: 17, max: 16 })
    ));
}

#[test]
fn oversize_outgoing_message_writes_nothing() {
    let mut codec = Client::new(64);
    let mut wire = BytesMut::from(&b"keep"[..]);
    let request = Request::new(1, Command::custom("echo", json!({"blob": "x".repeat(100)})));
    match codec.encode(&request, &mut wire) {
        Err(ProtocolError::PayloadTooLarge { max: 64, len }) => assert!(len > 100),
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
    assert_eq!(&wire[..], b"keep", "the buffer is left as it was");
}

#[test]
fn truncated_stream_is_a_typed_error() {
    let mut whole = BytesMut::new();
    Client::default()
        .encode(Request::new(1, Command::Ping), &mut whole)
        .unwrap();
    let cut = whole.len() - 2;
    let mut buf = BytesMut::from(&whole[..cut]);
    match Worker::default().decode_eof(&mut buf) {
        Err(ProtocolError::Truncated { have, need }) => {
            assert_eq!(have, cut);
            assert_eq!(need, whole.len());
        }
        other => panic!("expected Truncated, got {other:?}"),
    }
    let mut header_only = BytesMut::from(&[0u8, 0][..]);
    assert!(matches!(
        Worker::default().decode_eof(&mut header_only),
        Err(ProtocolError::Truncated { have: 2, need: 4 })
    ));
    assert_eq!(
        Worker::default().decode_eof(&mut BytesMut::new()).unwrap(),
        None
    );
}

#[test]
fn garbage_body_is_a_decode_error() {
    // A map marker, then 0xc1: the one byte MessagePack never uses.
    let mut buf = frame(&[0x81, 0xc1, 0xc1, 0xc1]);
    assert!(matches!(
        Client::default().decode(&mut buf),
        Err(ProtocolError::Decode(_))
    ));
}

#[test]
fn wrongly_shaped_bodies_are_decode_errors() {
    let shapes = [
        json!([1, true, null]),           // positional array
        json!({"ok": true, "result": 1}), // no id
        json!({"id": 1, "result": 1}),    // no ok
        json!({"id": 1, "ok": false}),    // failure without error
        json!({"id": 1, "ok": true, "error": {"kind": "LmError", "message": "m"}}),
        json!({"id": -1, "ok": true, "result": 1}), // negative id
        json!({"id": 1, "ok": false, "error": {"message": "no kind"}}),
        json!("just a string"),
    ];
    for shape in shapes {
        let mut buf = frame(&encode_body(&shape).unwrap());
        let result = Client::default().decode(&mut buf);
        assert!(
            matches!(
                result,
                Err(ProtocolError::Decode(_) | ProtocolError::Shape(_))
            ),
            "{shape}: {result:?}"
        );
    }
}

#[test]
fn trailing_bytes_are_rejected() {
    let mut body = encode_body(&Response::ok(1, json!(null))).unwrap();
    body.push(0x01);
    assert!(matches!(
        decode_body::<Response>(&body),
        Err(ProtocolError::TrailingBytes(1))
    ));
}

#[test]
fn unknown_error_words_are_kept() {
    let body = encode_body(&json!({
        "id": 9, "ok": false,
        "error": {"kind": "BrandNewKind", "message": "m", "traceback": null, "details": null}
    }))
    .unwrap();
    let response: Response = decode_body(&body).unwrap();
    let error = response.outcome.unwrap_err();
    assert_eq!(error.kind, ErrorKind::Other("BrandNewKind".into()));
    assert!(!error.kind.is_known());
    assert_eq!(ErrorKind::from_word("LmError"), ErrorKind::LmError);
}

#[test]
fn ready_handshake_is_checked() {
    let ready = json!({
        "event": "ready", "protocol": 1, "worker_id": "w0", "pid": 123,
        "python": "3.11.7", "dspy": "3.4.1"
    });
    let parsed = Response::ok(0, ready.clone()).into_ready().unwrap();
    assert_eq!(
        parsed,
        Ready {
            event: "ready".into(),
            protocol: 1,
            worker_id: Some("w0".into()),
            pid: 123,
            python: "3.11.7".into(),
            dspy: Some("3.4.1".into()),
            features: vec![],
        }
    );
    // Protocol 2 adds the feature list; both versions are served.
    let mut second = ready.clone();
    second["protocol"] = json!(2);
    second["features"] = json!(["deadline", "cancel"]);
    let parsed = Response::ok(0, second).into_ready().unwrap();
    assert!(parsed.has_feature("deadline") && !parsed.has_feature("events"));
    let mut other_version = ready.clone();
    other_version["protocol"] = json!(3);
    assert!(Response::ok(0, other_version).into_ready().is_err());
    assert!(Response::ok(5, ready.clone()).into_ready().is_err());
    assert!(
        Response::ok(0, json!({"event": "hello"}))
            .into_ready()
            .is_err()
    );
    let mut no_dspy = ready;
    no_dspy["dspy"] = Value::Null;
    assert_eq!(Response::ok(0, no_dspy).into_ready().unwrap().dspy, None);
}

#[test]
fn program_definition_matches_the_contract_shape() {
    let program = ProgramDefinition {
        program_id: "qa".into(),
        signature: SignatureSpec {
            name: "QA".into(),
            instructions: "Answer.".into(),
            inputs: vec![FieldSpec::new("question", "str")],
            outputs: vec![FieldSpec {
                optional: true,
                description: Some("a number".into()),
                ..FieldSpec::new("score", "optional[float]")
            }],
        },
        module: "chain_of_thought".into(),
        demos: vec![],
        ..ProgramDefinition::default()
    };
    let request = Request::new(1, Command::CreateProgram(program));
    assert_eq!(
        request.args,
        json!({
            "program_id": "qa",
            "module": "chain_of_thought",
            "signature": {
                "name": "QA", "instructions": "Answer.",
                "inputs": [{"name": "question", "type": "str"}],
                "outputs": [{"name": "score", "type": "optional[float]",
                             "description": "a number", "optional": true}]
            }
        })
    );
}

#[test]
fn malformed_command_names_are_refused_before_sending() {
    for name in [
        "",
        " ",
        "9lives",
        "semi;colon",
        "tab\tbed",
        "é",
        &"x".repeat(65),
    ] {
        let error = Command::custom(name, json!({})).validate().unwrap_err();
        assert!(
            matches!(error, ProtocolError::InvalidCommand(_)),
            "{name:?}"
        );
    }
    let error = Command::custom("echo", json!([1])).validate().unwrap_err();
    assert!(error.to_string().contains("map"), "{error}");
    for name in ["ping", "write_garbage", "_private", "x", &"x".repeat(64)] {
        assert!(
            Command::custom(name, json!({})).validate().is_ok(),
            "{name:?}"
        );
    }
    assert!(Command::Ping.validate().is_ok());
}

#[test]
fn lm_configurations_never_print_their_secrets() {
    let mut config = LmConfig {
        model: "openai/gpt-4o-mini".into(),
        api_key: Some("sk-test-7b1f".into()),
        ..LmConfig::default()
    };
    config
        .extra
        .insert("aws_secret_access_key".into(), json!("wJalr-secret"));
    config.extra.insert("max_tokens_hint".into(), json!(5));
    let printed = format!("{config:?} {config:#?}");
    assert!(!printed.contains("sk-test-7b1f"), "{printed}");
    assert!(!printed.contains("wJalr-secret"), "{printed}");
    assert!(printed.contains("gpt-4o-mini") && printed.contains("max_tokens_hint"));
    // The wire carries it (that is where it must go), and the id hides it.
    let args = Request::new(1, Command::ConfigureLm(config.clone())).args;
    assert_eq!(args["api_key"], "sk-test-7b1f");
    let id = config.id();
    assert!(id.starts_with("lm-") && !id.contains("sk-test"));
    assert_ne!(id, LmConfig::dummy().id());
    let named = Request::new(
        2,
        Command::RegisterLm {
            lm_id: id.clone(),
            config,
        },
    );
    assert_eq!(named.command, "configure_lm");
    assert_eq!(named.args["lm_id"], json!(id));
    assert_eq!(named.args["model"], "openai/gpt-4o-mini");
}

#[test]
fn the_program_hash_is_the_documented_one() {
    let program = ProgramDefinition {
        program_id: "ignored".into(),
        signature: SignatureSpec {
            name: "QA".into(),
            instructions: "Answer in français.".into(),
            inputs: vec![FieldSpec::new("question", "str")],
            outputs: vec![FieldSpec::new("answer", "str")],
        },
        module: "predict".into(),
        demos: vec![json!({"question": "2+2?", "answer": "4", "score": 0.5})],
        ..ProgramDefinition::default()
    };
    // sha256 of the canonical JSON the Python worker hashes (see
    // python/dspex_bridge/commands.py `program_hash`): computed there with
    // json.dumps(..., sort_keys=True, separators=(",", ":"), ensure_ascii=False).
    let canonical = "{\"demos\":[{\"answer\":\"4\",\"question\":\"2+2?\",\"score\":0.5}],\
        \"module\":\"predict\",\"signature\":{\"inputs\":[{\"name\":\"question\",\"type\":\"str\"}],\
        \"instructions\":\"Answer in français.\",\"name\":\"QA\",\
        \"outputs\":[{\"name\":\"answer\",\"type\":\"str\"}]}}";
    let value = json!({
        "signature": serde_json::to_value(&program.signature).unwrap(),
        "module": program.module,
        "demos": program.demos,
    });
    assert_eq!(dspex_protocol::canonical_json(&value), canonical);
    // The id is not part of the version: the same definition under another
    // id has the same hash.
    let renamed = ProgramDefinition {
        program_id: "other".into(),
        ..program.clone()
    };
    assert_eq!(program.hash(), renamed.hash());
    assert_eq!(program.hash().len(), 64);
}

#[tokio::test]
async fn framed_stream_ends_after_an_error() {
    use futures::StreamExt;
    use tokio_util::codec::FramedRead;

    let mut bytes = frame(&encode_body(&Response::ok(1, json!(1))).unwrap()).to_vec();
    bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);
    bytes.extend_from_slice(&frame(&encode_body(&Response::ok(2, json!(2))).unwrap()));
    let mut stream = FramedRead::new(&bytes[..], Client::new(1 << 20));
    assert_eq!(stream.next().await.unwrap().unwrap().id, 1);
    assert!(matches!(
        stream.next().await,
        Some(Err(ProtocolError::FrameTooLarge { .. }))
    ));
    assert!(
        stream.next().await.is_none(),
        "nothing is read past a bad frame"
    );
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e12f64..1e12).prop_map(Value::from),
        ".{0,16}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn remote_error() -> impl Strategy<Value = RemoteError> {
    (
        prop_oneof![
            Just(ErrorKind::UnknownCommand),
            Just(ErrorKind::PythonException),
            "[A-Z][a-zA-Z]{0,12}".prop_map(|w| ErrorKind::from_word(&w)),
        ],
        ".{0,32}",
        proptest::option::of(".{0,64}"),
        // nil and an absent `details` are the same on the wire.
        proptest::option::of(value().prop_filter("not null", |v| !v.is_null())),
    )
        .prop_map(|(kind, message, traceback, details)| RemoteError {
            kind,
            message,
            traceback,
            details,
        })
}

proptest! {
    #[test]
    fn any_request_round_trips(
        id in 1u64..,
        command in "[a-z_]{1,20}",
        args in value(),
        session in proptest::option::of("[a-z0-9-]{1,12}"),
        deadline in proptest::option::of(any::<u64>()),
        events in any::<bool>(),
        logs in any::<bool>(),
    ) {
        let request = Request { id, command, args, session_id: session, deadline_ms: deadline, events, logs };
        let mut wire = BytesMut::new();
        Client::default().encode(&request, &mut wire).unwrap();
        prop_assert_eq!(Worker::default().decode(&mut wire).unwrap(), Some(request));
    }

    #[test]
    fn any_response_round_trips(
        id in any::<u64>(),
        outcome in prop_oneof![
            value().prop_map(Ok),
            remote_error().prop_map(Err),
        ],
    ) {
        let response = Response { id, outcome };
        let mut wire = BytesMut::new();
        Worker::default().encode(&response, &mut wire).unwrap();
        let decoded = Client::default().decode(&mut wire).unwrap().unwrap();
        prop_assert_eq!(decoded, response);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut client = Client::new(256);
        let mut worker = Worker::new(256);
        for codec_input in [&mut BytesMut::from(&bytes[..]), &mut BytesMut::from(&bytes[..])] {
            let _ = client.decode_eof(codec_input);
        }
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = worker.decode(&mut buf) {}
    }

    #[test]
    fn arbitrary_bodies_never_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
        let mut buf = frame(&body);
        let _ = Client::default().decode(&mut buf);
        let mut buf = frame(&body);
        let _ = Worker::default().decode(&mut buf);
    }
}
