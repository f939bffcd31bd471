//! Checking values against a [`Signature`]: inputs before they leave Rust,
//! outputs when they come back.
//!
//! The rules are the worker's: a boolean is not an `int` (nor a `float`), an
//! integer is a valid `float`, `optional[T]` accepts `null` and an optional
//! input may be omitted, a `literal` accepts exactly its members. On top of
//! them, a field's [`FieldKind`](super::FieldKind) range is enforced (a probability lies in
//! [0, 1]).

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::definition::Signature;
use super::error::{FieldRole, ValidationError};
use super::field::Field;
use super::types::FieldType;

impl Signature {
    /// Checks inputs before they are sent: every required input present,
    /// no unknown name, every value of its field's type and kind.
    ///
    /// # Errors
    ///
    /// The first problem, as a [`ValidationError`] naming the field (an
    /// unknown name is reported first, since it is often a misspelling of a
    /// missing one).
    ///
    /// ```
    /// use dspex::Signature;
    /// use serde_json::json;
    ///
    /// let sig = Signature::parse("question: str, context: list[str] -> answer")?;
    /// let inputs = json!({"question": "Why?", "context": ["a", "b", 3]});
    /// let err = sig.validate_inputs(inputs.as_object().unwrap()).unwrap_err();
    /// assert_eq!(err.to_string(), "input `context[2]`: expected str, found int");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn validate_inputs(&self, inputs: &Map<String, Value>) -> Result<(), ValidationError> {
        if let Some(unknown) = inputs.keys().find(|k| self.input(k).is_none()) {
            return Err(ValidationError::UnknownInput {
                field: unknown.clone(),
                known: self.inputs().iter().map(|f| f.name().to_owned()).collect(),
            });
        }
        self.inputs()
            .iter()
            .try_for_each(|field| check_field(FieldRole::Input, field, inputs.get(field.name())))
    }

    /// Checks outputs as they come back: every non-optional output present,
    /// every value of its field's type and kind. Names the signature does not
    /// declare are allowed: modules add outputs (`chain_of_thought` adds
    /// `reasoning`).
    ///
    /// # Errors
    ///
    /// The first problem, as a [`ValidationError`] naming the field.
    pub fn validate_outputs(&self, outputs: &Map<String, Value>) -> Result<(), ValidationError> {
        self.outputs()
            .iter()
            .try_for_each(|field| check_field(FieldRole::Output, field, outputs.get(field.name())))
    }

    /// Checks the labels of an example (the expected outputs a metric
    /// compares with): every name an output of the signature, every value
    /// of its field's type and kind. Labels may leave outputs out.
    ///
    /// # Errors
    ///
    /// The first problem, as a [`ValidationError`] naming the field.
    pub fn validate_labels(&self, labels: &Map<String, Value>) -> Result<(), ValidationError> {
        for (name, value) in labels {
            let Some(field) = self.output(name) else {
                return Err(ValidationError::UnknownOutput {
                    field: name.clone(),
                    known: self.outputs().iter().map(|f| f.name().to_owned()).collect(),
                });
            };
            check_field(FieldRole::Output, field, Some(value))?;
        }
        Ok(())
    }

    /// Serializes typed inputs (such as a derived `…Inputs` struct) to the
    /// map `execute_program` sends, and validates it.
    ///
    /// # Errors
    ///
    /// [`ValidationError::Encode`] when `inputs` does not serialize to a map,
    /// otherwise what [`Signature::validate_inputs`] finds.
    pub fn encode_inputs<T: Serialize + ?Sized>(
        &self,
        inputs: &T,
    ) -> Result<Map<String, Value>, ValidationError> {
        let value = serde_json::to_value(inputs).map_err(|e| ValidationError::Encode {
            reason: e.to_string(),
        })?;
        let Value::Object(map) = value else {
            return Err(ValidationError::Encode {
                reason: format!("found {} instead", describe(&value)),
            });
        };
        self.validate_inputs(&map)?;
        Ok(map)
    }

    /// Validates outputs, then deserializes them into `T` (such as a derived
    /// `…Outputs` struct).
    ///
    /// # Errors
    ///
    /// What [`Signature::validate_outputs`] finds, or
    /// [`ValidationError::Decode`] when valid outputs still do not fit `T`
    /// (an `int` too large for a `u8`).
    pub fn decode_outputs<T: DeserializeOwned>(
        &self,
        outputs: Map<String, Value>,
    ) -> Result<T, ValidationError> {
        self.validate_outputs(&outputs)?;
        serde_json::from_value(Value::Object(outputs)).map_err(|e| ValidationError::Decode {
            reason: e.to_string(),
        })
    }
}

fn check_field(
    role: FieldRole,
    field: &Field,
    value: Option<&Value>,
) -> Result<(), ValidationError> {
    let Some(value) = value else {
        if field.is_optional() {
            return Ok(());
        }
        return Err(ValidationError::Missing {
            role,
            field: field.name().to_owned(),
            expected: field.declared_type(),
        });
    };
    check_value(field.ty(), value).map_err(|m| m.into_error(role, field.name()))?;
    check_range(role, field, value)
}

fn check_range(role: FieldRole, field: &Field, value: &Value) -> Result<(), ValidationError> {
    let (Some((min, max)), Some(x)) = (field.kind().range(), value.as_f64()) else {
        return Ok(());
    };
    if (min..=max).contains(&x) {
        return Ok(());
    }
    Err(ValidationError::OutOfRange {
        role,
        field: field.name().to_owned(),
        kind: field.kind(),
        min,
        max,
        found: x,
    })
}

/// A mismatch deep in a value; the path is built only when there is one.
struct Mismatch {
    /// From the innermost value outwards.
    segments: Vec<Segment>,
    expected: String,
    found: String,
}

enum Segment {
    Index(usize),
    Key(String),
}

impl Mismatch {
    fn at(mut self, segment: Segment) -> Self {
        self.segments.push(segment);
        self
    }

    fn into_error(self, role: FieldRole, field: &str) -> ValidationError {
        let mut path = field.to_owned();
        for segment in self.segments.iter().rev() {
            match segment {
                Segment::Index(i) => path.push_str(&format!("[{i}]")),
                Segment::Key(k) if is_plain_key(k) => path.push_str(&format!(".{k}")),
                Segment::Key(k) => {
                    let quoted = serde_json::to_string(k).unwrap_or_default();
                    path.push_str(&format!("[{quoted}]"));
                }
            }
        }
        ValidationError::WrongType {
            role,
            field: path,
            expected: self.expected,
            found: self.found,
        }
    }
}

fn is_plain_key(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn check_value(ty: &FieldType, value: &Value) -> Result<(), Mismatch> {
    let ok = match (ty, value) {
        (FieldType::Optional(_), Value::Null) => true,
        (FieldType::Optional(inner), _) => {
            // A mismatch of the value itself names the optional type (null is fine too).
            return check_value(inner, value).map_err(|m| {
                if m.segments.is_empty() {
                    Mismatch {
                        expected: ty.to_wire(),
                        ..m
                    }
                } else {
                    m
                }
            });
        }
        (FieldType::Str, Value::String(_)) => true,
        (FieldType::Int, Value::Number(n)) => n.is_i64() || n.is_u64(),
        (FieldType::Float, Value::Number(_)) => true,
        (FieldType::Bool, Value::Bool(_)) => true,
        (FieldType::List(item), Value::Array(items)) => {
            for (i, v) in items.iter().enumerate() {
                check_value(item, v).map_err(|m| m.at(Segment::Index(i)))?;
            }
            true
        }
        (FieldType::Dict(item), Value::Object(map)) => {
            for (k, v) in map {
                check_value(item, v).map_err(|m| m.at(Segment::Key(k.clone())))?;
            }
            true
        }
        (FieldType::History, Value::Object(history)) => {
            let Some(Value::Array(messages)) = history.get("messages") else {
                return Err(Mismatch {
                    segments: Vec::new(),
                    expected: "history (a map with a `messages` list)".to_owned(),
                    found: "a map without a `messages` list".to_owned(),
                });
            };
            for (i, message) in messages.iter().enumerate() {
                if !message.is_object() {
                    return Err(Mismatch {
                        segments: vec![Segment::Index(i), Segment::Key("messages".to_owned())],
                        expected: "dict".to_owned(),
                        found: describe(message).to_owned(),
                    });
                }
            }
            true
        }
        (FieldType::Literal(members), Value::String(s)) => {
            if members.contains(s) {
                true
            } else {
                return Err(Mismatch {
                    segments: Vec::new(),
                    expected: ty.to_wire(),
                    found: format!("{s:?}"),
                });
            }
        }
        _ => false,
    };
    if ok {
        return Ok(());
    }
    Err(Mismatch {
        segments: Vec::new(),
        expected: ty.to_wire(),
        found: describe(value).to_owned(),
    })
}

/// The type language's name for what a JSON value is.
fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}
