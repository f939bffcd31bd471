//! What can be wrong with a signature ([`SignatureError`], [`ParseError`])
//! and with the values that cross it ([`ValidationError`]).

use std::fmt;

use super::types::FieldKind;

/// A type or signature string that does not parse, with the position of the
/// problem.
///
/// `position` counts characters (not bytes) from 0 in `input`, the whole
/// string given to the parser; `field` names the field whose declaration was
/// being read, if any.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub struct ParseError {
    /// The text that was parsed.
    pub input: String,
    /// Character offset of the problem in `input`, from 0.
    pub position: usize,
    /// The field being declared when parsing failed.
    pub field: Option<String>,
    /// What was wrong.
    pub reason: ParseErrorKind,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(field) = &self.field {
            write!(f, "field `{field}` at ")?;
        }
        write!(
            f,
            "position {} of `{}`: {}",
            self.position, self.input, self.reason
        )
    }
}

/// The reason a [`ParseError`] was raised.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseErrorKind {
    /// Something else was expected here.
    Expected {
        /// What would have been accepted, e.g. "`]`" or "a type name".
        expected: &'static str,
        /// The character found instead, `None` at the end of the input.
        found: Option<char>,
    },
    /// A word that names no type.
    UnknownType(String),
    /// A scalar given parameters, as in `str[int]`.
    TakesNoParameters(String),
    /// A `dict` whose key type is not `str`.
    DictKeyNotStr(String),
    /// The same literal member twice.
    DuplicateLiteralMember(String),
    /// A field kind (such as `probability`) nested inside a type.
    KindNotAllowedHere(FieldKind),
    /// A quoted literal member that never ends.
    UnterminatedQuote,
    /// More nesting than the worker accepts ([`MAX_TYPE_DEPTH`](super::MAX_TYPE_DEPTH)).
    TooDeep,
    /// A type string longer than the worker accepts ([`MAX_TYPE_LENGTH`](super::MAX_TYPE_LENGTH)).
    TooLong,
}

impl fmt::Display for ParseErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Expected { expected, found } => {
                write!(f, "expected {expected}, found ")?;
                match found {
                    Some(c) => write!(f, "`{c}`"),
                    None => f.write_str("end of input"),
                }
            }
            Self::UnknownType(name) => write!(
                f,
                "unknown type `{name}` (types: str, int, float, bool, list[T], dict[str, T], \
                 optional[T], literal[a|b]; kinds: embedding, probability, confidence_score, \
                 reasoning_chain)"
            ),
            Self::TakesNoParameters(name) => write!(f, "`{name}` takes no parameters"),
            Self::DictKeyNotStr(key) => write!(f, "dict keys must be str, not `{key}`"),
            Self::DuplicateLiteralMember(member) => {
                write!(f, "literal member {member:?} appears twice")
            }
            Self::KindNotAllowedHere(kind) => write!(
                f,
                "`{kind}` is a field kind: it can only be a field's whole type \
                 (or `optional[{kind}]`), not part of one"
            ),
            Self::UnterminatedQuote => f.write_str("unterminated quoted literal member"),
            Self::TooDeep => write!(
                f,
                "types nest deeper than {} levels",
                super::types::MAX_TYPE_DEPTH
            ),
            Self::TooLong => write!(
                f,
                "type longer than {} characters",
                super::types::MAX_TYPE_LENGTH
            ),
        }
    }
}

/// Why a name cannot be a field name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NameError {
    /// The empty string.
    Empty,
    /// Not an ASCII identifier (`[A-Za-z_][A-Za-z0-9_]*`).
    NotIdentifier,
    /// Starts with `_`, which DSPy and pydantic keep for themselves.
    LeadingUnderscore,
    /// A Python keyword such as `class` or `lambda`.
    PythonKeyword,
    /// An attribute of DSPy's `Signature` class
    /// (see [`RESERVED_FIELD_NAMES`](super::RESERVED_FIELD_NAMES)).
    Reserved,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Empty => "is empty",
            Self::NotIdentifier => "is not an ASCII identifier",
            Self::LeadingUnderscore => "starts with an underscore",
            Self::PythonKeyword => "is a Python keyword",
            Self::Reserved => "is reserved by DSPy signatures (an attribute of dspy.Signature)",
        })
    }
}

/// A signature that cannot be defined as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// A type or signature string did not parse.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// A field name the worker would reject.
    #[error("field name `{field}` {reason}")]
    InvalidFieldName {
        /// The name.
        field: String,
        /// Why it is rejected.
        reason: NameError,
    },
    /// A signature name that is not an identifier (or is a Python keyword).
    #[error(
        "signature name `{name}` is not an identifier (letters, digits, `_`; not a Python keyword)"
    )]
    InvalidName {
        /// The name.
        name: String,
    },
    /// Two fields with the same name (inputs and outputs share one namespace).
    #[error("field `{field}` is declared twice (input and output names must all differ)")]
    DuplicateField {
        /// The name.
        field: String,
    },
    /// No output field: DSPy needs at least one.
    #[error("signature `{name}` has no output field; declare at least one")]
    NoOutputs {
        /// The signature's name.
        name: String,
    },
    /// More fields than the worker accepts.
    #[error("{count} fields is more than the {max} a signature may have")]
    TooManyFields {
        /// Inputs plus outputs.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A field type nested deeper, or spelled longer, than the worker accepts.
    #[error(
        "field `{field}`: type `{ty}` is too complex (at most {} levels, {} characters)",
        super::types::MAX_TYPE_DEPTH,
        super::types::MAX_TYPE_LENGTH
    )]
    TypeTooComplex {
        /// The field.
        field: String,
        /// Its type.
        ty: String,
    },
    /// A kind given to a field whose type cannot carry it.
    #[error(
        "field `{field}`: kind `{kind}` needs type `{expected}` (or optional of it), not `{ty}`"
    )]
    KindMismatch {
        /// The field.
        field: String,
        /// The kind.
        kind: FieldKind,
        /// The type the kind needs.
        expected: String,
        /// The type the field has.
        ty: String,
    },
    /// A `literal[...]` with no member.
    #[error("a literal type needs at least one member")]
    EmptyLiteral,
    /// A `literal[...]` with a repeated member.
    #[error("literal member {member:?} appears twice")]
    DuplicateLiteralMember {
        /// The member.
        member: String,
    },
}

/// Which side of a signature a field is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldRole {
    /// Given by the caller.
    Input,
    /// Produced by the program.
    Output,
}

impl fmt::Display for FieldRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Input => "input",
            Self::Output => "output",
        })
    }
}

/// A value that does not fit its signature: an input before it leaves Rust,
/// or an output when it comes back.
///
/// `field` is a path to the offending value: the field name, then `[i]` for a
/// list item and `.key` (or `["key"]` for a key that is not an identifier)
/// for a dict value, e.g. `context[2]` or `scores.alice`. `expected` is a
/// type as the signature spells it; `found` names what was there: `null`,
/// `bool`, `int`, `float`, `str`, `list`, `dict`, or the string itself
/// (quoted) where a literal was expected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    /// A required field is absent.
    #[error("missing {role} `{field}` (expected {expected})")]
    Missing {
        /// Input or output.
        role: FieldRole,
        /// The field.
        field: String,
        /// Its type.
        expected: String,
    },
    /// An input the signature does not declare.
    #[error(
        "unknown input `{field}`; the signature's inputs are {}",
        list_names(known)
    )]
    UnknownInput {
        /// The name given.
        field: String,
        /// The declared inputs, in order.
        known: Vec<String>,
    },
    /// A label (an expected output) the signature does not declare.
    #[error(
        "unknown output `{field}`; the signature's outputs are {}",
        list_names(known)
    )]
    UnknownOutput {
        /// The name given.
        field: String,
        /// The declared outputs, in order.
        known: Vec<String>,
    },
    /// A value of the wrong type.
    #[error("{role} `{field}`: expected {expected}, found {found}")]
    WrongType {
        /// Input or output.
        role: FieldRole,
        /// Path to the value.
        field: String,
        /// The type required there.
        expected: String,
        /// What was found.
        found: String,
    },
    /// A number outside the range of its kind (a probability above 1).
    #[error("{role} `{field}`: expected a {} in [{min}, {max}], found {found}", kind.name().replace('_', " "))]
    OutOfRange {
        /// Input or output.
        role: FieldRole,
        /// Path to the value.
        field: String,
        /// The field's kind.
        kind: FieldKind,
        /// Smallest allowed value.
        min: f64,
        /// Largest allowed value.
        max: f64,
        /// The value.
        found: f64,
    },
    /// Typed inputs did not serialize to a JSON object of fields.
    #[error("inputs must serialize to a map of fields: {reason}")]
    Encode {
        /// What serde reported, or what was produced instead.
        reason: String,
    },
    /// Outputs that fit the signature did not deserialize into the Rust type.
    #[error("outputs do not fit the Rust type: {reason}")]
    Decode {
        /// What serde reported.
        reason: String,
    },
}

impl ValidationError {
    /// The top-level field concerned (`context` for `context[2]`), if any.
    pub fn field(&self) -> Option<&str> {
        let path = match self {
            Self::Missing { field, .. }
            | Self::UnknownInput { field, .. }
            | Self::UnknownOutput { field, .. }
            | Self::WrongType { field, .. }
            | Self::OutOfRange { field, .. } => field.as_str(),
            Self::Encode { .. } | Self::Decode { .. } => return None,
        };
        let end = path.find(['[', '.']).unwrap_or(path.len());
        Some(&path[..end])
    }
}

fn list_names(names: &[String]) -> String {
    if names.is_empty() {
        return "none".to_owned();
    }
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}
