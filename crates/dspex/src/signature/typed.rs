//! Signatures as Rust types: [`TypedSignature`] (what `#[derive(Signature)]`
//! implements) and [`FieldValue`] (which Rust types may be fields).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::definition::Signature;
use super::error::ValidationError;
use super::types::FieldType;

/// A signature whose inputs and outputs are Rust types.
///
/// Usually derived: `#[derive(Signature)]` on a struct whose fields are
/// marked `#[input]` or `#[output]` generates `<Name>Inputs` and
/// `<Name>Outputs` and this impl. The struct's doc comment becomes the
/// instructions, each field's doc comment its description.
///
/// ```
/// use dspex::{Signature, TypedSignature};
///
/// /// Answer questions with short factoid answers.
/// #[derive(Signature)]
/// struct QA {
///     /// The question to answer.
///     #[input]
///     question: String,
///     /// Passages that may help.
///     #[input]
///     context: Vec<String>,
///     /// Often between 1 and 5 words.
///     #[output]
///     answer: String,
///     #[output(kind = "confidence")]
///     confidence: f64,
/// }
///
/// let sig = QA::signature();
/// assert_eq!(sig.instructions(), "Answer questions with short factoid answers.");
/// assert_eq!(sig.to_string(), "question: str, context: list[str] -> answer: str, confidence: confidence_score");
///
/// // Typed inputs become the map `execute_program` sends, checked on the way.
/// let inputs = QAInputs { question: "Capital of France?".into(), context: vec![] };
/// let map = QA::encode_inputs(&inputs)?;
/// assert_eq!(map["question"], "Capital of France?");
///
/// // Outputs come back checked and typed.
/// let outputs = serde_json::json!({"answer": "Paris", "confidence": 0.9});
/// let outputs: QAOutputs = QA::decode_outputs(outputs.as_object().unwrap().clone())?;
/// assert_eq!(outputs, QAOutputs { answer: "Paris".into(), confidence: 0.9 });
///
/// // A confidence above 1 is caught.
/// let bad = serde_json::json!({"answer": "Paris", "confidence": 7.5});
/// let err = QA::decode_outputs(bad.as_object().unwrap().clone()).unwrap_err();
/// assert_eq!(err.to_string(), "output `confidence`: expected a confidence score in [0, 1], found 7.5");
/// # Ok::<(), dspex::signature::ValidationError>(())
/// ```
pub trait TypedSignature {
    /// The inputs, serialized to the map of input fields.
    type Inputs: Serialize;
    /// The outputs, deserialized from the map of output fields.
    type Outputs: DeserializeOwned;

    /// The signature (built once per type by the derive, then cloned).
    fn signature() -> Signature;

    /// `inputs` as the map `execute_program` sends, validated.
    ///
    /// # Errors
    ///
    /// See [`Signature::encode_inputs`].
    fn encode_inputs(inputs: &Self::Inputs) -> Result<Map<String, Value>, ValidationError> {
        Self::signature().encode_inputs(inputs)
    }

    /// Validated outputs as [`Self::Outputs`](TypedSignature::Outputs).
    ///
    /// # Errors
    ///
    /// See [`Signature::decode_outputs`].
    fn decode_outputs(outputs: Map<String, Value>) -> Result<Self::Outputs, ValidationError> {
        Self::signature().decode_outputs(outputs)
    }
}

/// A Rust type that can be a signature field: it knows its [`FieldType`].
///
/// | Rust | field type |
/// |---|---|
/// | `String`, `str` | `str` |
/// | `i8`..`i64`, `u8`..`u64`, `isize`, `usize` | `int` |
/// | `f32`, `f64` | `float` |
/// | `bool` | `bool` |
/// | `Vec<T>`, `VecDeque<T>`, `HashSet<T>`, `BTreeSet<T>` | `list[T]` |
/// | `HashMap<String, T>`, `BTreeMap<String, T>` | `dict[str, T]` |
/// | `Option<T>` | `optional[T]` |
/// | `Box<T>`, `&T` | as `T` |
/// | a fieldless enum with `#[derive(FieldValue)]` | `literal[...]` of its serialized variant names |
///
/// Implement it for your own type when its serde form is one of these.
///
/// ```
/// use dspex::FieldValue;
///
/// #[derive(FieldValue, serde::Serialize, serde::Deserialize)]
/// #[serde(rename_all = "snake_case")]
/// enum Sentiment {
///     Positive,
///     Negative,
///     NotSure,
/// }
///
/// assert_eq!(Sentiment::field_type().to_wire(), "literal[positive|negative|not_sure]");
/// assert_eq!(<Option<Vec<Sentiment>>>::field_type().to_wire(), "optional[list[literal[positive|negative|not_sure]]]");
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the type of a signature field",
    label = "no DSPy field type for this",
    note = "field types: String, i8..i64, u8..u64, isize, usize, f32, f64, bool, Vec<T>, \
            HashMap<String, T>, BTreeMap<String, T>, Option<T>, Box<T>, \
            and fieldless enums with #[derive(FieldValue)]"
)]
pub trait FieldValue {
    /// The field type values of `Self` have on the wire.
    fn field_type() -> FieldType;
}

macro_rules! scalar {
    ($ty:expr => $($t:ty),+) => {
        $(impl FieldValue for $t {
            fn field_type() -> FieldType {
                $ty
            }
        })+
    };
}

scalar!(FieldType::Str => String, str);
scalar!(FieldType::Int => i8, i16, i32, i64, isize, u8, u16, u32, u64, usize);
scalar!(FieldType::Float => f32, f64);
scalar!(FieldType::Bool => bool);

impl<T: FieldValue + ?Sized> FieldValue for &T {
    fn field_type() -> FieldType {
        T::field_type()
    }
}

impl<T: FieldValue + ?Sized> FieldValue for Box<T> {
    fn field_type() -> FieldType {
        T::field_type()
    }
}

impl<T: FieldValue> FieldValue for Option<T> {
    fn field_type() -> FieldType {
        FieldType::optional(T::field_type())
    }
}

macro_rules! list {
    ($($c:ident),+) => {
        $(impl<T: FieldValue> FieldValue for $c<T> {
            fn field_type() -> FieldType {
                FieldType::list(T::field_type())
            }
        })+
    };
}

list!(Vec, VecDeque, BTreeSet);

impl<T: FieldValue, S: BuildHasher> FieldValue for HashSet<T, S> {
    fn field_type() -> FieldType {
        FieldType::list(T::field_type())
    }
}

impl<T: FieldValue, S: BuildHasher> FieldValue for HashMap<String, T, S> {
    fn field_type() -> FieldType {
        FieldType::dict(T::field_type())
    }
}

impl<T: FieldValue> FieldValue for BTreeMap<String, T> {
    fn field_type() -> FieldType {
        FieldType::dict(T::field_type())
    }
}
