//! `#[derive(Signature)]` and `#[derive(FieldValue)]` for DSPex.
//!
//! Use them through the `dspex` crate (`use dspex::{Signature, FieldValue}`),
//! whose paths the generated code names (`::dspex::signature::...`).

use proc_macro::TokenStream;
use syn::{DeriveInput, parse_macro_input};

mod attrs;
mod field_value;
mod signature;
mod types;

/// Derives `dspex::TypedSignature` for a struct whose fields are marked
/// `#[input]` or `#[output]`, and generates `<Name>Inputs` and
/// `<Name>Outputs` (same visibility as the struct; `Debug`, `Clone`,
/// `PartialEq`, `Serialize`, `Deserialize`).
///
/// - The struct's doc comment is the instructions, a field's doc comment its
///   description (copied to the generated field).
/// - `#[input(...)]` / `#[output(...)]` take `name = "..."` (the name on the
///   wire), `desc = "..."` (instead of the doc comment), `kind = "..."`
///   (`probability`, `confidence`, `confidence_score`, `embedding`,
///   `reasoning_chain`) or `literal = "a|b|c"` (on a `String` or
///   `Option<String>`).
/// - `#[dspex(name = "...", instructions = "...")]` on the struct overrides
///   the signature's name (the struct's by default) and instructions.
/// - Field types are those implementing `dspex::FieldValue`: `String` (or
///   `&str`), integers, `f32`/`f64`, `bool`, `Vec<T>`,
///   `HashMap<String, T>`/`BTreeMap<String, T>`, `Option<T>`, enums with
///   `#[derive(FieldValue)]`. Anything else is a compile error on the type.
/// - Names the Python worker rejects (keywords, names of `dspy.Signature`
///   attributes, a leading `_`), a name used twice, a kind on a type that
///   cannot carry it, and a struct with no `#[output]` are compile errors.
///
/// The struct converts to and from its parts:
/// `From<(NameInputs, NameOutputs)>` and back (unless a field is `&str`).
///
/// ```
/// use dspex::{Signature, TypedSignature};
///
/// /// Classify the sentiment of a sentence.
/// #[derive(Signature)]
/// pub struct Classify {
///     /// The sentence.
///     #[input]
///     pub sentence: String,
///     #[output(literal = "positive|negative|neutral")]
///     pub sentiment: String,
///     #[output(kind = "probability")]
///     pub certainty: f32,
/// }
///
/// assert_eq!(
///     Classify::signature().to_string(),
///     "sentence: str -> sentiment: literal[positive|negative|neutral], certainty: probability"
/// );
/// let inputs = ClassifyInputs { sentence: "What a day!".into() };
/// # let _ = inputs;
/// ```
#[proc_macro_derive(Signature, attributes(input, output, dspex))]
pub fn derive_signature(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    signature::expand(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Derives `dspex::FieldValue` for a fieldless enum: its field type is
/// `literal[...]` of the variants as serde names them (honouring
/// `#[serde(rename_all = "...")]` on the enum, and `#[serde(rename = "...")]`
/// and `#[serde(skip)]` on variants).
///
/// ```
/// use dspex::FieldValue;
///
/// #[derive(FieldValue, serde::Serialize, serde::Deserialize)]
/// #[serde(rename_all = "kebab-case")]
/// enum Urgency {
///     Low,
///     High,
///     #[serde(rename = "now!")]
///     RightNow,
/// }
///
/// assert_eq!(Urgency::field_type().to_wire(), r#"literal[low|high|"now!"]"#);
/// ```
#[proc_macro_derive(FieldValue)]
pub fn derive_field_value(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    field_value::expand(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
