//! `FieldType`: parsing (good and bad, with positions), the wire spelling,
//! serde, kinds, and a property test that every type round-trips.

use dspex::signature::{FieldKind, FieldType, LiteralMembers, ParseErrorKind, SignatureError};
use proptest::prelude::*;

fn parse(text: &str) -> FieldType {
    FieldType::parse(text).unwrap_or_else(|e| panic!("{text:?} should parse: {e}"))
}

#[test]
fn scalars_and_constructors_parse() {
    assert_eq!(parse("str"), FieldType::Str);
    assert_eq!(parse("int"), FieldType::Int);
    assert_eq!(parse("float"), FieldType::Float);
    assert_eq!(parse("bool"), FieldType::Bool);
    assert_eq!(parse("list[str]"), FieldType::list(FieldType::Str));
    assert_eq!(parse("dict[str, int]"), FieldType::dict(FieldType::Int));
    assert_eq!(
        parse("optional[float]"),
        FieldType::optional(FieldType::Float)
    );
    assert_eq!(
        parse("literal[a|b|c]"),
        FieldType::literal(["a", "b", "c"]).unwrap()
    );
}

#[test]
fn nesting_whitespace_and_case_are_free() {
    let expected = FieldType::dict(FieldType::list(FieldType::optional(
        FieldType::literal(["x", "y"]).unwrap(),
    )));
    assert_eq!(
        parse("  Dict [ str ,List[ Optional[ Literal[ x | y ] ] ] ]  "),
        expected
    );
    assert_eq!(
        expected.to_wire(),
        "dict[str, list[optional[literal[x|y]]]]"
    );
    assert_eq!(parse("LIST[STR]"), FieldType::list(FieldType::Str));
}

#[test]
fn to_wire_is_the_protocol_spelling() {
    let cases = [
        "str",
        "int",
        "float",
        "bool",
        "list[str]",
        "dict[str, int]",
        "optional[float]",
        "literal[a|b]",
        "list[dict[str, list[optional[bool]]]]",
    ];
    for case in cases {
        assert_eq!(parse(case).to_wire(), case);
        assert_eq!(parse(case).to_string(), case);
        assert_eq!(case.parse::<FieldType>().unwrap(), parse(case));
    }
}

#[test]
fn literal_members_can_be_quoted_and_comma_separated() {
    let ty = parse(r#"literal['not sure', "say \"hi\"", plain, '']"#);
    let FieldType::Literal(members) = &ty else {
        panic!("{ty:?}")
    };
    assert_eq!(members.as_slice(), ["not sure", "say \"hi\"", "plain", ""]);
    assert_eq!(ty.to_wire(), r#"literal["not sure"|"say \"hi\""|plain|""]"#);
    assert_eq!(parse(&ty.to_wire()), ty);
    // Members with brackets, bars and backslashes survive the wire.
    let odd = FieldType::literal(["a|b", "[x]", r"back\slash", "é"]).unwrap();
    assert_eq!(parse(&odd.to_wire()), odd);
}

#[test]
fn literal_members_must_be_distinct_and_present() {
    assert_eq!(
        LiteralMembers::new(Vec::<String>::new()),
        Err(SignatureError::EmptyLiteral)
    );
    assert_eq!(
        FieldType::literal(["a", "a"]),
        Err(SignatureError::DuplicateLiteralMember { member: "a".into() })
    );
    let members = LiteralMembers::new(["x", "y"]).unwrap();
    assert!(members.contains("y") && !members.contains("z"));
    assert_eq!(members.len(), 2);
    assert!(!members.is_empty());
    assert_eq!(members.iter().count(), 2);
    assert_eq!(members.to_string(), "x|y");
}

/// (input, character position, reason).
fn bad(text: &str) -> (usize, ParseErrorKind) {
    let err = FieldType::parse(text).expect_err(text);
    assert_eq!(err.input, text);
    assert_eq!(err.field, None);
    (err.position, err.reason)
}

#[test]
fn errors_name_the_position_and_the_reason() {
    use ParseErrorKind::*;
    assert_eq!(
        bad(""),
        (
            0,
            Expected {
                expected: "a type name",
                found: None
            }
        )
    );
    assert_eq!(bad("strr"), (0, UnknownType("strr".into())));
    assert_eq!(bad("list[strr]"), (5, UnknownType("strr".into())));
    assert_eq!(
        bad("list[str"),
        (
            8,
            Expected {
                expected: "`]`",
                found: None
            }
        )
    );
    assert_eq!(
        bad("list(str)"),
        (
            4,
            Expected {
                expected: "`[`",
                found: Some('(')
            }
        )
    );
    assert_eq!(bad("str[int]"), (3, TakesNoParameters("str".into())));
    assert_eq!(bad("dict[int, str]"), (5, DictKeyNotStr("int".into())));
    assert_eq!(
        bad("dict[str]"),
        (
            8,
            Expected {
                expected: "`,`",
                found: Some(']')
            }
        )
    );
    assert_eq!(
        bad("literal[a|b|a]"),
        (12, DuplicateLiteralMember("a".into()))
    );
    assert_eq!(
        bad("literal[]"),
        (
            8,
            Expected {
                expected: "a literal member",
                found: Some(']')
            }
        )
    );
    assert_eq!(bad("literal['open"), (8, UnterminatedQuote));
    assert_eq!(
        bad("list[str] x"),
        (
            10,
            Expected {
                expected: "end of input",
                found: Some('x')
            }
        )
    );
    assert_eq!(
        bad("list[probability]"),
        (5, KindNotAllowedHere(FieldKind::Probability))
    );
    // Positions count characters, not bytes.
    assert_eq!(
        bad("literal[é|é]"),
        (10, DuplicateLiteralMember("é".into()))
    );
}

#[test]
fn error_messages_read_well() {
    let err = FieldType::parse("dict[int, str]").unwrap_err();
    assert_eq!(
        err.to_string(),
        "position 5 of `dict[int, str]`: dict keys must be str, not `int`"
    );
    let err = FieldType::parse("strng").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("position 0 of `strng`: unknown type `strng` (types: str, int")
    );
}

#[test]
fn depth_and_length_are_bounded_like_the_worker() {
    let nest = |n: usize| format!("{}str{}", "list[".repeat(n), "]".repeat(n));
    assert_eq!(parse(&nest(32)).depth(), 32);
    let (position, reason) = bad(&nest(33));
    assert_eq!(reason, ParseErrorKind::TooDeep);
    assert_eq!(position, 5 * 33);
    let long = format!("literal[{}]", "a".repeat(5000));
    assert_eq!(bad(&long), (4096, ParseErrorKind::TooLong));
}

#[test]
fn serde_uses_the_wire_string() {
    let ty = FieldType::list(FieldType::optional(FieldType::Int));
    assert_eq!(
        serde_json::to_value(&ty).unwrap(),
        serde_json::json!("list[optional[int]]")
    );
    let back: FieldType = serde_json::from_value(serde_json::json!("list[optional[int]]")).unwrap();
    assert_eq!(back, ty);
    let err = serde_json::from_value::<FieldType>(serde_json::json!("list[")).unwrap_err();
    assert!(err.to_string().contains("position 5"), "{err}");
}

#[test]
fn helpers() {
    let ty = FieldType::optional(FieldType::optional(FieldType::Float));
    assert!(ty.is_optional());
    assert_eq!(ty.without_optional(), &FieldType::Float);
    assert_eq!(ty.depth(), 2);
    assert!(!FieldType::Str.is_optional());
}

#[test]
fn kinds_map_onto_plain_types_with_constraints() {
    let table = [
        ("embedding", FieldKind::Embedding, "list[float]", None),
        (
            "probability",
            FieldKind::Probability,
            "float",
            Some((0.0, 1.0)),
        ),
        (
            "confidence_score",
            FieldKind::ConfidenceScore,
            "float",
            Some((0.0, 1.0)),
        ),
        (
            "confidence",
            FieldKind::ConfidenceScore,
            "float",
            Some((0.0, 1.0)),
        ),
        (
            "reasoning_chain",
            FieldKind::ReasoningChain,
            "list[str]",
            None,
        ),
    ];
    for (name, kind, wire, range) in table {
        assert_eq!(FieldKind::from_name(name), Some(kind), "{name}");
        assert_eq!(kind.wire_type().unwrap().to_wire(), wire);
        assert_eq!(kind.range(), range);
        assert!(kind.fits(&kind.wire_type().unwrap()));
        assert!(kind.fits(&FieldType::optional(kind.wire_type().unwrap())));
    }
    assert_eq!(
        FieldKind::from_name("Probability"),
        Some(FieldKind::Probability)
    );
    assert_eq!(FieldKind::from_name("plain"), None);
    assert_eq!(FieldKind::Plain.wire_type(), None);
    assert!(FieldKind::Plain.fits(&FieldType::Bool));
    assert!(!FieldKind::Probability.fits(&FieldType::Int));
    assert_eq!(FieldKind::ConfidenceScore.to_string(), "confidence_score");
    assert_eq!(FieldKind::default(), FieldKind::Plain);
    assert_eq!(FieldKind::NAMED.len(), 4);
}

fn member() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9_]{0,6}",
        // Anything at all, quoted on the wire.
        any::<String>().prop_map(|s| s.chars().take(8).collect()),
    ]
}

fn field_type() -> impl Strategy<Value = FieldType> {
    let leaf = prop_oneof![
        Just(FieldType::Str),
        Just(FieldType::Int),
        Just(FieldType::Float),
        Just(FieldType::Bool),
        prop::collection::hash_set(member(), 1..5)
            .prop_map(|m| FieldType::literal(m).expect("distinct, non-empty")),
    ];
    leaf.prop_recursive(6, 32, 1, |inner| {
        prop_oneof![
            inner.clone().prop_map(FieldType::list),
            inner.clone().prop_map(FieldType::dict),
            inner.prop_map(FieldType::optional),
        ]
    })
}

proptest! {
    #[test]
    fn any_field_type_round_trips_through_the_wire(ty in field_type()) {
        let wire = ty.to_wire();
        prop_assert_eq!(FieldType::parse(&wire).unwrap(), ty.clone());
        // The serde form is the wire form.
        let json = serde_json::to_string(&ty).unwrap();
        prop_assert_eq!(serde_json::from_str::<FieldType>(&json).unwrap(), ty);
    }

    #[test]
    fn the_parser_never_panics(text in "\\PC{0,40}") {
        let _ = FieldType::parse(&text);
        let _ = dspex::Signature::parse(&text);
    }
}
