//! Signatures: the typed contract of a DSPy program.
//!
//! A [`Signature`](struct@Signature) has a name, instructions for the LM,
//! and ordered input and output [`Field`]s, each with a [`FieldType`] from
//! the protocol's small type language (`str`, `int`, `float`, `bool`,
//! `list[T]`, `dict[str, T]`, `optional[T]`, `literal[a|b]`) and,
//! optionally, a description and a [`FieldKind`] (`embedding`,
//! `probability`, `confidence_score`, `reasoning_chain`: the ML types of the
//! original DSPex, carried on the wire as plain types with their constraint
//! kept here).
//!
//! There are four ways to get one, all checked by the same rules (field
//! names the worker accepts and unique across inputs and outputs, at least
//! one output, kinds that fit their types):
//!
//! - DSPy's string form, [`Signature::parse`];
//! - field by field, [`Signature::builder`];
//! - the protocol's [`SignatureSpec`](dspex_protocol::SignatureSpec),
//!   [`Signature::from_spec`] (and back with [`Signature::to_spec`]);
//! - a Rust struct with `#[derive(Signature)]`, which also generates the
//!   typed `…Inputs` and `…Outputs` structs ([`TypedSignature`]).
//!
//! Values are checked before inputs leave Rust
//! ([`Signature::validate_inputs`]) and when outputs come back
//! ([`Signature::validate_outputs`]); a [`ValidationError`] names the field
//! (down to `context[2]`), what was expected and what was found. A
//! signature also describes itself as JSON Schema 2020-12
//! ([`Signature::input_schema`], [`Signature::output_schema`]) and as an
//! OpenAI or Anthropic tool.
//!
//! ```
//! use dspex::{Signature, TypedSignature};
//! use serde_json::json;
//!
//! // The string form...
//! let parsed = Signature::parse("question: str, context: list[str] -> answer: str")?;
//!
//! // ...and a struct say the same thing.
//! #[derive(Signature)]
//! struct Program {
//!     #[input]
//!     question: String,
//!     #[input]
//!     context: Vec<String>,
//!     #[output]
//!     answer: String,
//! }
//! assert_eq!(Program::signature().to_spec(), parsed.to_spec());
//!
//! // Inputs are checked before they are sent.
//! let err = parsed
//!     .validate_inputs(json!({"question": "Why?"}).as_object().unwrap())
//!     .unwrap_err();
//! assert_eq!(err.to_string(), "missing input `context` (expected list[str])");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Derive attributes
//!
//! On the struct: its doc comment is the instructions;
//! `#[dspex(name = "...", instructions = "...")]` overrides the signature's
//! name (the struct's by default) or instructions.
//!
//! On each field, exactly one of `#[input]` and `#[output]`, optionally with
//! `name = "..."` (the field's name on the wire), `desc = "..."` (instead of
//! the doc comment), `kind = "probability" | "confidence" |
//! "confidence_score" | "embedding" | "reasoning_chain"`, or
//! `literal = "a|b|c"` (on a `String` or `Option<String>`). Field types are
//! those implementing [`FieldValue`](trait@FieldValue); any other is a
//! compile error on the type, and so are reserved names, duplicates, a kind on a type that cannot
//! carry it, and a struct with no output.

mod definition;
mod error;
mod field;
mod parse;
mod schema;
mod typed;
mod types;
mod validate;

#[doc(hidden)]
pub mod __private;

pub use definition::{MAX_FIELDS, Signature, SignatureBuilder};
pub use dspex_macros::{FieldValue, Signature};
pub use error::{
    FieldRole, NameError, ParseError, ParseErrorKind, SignatureError, ValidationError,
};
pub use field::{Field, PYTHON_KEYWORDS, RESERVED_FIELD_NAMES, check_field_name};
pub use schema::JSON_SCHEMA_DIALECT;
pub use typed::{FieldValue, TypedSignature};
pub use types::{FieldKind, FieldType, LiteralMembers, MAX_TYPE_DEPTH, MAX_TYPE_LENGTH};
