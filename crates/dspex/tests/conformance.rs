//! One conformance suite, run against every adapter: the pure-Rust mock
//! (layer 1), the bridge mock (layer 2: real codec, actors and pool against
//! in-process fake workers) and real Python workers (layer 3, pool and
//! single). The same calls must give results of the same shape and the same
//! typed errors everywhere.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dspex::schemars::JsonSchema;
use dspex::signature::TypedSignature;
use dspex::{
    AdapterKind, Category, Dspex, Error, ExecuteOptions, LmConfig, ModeSetting, Module, Reward,
    Signature, StreamEvent, Tool,
};
use futures::StreamExt;
use serde_json::{Value, json};

/// What the suite's tools take.
#[derive(serde::Deserialize, JsonSchema)]
#[schemars(crate = "dspex::schemars")]
struct Query {
    /// What to look up.
    query: String,
}

/// Classify a document.
#[derive(dspex::Signature)]
struct Classify {
    /// The document.
    #[input]
    text: String,
    /// Labels to prefer, if any.
    #[input]
    hints: Option<Vec<String>>,
    #[output(literal = "spam|ham")]
    label: String,
    #[output(kind = "probability")]
    probability: f64,
    #[output]
    keywords: Vec<String>,
}

async fn mock() -> Dspex {
    Dspex::builder()
        .adapter(AdapterKind::Mock)
        .start()
        .await
        .unwrap()
}

async fn bridge_mock() -> Dspex {
    Dspex::builder()
        .adapter(AdapterKind::BridgeMock)
        .pool_size(2)
        .start()
        .await
        .unwrap()
}

async fn python(mode: ModeSetting) -> Dspex {
    let python = tokio::task::spawn_blocking(dspex_testkit::managed_python)
        .await
        .unwrap()
        .unwrap();
    Dspex::builder()
        .adapter(AdapterKind::Python)
        .mode(mode)
        .name(format!("conf{}", std::process::id()))
        .pool_size(2)
        .python(python.interpreter)
        .request_timeout(Duration::from_secs(60))
        .start()
        .await
        .unwrap()
}

/// The suite. Every assertion holds on every layer.
async fn conformance(dspex: Dspex) {
    let layer = dspex.status().adapter.kind;

    // Before an LM is configured, programs can be created but not run.
    let signature = Signature::parse(
        "question: str, context: list[str] -> answer: str, score: float, n: int, ok: bool",
    )
    .unwrap();
    dspex
        .create_program("qa", signature.clone(), Module::Predict)
        .await
        .unwrap();
    let unconfigured = dspex
        .execute(
            "qa",
            json!({"question": "q", "context": []}),
            ExecuteOptions::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        unconfigured.category(),
        Category::Lm,
        "{layer:?}: {unconfigured}"
    );
    assert!(!unconfigured.is_retryable());

    dspex.configure_lm(LmConfig::dummy()).await.unwrap();

    // Predict: exactly the declared outputs, each of its type.
    let prediction = dspex
        .execute(
            "qa",
            json!({"question": "Why?", "context": ["a", "b"]}),
            ExecuteOptions::default(),
        )
        .await
        .unwrap();
    let mut keys: Vec<&str> = prediction.outputs.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["answer", "n", "ok", "score"], "{layer:?}");
    assert!(prediction.outputs["answer"].is_string(), "{layer:?}");
    assert!(prediction.outputs["score"].is_number(), "{layer:?}");
    assert!(
        prediction.outputs["n"].is_i64() || prediction.outputs["n"].is_u64(),
        "{layer:?}"
    );
    assert!(prediction.outputs["ok"].is_boolean(), "{layer:?}");
    assert_eq!(prediction.program_id, "qa");
    assert_eq!(prediction.attempts, 1);

    // Same inputs, same outputs (every layer is deterministic offline).
    let again = dspex
        .execute(
            "qa",
            json!({"question": "Why?", "context": ["a", "b"]}),
            ExecuteOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(again.outputs, prediction.outputs, "{layer:?}");

    // Chain of thought: `reasoning`, then the declared outputs.
    dspex
        .create_program("cot", signature, Module::ChainOfThought)
        .await
        .unwrap();
    let reasoned = dspex
        .execute(
            "cot",
            json!({"question": "Why?", "context": []}),
            ExecuteOptions::default(),
        )
        .await
        .unwrap();
    assert!(reasoned.outputs["reasoning"].is_string(), "{layer:?}");
    assert_eq!(reasoned.outputs.len(), 5, "{layer:?}");

    // Bad inputs are refused in Rust, naming the field, identically.
    for (inputs, field) in [
        (json!({"context": []}), "question"),
        (json!({"question": "q", "context": [], "extra": 1}), "extra"),
        (json!({"question": 7, "context": []}), "question"),
        (json!({"question": "q", "context": ["a", 2]}), "context"),
    ] {
        let error = dspex
            .execute("qa", inputs.clone(), ExecuteOptions::default())
            .await
            .unwrap_err();
        match &error {
            Error::Validation {
                what: "input",
                field: Some(f),
                ..
            } => {
                assert_eq!(f, field, "{layer:?}: {inputs}")
            }
            other => panic!("{layer:?}: {inputs}: expected a validation error, got {other:?}"),
        }
    }
    let missing = dspex
        .execute("nope", json!({}), ExecuteOptions::default())
        .await
        .unwrap_err();
    assert_eq!(missing.category(), Category::Validation, "{layer:?}");

    // A typed program: literal, probability and list outputs, deserialized.
    let classify = dspex
        .program::<Classify>("classify", Module::Predict)
        .await
        .unwrap();
    let out = classify
        .call(ClassifyInputs {
            text: "Win a prize now".into(),
            hints: None,
        })
        .await
        .unwrap();
    assert!(
        ["spam", "ham"].contains(&out.label.as_str()),
        "{layer:?}: {}",
        out.label
    );
    assert!(
        (0.0..=1.0).contains(&out.probability),
        "{layer:?}: {}",
        out.probability
    );
    assert!(out.keywords.iter().all(|k| !k.is_empty()), "{layer:?}");
    assert_eq!(Classify::signature().outputs().len(), 3);

    // Sessions run the same programs.
    let session = dspex.session("s-1");
    let in_session = session
        .execute(
            "qa",
            json!({"question": "Why?", "context": ["a", "b"]}),
            ExecuteOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(in_session.outputs, prediction.outputs, "{layer:?}");

    // Programs are listed, described and deleted.
    let ids: Vec<String> = dspex
        .list_programs()
        .into_iter()
        .map(|p| p.program_id)
        .collect();
    assert_eq!(ids, ["classify", "cot", "qa"], "{layer:?}");
    assert_eq!(
        dspex.program_info("cot").unwrap().module,
        "chain_of_thought"
    );
    assert!(dspex.delete_program("cot").await.unwrap());
    assert!(!dspex.delete_program("cot").await.unwrap());
    let status = dspex.status();
    assert_eq!(status.programs, 2);
    assert_eq!(status.adapter.failed, None);

    modules(&dspex).await;
    dspex.shutdown().await;
}

/// The modules beyond predict and chain of thought, streaming, batches and
/// usage: the same shapes on every layer.
async fn modules(dspex: &Dspex) {
    let layer = dspex.status().adapter.kind;
    let signature = Signature::parse("question: str -> answer: str").unwrap();
    let question = json!({"question": "Where is Paris?"});

    // ReAct calls its Rust tool; its error is an observation, not a failure.
    let calls = Arc::new(AtomicUsize::new(0));
    let search = {
        let calls = Arc::clone(&calls);
        Tool::new("search", "Searches.", move |q: Query| {
            calls.fetch_add(1, Ordering::SeqCst);
            let answer = format!("search saw {}", q.query);
            async move { Ok::<_, String>(answer) }
        })
    };
    let fail = Tool::new("fail", "Fails.", |_: Query| async move {
        Err::<String, _>("out of order")
    });
    for (id, tool, observed) in [
        ("react", search, "search saw "),
        ("failing", fail, "out of order"),
    ] {
        dspex
            .create_program(id, signature.clone(), Module::react([tool]))
            .await
            .unwrap();
        let prediction = dspex
            .execute(id, &question, ExecuteOptions::default())
            .await
            .unwrap();
        let steps: Value =
            serde_json::from_str(prediction.outputs["trajectory"].as_str().unwrap()).unwrap();
        let observation = steps["observation_0"].as_str().unwrap();
        assert!(
            observation.contains(observed),
            "{layer:?} {id}: {observation}"
        );
        assert!(prediction.outputs["reasoning"].is_string(), "{layer:?}");
        assert!(prediction.outputs["answer"].is_string(), "{layer:?}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "{layer:?}");

    // best_of_n scores each attempt with the Rust reward.
    let scored = Arc::new(AtomicUsize::new(0));
    let reward = {
        let scored = Arc::clone(&scored);
        Reward::new(move |_, _| {
            scored.fetch_add(1, Ordering::SeqCst);
            0.0
        })
    };
    let best = Module::best_of_n(2, reward).threshold(1.0);
    dspex
        .create_program("best", signature.clone(), best)
        .await
        .unwrap();
    let prediction = dspex
        .execute("best", &question, ExecuteOptions::default())
        .await
        .unwrap();
    assert!(prediction.outputs["answer"].is_string(), "{layer:?}");
    assert_eq!(scored.load(Ordering::SeqCst), 2, "{layer:?}");

    dspex
        .create_program("mcc", signature.clone(), Module::multi_chain_comparison(2))
        .await
        .unwrap();
    let prediction = dspex
        .execute("mcc", &question, ExecuteOptions::default())
        .await
        .unwrap();
    assert!(prediction.outputs["rationale"].is_string(), "{layer:?}");

    let error = dspex
        .create_program("pot", signature.clone(), Module::ProgramOfThought)
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::Validation { what: "module", .. }),
        "{layer:?}: {error:?}"
    );

    // A stream's chunks add up to the prediction's text.
    dspex
        .create_program("plain", signature, Module::Predict)
        .await
        .unwrap();
    let mut stream = dspex
        .execute_stream("plain", &question, ExecuteOptions::default())
        .unwrap();
    let mut answer = String::new();
    let mut last = None;
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            StreamEvent::Chunk(chunk) if chunk.field == "answer" => answer.push_str(&chunk.text),
            StreamEvent::Chunk(_) => {}
            StreamEvent::Prediction(prediction) => last = Some(prediction),
        }
    }
    let streamed = last.expect("a prediction");
    assert_eq!(streamed.outputs["answer"], json!(answer), "{layer:?}");
    assert!(!streamed.usage.is_empty(), "{layer:?}: no usage");

    // A batch gives what single calls give.
    let inputs = [json!({"question": "one"}), json!({"question": "two"})];
    let results = dspex
        .execute_batch("plain", inputs.clone(), ExecuteOptions::default())
        .await
        .unwrap();
    for (input, result) in inputs.iter().zip(results) {
        let single = dspex
            .execute("plain", input, ExecuteOptions::default())
            .await
            .unwrap();
        assert_eq!(result.unwrap().outputs, single.outputs, "{layer:?}");
    }
    assert!(dspex.status().usage["plain"].calls >= 5, "{layer:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn layer_1_mock() {
    conformance(mock().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn layer_2_bridge_mock() {
    conformance(bridge_mock().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn layer_3_python_pool() {
    conformance(python(ModeSetting::Pool).await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn layer_3_python_single() {
    conformance(python(ModeSetting::Single).await).await;
}

#[test]
fn outputs_of_the_mock_layers_are_identical() {
    // Layers 1 and 2 compute values with the same function.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut results: Vec<Value> = Vec::new();
        for dspex in [mock().await, bridge_mock().await] {
            dspex.configure_lm(LmConfig::dummy()).await.unwrap();
            let signature = Signature::parse("q: str -> a: str, b: list[int]").unwrap();
            dspex
                .create_program("p", signature, Module::Predict)
                .await
                .unwrap();
            let p = dspex
                .execute("p", json!({"q": "x"}), ExecuteOptions::default())
                .await
                .unwrap();
            results.push(Value::Object(p.outputs));
            dspex.shutdown().await;
        }
        assert_eq!(results[0], results[1]);
    });
}
