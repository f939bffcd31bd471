//! DSPy modules through the public API on real Python workers: ReAct over
//! Rust tools (offline and over HTTP), `best_of_n` / `refine` with a Rust
//! reward, `multi_chain_comparison`, the modules that need Deno, and
//! scenarios 42 (a tool that panics, fails or stalls) and 43 (a caller that
//! goes while Python waits on a Rust callback).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dspex::schemars::JsonSchema;
use dspex::{Base, Category, Error, ExecuteOptions, ModeSetting, Module, Reward, Signature, Tool};
use dspex_protocol::Value;
use dspex_testkit::{LmServer, poll_until};
use dspex_tests::service::{Service, config};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;

/// What the test tools take.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "dspex::schemars")]
struct Query {
    /// What to look up.
    query: String,
}

/// A tool that counts its calls and answers `"<name> saw <query>"`.
fn counting(name: &str, calls: &Arc<AtomicUsize>) -> Tool {
    let calls = Arc::clone(calls);
    let label = name.to_owned();
    Tool::new(
        name,
        format!("Looks a query up ({name})."),
        move |q: Query| {
            calls.fetch_add(1, Ordering::SeqCst);
            let answer = format!("{label} saw {}", q.query);
            async move { Ok::<_, String>(answer) }
        },
    )
}

fn qa() -> Signature {
    Signature::parse("question: str -> answer: str").unwrap()
}

fn trajectory(prediction: &dspex::Prediction) -> Value {
    let text: String = prediction.get("trajectory").unwrap();
    serde_json::from_str(&text).unwrap()
}

/// One worker, the offline LM.
async fn service() -> Service {
    let service = Service::start(config(ModeSetting::Pool).with_pool_size(1))
        .await
        .unwrap();
    service
        .dspex
        .configure_lm(dspex::LmConfig::dummy())
        .await
        .unwrap();
    service
}

/// The next message, or a panic naming `what` after 30 s.
async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>, what: &str) -> T {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no {what} within 30 s"))
        .unwrap_or_else(|| panic!("{what}: the sender is gone"))
}

trait PoolSize {
    fn with_pool_size(self, size: usize) -> Self;
}

impl PoolSize for dspex::Config {
    fn with_pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn react_runs_rust_tools_on_the_offline_lm() {
    let service = service().await;
    let dspex = &service.dspex;
    let (first, second) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let module = Module::react([counting("search", &first), counting("lookup", &second)]);
    let info = dspex.create_program("agent", qa(), module).await.unwrap();
    assert_eq!(info.tools, ["lookup", "search"]);
    let prediction = dspex
        .execute(
            "agent",
            json!({"question": "Where is Paris?"}),
            ExecuteOptions::default(),
        )
        .await
        .unwrap();
    // The offline LM picks the first tool, then finishes.
    assert_eq!(first.load(Ordering::SeqCst), 1);
    assert_eq!(second.load(Ordering::SeqCst), 0);
    let steps = trajectory(&prediction);
    assert_eq!(steps["tool_name_0"], "search");
    let observation = steps["observation_0"].as_str().unwrap();
    assert!(observation.starts_with("search saw "), "{observation}");
    assert_eq!(steps["tool_name_1"], "finish");
    assert!(
        prediction
            .get::<String>("answer")
            .unwrap()
            .starts_with("answer: ")
    );
    // Usage is DSPy's: every LM call of the loop counted.
    let tokens = prediction.usage.total();
    assert!(
        tokens.prompt_tokens > 0 && tokens.completion_tokens > 0,
        "{tokens:?}"
    );
    let status = dspex.status();
    assert_eq!(status.usage["agent"].calls, 1);
    assert_eq!(status.usage["agent"].tokens, prediction.usage);
    service.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn react_reaches_an_openai_compatible_lm_over_http() {
    let server = LmServer::start(0).unwrap();
    let service = service().await;
    let dspex = &service.dspex;
    let mut lm = server.lm("stub-model");
    lm.extra.insert("cache".into(), json!(false));
    dspex.configure_lm(lm).await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    dspex
        .create_program("agent", qa(), Module::react([counting("search", &calls)]))
        .await
        .unwrap();
    let prediction = dspex
        .execute(
            "agent",
            json!({"question": "Who wrote Dune?"}),
            ExecuteOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(trajectory(&prediction)["tool_name_0"], "search");
    assert_eq!(prediction.model.as_deref(), Some("openai/stub-model"));
    let usage = &prediction.usage.by_model["openai/stub-model"];
    assert!(
        usage.prompt_tokens > 0 && usage.completion_tokens > 0,
        "{usage:?}"
    );
    // Every other module over the same HTTP path.
    let reward = Reward::new(|_, _| 1.0);
    let modules: Vec<(&str, Module, &str)> = vec![
        ("predict", Module::Predict, "answer"),
        ("cot", Module::ChainOfThought, "reasoning"),
        (
            "best",
            Module::best_of_n(2, reward.clone()).into(),
            "answer",
        ),
        ("refine", Module::refine(2, reward).into(), "answer"),
        ("mcc", Module::multi_chain_comparison(2).into(), "rationale"),
    ];
    for (id, module, field) in modules {
        dspex.create_program(id, qa(), module).await.unwrap();
        let prediction = dspex
            .execute(id, json!({"question": "Why?"}), ExecuteOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        assert!(
            prediction.outputs[field].is_string(),
            "{id}: {prediction:?}"
        );
        assert!(!prediction.usage.is_empty(), "{id}: no usage");
    }
    service.finish().await;
    drop(server);
}

fn boom() -> Result<i32, String> {
    panic!("boom-42 in the tool")
}

/// Sends the instant when dropped: how a test sees a handler stop.
struct Dropped(Option<mpsc::UnboundedSender<Instant>>);

impl Drop for Dropped {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(Instant::now());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn scenario_42_a_tool_that_panics_fails_or_stalls_is_a_tool_error() {
    let service = service().await;
    let dspex = &service.dspex;
    let pid = service.pool().status().pids()[0];
    let panics = Tool::new(
        "explode",
        "Always panics.",
        |_: Query| async move { boom() },
    );
    let fails = Tool::new("fail", "Always fails.", |_: Query| async move {
        Err::<i32, _>("the disk is on fire")
    });
    let (stopped_tx, mut stopped) = mpsc::unbounded_channel();
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let budget = Duration::from_millis(200);
    let stalls = Tool::new("stall", "Never answers.", move |_: Query| {
        let guard = Dropped(Some(stopped_tx.clone()));
        let _ = started_tx.send(Instant::now());
        async move {
            let _guard = guard;
            std::future::pending::<Result<i32, String>>().await
        }
    })
    .timeout(budget);
    for (id, tool, expected) in [
        ("explode", panics, "boom-42 in the tool"),
        ("fail", fails, "the disk is on fire"),
        ("stall", stalls, "timed out after 200 ms"),
    ] {
        dspex
            .create_program(id, qa(), Module::react([tool]))
            .await
            .unwrap();
        let prediction = dspex
            .execute(id, json!({"question": "go"}), ExecuteOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        let observation = trajectory(&prediction)["observation_0"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            observation.contains("Execution error in") && observation.contains(expected),
            "{id}: {observation}"
        );
    }
    let (began, ended) = (
        next(&mut started, "stall started").await,
        next(&mut stopped, "stall stopped").await,
    );
    let ran = ended - began;
    eprintln!("scenario 42: the stalled tool was stopped after {ran:?} (budget {budget:?})");
    assert!(
        ran >= budget && ran < budget + Duration::from_millis(150),
        "{ran:?}"
    );
    // The host survived the panic, and the worker never left.
    let status = service.pool().status();
    assert_eq!((status.restarts, status.pids()), (0, vec![pid]));
    dspex
        .execute(
            "fail",
            json!({"question": "again"}),
            ExecuteOptions::default(),
        )
        .await
        .unwrap();
    service.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn scenario_43_a_caller_that_goes_while_python_waits_on_a_callback() {
    let service = service().await;
    let dspex = service.dspex.clone();
    let pool = service.pool().clone();
    let pid = pool.status().pids()[0];
    let (entered_tx, mut entered) = mpsc::unbounded_channel();
    let (dropped_tx, mut dropped) = mpsc::unbounded_channel();
    let waits = Tool::new("wait", "Waits for ever.", move |_: Query| {
        let guard = Dropped(Some(dropped_tx.clone()));
        let _ = entered_tx.send(Instant::now());
        async move {
            let _guard = guard;
            std::future::pending::<Result<i32, String>>().await
        }
    })
    .timeout(Duration::from_secs(120));
    dspex
        .create_program("agent", qa(), Module::react([waits]))
        .await
        .unwrap();
    let call = {
        let dspex = dspex.clone();
        tokio::spawn(async move {
            dspex
                .execute(
                    "agent",
                    json!({"question": "wait"}),
                    ExecuteOptions::default().timeout(Duration::from_secs(60)),
                )
                .await
        })
    };
    next(&mut entered, "the tool entered").await;
    assert_eq!(pool.status().busy, 1);
    call.abort();
    let gone = Instant::now();
    let free = poll_until(Duration::from_secs(10), "the worker free again", || {
        let status = pool.status();
        status.idle == 1 && status.busy == 0
    })
    .await
    .unwrap();
    eprintln!("scenario 43: the worker was free {free:?} after the caller went");
    assert!(free < Duration::from_secs(2), "{free:?}");
    // The Rust handler was stopped at once, and nothing waits on either side.
    let stopped = next(&mut dropped, "the handler dropped").await;
    assert!(stopped.duration_since(gone) < Duration::from_secs(2));
    let stats = pool
        .call(
            dspex_protocol::Command::GetStats,
            dspex::bridge::pool::RequestOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(stats["callbacks"]["pending"], 0, "{stats}");
    let worker = pool.ready_worker(Duration::from_secs(5)).await.unwrap();
    assert_eq!(worker.info().await.unwrap().callbacks, 0);
    // The next caller is served by the same worker.
    dspex
        .create_program("qa", qa(), Module::Predict)
        .await
        .unwrap();
    dspex
        .execute("qa", json!({"question": "next"}), ExecuteOptions::default())
        .await
        .unwrap();
    let status = pool.status();
    assert_eq!((status.restarts, status.pids()), (0, vec![pid]));
    service.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn best_of_n_and_refine_call_their_rust_reward() {
    let service = service().await;
    let dspex = &service.dspex;
    let scored = Arc::new(AtomicUsize::new(0));
    let counting = {
        let scored = Arc::clone(&scored);
        Reward::new(move |inputs, outputs| {
            scored.fetch_add(1, Ordering::SeqCst);
            assert_eq!(inputs["question"], "Why?");
            assert!(outputs.contains_key("answer"));
            0.5
        })
    };
    // An unreachable threshold: every attempt is scored, the best is kept.
    let best = Module::best_of_n(3, counting.clone()).threshold(2.0);
    dspex.create_program("best", qa(), best).await.unwrap();
    let prediction = dspex
        .execute(
            "best",
            json!({"question": "Why?"}),
            ExecuteOptions::default(),
        )
        .await
        .unwrap();
    assert!(prediction.outputs.contains_key("answer"));
    assert_eq!(scored.swap(0, Ordering::SeqCst), 3);
    // A reachable one stops at the first attempt.
    let refine = Module::refine(3, counting)
        .threshold(0.5)
        .base(Base::ChainOfThought);
    dspex.create_program("refine", qa(), refine).await.unwrap();
    let prediction = dspex
        .execute(
            "refine",
            json!({"question": "Why?"}),
            ExecuteOptions::default(),
        )
        .await
        .unwrap();
    assert!(prediction.outputs.contains_key("reasoning"));
    assert_eq!(scored.load(Ordering::SeqCst), 1);
    // A reward that panics: the program cannot go on, and says why.
    let broken = Reward::new(|_, _| panic!("the reward broke"));
    dspex
        .create_program("broken", qa(), Module::best_of_n(2, broken))
        .await
        .unwrap();
    let error = dspex
        .execute(
            "broken",
            json!({"question": "Why?"}),
            ExecuteOptions::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(error.category(), Category::Tool, "{error}");
    assert!(error.to_string().contains("the reward broke"), "{error}");
    assert_eq!(service.pool().status().restarts, 0);
    service.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn multi_chain_comparison_and_the_modules_that_need_deno() {
    let service = service().await;
    let dspex = &service.dspex;
    dspex
        .create_program("mcc", qa(), Module::multi_chain_comparison(3))
        .await
        .unwrap();
    let prediction = dspex
        .execute(
            "mcc",
            json!({"question": "Why?"}),
            ExecuteOptions::default(),
        )
        .await
        .unwrap();
    assert!(prediction.outputs.contains_key("rationale"));
    assert!(prediction.outputs.contains_key("answer"));
    for module in [Module::ProgramOfThought, Module::CodeAct] {
        let name = module.name();
        let error = dspex
            .create_program("deno", qa(), module)
            .await
            .unwrap_err();
        match &error {
            Error::Validation { what, message, .. } => {
                assert_eq!(*what, "module", "{error}");
                assert!(message.contains("Deno"), "{name}: {message}");
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    assert!(dspex.program_info("deno").is_err());
    service.finish().await;
}
