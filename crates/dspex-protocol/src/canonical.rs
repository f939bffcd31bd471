//! Canonical JSON and the program hash, computed exactly as the Python
//! worker computes them.
//!
//! The program hash names one version of a program definition on both sides
//! of the pipe: a worker that has loaded a hash has that exact definition, so
//! the host sends a definition only to a worker that lacks it. It is
//!
//! ```text
//! sha256(canonical_json({"signature": <as sent>, "module": <as sent>, "demos": <as sent, [] if absent>,
//!                        "module_args": <as sent, only when present and not empty>,
//!                        "state": <as sent, only when present and not null>}))
//! ```
//!
//! as lowercase hex, where `canonical_json` is Python's
//! `json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`
//! encoded as UTF-8: keys sorted by code point, no spaces, non-ASCII
//! characters as themselves, `"`, `\` and control characters escaped
//! (`\n`, `\r`, `\t`, `\b`, `\f`, others `\u00xx`), and floats written as
//! Python's `repr` writes them (`0.5`, `3.0`, `1e+16`, `1e-05`).

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::ProgramDefinition;

/// The canonical JSON text of `value` (see the module docs).
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_value(value, &mut out);
    out
}

/// The program hash of `definition` (see the module docs).
pub fn program_hash(definition: &ProgramDefinition) -> String {
    let signature = serde_json::to_value(&definition.signature).unwrap_or(Value::Null);
    let mut hashed = serde_json::json!({
        "signature": signature,
        "module": definition.module,
        "demos": definition.demos,
    });
    if !definition.module_args.is_empty() {
        hashed["module_args"] = Value::Object(definition.module_args.clone());
    }
    if let Some(state) = definition.state.as_ref().filter(|s| !s.is_null()) {
        hashed["state"] = state.clone();
    }
    Sha256::digest(canonical_json(&hashed).as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn write_value(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => out.push_str(&i.to_string()),
            (None, Some(u), _) => out.push_str(&u.to_string()),
            (None, None, Some(f)) => out.push_str(&python_float_repr(f)),
            _ => out.push_str(&n.to_string()),
        },
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            // Sorted here, whatever order the map keeps: UTF-8 byte order
            // is code point order, which is Python's.
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(key, out);
                out.push(':');
                write_value(item, out);
            }
            out.push('}');
        }
    }
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `repr(x)` of a finite Python float: the shortest digits that round-trip,
/// in positional notation when the decimal exponent is in `-4..16`, else
/// scientific with a signed exponent of at least two digits.
fn python_float_repr(x: f64) -> String {
    if !x.is_finite() {
        // JSON has no such value; Python would write NaN/Infinity.
        return if x.is_nan() {
            "NaN".into()
        } else if x > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "1.5e-5", "0e0".
    let sci = format!("{:e}", x.abs());
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let sign = if x.is_sign_negative() { "-" } else { "" };
    // value = 0.DIGITS × 10^decpt
    let decpt = exponent + 1;
    let body = if x == 0.0 {
        "0.0".to_owned()
    } else if !(-3..=16).contains(&decpt) {
        let (first, rest) = digits.split_at(1);
        let mantissa = if rest.is_empty() {
            first.to_owned()
        } else {
            format!("{first}.{rest}")
        };
        let e = decpt - 1;
        format!("{mantissa}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs())
    } else if decpt <= 0 {
        format!("0.{}{digits}", "0".repeat(decpt.unsigned_abs() as usize))
    } else {
        let point = decpt as usize;
        if point >= digits.len() {
            format!("{digits}{}.0", "0".repeat(point - digits.len()))
        } else {
            format!("{}.{}", &digits[..point], &digits[point..])
        }
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn floats_are_written_as_python_repr_writes_them() {
        let cases = [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (0.5, "0.5"),
            (0.1, "0.1"),
            (3.25, "3.25"),
            (-2.5, "-2.5"),
            (123456.789, "123456.789"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (1e100, "1e+100"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (0.30000000000000004, "0.30000000000000004"),
        ];
        for (x, want) in cases {
            assert_eq!(python_float_repr(x), want, "{x:e}");
        }
    }

    #[test]
    fn canonical_json_sorts_keys_and_escapes_as_python() {
        let value = json!({"b": [1, 2.0, true, null], "a": "é\"\\\n\u{1}\u{7f}", "": {}});
        assert_eq!(
            canonical_json(&value),
            "{\"\":{},\"a\":\"é\\\"\\\\\\n\\u0001\u{7f}\",\"b\":[1,2.0,true,null]}"
        );
    }
}
