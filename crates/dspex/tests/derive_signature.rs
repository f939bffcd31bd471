//! `#[derive(Signature)]` and `#[derive(FieldValue)]`: the signature they
//! produce, the generated structs, and typed round trips through
//! validation. (Compile errors are in `derive_compile_fail.rs`.)

use std::collections::{BTreeMap, HashMap};

use dspex::protocol::{FieldSpec, SignatureSpec};
use dspex::signature::ValidationError;
use dspex::{FieldKind, FieldType, FieldValue, Signature, TypedSignature};
use serde_json::{Map, Value, json};

/// Answer questions with short factoid answers.
///
/// Cite the context when you can.
#[derive(Signature)]
struct QA {
    /// The question to answer.
    #[input]
    question: String,
    /// Passages that may help.
    #[input]
    context: Vec<String>,
    #[input]
    top_k: Option<u32>,
    /// Often between 1 and 5 words.
    #[output]
    answer: String,
    #[output(kind = "confidence", desc = "How sure the answer is")]
    confidence: f64,
}

#[test]
fn the_struct_is_the_signature() {
    let sig = QA::signature();
    assert_eq!(sig.name(), "QA");
    assert_eq!(
        sig.instructions(),
        "Answer questions with short factoid answers.\n\nCite the context when you can."
    );
    assert_eq!(
        sig.to_string(),
        "question: str, context: list[str], top_k: optional[int] -> answer: str, confidence: confidence_score"
    );
    assert_eq!(
        sig.input("question").unwrap().description(),
        Some("The question to answer.")
    );
    assert_eq!(sig.input("top_k").unwrap().description(), None);
    assert_eq!(
        sig.output("answer").unwrap().description(),
        Some("Often between 1 and 5 words.")
    );
    // `desc` wins over a doc comment, and stands alone without one.
    assert_eq!(
        sig.output("confidence").unwrap().description(),
        Some("How sure the answer is")
    );
    assert_eq!(
        sig.output("confidence").unwrap().kind(),
        FieldKind::ConfidenceScore
    );
    // Built once, equal every time.
    assert_eq!(QA::signature(), sig);
}

#[test]
fn the_spec_is_what_the_worker_reads() {
    let spec = QA::signature().to_spec();
    assert_eq!(spec.inputs[2], {
        let mut f = FieldSpec::new("top_k", "optional[int]");
        f.optional = true;
        f
    });
    assert_eq!(spec.outputs[1].ty, "float");
    let parsed = Signature::parse(
        "question: str, context: list[str], top_k: optional[int] -> answer: str, confidence: confidence",
    )
    .unwrap();
    let strip = |s: SignatureSpec| -> Vec<(String, String)> {
        s.inputs
            .into_iter()
            .chain(s.outputs)
            .map(|f| (f.name, f.ty))
            .collect()
    };
    assert_eq!(strip(spec), strip(parsed.to_spec()));
}

#[test]
fn generated_structs_encode_and_decode_through_validation() {
    let inputs = QAInputs {
        question: "Capital of France?".into(),
        context: vec!["Paris is the capital of France.".into()],
        top_k: None,
    };
    let map = QA::encode_inputs(&inputs).unwrap();
    assert_eq!(
        Value::Object(map),
        json!({"question": "Capital of France?", "context": ["Paris is the capital of France."], "top_k": null})
    );

    let outputs =
        json!({"answer": "Paris", "confidence": 0.97, "reasoning": "added by chain_of_thought"});
    let outputs: QAOutputs = QA::decode_outputs(to_map(outputs)).unwrap();
    assert_eq!(
        outputs,
        QAOutputs {
            answer: "Paris".into(),
            confidence: 0.97
        }
    );
    let err = QA::decode_outputs(to_map(json!({"answer": "Paris", "confidence": 97}))).unwrap_err();
    assert!(matches!(err, ValidationError::OutOfRange { .. }), "{err}");
}

#[test]
fn the_struct_converts_to_and_from_its_parts() {
    let inputs = QAInputs {
        question: "q".into(),
        context: vec![],
        top_k: Some(3),
    };
    let outputs = QAOutputs {
        answer: "a".into(),
        confidence: 0.5,
    };
    let whole = QA::from((inputs.clone(), outputs.clone()));
    assert_eq!(whole.top_k, Some(3));
    let (i, o): (QAInputs, QAOutputs) = whole.into();
    assert_eq!((i, o), (inputs, outputs));
}

fn to_map(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("{other}"),
    }
}

/// How a review feels.
#[derive(FieldValue, serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "snake_case")]
enum Sentiment {
    Positive,
    Negative,
    NotSure,
    #[serde(skip)]
    #[allow(dead_code)]
    Internal,
}

/// Classify a review.
#[derive(Signature)]
#[dspex(name = "ReviewClassifier")]
pub(crate) struct Classify {
    /// The review.
    #[input(name = "review_text")]
    pub(crate) text: String,
    #[input]
    pub(crate) r#type: &'static str,
    #[input]
    pub(crate) scores: HashMap<String, Vec<f32>>,
    #[input]
    pub(crate) tags: BTreeMap<String, Option<bool>>,
    #[output]
    pub(crate) sentiment: Sentiment,
    #[output]
    pub(crate) aspects: Vec<Sentiment>,
    #[output(literal = "low | medium|high")]
    pub(crate) severity: Option<String>,
    #[output(kind = "probability")]
    pub(crate) spam: f32,
    #[output(kind = "embedding")]
    pub(crate) vector: Vec<f64>,
    #[output(kind = "reasoning_chain")]
    pub(crate) steps: Option<Vec<String>>,
    #[output]
    pub(crate) count: i64,
}

#[test]
fn every_supported_rust_type_maps_to_its_field_type() {
    let sig = Classify::signature();
    assert_eq!(sig.name(), "ReviewClassifier");
    assert_eq!(sig.instructions(), "Classify a review.");
    let wire: Vec<(String, String)> = sig
        .fields()
        .map(|(_, f)| (f.name().to_owned(), f.ty().to_wire()))
        .collect();
    let expected = [
        ("review_text", "str"),
        ("type", "str"),
        ("scores", "dict[str, list[float]]"),
        ("tags", "dict[str, optional[bool]]"),
        ("sentiment", "literal[positive|negative|not_sure]"),
        ("aspects", "list[literal[positive|negative|not_sure]]"),
        ("severity", "optional[literal[low|medium|high]]"),
        ("spam", "float"),
        ("vector", "list[float]"),
        ("steps", "optional[list[str]]"),
        ("count", "int"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(wire, expected);
    let kinds: Vec<FieldKind> = sig.outputs().iter().map(|f| f.kind()).collect();
    assert_eq!(
        kinds,
        [
            FieldKind::Plain,
            FieldKind::Plain,
            FieldKind::Plain,
            FieldKind::Probability,
            FieldKind::Embedding,
            FieldKind::ReasoningChain,
            FieldKind::Plain,
        ]
    );
}

#[test]
fn renamed_fields_use_the_wire_name_and_str_becomes_string() {
    let inputs = ClassifyInputs {
        text: "Great phone, awful battery.".into(),
        r#type: String::from("phone"),
        scores: HashMap::from([("battery".to_owned(), vec![0.1, 0.2])]),
        tags: BTreeMap::from([("verified".to_owned(), None)]),
    };
    let map = Classify::encode_inputs(&inputs).unwrap();
    assert_eq!(map["review_text"], "Great phone, awful battery.");
    assert_eq!(map["type"], "phone");
    assert!(!map.contains_key("text"));

    let outputs: ClassifyOutputs = Classify::decode_outputs(to_map(json!({
        "sentiment": "not_sure",
        "aspects": ["positive", "negative"],
        "severity": "high",
        "spam": 0.01,
        "vector": [0.5, 1],
        "steps": null,
        "count": 2,
    })))
    .unwrap();
    assert_eq!(outputs.sentiment, Sentiment::NotSure);
    assert_eq!(outputs.aspects, [Sentiment::Positive, Sentiment::Negative]);
    assert_eq!(outputs.severity.as_deref(), Some("high"));
    assert_eq!(outputs.vector, [0.5, 1.0]);
    assert_eq!(outputs.steps, None);

    let err = Classify::decode_outputs(to_map(json!({
        "sentiment": "internal", "aspects": [], "severity": null, "spam": 0.5,
        "vector": [], "steps": [], "count": 1,
    })))
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "output `sentiment`: expected literal[positive|negative|not_sure], found \"internal\""
    );
}

#[test]
fn field_value_derive_makes_a_literal() {
    assert_eq!(
        Sentiment::field_type(),
        FieldType::literal(["positive", "negative", "not_sure"]).unwrap()
    );
}

#[test]
fn rename_all_rules_follow_serde() {
    #[derive(FieldValue, serde::Serialize)]
    #[serde(rename_all = "SCREAMING-KEBAB-CASE")]
    #[allow(dead_code)]
    enum A {
        HighRisk,
        Low,
    }
    #[derive(FieldValue, serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    #[allow(dead_code)]
    enum B {
        HighRisk,
    }
    #[derive(FieldValue, serde::Serialize)]
    #[allow(dead_code)]
    enum C {
        HighRisk,
        #[serde(rename = "x y")]
        Other,
    }
    assert_eq!(A::field_type().to_wire(), "literal[HIGH-RISK|LOW]");
    assert_eq!(
        serde_json::to_value(A::HighRisk).unwrap(),
        json!("HIGH-RISK")
    );
    assert_eq!(B::field_type().to_wire(), "literal[highRisk]");
    assert_eq!(
        serde_json::to_value(B::HighRisk).unwrap(),
        json!("highRisk")
    );
    assert_eq!(C::field_type().to_wire(), "literal[HighRisk|\"x y\"]");
    assert_eq!(serde_json::to_value(C::Other).unwrap(), json!("x y"));
}

/// A signature without inputs.
#[derive(Signature)]
pub(crate) struct Joke {
    #[output]
    joke: String,
}

#[test]
fn a_signature_may_have_no_inputs() {
    let sig = Joke::signature();
    assert!(sig.inputs().is_empty());
    let map = Joke::encode_inputs(&JokeInputs {}).unwrap();
    assert!(map.is_empty());
    let out = Joke::decode_outputs(to_map(json!({"joke": "..."}))).unwrap();
    assert_eq!(out.joke, "...");
}

/// Borrowed declarations are fine: the generated structs own their data.
#[derive(Signature)]
struct Borrowed<'a> {
    #[input]
    question: &'a str,
    #[input]
    hints: Vec<&'a str>,
    #[output]
    answer: &'a str,
}

#[test]
fn borrowed_fields_become_owned_strings() {
    let sig = Borrowed::signature();
    assert_eq!(
        sig.to_string(),
        "question: str, hints: list[str] -> answer: str"
    );
    let inputs = BorrowedInputs {
        question: String::from("q"),
        hints: vec![String::from("h")],
    };
    assert_eq!(
        Borrowed::encode_inputs(&inputs).unwrap()["hints"],
        json!(["h"])
    );
}

mod nested {
    use dspex::Signature;

    /// Visible to the parent module only.
    #[derive(Signature)]
    pub(super) struct Summarize {
        #[input]
        pub(super) text: String,
        #[output]
        pub(super) summary: String,
    }
}

#[test]
fn generated_structs_share_the_structs_visibility() {
    let inputs = nested::SummarizeInputs {
        text: "long".into(),
    };
    assert_eq!(inputs.text, "long");
    let outputs = nested::SummarizeOutputs {
        summary: "short".into(),
    };
    assert_eq!(outputs.clone(), outputs);
    assert_eq!(
        format!("{outputs:?}"),
        "SummarizeOutputs { summary: \"short\" }"
    );
    use dspex::TypedSignature;
    assert_eq!(
        nested::Summarize::signature().outputs()[0].name(),
        "summary"
    );
}

/// This doc comment is replaced.
#[derive(Signature)]
#[dspex(instructions = "Translate to French.")]
struct Translate {
    #[input]
    english: String,
    #[output]
    french: String,
}

#[test]
fn instructions_can_be_given_explicitly() {
    let sig = Translate::signature();
    assert_eq!(sig.instructions(), "Translate to French.");
    assert_eq!(sig.name(), "Translate");
}

#[test]
fn field_value_covers_the_std_collections() {
    use std::collections::{BTreeSet, HashSet, VecDeque};
    let wire = |ty: FieldType| ty.to_wire();
    assert_eq!(wire(<VecDeque<i8>>::field_type()), "list[int]");
    assert_eq!(wire(<HashSet<u64>>::field_type()), "list[int]");
    assert_eq!(wire(<BTreeSet<String>>::field_type()), "list[str]");
    assert_eq!(wire(<Box<str>>::field_type()), "str");
    assert_eq!(wire(<Option<Box<f32>>>::field_type()), "optional[float]");
    assert_eq!(wire(<&bool>::field_type()), "bool");
}
