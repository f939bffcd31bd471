//! JSON Schema (2020-12) for a signature's inputs and outputs, and the tool
//! shapes of the OpenAI and Anthropic APIs built on it.

use serde_json::{Map, Value, json};

use super::definition::Signature;
use super::field::Field;
use super::types::FieldType;

/// The dialect every generated schema declares in `$schema`.
pub const JSON_SCHEMA_DIALECT: &str = "https://json-schema.org/draft/2020-12/schema";

impl FieldType {
    /// This type as a JSON Schema: `str` → `{"type": "string"}`, `list[T]` →
    /// `{"type": "array", "items": ...}`, `dict[str, T]` → an object whose
    /// `additionalProperties` are `T`, `literal[a|b]` → a string `enum`,
    /// `optional[T]` → `T` with `"null"` added to its `type` (and `enum`).
    pub fn json_schema(&self) -> Value {
        match self {
            Self::Str => json!({"type": "string"}),
            Self::Int => json!({"type": "integer"}),
            Self::Float => json!({"type": "number"}),
            Self::Bool => json!({"type": "boolean"}),
            Self::List(item) => json!({"type": "array", "items": item.json_schema()}),
            Self::Dict(value) => {
                json!({"type": "object", "additionalProperties": value.json_schema()})
            }
            Self::Literal(members) => json!({"type": "string", "enum": members.as_slice()}),
            Self::Optional(inner) => nullable(inner.json_schema()),
            Self::History => json!({
                "type": "object",
                "properties": {"messages": {"type": "array", "items": {"type": "object"}}},
                "required": ["messages"],
            }),
        }
    }
}

fn nullable(mut schema: Value) -> Value {
    let Value::Object(map) = &mut schema else {
        return schema;
    };
    match map.get_mut("type") {
        Some(Value::String(t)) => {
            let t = std::mem::take(t);
            map.insert("type".to_owned(), json!([t, "null"]));
        }
        Some(Value::Array(types)) if !types.contains(&json!("null")) => types.push(json!("null")),
        _ => {}
    }
    if let Some(Value::Array(members)) = map.get_mut("enum")
        && !members.contains(&Value::Null)
    {
        members.push(Value::Null);
    }
    schema
}

impl Field {
    /// The field's schema: its type's, with the description, and `minimum` /
    /// `maximum` for a kind with a range (a probability).
    pub fn json_schema(&self) -> Value {
        let mut schema = self.ty().json_schema();
        if let Value::Object(map) = &mut schema {
            if let Some((min, max)) = self.kind().range() {
                map.insert("minimum".to_owned(), json!(min));
                map.insert("maximum".to_owned(), json!(max));
            }
            if let Some(description) = self.description() {
                map.insert("description".to_owned(), json!(description));
            }
        }
        schema
    }
}

impl Signature {
    /// A JSON Schema (2020-12) of the inputs, as one object: a property per
    /// input, `required` for every input that is not `optional[T]`, no
    /// other property allowed.
    ///
    /// ```
    /// use dspex::Signature;
    /// use serde_json::json;
    ///
    /// let sig = Signature::parse("question: str, hint: optional[str] -> answer")?;
    /// assert_eq!(sig.input_schema(), json!({
    ///     "$schema": "https://json-schema.org/draft/2020-12/schema",
    ///     "type": "object",
    ///     "properties": {
    ///         "question": {"type": "string"},
    ///         "hint": {"type": ["string", "null"]},
    ///     },
    ///     "required": ["question"],
    ///     "additionalProperties": false,
    /// }));
    /// # Ok::<(), dspex::signature::SignatureError>(())
    /// ```
    pub fn input_schema(&self) -> Value {
        with_dialect(object_schema(self.inputs()))
    }

    /// A JSON Schema (2020-12) of the outputs, built as
    /// [`Signature::input_schema`] is (fields added by a module, such as
    /// `reasoning`, are not part of it).
    pub fn output_schema(&self) -> Value {
        with_dialect(object_schema(self.outputs()))
    }

    /// The program as an OpenAI tool (function calling):
    /// `{"type": "function", "function": {"name", "description", "parameters"}}`,
    /// `parameters` being the input schema without `$schema`.
    ///
    /// ```
    /// use dspex::Signature;
    ///
    /// let sig = Signature::parse("city -> forecast")?.with_name("Weather")?;
    /// let tool = sig.openai_tool();
    /// assert_eq!(tool["type"], "function");
    /// assert_eq!(tool["function"]["name"], "Weather");
    /// assert_eq!(tool["function"]["description"], "Given the fields `city`, produce the fields `forecast`.");
    /// assert_eq!(tool["function"]["parameters"]["required"][0], "city");
    /// # Ok::<(), dspex::signature::SignatureError>(())
    /// ```
    pub fn openai_tool(&self) -> Value {
        json!({
            "type": "function",
            "function": {
                "name": self.name(),
                "description": self.description(),
                "parameters": object_schema(self.inputs()),
            }
        })
    }

    /// The program as an Anthropic tool:
    /// `{"name", "description", "input_schema"}`, `input_schema` being the
    /// input schema without `$schema`.
    pub fn anthropic_tool(&self) -> Value {
        json!({
            "name": self.name(),
            "description": self.description(),
            "input_schema": object_schema(self.inputs()),
        })
    }
}

fn object_schema(fields: &[Field]) -> Value {
    let properties: Map<String, Value> = fields
        .iter()
        .map(|f| (f.name().to_owned(), f.json_schema()))
        .collect();
    let required: Vec<&str> = fields
        .iter()
        .filter(|f| !f.is_optional())
        .map(Field::name)
        .collect();
    json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    })
}

fn with_dialect(mut schema: Value) -> Value {
    if let Value::Object(map) = &mut schema {
        map.insert("$schema".to_owned(), json!(JSON_SCHEMA_DIALECT));
    }
    schema
}
