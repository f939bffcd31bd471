//! Validation of inputs before they leave Rust and of outputs when they
//! come back: one test per kind of mistake.

use dspex::Signature;
use dspex::signature::{FieldKind, FieldRole, ValidationError};
use serde_json::{Map, Value, json};

fn sig() -> Signature {
    Signature::parse(
        "question: str, context: list[str], k: optional[int], weights: dict[str, float], \
         mode: literal[fast|slow], strict: bool, p: optional[probability] \
         -> answer: str, confidence: confidence, steps: optional[list[str]]",
    )
    .unwrap()
}

fn map(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

fn good_inputs() -> Value {
    json!({
        "question": "Why?",
        "context": ["a", "b"],
        "k": 3,
        "weights": {"x": 1.5, "y": 2},
        "mode": "fast",
        "strict": true,
        "p": 0.5,
    })
}

fn input_error(change: impl FnOnce(&mut Value)) -> ValidationError {
    let mut inputs = good_inputs();
    change(&mut inputs);
    sig().validate_inputs(&map(inputs)).unwrap_err()
}

fn wrong(field: &str, expected: &str, found: &str) -> ValidationError {
    ValidationError::WrongType {
        role: FieldRole::Input,
        field: field.into(),
        expected: expected.into(),
        found: found.into(),
    }
}

#[test]
fn good_inputs_pass() {
    sig().validate_inputs(&map(good_inputs())).unwrap();
}

#[test]
fn optional_inputs_may_be_omitted_or_null() {
    let mut inputs = good_inputs();
    inputs.as_object_mut().unwrap().remove("k");
    inputs["p"] = Value::Null;
    sig().validate_inputs(&map(inputs)).unwrap();
}

#[test]
fn a_missing_required_input_is_named() {
    let err = input_error(|v| {
        v.as_object_mut().unwrap().remove("context");
    });
    assert_eq!(
        err,
        ValidationError::Missing {
            role: FieldRole::Input,
            field: "context".into(),
            expected: "list[str]".into()
        }
    );
    assert_eq!(
        err.to_string(),
        "missing input `context` (expected list[str])"
    );
    assert_eq!(err.field(), Some("context"));
}

#[test]
fn an_unknown_input_is_named_with_the_known_ones() {
    let err = input_error(|v| {
        let map = v.as_object_mut().unwrap();
        let q = map.remove("question").unwrap();
        map.insert("questoin".into(), q);
    });
    // Reported before the missing `question` it probably meant.
    assert_eq!(
        err.to_string(),
        "unknown input `questoin`; the signature's inputs are `question`, `context`, `k`, \
         `weights`, `mode`, `strict`, `p`"
    );
    assert_eq!(err.field(), Some("questoin"));
}

#[test]
fn a_wrong_scalar_type_says_expected_and_found() {
    assert_eq!(
        input_error(|v| v["question"] = json!(42)),
        wrong("question", "str", "int")
    );
    assert_eq!(
        input_error(|v| v["strict"] = json!("yes")),
        wrong("strict", "bool", "str")
    );
    assert_eq!(
        input_error(|v| v["question"] = Value::Null),
        wrong("question", "str", "null")
    );
}

#[test]
fn a_bool_is_not_an_int_and_a_float_is_not_an_int() {
    assert_eq!(
        input_error(|v| v["k"] = json!(true)),
        wrong("k", "optional[int]", "bool")
    );
    assert_eq!(
        input_error(|v| v["k"] = json!(2.5)),
        wrong("k", "optional[int]", "float")
    );
    assert_eq!(
        input_error(|v| v["k"] = json!(3.0)),
        wrong("k", "optional[int]", "float")
    );
}

#[test]
fn an_int_is_a_float_but_a_bool_is_not() {
    let mut inputs = good_inputs();
    inputs["weights"] = json!({"x": 1, "y": u64::MAX});
    sig().validate_inputs(&map(inputs)).unwrap();
    assert_eq!(
        input_error(|v| v["weights"]["x"] = json!(false)),
        wrong("weights.x", "float", "bool")
    );
}

#[test]
fn nested_values_are_named_by_path() {
    let err = input_error(|v| v["context"] = json!(["a", "b", 3]));
    assert_eq!(err, wrong("context[2]", "str", "int"));
    assert_eq!(
        err.to_string(),
        "input `context[2]`: expected str, found int"
    );
    assert_eq!(err.field(), Some("context"));
    assert_eq!(
        input_error(|v| v["context"] = json!("a")),
        wrong("context", "list[str]", "str")
    );
    assert_eq!(
        input_error(|v| v["weights"] = json!({"a b": "heavy"})),
        wrong("weights[\"a b\"]", "float", "str")
    );
    assert_eq!(
        input_error(|v| v["weights"] = json!([1.0])),
        wrong("weights", "dict[str, float]", "list")
    );
}

#[test]
fn deep_nesting_is_checked_all_the_way_down() {
    let sig = Signature::parse("m: dict[str, list[optional[list[int]]]] -> a").unwrap();
    let ok = json!({"m": {"x": [[1, 2], null, []]}});
    sig.validate_inputs(&map(ok)).unwrap();
    let bad = json!({"m": {"x": [[1, 2], null, [3, "4"]]}});
    let err = sig.validate_inputs(&map(bad)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "input `m.x[2][1]`: expected int, found str"
    );
}

#[test]
fn a_literal_accepts_exactly_its_members() {
    let err = input_error(|v| v["mode"] = json!("medium"));
    assert_eq!(err, wrong("mode", "literal[fast|slow]", "\"medium\""));
    assert_eq!(
        err.to_string(),
        "input `mode`: expected literal[fast|slow], found \"medium\""
    );
    assert_eq!(
        input_error(|v| v["mode"] = json!("Fast")),
        wrong("mode", "literal[fast|slow]", "\"Fast\"")
    );
    assert_eq!(
        input_error(|v| v["mode"] = json!(1)),
        wrong("mode", "literal[fast|slow]", "int")
    );
}

#[test]
fn a_probability_must_lie_in_0_1() {
    let err = input_error(|v| v["p"] = json!(1.5));
    assert_eq!(
        err,
        ValidationError::OutOfRange {
            role: FieldRole::Input,
            field: "p".into(),
            kind: FieldKind::Probability,
            min: 0.0,
            max: 1.0,
            found: 1.5
        }
    );
    assert_eq!(
        err.to_string(),
        "input `p`: expected a probability in [0, 1], found 1.5"
    );
    assert!(matches!(
        input_error(|v| v["p"] = json!(-0.1)),
        ValidationError::OutOfRange { .. }
    ));
    for edge in [json!(0), json!(1), json!(0.0), json!(1.0)] {
        let mut inputs = good_inputs();
        inputs["p"] = edge;
        sig().validate_inputs(&map(inputs)).unwrap();
    }
    assert_eq!(
        input_error(|v| v["p"] = json!("high")),
        wrong("p", "optional[float]", "str")
    );
}

#[test]
fn an_embedding_is_a_list_of_numbers() {
    let sig = Signature::parse("v: embedding -> a").unwrap();
    sig.validate_inputs(&map(json!({"v": [0.1, -2, 3e10]})))
        .unwrap();
    let err = sig
        .validate_inputs(&map(json!({"v": [0.1, "x"]})))
        .unwrap_err();
    assert_eq!(err.to_string(), "input `v[1]`: expected float, found str");
}

#[test]
fn outputs_must_be_present_typed_and_in_range() {
    let sig = sig();
    let ok = json!({"answer": "Paris", "confidence": 0.9, "reasoning": "extra fields from the module are fine"});
    sig.validate_outputs(&map(ok)).unwrap();
    let err = sig
        .validate_outputs(&map(json!({"confidence": 0.9})))
        .unwrap_err();
    assert_eq!(
        err,
        ValidationError::Missing {
            role: FieldRole::Output,
            field: "answer".into(),
            expected: "str".into()
        }
    );
    assert_eq!(err.to_string(), "missing output `answer` (expected str)");
    let err = sig
        .validate_outputs(&map(json!({"answer": "Paris", "confidence": "high"})))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "output `confidence`: expected float, found str"
    );
    let err = sig
        .validate_outputs(&map(json!({"answer": "Paris", "confidence": 751.28})))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "output `confidence`: expected a confidence score in [0, 1], found 751.28"
    );
    let err = sig
        .validate_outputs(&map(
            json!({"answer": "Paris", "confidence": 1, "steps": ["a", null]}),
        ))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "output `steps[1]`: expected str, found null"
    );
}

#[test]
fn typed_inputs_encode_and_outputs_decode() {
    #[derive(serde::Serialize)]
    struct In {
        question: &'static str,
    }
    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Out {
        answer: String,
        n: u8,
    }
    let sig = Signature::parse("question -> answer, n: int").unwrap();
    let map = sig.encode_inputs(&In { question: "q" }).unwrap();
    assert_eq!(Value::Object(map), json!({"question": "q"}));

    let err = sig.encode_inputs(&42).unwrap_err();
    assert_eq!(
        err.to_string(),
        "inputs must serialize to a map of fields: found int instead"
    );
    assert_eq!(err.field(), None);

    let out: Out = sig
        .decode_outputs(crate::map(json!({"answer": "a", "n": 7})))
        .unwrap();
    assert_eq!(
        out,
        Out {
            answer: "a".into(),
            n: 7
        }
    );
    // Valid for the signature, too big for the Rust type.
    let err = sig
        .decode_outputs::<Out>(crate::map(json!({"answer": "a", "n": 300})))
        .unwrap_err();
    assert!(
        matches!(&err, ValidationError::Decode { reason } if reason.contains("300")),
        "{err}"
    );
    // Invalid for the signature: caught before serde.
    let err = sig
        .decode_outputs::<Out>(crate::map(json!({"answer": "a", "n": "7"})))
        .unwrap_err();
    assert_eq!(err.to_string(), "output `n`: expected int, found str");
}
