//! [`FieldType`], the wire's type language, and [`FieldKind`], the ML
//! meaning a field may carry on top of it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::error::{ParseError, SignatureError};
use super::parse;

/// Deepest nesting of type constructors the worker accepts
/// (`list[list[...]]`, 32 levels below the outermost type).
pub const MAX_TYPE_DEPTH: usize = 32;

/// Longest type string the worker accepts, in characters.
pub const MAX_TYPE_LENGTH: usize = 4096;

/// The type of a signature field, as the protocol spells it.
///
/// `str`, `int`, `float`, `bool`, `list[T]`, `dict[str, T]`,
/// `optional[T]` and `literal[a|b|c]`, nested freely, and `history` (a
/// conversation's earlier turns, DSPy's `dspy.History`). [`FieldType::to_wire`]
/// (and [`Display`](fmt::Display)) give the exact string the Python worker
/// parses; [`FieldType::parse`] reads it back, so any type round-trips.
///
/// ```
/// use dspex::FieldType;
///
/// let ty = FieldType::parse("Dict[str, list[optional[int]]]")?;
/// assert_eq!(ty, FieldType::dict(FieldType::list(FieldType::optional(FieldType::Int))));
/// assert_eq!(ty.to_wire(), "dict[str, list[optional[int]]]");
///
/// let label = FieldType::literal(["positive", "negative", "not sure"])?;
/// assert_eq!(label.to_wire(), r#"literal[positive|negative|"not sure"]"#);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FieldType {
    /// `str`: a JSON string.
    Str,
    /// `int`: a JSON integer (a boolean is not an int).
    Int,
    /// `float`: a JSON number; integers are accepted.
    Float,
    /// `bool`: `true` or `false`.
    Bool,
    /// `list[T]`: a JSON array whose items are `T`.
    List(Box<FieldType>),
    /// `dict[str, T]`: a JSON object whose values are `T` (keys are strings).
    Dict(Box<FieldType>),
    /// `optional[T]`: `T` or `null`; an optional input may be omitted.
    Optional(Box<FieldType>),
    /// `literal[a|b|c]`: one of a fixed set of strings.
    Literal(LiteralMembers),
    /// `history`: the earlier turns of a conversation, `{"messages":
    /// [{field: value, ...}, ...]}` (DSPy's `dspy.History`; see
    /// [`crate::History`]).
    History,
}

impl FieldType {
    /// `list[item]`.
    pub fn list(item: FieldType) -> Self {
        Self::List(Box::new(item))
    }

    /// `dict[str, value]`.
    pub fn dict(value: FieldType) -> Self {
        Self::Dict(Box::new(value))
    }

    /// `optional[inner]`.
    pub fn optional(inner: FieldType) -> Self {
        Self::Optional(Box::new(inner))
    }

    /// `literal[a|b|...]`, from at least one distinct member.
    ///
    /// # Errors
    ///
    /// [`SignatureError::EmptyLiteral`] for no members,
    /// [`SignatureError::DuplicateLiteralMember`] for a repeated one.
    pub fn literal<I, S>(members: I) -> Result<Self, SignatureError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        LiteralMembers::new(members).map(Self::Literal)
    }

    /// Parses a type string such as `list[str]` or `dict[str, optional[int]]`.
    ///
    /// Whitespace between tokens is ignored and constructor names are
    /// case-insensitive (`List[str]`, `Optional[int]`); literal members are
    /// bare words or quoted strings, separated by `|` (or `,`, as in DSPy's
    /// `Literal['a', 'b']`). Field kinds such as `probability` are not types:
    /// see [`Field::parse`](super::Field::parse).
    ///
    /// # Errors
    ///
    /// A [`ParseError`] with the character position of the problem.
    ///
    /// ```
    /// use dspex::FieldType;
    ///
    /// let err = FieldType::parse("list[str").unwrap_err();
    /// assert_eq!(err.position, 8);
    /// assert_eq!(err.to_string(), "position 8 of `list[str`: expected `]`, found end of input");
    /// ```
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        parse::parse_type(text)
    }

    /// The protocol's spelling of this type: `list[str]`, `dict[str, int]`,
    /// `optional[float]`, `literal[a|b]`.
    pub fn to_wire(&self) -> String {
        self.to_string()
    }

    /// Whether this is `optional[T]`.
    pub fn is_optional(&self) -> bool {
        matches!(self, Self::Optional(_))
    }

    /// `T` for `optional[T]` (through any number of `optional`s), else `self`.
    pub fn without_optional(&self) -> &FieldType {
        match self {
            Self::Optional(inner) => inner.without_optional(),
            other => other,
        }
    }

    /// Levels of nesting below this type: 0 for a scalar or a literal.
    pub fn depth(&self) -> usize {
        match self {
            Self::List(t) | Self::Dict(t) | Self::Optional(t) => 1 + t.depth(),
            _ => 0,
        }
    }
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Str => f.write_str("str"),
            Self::Int => f.write_str("int"),
            Self::Float => f.write_str("float"),
            Self::Bool => f.write_str("bool"),
            Self::List(item) => write!(f, "list[{item}]"),
            Self::Dict(value) => write!(f, "dict[str, {value}]"),
            Self::Optional(inner) => write!(f, "optional[{inner}]"),
            Self::Literal(members) => write!(f, "literal[{members}]"),
            Self::History => f.write_str("history"),
        }
    }
}

impl FromStr for FieldType {
    type Err = ParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

/// Serialized as its wire string.
impl Serialize for FieldType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Deserialized from a wire string.
impl<'de> Deserialize<'de> for FieldType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The members of a `literal[...]` type: at least one, all distinct, in order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LiteralMembers(Vec<String>);

impl LiteralMembers {
    /// Checks and keeps `members`.
    ///
    /// # Errors
    ///
    /// [`SignatureError::EmptyLiteral`] or
    /// [`SignatureError::DuplicateLiteralMember`].
    pub fn new<I, S>(members: I) -> Result<Self, SignatureError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut out: Vec<String> = Vec::new();
        for member in members {
            let member = member.into();
            if out.contains(&member) {
                return Err(SignatureError::DuplicateLiteralMember { member });
            }
            out.push(member);
        }
        if out.is_empty() {
            return Err(SignatureError::EmptyLiteral);
        }
        Ok(Self(out))
    }

    /// The members, in declaration order.
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    /// Iterates over the members.
    pub fn iter(&self) -> std::slice::Iter<'_, String> {
        self.0.iter()
    }

    /// Whether `value` is a member.
    pub fn contains(&self, value: &str) -> bool {
        self.0.iter().any(|m| m == value)
    }

    /// How many members there are (at least one).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: a literal has at least one member.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'a> IntoIterator for &'a LiteralMembers {
    type Item = &'a String;
    type IntoIter = std::slice::Iter<'a, String>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// `a|b|"two words"`: bare when the member is a plain word, quoted otherwise.
impl fmt::Display for LiteralMembers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, member) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("|")?;
            }
            write_member(f, member)?;
        }
        Ok(())
    }
}

fn write_member(f: &mut fmt::Formatter<'_>, member: &str) -> fmt::Result {
    let bare = !member.is_empty()
        && member
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '/' | '+' | '@'));
    if bare {
        return f.write_str(member);
    }
    f.write_str("\"")?;
    for c in member.chars() {
        if matches!(c, '"' | '\\') {
            f.write_str("\\")?;
        }
        write!(f, "{c}")?;
    }
    f.write_str("\"")
}

/// What a field means beyond its wire type: the ML types of the original
/// DSPex, each carried on the wire as a plain type with a constraint kept on
/// the Rust side (for validation and JSON Schema).
///
/// | kind | spelled | wire type | constraint |
/// |---|---|---|---|
/// | [`Embedding`](Self::Embedding) | `embedding` | `list[float]` | |
/// | [`Probability`](Self::Probability) | `probability` | `float` | in [0, 1] |
/// | [`ConfidenceScore`](Self::ConfidenceScore) | `confidence_score`, `confidence` | `float` | in [0, 1] |
/// | [`ReasoningChain`](Self::ReasoningChain) | `reasoning_chain` | `list[str]` | |
///
/// A kind applies to the whole field, optionally inside `optional[...]`
/// (`optional[probability]`).
///
/// ```
/// use dspex::{FieldKind, FieldType};
///
/// let kind = FieldKind::from_name("confidence").unwrap();
/// assert_eq!(kind, FieldKind::ConfidenceScore);
/// assert_eq!(kind.wire_type(), Some(FieldType::Float));
/// assert_eq!(kind.range(), Some((0.0, 1.0)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum FieldKind {
    /// No meaning beyond the type.
    #[default]
    Plain,
    /// A vector of floats (`list[float]`).
    Embedding,
    /// A probability: a float in [0, 1].
    Probability,
    /// A confidence score: a float in [0, 1].
    ConfidenceScore,
    /// Steps of reasoning (`list[str]`).
    ReasoningChain,
}

impl FieldKind {
    /// Every kind that has a name, in the table's order.
    pub const NAMED: [FieldKind; 4] = [
        Self::Embedding,
        Self::Probability,
        Self::ConfidenceScore,
        Self::ReasoningChain,
    ];

    /// The kind's name: `embedding`, `probability`, `confidence_score`,
    /// `reasoning_chain` (`plain` for [`FieldKind::Plain`]).
    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Embedding => "embedding",
            Self::Probability => "probability",
            Self::ConfidenceScore => "confidence_score",
            Self::ReasoningChain => "reasoning_chain",
        }
    }

    /// The kind spelled `name` (ASCII case-insensitive; `confidence` is an
    /// alias of `confidence_score`), or `None`. `plain` is not a name.
    pub fn from_name(name: &str) -> Option<Self> {
        let lower = name.to_ascii_lowercase();
        match lower.as_str() {
            "embedding" => Some(Self::Embedding),
            "probability" => Some(Self::Probability),
            "confidence_score" | "confidence" => Some(Self::ConfidenceScore),
            "reasoning_chain" => Some(Self::ReasoningChain),
            _ => None,
        }
    }

    /// The plain type the kind travels as, `None` for [`FieldKind::Plain`].
    pub fn wire_type(self) -> Option<FieldType> {
        match self {
            Self::Plain => None,
            Self::Embedding => Some(FieldType::list(FieldType::Float)),
            Self::Probability | Self::ConfidenceScore => Some(FieldType::Float),
            Self::ReasoningChain => Some(FieldType::list(FieldType::Str)),
        }
    }

    /// The inclusive range a number of this kind must lie in.
    pub fn range(self) -> Option<(f64, f64)> {
        match self {
            Self::Probability | Self::ConfidenceScore => Some((0.0, 1.0)),
            _ => None,
        }
    }

    /// Whether a field of type `ty` may carry this kind: `ty` is the kind's
    /// wire type, or `optional` of it. Every type may be plain.
    pub fn fits(self, ty: &FieldType) -> bool {
        match self.wire_type() {
            None => true,
            Some(wire) => ty.without_optional() == &wire,
        }
    }
}

impl fmt::Display for FieldKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
