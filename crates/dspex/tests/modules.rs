//! Tools, rewards and modules checked before anything leaves Rust, on the
//! mock adapter: names, schemas, arguments, limits, demos and the
//! `history` type.

use std::time::Duration;

use dspex::schemars::JsonSchema;
use dspex::{
    AdapterKind, Category, Dspex, Error, ExecuteOptions, FieldType, History, LmConfig, Module,
    Reward, Signature, Tool,
};
use serde_json::json;

/// A city and a number of days.
#[derive(serde::Deserialize, JsonSchema)]
#[schemars(crate = "dspex::schemars")]
struct Forecast {
    /// The city.
    city: String,
    /// How many days ahead.
    days: Option<u32>,
}

fn forecast() -> Tool {
    Tool::new(
        "forecast",
        "The weather ahead.",
        |args: Forecast| async move {
            Ok::<_, String>(format!(
                "{} in {} days: sun",
                args.city,
                args.days.unwrap_or(1)
            ))
        },
    )
}

async fn mock() -> Dspex {
    Dspex::builder()
        .adapter(AdapterKind::Mock)
        .lm(LmConfig::dummy())
        .start()
        .await
        .unwrap()
}

fn qa() -> Signature {
    Signature::parse("question: str -> answer: str").unwrap()
}

#[tokio::test]
async fn a_tool_describes_its_arguments_and_checks_them() {
    let tool = forecast();
    assert_eq!(tool.args()["city"]["type"], "string");
    assert_eq!(tool.args()["city"]["description"], "The city.");
    assert_eq!(tool.required(), ["city"]);
    assert_eq!(
        tool.run(json!({"city": "Oslo", "days": 2})).await.unwrap(),
        json!("Oslo in 2 days: sun")
    );
    let error = tool.run(json!({"days": 2})).await.unwrap_err();
    assert_eq!(error.kind, dspex::protocol::ErrorKind::ToolError);
    assert!(
        error.message.contains("invalid arguments for `forecast`"),
        "{error:?}"
    );
    assert_eq!(error.details.unwrap()["tool"], "forecast");
    let slow = Tool::new("slow", "Sleeps.", |_: Forecast| async move {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok::<_, String>(0)
    })
    .timeout(Duration::from_millis(20));
    let error = slow.run(json!({"city": "x"})).await.unwrap_err();
    assert!(error.message.contains("timed out after 20 ms"), "{error:?}");
}

#[tokio::test]
async fn bad_tools_and_module_arguments_are_refused_before_anything_runs() {
    let dspex = mock().await;
    let cases: Vec<(Module, &str)> = vec![
        (Module::react([forecast(), forecast()]).into(), "two tools"),
        (
            Module::react([Tool::new("9lives", "d", |_: Forecast| async move {
                Ok::<_, String>(0)
            })])
            .into(),
            "letters, digits",
        ),
        (
            Module::react([Tool::new("finish", "d", |_: Forecast| async move {
                Ok::<_, String>(0)
            })])
            .into(),
            "ReAct's own",
        ),
        (
            Module::react([Tool::new("scalar", "d", |_: u32| async move {
                Ok::<_, String>(0)
            })])
            .into(),
            "struct with named fields",
        ),
        (Module::react([forecast()]).max_iters(0).into(), "max_iters"),
        (
            Module::best_of_n(0, Reward::new(|_, _| 1.0)).into(),
            "n must be",
        ),
        (
            Module::refine(2, Reward::new(|_, _| 1.0))
                .threshold(f64::NAN)
                .into(),
            "finite",
        ),
        (Module::multi_chain_comparison(99).into(), "m must be"),
        (Module::python("not a path").into(), "package.module:Class"),
        (
            Module::python("app.rag:RAG").kwargs(json!([1, 2])).into(),
            "kwargs",
        ),
    ];
    for (module, words) in cases {
        let name = module.name();
        let error = dspex.create_program("p", qa(), module).await.unwrap_err();
        assert_eq!(error.category(), Category::Validation, "{name}: {error}");
        assert!(error.to_string().contains(words), "{name}: {error}");
    }
    assert!(dspex.list_programs().is_empty());
}

#[test]
fn module_names_parse() {
    for (text, name) in [
        ("predict", "predict"),
        ("cot", "chain_of_thought"),
        ("react", "react"),
        ("mcc", "multi_chain_comparison"),
        ("pot", "program_of_thought"),
        ("codeact", "codeact"),
        ("python:app.rag:RAG", "python"),
    ] {
        assert_eq!(text.parse::<Module>().unwrap().name(), name, "{text}");
    }
    for bad in ["best_of_n", "refine", "nope", "python:bad path"] {
        assert!(bad.parse::<Module>().is_err(), "{bad}");
    }
}

#[tokio::test]
async fn demos_are_checked_against_the_signature() {
    let dspex = mock().await;
    dspex
        .create_program("cot", qa(), Module::ChainOfThought)
        .await
        .unwrap();
    let demo = |value: serde_json::Value| value.as_object().unwrap().clone();
    // A chain of thought's demo may carry its reasoning.
    let info = dspex
        .set_demos(
            "cot",
            vec![demo(
                json!({"question": "q", "answer": "a", "reasoning": "r"}),
            )],
        )
        .await
        .unwrap();
    assert_eq!(info.demos, 1);
    let error = dspex
        .set_demos("cot", vec![demo(json!({"question": "q", "answer": 1}))])
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::Validation { what: "demo", .. }),
        "{error:?}"
    );
    assert_eq!(dspex.program_info("cot").unwrap().demos, 1);
    let python = Module::python("app.rag:RAG");
    dspex.create_program("py", qa(), python).await.unwrap();
    let error = dspex
        .set_demos("py", vec![demo(json!({"question": "q", "answer": "a"}))])
        .await
        .unwrap_err();
    assert!(error.to_string().contains("in Python"), "{error}");
}

#[tokio::test]
async fn a_history_field_takes_earlier_turns() {
    assert_eq!(FieldType::parse("history").unwrap(), FieldType::History);
    let signature = Signature::parse("question: str, history: history -> answer").unwrap();
    let good =
        json!({"question": "q", "history": {"messages": [{"question": "a", "answer": "b"}]}});
    signature
        .validate_inputs(good.as_object().unwrap())
        .unwrap();
    for bad in [
        json!({"question": "q", "history": []}),
        json!({"question": "q", "history": {"messages": [1]}}),
    ] {
        let error = signature
            .validate_inputs(bad.as_object().unwrap())
            .unwrap_err();
        assert!(error.to_string().contains("history"), "{error}");
    }
    let dspex = mock().await;
    dspex
        .create_program("chat", signature, Module::Predict)
        .await
        .unwrap();
    let session = dspex.session("s");
    // Given explicitly, the history is the caller's; the turn is still kept.
    let given = History {
        messages: vec![
            json!({"question": "earlier", "answer": "yes"})
                .as_object()
                .unwrap()
                .clone(),
        ],
    };
    session
        .execute(
            "chat",
            json!({"question": "now", "history": given}),
            ExecuteOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(session.history("chat").messages.len(), 1);
    session.clear_history();
    assert!(session.history("chat").messages.is_empty());
}

fn explode() -> Result<String, String> {
    panic!("kaboom in the mock")
}

#[tokio::test]
async fn a_panicking_tool_is_a_tool_error_on_the_mock_too() {
    let dspex = mock().await;
    let tool = Tool::new("explode", "Panics.", |_: Forecast| async move { explode() });
    dspex
        .create_program("agent", qa(), Module::react([tool]))
        .await
        .unwrap();
    let prediction = dspex
        .execute("agent", json!({"question": "q"}), ExecuteOptions::default())
        .await
        .unwrap();
    let steps: serde_json::Value =
        serde_json::from_str(prediction.outputs["trajectory"].as_str().unwrap()).unwrap();
    let observation = steps["observation_0"].as_str().unwrap();
    assert!(observation.contains("kaboom in the mock"), "{observation}");
}
