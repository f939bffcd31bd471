//! What goes in and out of a program on real Python workers: streaming
//! (and cancelling a stream by dropping it), batches, demos, LM history,
//! conversation history kept by a session across the death of its worker,
//! sixteen concurrent requests on one worker with two LMs, and the same
//! programs run by DSPy alone compared field by field.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dspex::schemars::JsonSchema;
use dspex::{
    Category, ExecuteOptions, LmConfig, ModeSetting, Module, Signature, StreamEvent, Tool,
};
use dspex_protocol::{Map, Value};
use dspex_testkit::poll_until;
use dspex_tests::service::{Service, config, slow_lm, wait_in_flight};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;

async fn service(size: usize, per_worker: usize) -> Service {
    let mut config = config(ModeSetting::Pool);
    config.pool_size = size;
    config.per_worker_concurrency = per_worker;
    let service = Service::start(config).await.unwrap();
    service.dspex.configure_lm(LmConfig::dummy()).await.unwrap();
    service
}

fn qa() -> Signature {
    Signature::parse("question: str -> answer: str").unwrap()
}

/// The offline LM with its own seed: other answers, the same shapes.
fn seeded(seed: &str) -> LmConfig {
    let mut lm = LmConfig::dummy();
    lm.extra.insert("seed".into(), json!(seed));
    lm
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_carries_the_fields_as_written_then_the_prediction() {
    let service = service(1, 1).await;
    let dspex = &service.dspex;
    dspex
        .create_program("cot", qa(), Module::ChainOfThought)
        .await
        .unwrap();
    let mut stream = dspex
        .execute_stream(
            "cot",
            json!({"question": "Why is the sky blue?"}),
            ExecuteOptions::default(),
        )
        .unwrap();
    let mut text: Map<String, Value> = Map::new();
    let mut chunks = 0;
    let mut last = None;
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            StreamEvent::Chunk(chunk) => {
                assert!(last.is_none(), "a chunk after the prediction");
                chunks += 1;
                let field = text.entry(chunk.field).or_insert_with(|| json!(""));
                *field = json!(format!("{}{}", field.as_str().unwrap(), chunk.text));
            }
            StreamEvent::Prediction(prediction) => last = Some(prediction),
        }
    }
    let prediction = last.expect("a prediction at the end");
    assert!(chunks >= 2, "{chunks} chunks");
    assert_eq!(text["answer"], prediction.outputs["answer"]);
    // The same call unstreamed gives the same prediction.
    let plain = dspex
        .execute(
            "cot",
            json!({"question": "Why is the sky blue?"}),
            ExecuteOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(plain.outputs, prediction.outputs);
    service.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dropping_a_stream_cancels_its_call() {
    let service = service(1, 1).await;
    let dspex = service.dspex.clone();
    let pool = service.pool().clone();
    dspex
        .create_program("qa", qa(), Module::Predict)
        .await
        .unwrap();
    let slow = ExecuteOptions::default().lm(slow_lm(20_000));
    let consumer = {
        let dspex = dspex.clone();
        tokio::spawn(async move {
            let mut stream = dspex
                .execute_stream("qa", json!({"question": "slow"}), slow)
                .unwrap();
            while stream.next().await.is_some() {}
        })
    };
    wait_in_flight(&dspex, 1).await;
    poll_until(Duration::from_secs(10), "the request on its worker", || {
        pool.status().busy == 1
    })
    .await
    .unwrap();
    consumer.abort();
    let free = poll_until(Duration::from_secs(10), "the worker free", || {
        let status = pool.status();
        status.idle == 1 && status.busy == 0
    })
    .await
    .unwrap();
    // Far inside the LM's 20 s: the work was cancelled, not waited out.
    assert!(free < Duration::from_secs(5), "{free:?}");
    dspex
        .execute("qa", json!({"question": "next"}), ExecuteOptions::default())
        .await
        .unwrap();
    assert_eq!(pool.status().restarts, 0);
    service.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_gives_each_input_what_a_single_call_gives() {
    let service = service(1, 1).await;
    let dspex = &service.dspex;
    dspex
        .create_program("cot", qa(), Module::ChainOfThought)
        .await
        .unwrap();
    let questions: Vec<Value> = (0..5)
        .map(|i| json!({"question": format!("question {i}")}))
        .collect();
    let results = dspex
        .execute_batch(
            "cot",
            questions.clone(),
            ExecuteOptions::default().threads(3),
        )
        .await
        .unwrap();
    assert_eq!(results.len(), 5);
    for (question, result) in questions.iter().zip(results) {
        let batched = result.unwrap();
        let single = dspex
            .execute("cot", question, ExecuteOptions::default())
            .await
            .unwrap();
        assert_eq!(batched.outputs, single.outputs);
        assert_eq!(batched.usage, single.usage);
    }
    // A bad item is refused before anything is sent, naming the item.
    let error = dspex
        .execute_batch(
            "cot",
            [json!({"question": "ok"}), json!({"question": 7})],
            ExecuteOptions::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(error.category(), Category::Validation);
    assert!(error.to_string().contains("batch item 1"), "{error}");
    assert_eq!(dspex.status().usage["cot"].calls, 10);
    service.finish().await;
}

/// Answer arithmetic questions.
#[derive(dspex::Signature)]
struct Arithmetic {
    #[input]
    question: String,
    #[output]
    answer: String,
}

#[tokio::test(flavor = "multi_thread")]
async fn demos_reach_the_prompt_and_bad_ones_change_nothing() {
    let service = service(1, 1).await;
    let dspex = &service.dspex;
    let program = dspex
        .program::<Arithmetic>("math", Module::Predict)
        .await
        .unwrap();
    let before = dspex.program_info("math").unwrap();
    let program = program
        .with_demos([(
            ArithmeticInputs {
                question: "What is 2 + 2?".into(),
            },
            ArithmeticOutputs {
                answer: "four-demo".into(),
            },
        )])
        .await
        .unwrap();
    let info = dspex.program_info("math").unwrap();
    assert_eq!(info.demos, 1);
    assert_ne!(info.hash, before.hash);
    let prediction = dspex
        .execute(
            "math",
            json!({"question": "What is 3 + 3?"}),
            ExecuteOptions::default().lm_history(),
        )
        .await
        .unwrap();
    let history = prediction.lm_history.expect("the LM history");
    let prompt = serde_json::to_string(&history[0]["messages"]).unwrap();
    assert!(
        prompt.contains("What is 2 + 2?") && prompt.contains("four-demo"),
        "{prompt}"
    );
    let typed = program
        .call(ArithmeticInputs {
            question: "What is 1 + 1?".into(),
        })
        .await
        .unwrap();
    assert!(!typed.answer.is_empty());
    // Demos that do not fit the signature are refused; the program stays.
    for demo in [
        json!({"question": "q", "answer": "a", "extra": 1}),
        json!({"question": "q"}),
        json!({"question": 3, "answer": "a"}),
    ] {
        let error = dspex
            .set_demos("math", vec![demo.as_object().unwrap().clone()])
            .await
            .unwrap_err();
        assert_eq!(error.category(), Category::Validation, "{demo}: {error}");
        assert!(error.to_string().contains("demo 0"), "{error}");
    }
    assert_eq!(dspex.program_info("math").unwrap().hash, info.hash);
    // Without asking, there is no history.
    let plain = dspex
        .execute("math", json!({"question": "q"}), ExecuteOptions::default())
        .await
        .unwrap();
    assert!(plain.lm_history.is_none());
    service.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_conversation_survives_the_death_of_its_worker() {
    let service = service(1, 1).await;
    let dspex = &service.dspex;
    let pool = service.pool().clone();
    let chat = Signature::parse("question: str, history: history -> answer: str").unwrap();
    dspex
        .create_program("chat", chat, Module::Predict)
        .await
        .unwrap();
    let session = dspex.session("user-1");
    for question in ["My name is Ada.", "I like owls."] {
        session
            .execute(
                "chat",
                json!({"question": question}),
                ExecuteOptions::default(),
            )
            .await
            .unwrap();
    }
    let first = pool.status().pids()[0];
    dspex::bridge::process::kill_process(first).unwrap();
    poll_until(Duration::from_secs(30), "a replacement worker", || {
        let status = pool.status();
        status.idle == 1 && !status.pids().contains(&first)
    })
    .await
    .unwrap();
    let prediction = session
        .execute(
            "chat",
            json!({"question": "What is my name?"}),
            ExecuteOptions::default().lm_history(),
        )
        .await
        .unwrap();
    let prompt = serde_json::to_string(&prediction.lm_history.unwrap()[0]["messages"]).unwrap();
    assert!(
        prompt.contains("My name is Ada.") && prompt.contains("I like owls."),
        "{prompt}"
    );
    let turns = session.history("chat").messages;
    assert_eq!(turns.len(), 3);
    assert_eq!(turns[2]["question"], "What is my name?");
    assert!(turns[2].contains_key("answer") && !turns[2].contains_key("history"));
    service.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sixteen_concurrent_requests_on_one_worker_each_get_their_own_lm() {
    let service = service(1, 16).await;
    let dspex = service.dspex.clone();
    dspex
        .create_program("qa", qa(), Module::Predict)
        .await
        .unwrap();
    let lm = |i: usize| {
        let mut lm = seeded(if i.is_multiple_of(2) { "alpha" } else { "beta" });
        lm.extra.insert("latency_ms".into(), json!(300));
        lm
    };
    let question = |i: usize| json!({"question": format!("question {}", i / 2)});
    // What each LM answers, one call at a time.
    let mut expected = Vec::new();
    for i in 0..16 {
        let options = ExecuteOptions::default().lm(lm(i));
        let prediction = dspex.execute("qa", question(i), options).await.unwrap();
        expected.push(prediction.outputs);
    }
    assert_ne!(expected[0], expected[1], "the two LMs answer alike");
    let calls: Vec<_> = (0..16)
        .map(|i| {
            let dspex = dspex.clone();
            let options = ExecuteOptions::default().lm(lm(i));
            tokio::spawn(async move { dspex.execute("qa", question(i), options).await })
        })
        .collect();
    wait_in_flight(&dspex, 16).await;
    for (i, call) in calls.into_iter().enumerate() {
        let prediction = call.await.unwrap().unwrap();
        assert_eq!(prediction.outputs, expected[i], "request {i}");
    }
    assert_eq!(service.pool().status().pids().len(), 1);
    service.finish().await;
}

/// What the differential ReAct tool takes.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "dspex::schemars")]
struct Query {
    /// What to look up.
    query: String,
}

/// Runs programs with DSPy alone (no worker, no DSPex) on the same offline
/// LM: each line of stdin is `{"signature", "module", "tool"?, "inputs"}`,
/// each line of stdout the outputs.
const DIRECT: &str = r#"
import json, sys
import dspy
from dspex_bridge.lm import build_lm, parse_lm_config
from dspex_bridge.signatures import build_dspy_signature, parse_signature

lm = build_lm(parse_lm_config({"model": "dummy"})).lm
for line in sys.stdin:
    job = json.loads(line)
    signature = build_dspy_signature(parse_signature(job["signature"]))
    if job["module"] == "predict":
        module = dspy.Predict(signature)
    elif job["module"] == "chain_of_thought":
        module = dspy.ChainOfThought(signature)
    else:
        spec = job["tool"]
        def search(query):
            return f"search saw {query}"
        tool = dspy.Tool(search, name=spec["name"], desc=spec["description"],
                         args=spec["args"]["properties"])
        module = dspy.ReAct(signature, tools=[tool], max_iters=job["max_iters"])
    with dspy.context(lm=lm):
        prediction = module(**job["inputs"])
    print(json.dumps({k: prediction[k] for k in prediction.keys()}), flush=True)
"#;

#[tokio::test(flavor = "multi_thread")]
async fn dspy_alone_and_dspex_agree_field_by_field() {
    let service = service(1, 1).await;
    let dspex = &service.dspex;
    let signature =
        Signature::parse("question: str, context: list[str] -> answer: str, score: float")
            .unwrap()
            .with_instructions("Answer from the context.");
    let calls = Arc::new(AtomicUsize::new(0));
    let search = {
        let calls = Arc::clone(&calls);
        Tool::new("search", "Searches the notes.", move |q: Query| {
            calls.fetch_add(1, Ordering::SeqCst);
            let answer = format!("search saw {}", q.query);
            async move { Ok::<_, String>(answer) }
        })
    };
    let inputs = json!({"question": "Who?", "context": ["Ada wrote notes.", "Owls fly."]});
    // DSPy alone gets the tool as DSPex describes it to the worker.
    let tool_spec = json!({
        "name": search.name(),
        "description": search.description(),
        "args": {"type": "object", "properties": search.args(), "required": search.required()},
    });
    dspex
        .create_program(
            "react",
            signature.clone(),
            Module::react([search]).max_iters(4),
        )
        .await
        .unwrap();
    let spec = serde_json::to_value(signature.to_spec()).unwrap();
    let mut jobs = String::new();
    for module in ["predict", "chain_of_thought", "react"] {
        jobs.push_str(
            &json!({"signature": spec, "module": module, "tool": tool_spec, "max_iters": 4, "inputs": inputs})
                .to_string(),
        );
        jobs.push('\n');
    }
    let direct: Vec<Map<String, Value>> = dspex_tests::run_plain_python(DIRECT, &jobs)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(direct.len(), 3);
    dspex
        .create_program("predict", signature.clone(), Module::Predict)
        .await
        .unwrap();
    dspex
        .create_program(
            "chain_of_thought",
            signature.clone(),
            Module::ChainOfThought,
        )
        .await
        .unwrap();
    for (program, alone) in ["predict", "chain_of_thought", "react"].iter().zip(&direct) {
        let through = dspex
            .execute(program, &inputs, ExecuteOptions::default())
            .await
            .unwrap()
            .outputs;
        for (field, value) in &through {
            let theirs = &alone[field];
            if field == "trajectory" {
                // DSPex sends ReAct's trajectory as JSON text.
                let ours: Value = serde_json::from_str(value.as_str().unwrap()).unwrap();
                assert_eq!(&ours, theirs, "{program}: trajectory");
            } else {
                assert_eq!(value, theirs, "{program}: {field}");
            }
        }
        assert_eq!(
            through.keys().collect::<Vec<_>>().len(),
            alone.len(),
            "{program}: {through:?} vs {alone:?}"
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    service.finish().await;
}
