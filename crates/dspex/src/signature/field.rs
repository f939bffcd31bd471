//! [`Field`]: one named, typed slot of a signature, and the rules for its
//! name.

use dspex_protocol::FieldSpec;

use super::error::{FieldRole, NameError, ParseError, SignatureError};
use super::parse;
use super::types::{FieldKind, FieldType};

/// Attributes of DSPy's `Signature` class (DSPy 3.4, pydantic 2): a field
/// with one of these names would shadow it, so the worker rejects them.
pub const RESERVED_FIELD_NAMES: &[&str] = &[
    "append",
    "append_instructions",
    "construct",
    "copy",
    "delete",
    "dict",
    "dump_state",
    "equals",
    "fields",
    "from_orm",
    "input_fields",
    "insert",
    "instructions",
    "json",
    "load_state",
    "model_computed_fields",
    "model_config",
    "model_construct",
    "model_copy",
    "model_dump",
    "model_dump_json",
    "model_extra",
    "model_fields",
    "model_fields_set",
    "model_json_schema",
    "model_parametrized_name",
    "model_post_init",
    "model_rebuild",
    "model_validate",
    "model_validate_json",
    "model_validate_strings",
    "mro",
    "output_fields",
    "parse_file",
    "parse_obj",
    "parse_raw",
    "prepend",
    "register",
    "schema",
    "schema_json",
    "signature",
    "update_forward_refs",
    "validate",
    "with_instructions",
    "with_updated_fields",
];

/// Python's (hard) keywords; soft keywords such as `match` are valid names.
pub const PYTHON_KEYWORDS: &[&str] = &[
    "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue",
    "def", "del", "elif", "else", "except", "finally", "for", "from", "global", "if", "import",
    "in", "is", "lambda", "nonlocal", "not", "or", "pass", "raise", "return", "try", "while",
    "with", "yield",
];

/// Checks that `name` can be a field name: an ASCII identifier, not starting
/// with `_`, not a Python keyword, not in [`RESERVED_FIELD_NAMES`].
///
/// A `const fn`, so `#[derive(Signature)]` checks field names at compile time
/// with the same rules as [`Signature::builder`](super::Signature::builder).
///
/// ```
/// use dspex::signature::{NameError, check_field_name};
///
/// assert_eq!(check_field_name("question"), Ok(()));
/// assert_eq!(check_field_name("lambda"), Err(NameError::PythonKeyword));
/// assert_eq!(check_field_name("json"), Err(NameError::Reserved));
/// assert_eq!(check_field_name("2nd"), Err(NameError::NotIdentifier));
/// ```
pub const fn check_field_name(name: &str) -> Result<(), NameError> {
    let bytes = name.as_bytes();
    if bytes.is_empty() {
        return Err(NameError::Empty);
    }
    if !is_identifier(bytes) {
        return Err(NameError::NotIdentifier);
    }
    if bytes[0] == b'_' {
        return Err(NameError::LeadingUnderscore);
    }
    if contains(PYTHON_KEYWORDS, bytes) {
        return Err(NameError::PythonKeyword);
    }
    if contains(RESERVED_FIELD_NAMES, bytes) {
        return Err(NameError::Reserved);
    }
    Ok(())
}

/// Whether `name` is an ASCII identifier that is not a Python keyword (the
/// rule for signature names, which may start with `_`).
pub(super) const fn is_python_identifier(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty() && is_identifier(bytes) && !contains(PYTHON_KEYWORDS, bytes)
}

const fn is_identifier(bytes: &[u8]) -> bool {
    if bytes[0].is_ascii_digit() {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if !(bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
            return false;
        }
        i += 1;
    }
    true
}

const fn contains(list: &[&str], name: &[u8]) -> bool {
    let mut i = 0;
    while i < list.len() {
        if bytes_eq(list[i].as_bytes(), name) {
            return true;
        }
        i += 1;
    }
    false
}

const fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// A field of a signature: name, type, optional description, and
/// [`FieldKind`].
///
/// A field knows nothing of which side it is on; the
/// [`Signature`](struct@super::Signature) holding it does. Names are checked
/// when the signature is built.
///
/// ```
/// use dspex::{Field, FieldKind, FieldType};
///
/// let field = Field::new("context", FieldType::list(FieldType::Str))
///     .described("Passages that may contain the answer");
/// assert_eq!(field.ty().to_wire(), "list[str]");
///
/// let score = Field::parse("score", "optional[probability]")?;
/// assert_eq!(score.kind(), FieldKind::Probability);
/// assert_eq!(score.ty().to_wire(), "optional[float]");
/// assert!(score.is_optional());
/// # Ok::<(), dspex::signature::SignatureError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Field {
    name: String,
    ty: FieldType,
    description: Option<String>,
    kind: FieldKind,
}

impl Field {
    /// A plain field of type `ty`.
    pub fn new(name: impl Into<String>, ty: FieldType) -> Self {
        Self {
            name: name.into(),
            ty,
            description: None,
            kind: FieldKind::Plain,
        }
    }

    /// A field of `kind`, typed with the kind's wire type (`float` for a
    /// probability); [`FieldKind::Plain`] gives a `str` field.
    pub fn of_kind(name: impl Into<String>, kind: FieldKind) -> Self {
        Self {
            name: name.into(),
            ty: kind.wire_type().unwrap_or(FieldType::Str),
            description: None,
            kind,
        }
    }

    /// A field whose declared type is parsed from `declared`: a type
    /// (`list[str]`), a kind (`probability`), or `optional[kind]`.
    ///
    /// # Errors
    ///
    /// [`ParseError`] naming this field.
    pub fn parse(name: impl Into<String>, declared: &str) -> Result<Self, ParseError> {
        let name = name.into();
        let (ty, kind) = parse::parse_declared(declared).map_err(|mut e| {
            e.field = Some(name.clone());
            e
        })?;
        Ok(Self {
            name,
            ty,
            description: None,
            kind,
        })
    }

    /// With `description` (shown to the LM, and in JSON Schema).
    #[must_use]
    pub fn described(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// With `kind`.
    ///
    /// # Errors
    ///
    /// [`SignatureError::KindMismatch`] when the field's type is not the
    /// kind's wire type (or optional of it).
    pub fn with_kind(mut self, kind: FieldKind) -> Result<Self, SignatureError> {
        self.kind = kind;
        self.check_kind()?;
        Ok(self)
    }

    /// Made optional: the type becomes `optional[T]` (unchanged if it already
    /// is), so an input may be omitted and an output may be null.
    #[must_use]
    pub fn optional(mut self) -> Self {
        if !self.ty.is_optional() {
            self.ty = FieldType::optional(self.ty);
        }
        self
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The wire type.
    pub fn ty(&self) -> &FieldType {
        &self.ty
    }

    /// The description, if any.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// The kind ([`FieldKind::Plain`] unless given).
    pub fn kind(&self) -> FieldKind {
        self.kind
    }

    /// Whether the type is `optional[T]`: such an input may be omitted.
    pub fn is_optional(&self) -> bool {
        self.ty.is_optional()
    }

    /// The type as declared: `probability`, `optional[embedding]`, or the
    /// wire type for a plain field. [`Field::parse`] reads it back.
    pub fn declared_type(&self) -> String {
        match (self.kind, self.ty.is_optional()) {
            (FieldKind::Plain, _) => self.ty.to_wire(),
            (kind, false) => kind.name().to_owned(),
            (kind, true) => format!("optional[{}]", kind.name()),
        }
    }

    /// The protocol's field: the wire type, and `optional` set for an
    /// `optional[T]` input.
    pub fn to_spec(&self, role: FieldRole) -> FieldSpec {
        FieldSpec {
            name: self.name.clone(),
            ty: self.ty.to_wire(),
            description: self.description.clone(),
            optional: role == FieldRole::Input && self.ty.is_optional(),
        }
    }

    /// A plain field from the protocol's: the type parsed, `optional: true`
    /// widening it to `optional[T]` as the worker does.
    ///
    /// # Errors
    ///
    /// [`ParseError`] naming the field, for a type that does not parse.
    pub fn from_spec(spec: &FieldSpec) -> Result<Self, ParseError> {
        let ty = FieldType::parse(&spec.ty).map_err(|mut e| {
            e.field = Some(spec.name.clone());
            e
        })?;
        let mut field = Self::new(spec.name.clone(), ty);
        field.description = spec.description.clone();
        Ok(if spec.optional {
            field.optional()
        } else {
            field
        })
    }

    pub(super) fn check_kind(&self) -> Result<(), SignatureError> {
        if self.kind.fits(&self.ty) {
            return Ok(());
        }
        Err(SignatureError::KindMismatch {
            field: self.name.clone(),
            kind: self.kind,
            expected: self
                .kind
                .wire_type()
                .map(|t| t.to_wire())
                .unwrap_or_default(),
            ty: self.ty.to_wire(),
        })
    }
}
