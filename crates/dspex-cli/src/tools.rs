//! The Rust tools and the reward function `dspex run` offers its programs:
//! a ReAct program gets `calculator` and `lookup` (facts from `--facts`),
//! `best_of_n` and `refine` get [`complete_outputs`].

use std::collections::HashMap;
use std::sync::Arc;

use dspex::schemars::JsonSchema;
use dspex::{Reward, Tool};
use serde::Deserialize;
use serde_json::Value;

/// What `calculator` takes.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "dspex::schemars")]
struct Expression {
    /// An arithmetic expression, such as `(2 + 3) * 4` or `2^10`.
    expression: String,
}

/// What `lookup` takes.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "dspex::schemars")]
struct Key {
    /// The word or name to look up.
    key: String,
}

/// Evaluates arithmetic with `evalexpr` (numbers and operators only: no
/// variables, no side effects).
pub(crate) fn calculator() -> Tool {
    Tool::new(
        "calculator",
        "Evaluates an arithmetic expression and returns the number.",
        |args: Expression| async move {
            let value = evalexpr::eval(&args.expression)
                .map_err(|error| format!("cannot evaluate {:?}: {error}", args.expression))?;
            match value {
                evalexpr::Value::Int(n) => Ok(Value::from(n)),
                evalexpr::Value::Float(x) => Ok(Value::from(x)),
                other => Err(format!("{:?} is not a number but {other}", args.expression)),
            }
        },
    )
}

/// Looks a key up in `facts` (case-insensitively).
pub(crate) fn lookup(facts: HashMap<String, Value>) -> Tool {
    let facts: Arc<HashMap<String, Value>> = Arc::new(
        facts
            .into_iter()
            .map(|(key, value)| (key.to_lowercase(), value))
            .collect(),
    );
    Tool::new(
        "lookup",
        "Looks up what is known about a word or name.",
        move |args: Key| {
            let facts = Arc::clone(&facts);
            async move {
                facts
                    .get(&args.key.trim().to_lowercase())
                    .cloned()
                    .ok_or_else(|| format!("nothing is known about {:?}", args.key))
            }
        },
    )
}

/// The share of outputs that are present and not empty: 1.0 when every
/// output has a value.
pub(crate) fn complete_outputs() -> Reward {
    Reward::new(|_inputs, outputs| {
        if outputs.is_empty() {
            return 0.0;
        }
        let full = outputs
            .values()
            .filter(|value| match value {
                Value::Null => false,
                Value::String(text) => !text.trim().is_empty(),
                Value::Array(items) => !items.is_empty(),
                _ => true,
            })
            .count();
        full as f64 / outputs.len() as f64
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn the_calculator_computes_and_reports_what_it_cannot() {
        let calc = calculator();
        assert_eq!(
            calc.run(json!({"expression": "(2 + 3) * 4"}))
                .await
                .unwrap(),
            json!(20)
        );
        let error = calc.run(json!({"expression": "1 / 0"})).await.unwrap_err();
        assert!(error.message.contains("cannot evaluate"), "{error:?}");
        let error = calc.run(json!({"expr": "1"})).await.unwrap_err();
        assert!(error.message.contains("invalid arguments"), "{error:?}");
    }

    #[tokio::test]
    async fn lookup_ignores_case() {
        let tool = lookup(HashMap::from([(
            "Paris".to_owned(),
            json!("capital of France"),
        )]));
        assert_eq!(
            tool.run(json!({"key": "paris"})).await.unwrap(),
            json!("capital of France")
        );
        assert!(tool.run(json!({"key": "Rome"})).await.is_err());
    }

    #[test]
    fn the_reward_counts_full_outputs() {
        let reward = complete_outputs();
        let outputs = json!({"a": "x", "b": ""});
        let score = reward.score(&serde_json::Map::new(), outputs.as_object().unwrap());
        assert!((score - 0.5).abs() < 1e-9);
    }
}
