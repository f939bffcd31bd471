//! [`Dataset`]s of [`Example`]s: what evaluation and optimization run on.
//!
//! An example is the inputs a program is given and the labels (expected
//! output values) a metric compares its prediction with: DSPy's
//! `dspy.Example(...).with_inputs(...)`. Datasets come from Rust values,
//! typed pairs, JSON Lines or CSV files; every example is checked against
//! the program's signature before anything is sent.
//!
//! ```
//! use dspex::{Dataset, Signature};
//! use serde_json::json;
//!
//! let signature = Signature::parse("question: str -> answer: str")?;
//! let records = [json!({"question": "2+2?", "answer": "4"})];
//! let train = Dataset::from_records(&signature, records.iter().map(|r| r.as_object().unwrap().clone()))?;
//! assert_eq!(train.len(), 1);
//! assert_eq!(train.examples()[0].labels["answer"], "4");
//! # Ok::<(), dspex::Error>(())
//! ```

use std::path::Path;

use dspex_protocol::{Map, Value};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::handle::to_map;
use crate::signature::{FieldType, Signature, TypedSignature};

pub use dspex_protocol::Example;

/// Examples, in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Dataset {
    examples: Vec<Example>,
}

impl Dataset {
    /// A dataset of these examples (checked when it is used, against the
    /// program it is used with).
    pub fn new(examples: Vec<Example>) -> Self {
        Self { examples }
    }

    /// Typed examples of a `#[derive(Signature)]` program: each its inputs
    /// and the outputs it should get.
    ///
    /// # Errors
    /// [`Error::Validation`] naming the example when one does not serialize
    /// to maps of fields.
    pub fn typed<S: TypedSignature>(
        items: impl IntoIterator<Item = (S::Inputs, S::Outputs)>,
    ) -> Result<Self>
    where
        S::Outputs: Serialize,
    {
        let examples = items
            .into_iter()
            .enumerate()
            .map(|(i, (inputs, outputs))| {
                Ok(Example {
                    inputs: to_map(&inputs).map_err(|e| at(i, e))?,
                    labels: to_map(&outputs).map_err(|e| at(i, e))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let dataset = Self { examples };
        dataset.check(&S::signature())?;
        Ok(dataset)
    }

    /// Examples from records (maps of field values): a signature's inputs
    /// are the example's inputs, its outputs the labels.
    ///
    /// # Errors
    /// [`Error::Validation`] naming the example and the field when a record
    /// names a field the signature lacks or a value does not fit.
    pub fn from_records(
        signature: &Signature,
        records: impl IntoIterator<Item = Map<String, Value>>,
    ) -> Result<Self> {
        let examples = records
            .into_iter()
            .enumerate()
            .map(|(i, record)| split(signature, record).map_err(|e| at(i, e)))
            .collect::<Result<Vec<_>>>()?;
        let dataset = Self { examples };
        dataset.check(signature)?;
        Ok(dataset)
    }

    /// Examples from a JSON Lines file: one record (a map of field values)
    /// per line; blank lines are skipped.
    ///
    /// # Errors
    /// [`Error::Validation`] naming the line for one that is not a map or
    /// does not fit the signature; [`Error::Configuration`] when the file
    /// cannot be read.
    pub fn from_jsonl(path: impl AsRef<Path>, signature: &Signature) -> Result<Self> {
        let path = path.as_ref();
        let text = read(path)?;
        let records = text
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(n, line)| match serde_json::from_str::<Value>(line) {
                Ok(Value::Object(record)) => Ok(record),
                Ok(_) => Err(line_error(path, n, "not a JSON map")),
                Err(error) => Err(line_error(path, n, &error.to_string())),
            })
            .collect::<Result<Vec<_>>>()?;
        Self::from_records(signature, records)
    }

    /// Examples from a CSV file with a header row naming the fields. A
    /// cell of a text field is its text; any other cell is JSON (`3`,
    /// `["a","b"]`, `true`); an empty cell of an optional field is left out.
    ///
    /// # Errors
    /// As [`Dataset::from_jsonl`], naming the row.
    pub fn from_csv(path: impl AsRef<Path>, signature: &Signature) -> Result<Self> {
        let path = path.as_ref();
        let mut reader = csv::Reader::from_path(path)
            .map_err(|e| Error::configuration(format!("cannot read {}: {e}", path.display())))?;
        let headers = reader
            .headers()
            .map_err(|e| line_error(path, 0, &e.to_string()))?
            .clone();
        let mut records = Vec::new();
        for (n, row) in reader.records().enumerate() {
            let row = row.map_err(|e| line_error(path, n + 1, &e.to_string()))?;
            let mut record = Map::new();
            for (name, cell) in headers.iter().zip(row.iter()) {
                let field = signature
                    .input(name)
                    .or_else(|| signature.output(name))
                    .map(|f| f.ty().clone());
                if cell.is_empty() && field.as_ref().is_some_and(FieldType::is_optional) {
                    continue;
                }
                let value = match field.as_ref().map(FieldType::without_optional) {
                    Some(FieldType::Str) => Value::String(cell.to_owned()),
                    _ => serde_json::from_str(cell)
                        .unwrap_or_else(|_| Value::String(cell.to_owned())),
                };
                record.insert(name.to_owned(), value);
            }
            records.push(record);
        }
        Self::from_records(signature, records)
    }

    /// Checks every example against `signature`: its inputs as a call's,
    /// its labels as outputs (which may be left out).
    ///
    /// # Errors
    /// [`Error::Validation`] naming the example and the field.
    pub fn check(&self, signature: &Signature) -> Result<()> {
        for (i, example) in self.examples.iter().enumerate() {
            signature
                .validate_inputs(&example.inputs)
                .map_err(|e| at(i, e.into()))?;
            signature
                .validate_labels(&example.labels)
                .map_err(|e| at(i, e.into()))?;
        }
        Ok(())
    }

    /// The examples.
    pub fn examples(&self) -> &[Example] {
        &self.examples
    }

    /// How many examples there are.
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// The first `n` examples, and the rest.
    pub fn split_at(&self, n: usize) -> (Dataset, Dataset) {
        let n = n.min(self.examples.len());
        let (head, tail) = self.examples.split_at(n);
        (Self::new(head.to_vec()), Self::new(tail.to_vec()))
    }
}

impl FromIterator<Example> for Dataset {
    fn from_iter<I: IntoIterator<Item = Example>>(iter: I) -> Self {
        Self::new(iter.into_iter().collect())
    }
}

/// A record split into an example by the signature's fields.
fn split(signature: &Signature, record: Map<String, Value>) -> Result<Example> {
    let mut example = Example::default();
    for (name, value) in record {
        if signature.input(&name).is_some() {
            example.inputs.insert(name, value);
        } else if signature.output(&name).is_some() {
            example.labels.insert(name, value);
        } else {
            let known: Vec<&str> = signature
                .inputs()
                .iter()
                .chain(signature.outputs())
                .map(|f| f.name())
                .collect();
            return Err(Error::validation(
                "example",
                Some(name.clone()),
                format!(
                    "unknown field `{name}`; the signature's fields are {}",
                    known.join(", ")
                ),
            ));
        }
    }
    Ok(example)
}

/// An error of example `i`.
fn at(i: usize, error: Error) -> Error {
    match error {
        Error::Validation { field, message, .. } => Error::Validation {
            what: "example",
            field,
            message: format!("example {i}: {message}"),
        },
        other => other,
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| Error::configuration(format!("cannot read {}: {e}", path.display())))
}

fn line_error(path: &Path, line: usize, message: &str) -> Error {
    Error::validation(
        "example",
        None,
        format!("{} line {}: {message}", path.display(), line + 1),
    )
}
