//! [`Signature`] and its [`SignatureBuilder`]; conversion to and from the
//! protocol's [`SignatureSpec`].

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use dspex_protocol::SignatureSpec;

use super::error::{FieldRole, SignatureError};
use super::field::{Field, check_field_name, is_python_identifier};
use super::parse;
use super::types::{MAX_TYPE_DEPTH, MAX_TYPE_LENGTH};

/// Most fields (inputs plus outputs) a signature may have, as the worker
/// allows.
pub const MAX_FIELDS: usize = 256;

/// The typed contract of a DSPy program: a name, instructions for the LM,
/// and input and output [`Field`]s in order.
///
/// A `Signature` is always valid: every field name is one the worker accepts
/// and unique across inputs and outputs, every kind fits its type, and there
/// is at least one output. Make one from DSPy's string form
/// ([`Signature::parse`]), field by field ([`Signature::builder`]), from the
/// protocol ([`Signature::from_spec`]), or from a Rust struct with
/// `#[derive(Signature)]` (see [`TypedSignature`](super::TypedSignature)).
///
/// ```
/// use dspex::Signature;
///
/// let sig = Signature::parse("question: str, context: list[str] -> answer: str, confidence: float")?;
/// assert_eq!(sig.inputs().len(), 2);
/// assert_eq!(sig.output("confidence").unwrap().ty().to_wire(), "float");
///
/// // The protocol's form, as `create_program` sends it.
/// let spec = sig.to_spec();
/// assert_eq!(spec.inputs[1].ty, "list[str]");
/// # Ok::<(), dspex::signature::SignatureError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    name: String,
    instructions: String,
    inputs: Vec<Field>,
    outputs: Vec<Field>,
}

impl Signature {
    /// The name of a signature made without one ([`Signature::parse`], or a
    /// spec with an empty name), as the worker names it.
    pub const DEFAULT_NAME: &'static str = "Program";

    /// Parses DSPy's string form: `inputs -> outputs`, each a
    /// comma-separated list of `name` or `name: type`.
    ///
    /// A field without a type is `str`. Types are those of
    /// [`FieldType`](super::FieldType) (commas inside brackets are part of
    /// the type) and
    /// the field kinds (`probability`, `embedding`, ...; see
    /// [`FieldKind`](super::FieldKind)). Descriptions and instructions are
    /// not part of the string form: add them with [`Signature::builder`] or
    /// [`Signature::with_instructions`]. The name is
    /// [`Signature::DEFAULT_NAME`].
    ///
    /// # Errors
    ///
    /// [`SignatureError::Parse`] with the character position (and the field)
    /// of a syntax error; the other [`SignatureError`]s for a signature that
    /// parses but is not valid (a reserved name, no outputs, ...).
    ///
    /// ```
    /// use dspex::Signature;
    ///
    /// let sig = Signature::parse("question, scores: dict[str, probability] -> answer")
    ///     .unwrap_err();
    /// assert_eq!(
    ///     sig.to_string(),
    ///     "field `scores` at position 28 of `question, scores: dict[str, probability] -> answer`: \
    ///      `probability` is a field kind: it can only be a field's whole type \
    ///      (or `optional[probability]`), not part of one"
    /// );
    /// ```
    pub fn parse(text: &str) -> Result<Self, SignatureError> {
        let (inputs, outputs) = parse::parse_signature(text)?;
        let to_field = |f: parse::ParsedField| {
            let mut field = Field::new(f.name, f.ty);
            field = field.with_kind(f.kind)?;
            Ok::<_, SignatureError>(field)
        };
        let sig = Self {
            name: Self::DEFAULT_NAME.to_owned(),
            instructions: String::new(),
            inputs: inputs.into_iter().map(to_field).collect::<Result<_, _>>()?,
            outputs: outputs
                .into_iter()
                .map(to_field)
                .collect::<Result<_, _>>()?,
        };
        sig.check()?;
        Ok(sig)
    }

    /// Starts a signature named `name` (an identifier: it names the DSPy
    /// signature class and the tool in [`Signature::openai_tool`]).
    ///
    /// ```
    /// use dspex::Signature;
    ///
    /// let sig = Signature::builder("QA")
    ///     .instructions("Answer questions with short factoid answers.")
    ///     .input_described("question", "str", "The question to answer")
    ///     .input("context", "optional[list[str]]")
    ///     .output("answer", "str")
    ///     .output_described("confidence", "confidence", "How sure the answer is")
    ///     .build()?;
    /// assert!(sig.input("context").unwrap().is_optional());
    /// assert_eq!(sig.to_string(),
    ///     "question: str, context: optional[list[str]] -> answer: str, confidence: confidence_score");
    /// # Ok::<(), dspex::signature::SignatureError>(())
    /// ```
    pub fn builder(name: impl Into<String>) -> SignatureBuilder {
        SignatureBuilder {
            name: name.into(),
            instructions: String::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            error: None,
        }
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The instructions given to the LM (may be empty).
    pub fn instructions(&self) -> &str {
        &self.instructions
    }

    /// What the program does: the instructions, or, when there are none,
    /// DSPy's default ``Given the fields `a`, `b`, produce the fields `c`.``.
    pub fn description(&self) -> String {
        if !self.instructions.trim().is_empty() {
            return self.instructions.clone();
        }
        let names = |fields: &[Field]| {
            fields
                .iter()
                .map(|f| format!("`{}`", f.name()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "Given the fields {}, produce the fields {}.",
            names(&self.inputs),
            names(&self.outputs)
        )
    }

    /// The input fields, in order.
    pub fn inputs(&self) -> &[Field] {
        &self.inputs
    }

    /// The output fields, in order.
    pub fn outputs(&self) -> &[Field] {
        &self.outputs
    }

    /// The input named `name`.
    pub fn input(&self, name: &str) -> Option<&Field> {
        self.inputs.iter().find(|f| f.name() == name)
    }

    /// The output named `name`.
    pub fn output(&self, name: &str) -> Option<&Field> {
        self.outputs.iter().find(|f| f.name() == name)
    }

    /// Every field with its role: inputs first, then outputs.
    pub fn fields(&self) -> impl Iterator<Item = (FieldRole, &Field)> {
        let inputs = self.inputs.iter().map(|f| (FieldRole::Input, f));
        inputs.chain(self.outputs.iter().map(|f| (FieldRole::Output, f)))
    }

    /// The same signature under another name.
    ///
    /// # Errors
    ///
    /// [`SignatureError::InvalidName`] unless `name` is an identifier.
    pub fn with_name(mut self, name: impl Into<String>) -> Result<Self, SignatureError> {
        self.name = name.into();
        self.check_name()?;
        Ok(self)
    }

    /// The same signature with `instructions`.
    #[must_use]
    pub fn with_instructions(mut self, instructions: impl Into<String>) -> Self {
        self.instructions = instructions.into();
        self
    }

    /// The protocol's form, as `create_program` sends it: wire types, and
    /// `optional: true` on `optional[T]` inputs. Field kinds stay on the Rust
    /// side (the wire has no place for them).
    pub fn to_spec(&self) -> SignatureSpec {
        SignatureSpec {
            name: self.name.clone(),
            instructions: self.instructions.clone(),
            inputs: self
                .inputs
                .iter()
                .map(|f| f.to_spec(FieldRole::Input))
                .collect(),
            outputs: self
                .outputs
                .iter()
                .map(|f| f.to_spec(FieldRole::Output))
                .collect(),
        }
    }

    /// A signature from the protocol's form, checked as the worker checks
    /// it. Fields are plain (the wire carries no kinds); `optional: true`
    /// makes a field's type `optional[T]`; an empty name becomes
    /// [`Signature::DEFAULT_NAME`].
    ///
    /// # Errors
    ///
    /// Any [`SignatureError`] the definition has.
    pub fn from_spec(spec: &SignatureSpec) -> Result<Self, SignatureError> {
        let fields = |specs: &[dspex_protocol::FieldSpec]| {
            specs
                .iter()
                .map(Field::from_spec)
                .collect::<Result<Vec<_>, _>>()
        };
        let name = if spec.name.is_empty() {
            Self::DEFAULT_NAME.to_owned()
        } else {
            spec.name.clone()
        };
        let sig = Self {
            name,
            instructions: spec.instructions.clone(),
            inputs: fields(&spec.inputs)?,
            outputs: fields(&spec.outputs)?,
        };
        sig.check()?;
        Ok(sig)
    }

    fn check_name(&self) -> Result<(), SignatureError> {
        if is_python_identifier(&self.name) {
            Ok(())
        } else {
            Err(SignatureError::InvalidName {
                name: self.name.clone(),
            })
        }
    }

    /// Every rule the worker applies, and kinds fitting their types.
    fn check(&self) -> Result<(), SignatureError> {
        self.check_name()?;
        let count = self.inputs.len() + self.outputs.len();
        if count > MAX_FIELDS {
            return Err(SignatureError::TooManyFields {
                count,
                max: MAX_FIELDS,
            });
        }
        let mut seen = HashSet::new();
        for (_, field) in self.fields() {
            check_field_name(field.name()).map_err(|reason| SignatureError::InvalidFieldName {
                field: field.name().to_owned(),
                reason,
            })?;
            if !seen.insert(field.name()) {
                return Err(SignatureError::DuplicateField {
                    field: field.name().to_owned(),
                });
            }
            let wire = field.ty().to_wire();
            if field.ty().depth() > MAX_TYPE_DEPTH || wire.chars().count() > MAX_TYPE_LENGTH {
                return Err(SignatureError::TypeTooComplex {
                    field: field.name().to_owned(),
                    ty: wire,
                });
            }
            field.check_kind()?;
        }
        if self.outputs.is_empty() {
            return Err(SignatureError::NoOutputs {
                name: self.name.clone(),
            });
        }
        Ok(())
    }
}

/// DSPy's string form, with declared types:
/// `question: str, context: list[str] -> answer: str, p: probability`.
/// [`Signature::parse`] reads it back (without name, instructions or
/// descriptions, which the string form does not carry).
impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = |f: &mut fmt::Formatter<'_>, fields: &[Field]| {
            for (i, field) in fields.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{}: {}", field.name(), field.declared_type())?;
            }
            Ok(())
        };
        side(f, &self.inputs)?;
        f.write_str(if self.inputs.is_empty() {
            "-> "
        } else {
            " -> "
        })?;
        side(f, &self.outputs)
    }
}

impl FromStr for Signature {
    type Err = SignatureError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

/// Builds a [`Signature`] field by field; from [`Signature::builder`].
///
/// Methods that take a type string parse it; the first problem is kept and
/// returned by [`SignatureBuilder::build`], naming the field, so a chain
/// needs one `?`.
#[derive(Debug, Clone)]
#[must_use]
pub struct SignatureBuilder {
    name: String,
    instructions: String,
    inputs: Vec<Field>,
    outputs: Vec<Field>,
    error: Option<SignatureError>,
}

impl SignatureBuilder {
    /// Instructions for the LM (the docstring of a DSPy signature class).
    pub fn instructions(mut self, instructions: impl Into<String>) -> Self {
        self.instructions = instructions.into();
        self
    }

    /// An input of type `declared` (a type, a kind, or `optional[kind]`).
    pub fn input(self, name: impl Into<String>, declared: &str) -> Self {
        self.parsed(FieldRole::Input, name.into(), declared, None)
    }

    /// An input with a description.
    pub fn input_described(
        self,
        name: impl Into<String>,
        declared: &str,
        description: impl Into<String>,
    ) -> Self {
        self.parsed(
            FieldRole::Input,
            name.into(),
            declared,
            Some(description.into()),
        )
    }

    /// An output of type `declared`.
    pub fn output(self, name: impl Into<String>, declared: &str) -> Self {
        self.parsed(FieldRole::Output, name.into(), declared, None)
    }

    /// An output with a description.
    pub fn output_described(
        self,
        name: impl Into<String>,
        declared: &str,
        description: impl Into<String>,
    ) -> Self {
        self.parsed(
            FieldRole::Output,
            name.into(),
            declared,
            Some(description.into()),
        )
    }

    /// An input made in Rust (typed, no parsing).
    pub fn input_field(mut self, field: Field) -> Self {
        self.inputs.push(field);
        self
    }

    /// An output made in Rust.
    pub fn output_field(mut self, field: Field) -> Self {
        self.outputs.push(field);
        self
    }

    /// The signature.
    ///
    /// # Errors
    ///
    /// The first problem met: a type that did not parse, then any rule of
    /// [`Signature`] broken (names, duplicates, no output, kinds).
    pub fn build(self) -> Result<Signature, SignatureError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let sig = Signature {
            name: self.name,
            instructions: self.instructions,
            inputs: self.inputs,
            outputs: self.outputs,
        };
        sig.check()?;
        Ok(sig)
    }

    fn parsed(
        mut self,
        role: FieldRole,
        name: String,
        declared: &str,
        description: Option<String>,
    ) -> Self {
        match Field::parse(name, declared) {
            Ok(mut field) => {
                if let Some(description) = description {
                    field = field.described(description);
                }
                match role {
                    FieldRole::Input => self.inputs.push(field),
                    FieldRole::Output => self.outputs.push(field),
                }
            }
            Err(e) => {
                self.error.get_or_insert(e.into());
            }
        }
        self
    }
}
