//! `Signature`: the string form, the builder, field-name rules, and the
//! protocol's `SignatureSpec` both ways.

use dspex::protocol::{FieldSpec, SignatureSpec};
use dspex::signature::{
    FieldRole, MAX_FIELDS, NameError, ParseErrorKind, RESERVED_FIELD_NAMES, SignatureError,
    check_field_name,
};
use dspex::{Field, FieldKind, FieldType, Signature};

fn names(fields: &[Field]) -> Vec<&str> {
    fields.iter().map(Field::name).collect()
}

#[test]
fn the_string_form_parses_with_types_and_commas_inside_brackets() {
    let sig = Signature::parse(
        "question: str, context: list[str], scores: dict[str, float] -> answer: str, confidence: float",
    )
    .unwrap();
    assert_eq!(names(sig.inputs()), ["question", "context", "scores"]);
    assert_eq!(names(sig.outputs()), ["answer", "confidence"]);
    assert_eq!(
        sig.input("scores").unwrap().ty(),
        &FieldType::dict(FieldType::Float)
    );
    assert_eq!(sig.name(), Signature::DEFAULT_NAME);
    assert_eq!(sig.instructions(), "");
}

#[test]
fn untyped_fields_are_str_and_whitespace_is_free() {
    let sig = Signature::parse("  question ,context:list[ str ]->answer  ").unwrap();
    assert_eq!(sig.input("question").unwrap().ty(), &FieldType::Str);
    assert_eq!(sig.output("answer").unwrap().ty(), &FieldType::Str);
    assert_eq!(
        sig.input("context").unwrap().ty(),
        &FieldType::list(FieldType::Str)
    );
}

#[test]
fn a_signature_may_have_no_inputs() {
    let sig = Signature::parse("-> joke").unwrap();
    assert!(sig.inputs().is_empty());
    assert_eq!(sig.to_string(), "-> joke: str");
    assert_eq!(Signature::parse(&sig.to_string()).unwrap(), sig);
}

#[test]
fn kinds_are_declared_by_name_and_travel_as_plain_types() {
    let sig = Signature::parse(
        "text: str, vector: embedding -> p: probability, c: confidence, steps: reasoning_chain, \
         maybe: optional[confidence_score]",
    )
    .unwrap();
    let kind = |n: &str| sig.output(n).map(Field::kind);
    assert_eq!(sig.input("vector").unwrap().kind(), FieldKind::Embedding);
    assert_eq!(kind("p"), Some(FieldKind::Probability));
    assert_eq!(kind("c"), Some(FieldKind::ConfidenceScore));
    assert_eq!(kind("steps"), Some(FieldKind::ReasoningChain));
    assert_eq!(kind("maybe"), Some(FieldKind::ConfidenceScore));
    let spec = sig.to_spec();
    let wire: Vec<&str> = spec.outputs.iter().map(|f| f.ty.as_str()).collect();
    assert_eq!(wire, ["float", "float", "list[str]", "optional[float]"]);
    assert_eq!(spec.inputs[1].ty, "list[float]");
    // The string form keeps the kinds.
    assert_eq!(
        sig.to_string(),
        "text: str, vector: embedding -> p: probability, c: confidence_score, \
         steps: reasoning_chain, maybe: optional[confidence_score]"
    );
    assert_eq!(Signature::parse(&sig.to_string()).unwrap(), sig);
}

fn parse_err(text: &str) -> (usize, Option<String>, ParseErrorKind) {
    match Signature::parse(text) {
        Err(SignatureError::Parse(e)) => (e.position, e.field, e.reason),
        other => panic!("{text:?}: {other:?}"),
    }
}

#[test]
fn syntax_errors_name_the_position_and_the_field() {
    use ParseErrorKind::*;
    assert_eq!(
        parse_err("question: strr -> answer"),
        (10, Some("question".into()), UnknownType("strr".into()))
    );
    assert_eq!(
        parse_err("q, context: list[str -> a"),
        (
            21,
            Some("context".into()),
            Expected {
                expected: "`]`",
                found: Some('-')
            }
        )
    );
    assert_eq!(
        parse_err("question answer"),
        (
            9,
            None,
            Expected {
                expected: "`,` or `->`",
                found: Some('a')
            }
        )
    );
    assert_eq!(
        parse_err("question"),
        (
            8,
            None,
            Expected {
                expected: "`,` or `->`",
                found: None
            }
        )
    );
    assert_eq!(
        parse_err("q ->"),
        (
            4,
            None,
            Expected {
                expected: "a field name",
                found: None
            }
        )
    );
    assert_eq!(
        parse_err("q, -> a"),
        (
            3,
            None,
            Expected {
                expected: "a field name",
                found: Some('-')
            }
        )
    );
    assert_eq!(
        parse_err("q -> a b"),
        (
            7,
            None,
            Expected {
                expected: "`,` or end of input",
                found: Some('b')
            }
        )
    );
    assert_eq!(
        parse_err("q: probability[int] -> a"),
        (
            14,
            Some("q".into()),
            TakesNoParameters("probability".into())
        )
    );
    let err = Signature::parse("question: strr -> answer").unwrap_err();
    assert!(
        err.to_string().starts_with(
            "field `question` at position 10 of `question: strr -> answer`: unknown type `strr`"
        ),
        "{err}"
    );
}

#[test]
fn definition_errors_after_parsing() {
    assert_eq!(
        Signature::parse("q, q -> a"),
        Err(SignatureError::DuplicateField { field: "q".into() })
    );
    assert_eq!(
        Signature::parse("q -> q"),
        Err(SignatureError::DuplicateField { field: "q".into() })
    );
    assert_eq!(
        Signature::parse("json -> a"),
        Err(SignatureError::InvalidFieldName {
            field: "json".into(),
            reason: NameError::Reserved
        })
    );
    assert_eq!(
        Signature::parse("q -> lambda"),
        Err(SignatureError::InvalidFieldName {
            field: "lambda".into(),
            reason: NameError::PythonKeyword
        })
    );
    assert_eq!(
        Signature::parse("q -> 2nd"),
        Err(SignatureError::InvalidFieldName {
            field: "2nd".into(),
            reason: NameError::NotIdentifier
        })
    );
    assert_eq!(
        Signature::parse("q -> café").unwrap_err().to_string(),
        "field name `café` is not an ASCII identifier"
    );
}

#[test]
fn field_names_follow_the_workers_rules() {
    for ok in [
        "question",
        "Answer2",
        "x",
        "match",
        "case",
        "type",
        "model_name",
    ] {
        assert_eq!(check_field_name(ok), Ok(()), "{ok}");
    }
    assert_eq!(check_field_name(""), Err(NameError::Empty));
    assert_eq!(
        check_field_name("_private"),
        Err(NameError::LeadingUnderscore)
    );
    assert_eq!(check_field_name("a-b"), Err(NameError::NotIdentifier));
    assert_eq!(check_field_name("a b"), Err(NameError::NotIdentifier));
    for kw in [
        "class", "def", "None", "True", "async", "await", "yield", "from",
    ] {
        assert_eq!(check_field_name(kw), Err(NameError::PythonKeyword), "{kw}");
    }
    // At least the names the brief lists, and every entry of the table.
    for reserved in [
        "instructions",
        "signature",
        "fields",
        "model_config",
        "model_fields",
        "json",
        "dict",
        "copy",
        "schema",
        "construct",
        "validate",
        "parse_obj",
        "parse_raw",
        "input_fields",
        "output_fields",
    ] {
        assert_eq!(
            check_field_name(reserved),
            Err(NameError::Reserved),
            "{reserved}"
        );
    }
    for reserved in RESERVED_FIELD_NAMES {
        assert_eq!(
            check_field_name(reserved),
            Err(NameError::Reserved),
            "{reserved}"
        );
    }
}

#[test]
fn the_builder_takes_strings_or_typed_fields() {
    let sig = Signature::builder("QA")
        .instructions("Answer questions with short factoid answers.")
        .input_described("question", "str", "The question")
        .input("context", "optional[list[str]]")
        .input_field(Field::of_kind("vector", FieldKind::Embedding))
        .output("answer", "str")
        .output_described("confidence", "confidence", "How sure")
        .output_field(Field::new("tags", FieldType::list(FieldType::Str)).described("Labels"))
        .build()
        .unwrap();
    assert_eq!(sig.name(), "QA");
    assert_eq!(
        sig.instructions(),
        "Answer questions with short factoid answers."
    );
    assert_eq!(sig.description(), sig.instructions());
    assert_eq!(
        sig.input("question").unwrap().description(),
        Some("The question")
    );
    assert!(sig.input("context").unwrap().is_optional());
    assert_eq!(
        sig.input("vector").unwrap().ty(),
        &FieldType::list(FieldType::Float)
    );
    assert_eq!(
        sig.output("confidence").unwrap().kind(),
        FieldKind::ConfidenceScore
    );
    assert_eq!(sig.output("tags").unwrap().description(), Some("Labels"));
    let roles: Vec<(FieldRole, &str)> = sig.fields().map(|(r, f)| (r, f.name())).collect();
    assert_eq!(
        roles,
        [
            (FieldRole::Input, "question"),
            (FieldRole::Input, "context"),
            (FieldRole::Input, "vector"),
            (FieldRole::Output, "answer"),
            (FieldRole::Output, "confidence"),
            (FieldRole::Output, "tags"),
        ]
    );
}

#[test]
fn the_builder_reports_the_first_problem_at_build() {
    let err = Signature::builder("QA")
        .input("question", "lst[str]")
        .output("answer", "strr")
        .build()
        .unwrap_err();
    let SignatureError::Parse(parse) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(parse.field.as_deref(), Some("question"));
    assert_eq!(parse.reason, ParseErrorKind::UnknownType("lst".into()));
    assert_eq!(
        Signature::builder("QA").input("q", "str").build(),
        Err(SignatureError::NoOutputs { name: "QA".into() })
    );
    assert_eq!(
        Signature::builder("not a name").output("a", "str").build(),
        Err(SignatureError::InvalidName {
            name: "not a name".into()
        })
    );
    assert_eq!(
        Signature::builder("class").output("a", "str").build(),
        Err(SignatureError::InvalidName {
            name: "class".into()
        })
    );
    assert_eq!(
        Signature::builder("QA")
            .output_field(Field::new("p", FieldType::Int))
            .build()
            .map(|_| ()),
        Ok(())
    );
    let err = Field::new("p", FieldType::Int)
        .with_kind(FieldKind::Probability)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "field `p`: kind `probability` needs type `float` (or optional of it), not `int`"
    );
    let mut too_many = Signature::builder("Big");
    for i in 0..MAX_FIELDS {
        too_many = too_many.input(format!("f{i}"), "str");
    }
    assert_eq!(
        too_many.output("a", "str").build(),
        Err(SignatureError::TooManyFields {
            count: MAX_FIELDS + 1,
            max: MAX_FIELDS
        })
    );
    let mut deep = FieldType::Str;
    for _ in 0..33 {
        deep = FieldType::list(deep);
    }
    assert!(matches!(
        Signature::builder("Deep")
            .output_field(Field::new("a", deep))
            .build(),
        Err(SignatureError::TypeTooComplex { .. })
    ));
}

#[test]
fn to_spec_is_what_the_worker_reads() {
    let sig = Signature::builder("QA")
        .instructions("Answer.")
        .input_described("question", "str", "The question")
        .input("hint", "optional[str]")
        .output("answer", "optional[str]")
        .build()
        .unwrap();
    let spec = sig.to_spec();
    assert_eq!(
        spec,
        SignatureSpec {
            name: "QA".into(),
            instructions: "Answer.".into(),
            inputs: vec![
                FieldSpec {
                    description: Some("The question".into()),
                    ..FieldSpec::new("question", "str")
                },
                FieldSpec {
                    optional: true,
                    ..FieldSpec::new("hint", "optional[str]")
                },
            ],
            // An optional output is nullable, not omissible: no flag.
            outputs: vec![FieldSpec::new("answer", "optional[str]")],
        }
    );
    // The JSON the worker receives.
    assert_eq!(
        serde_json::to_value(&spec).unwrap()["inputs"][1],
        serde_json::json!({"name": "hint", "type": "optional[str]", "optional": true})
    );
}

#[test]
fn from_spec_round_trips_and_widens_optional_fields() {
    let sig = Signature::parse(
        "question: str, context: list[str], k: optional[int] -> answer: str, labels: list[literal[a|b|\"c d\"]]",
    )
    .unwrap()
    .with_name("Retrieve")
    .unwrap()
    .with_instructions("Find it.");
    assert_eq!(Signature::from_spec(&sig.to_spec()).unwrap(), sig);

    let spec = SignatureSpec {
        name: String::new(),
        instructions: String::new(),
        inputs: vec![FieldSpec {
            optional: true,
            ..FieldSpec::new("k", "int")
        }],
        outputs: vec![FieldSpec::new("a", "List[str]")],
    };
    let sig = Signature::from_spec(&spec).unwrap();
    assert_eq!(sig.name(), Signature::DEFAULT_NAME);
    assert_eq!(
        sig.input("k").unwrap().ty(),
        &FieldType::optional(FieldType::Int)
    );
    assert_eq!(sig.output("a").unwrap().ty().to_wire(), "list[str]");

    // Kinds do not travel; the wire types do.
    let kinds = Signature::parse("v: embedding -> p: probability").unwrap();
    let back = Signature::from_spec(&kinds.to_spec()).unwrap();
    assert_eq!(back.output("p").unwrap().kind(), FieldKind::Plain);
    assert_eq!(back.to_spec(), kinds.to_spec());
}

#[test]
fn from_spec_applies_every_rule() {
    let spec = |inputs: Vec<FieldSpec>, outputs: Vec<FieldSpec>| SignatureSpec {
        name: "S".into(),
        instructions: String::new(),
        inputs,
        outputs,
    };
    let err = Signature::from_spec(&spec(vec![FieldSpec::new("q", "list[")], vec![])).unwrap_err();
    let SignatureError::Parse(parse) = err else {
        panic!()
    };
    assert_eq!(parse.field.as_deref(), Some("q"));
    assert_eq!(
        Signature::from_spec(&spec(vec![FieldSpec::new("q", "str")], vec![])),
        Err(SignatureError::NoOutputs { name: "S".into() })
    );
    assert_eq!(
        Signature::from_spec(&spec(vec![], vec![FieldSpec::new("schema", "str")])),
        Err(SignatureError::InvalidFieldName {
            field: "schema".into(),
            reason: NameError::Reserved
        })
    );
}

#[test]
fn display_is_the_string_form_and_parses_back() {
    let sig = Signature::builder("QA")
        .input("question", "str")
        .input("k", "optional[int]")
        .output("answer", "literal[yes|no]")
        .output("why", "optional[reasoning_chain]")
        .build()
        .unwrap();
    let text = sig.to_string();
    assert_eq!(
        text,
        "question: str, k: optional[int] -> answer: literal[yes|no], why: optional[reasoning_chain]"
    );
    let back: Signature = text.parse().unwrap();
    assert_eq!(back.with_name("QA").unwrap(), sig);
}

#[test]
fn the_default_description_is_dspys() {
    let sig = Signature::parse("question, context -> answer").unwrap();
    assert_eq!(
        sig.description(),
        "Given the fields `question`, `context`, produce the fields `answer`."
    );
    assert_eq!(
        sig.clone().with_instructions("Be brief.").description(),
        "Be brief."
    );
    assert!(sig.clone().with_name("Bad Name").is_err());
}

#[test]
fn field_helpers() {
    let field = Field::parse("p", "optional[probability]").unwrap();
    assert_eq!(field.declared_type(), "optional[probability]");
    assert_eq!(field.ty().to_wire(), "optional[float]");
    let field = Field::new("x", FieldType::Int).optional().optional();
    assert_eq!(field.ty().to_wire(), "optional[int]");
    assert_eq!(
        field.to_spec(FieldRole::Input),
        FieldSpec {
            optional: true,
            ..FieldSpec::new("x", "optional[int]")
        }
    );
    assert!(!field.to_spec(FieldRole::Output).optional);
    let err = Field::parse("x", "list[").unwrap_err();
    assert_eq!(err.field.as_deref(), Some("x"));
    assert_eq!(
        Field::of_kind("plain", FieldKind::Plain).ty(),
        &FieldType::Str
    );
}
