//! JSON Schema generation: the exact shapes, the tool envelopes, and — with
//! the `jsonschema` crate — that the schemas are valid 2020-12 and accept
//! and reject what `validate_inputs` does.

use dspex::Signature;
use dspex::signature::JSON_SCHEMA_DIALECT;
use serde_json::{Value, json};

fn sig() -> Signature {
    Signature::builder("Research")
        .instructions("Answer from the context.")
        .input_described("question", "str", "The question")
        .input("context", "list[str]")
        .input("k", "optional[int]")
        .input("weights", "dict[str, float]")
        .input("mode", "literal[fast|slow]")
        .input("strict", "bool")
        .input("p", "optional[probability]")
        .output("answer", "str")
        .output_described("confidence", "confidence", "How sure")
        .output("label", "optional[literal[yes|no]]")
        .output("vector", "embedding")
        .build()
        .unwrap()
}

#[test]
fn the_input_schema_has_the_expected_shape() {
    assert_eq!(
        sig().input_schema(),
        json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "question": {"type": "string", "description": "The question"},
                "context": {"type": "array", "items": {"type": "string"}},
                "k": {"type": ["integer", "null"]},
                "weights": {"type": "object", "additionalProperties": {"type": "number"}},
                "mode": {"type": "string", "enum": ["fast", "slow"]},
                "strict": {"type": "boolean"},
                "p": {"type": ["number", "null"], "minimum": 0.0, "maximum": 1.0},
            },
            "required": ["question", "context", "weights", "mode", "strict"],
            "additionalProperties": false,
        })
    );
}

#[test]
fn the_output_schema_has_the_expected_shape() {
    assert_eq!(
        sig().output_schema(),
        json!({
            "$schema": JSON_SCHEMA_DIALECT,
            "type": "object",
            "properties": {
                "answer": {"type": "string"},
                "confidence": {"type": "number", "minimum": 0.0, "maximum": 1.0, "description": "How sure"},
                "label": {"type": ["string", "null"], "enum": ["yes", "no", null]},
                "vector": {"type": "array", "items": {"type": "number"}},
            },
            "required": ["answer", "confidence", "vector"],
            "additionalProperties": false,
        })
    );
}

#[test]
fn nested_optionals_add_null_once() {
    let sig = Signature::parse("x: optional[optional[list[optional[str]]]] -> a").unwrap();
    assert_eq!(
        sig.input_schema()["properties"]["x"],
        json!({"type": ["array", "null"], "items": {"type": ["string", "null"]}})
    );
}

#[test]
fn openai_and_anthropic_tools_wrap_the_input_schema() {
    let sig = sig();
    let mut parameters = sig.input_schema();
    parameters.as_object_mut().unwrap().remove("$schema");
    assert_eq!(
        sig.openai_tool(),
        json!({
            "type": "function",
            "function": {
                "name": "Research",
                "description": "Answer from the context.",
                "parameters": parameters,
            }
        })
    );
    assert_eq!(
        sig.anthropic_tool(),
        json!({
            "name": "Research",
            "description": "Answer from the context.",
            "input_schema": parameters,
        })
    );
}

#[test]
fn the_schemas_are_valid_json_schema_2020_12() {
    let sig = sig();
    for schema in [sig.input_schema(), sig.output_schema()] {
        assert!(jsonschema::draft202012::meta::is_valid(&schema), "{schema}");
    }
    assert!(jsonschema::draft202012::meta::is_valid(
        &sig.openai_tool()["function"]["parameters"]
    ));
    assert!(jsonschema::draft202012::meta::is_valid(
        &sig.anthropic_tool()["input_schema"]
    ));
}

/// Inputs that `validate_inputs` accepts, and that it rejects.
fn samples() -> (Vec<Value>, Vec<Value>) {
    let good = json!({
        "question": "Why?", "context": ["a"], "k": 2, "weights": {"x": 1.5},
        "mode": "slow", "strict": false, "p": 0.25,
    });
    let with = |key: &str, value: Value| {
        let mut v = good.clone();
        v[key] = value;
        v
    };
    let without = |key: &str| {
        let mut v = good.clone();
        v.as_object_mut().unwrap().remove(key);
        v
    };
    let accepted = vec![
        good.clone(),
        without("k"),
        without("p"),
        with("k", Value::Null),
        with("p", json!(1)),
        with("weights", json!({})),
        with("context", json!([])),
    ];
    let rejected = vec![
        without("question"),
        with("extra", json!(1)),
        with("question", json!(1)),
        with("context", json!(["a", 2])),
        with("k", json!(true)),
        with("k", json!(1.5)),
        with("weights", json!({"x": "heavy"})),
        with("mode", json!("medium")),
        with("strict", json!("true")),
        with("p", json!(1.5)),
        with("p", json!(-0.5)),
    ];
    (accepted, rejected)
}

#[test]
fn the_input_schema_agrees_with_validate_inputs() {
    let sig = sig();
    let validator = jsonschema::validator_for(&sig.input_schema()).unwrap();
    let (accepted, rejected) = samples();
    for sample in &accepted {
        assert!(validator.is_valid(sample), "schema rejects {sample}");
        sig.validate_inputs(sample.as_object().unwrap())
            .unwrap_or_else(|e| panic!("validate_inputs rejects {sample}: {e}"));
    }
    for sample in &rejected {
        assert!(!validator.is_valid(sample), "schema accepts {sample}");
        assert!(
            sig.validate_inputs(sample.as_object().unwrap()).is_err(),
            "validate_inputs accepts {sample}"
        );
    }
}

#[test]
fn the_output_schema_accepts_valid_outputs() {
    let sig = sig();
    let validator = jsonschema::validator_for(&sig.output_schema()).unwrap();
    let good = json!({"answer": "a", "confidence": 0.5, "label": null, "vector": [0.1, 2]});
    assert!(validator.is_valid(&good));
    sig.validate_outputs(good.as_object().unwrap()).unwrap();
    let bad = json!({"answer": "a", "confidence": 2, "label": "maybe", "vector": []});
    assert!(!validator.is_valid(&bad));
    assert!(sig.validate_outputs(bad.as_object().unwrap()).is_err());
}

#[test]
fn a_signature_without_instructions_describes_itself_as_dspy_does() {
    let sig = Signature::parse("city -> forecast").unwrap();
    assert_eq!(
        sig.anthropic_tool()["description"],
        "Given the fields `city`, produce the fields `forecast`."
    );
    assert_eq!(sig.anthropic_tool()["name"], "Program");
}
