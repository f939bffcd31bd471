//! Optimization and evaluation on real DSPy workers, through the public
//! API: the shipped dataset scored before and after `bootstrap_few_shot`
//! (and by a worker started after), DSPy alone agreeing with DSPex (the
//! same `dspy.Evaluate` score; files saved by one load in the other and
//! predict the same), a Rust metric called back in batches, and scenario 46
//! (an optimization job cancelled, or its worker killed, while the pool
//! serves other programs).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dspex::{
    Dataset, Error, EvaluateOptions, ExecuteOptions, LmConfig, Metric, ModeSetting, Module,
    OptimizeOptions, Optimizer, Signature,
};
use dspex_protocol::{Command, Map, Value};
use dspex_testkit::poll_until;
use dspex_tests::service::{Service, config};
use serde_json::json;

fn capitals(split: &str) -> Dataset {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../data/capitals")
        .join(format!("{split}.jsonl"));
    Dataset::from_jsonl(path, &signature()).unwrap()
}

fn signature() -> Signature {
    Signature::parse("question: str -> answer: str")
        .unwrap()
        .with_instructions("Answer the question with the name of a city.")
}

/// The offline LM that answers a demo's labels when the inputs match one.
fn following() -> LmConfig {
    let mut lm = LmConfig::dummy();
    lm.extra.insert("follow_examples".into(), json!(true));
    lm
}

async fn service(size: usize) -> Service {
    let mut config = config(ModeSetting::Pool);
    config.pool_size = size;
    let service = Service::start(config).await.unwrap();
    service.dspex.configure_lm(following()).await.unwrap();
    service
}

#[tokio::test(flavor = "multi_thread")]
async fn optimizing_raises_the_score_and_a_fresh_worker_keeps_it() {
    let service = service(1).await;
    let dspex = &service.dspex;
    let pool = service.pool().clone();
    dspex
        .create_program("capitals", signature(), Module::Predict)
        .await
        .unwrap();
    let (train, dev) = (capitals("train"), capitals("dev"));
    let metric = Metric::exact_match("answer");
    let before = dspex
        .evaluate("capitals", &dev, &metric, EvaluateOptions::default())
        .unwrap()
        .await
        .unwrap();
    let optimized = dspex
        .optimize(
            "capitals",
            Optimizer::bootstrap_few_shot().option("max_labeled_demos", 20),
            &train,
            None,
            &metric,
            OptimizeOptions::default(),
        )
        .unwrap()
        .await
        .unwrap();
    assert!(optimized.program.compiled);
    let after = dspex
        .evaluate("capitals", &dev, &metric, EvaluateOptions::default())
        .unwrap()
        .await
        .unwrap();
    eprintln!(
        "capitals: {} before, {} after bootstrap_few_shot",
        before.score, after.score
    );
    assert_eq!((before.score, after.score), (0.0, 100.0));
    // A worker started after the optimization runs the compiled program.
    let first = pool.status().pids()[0];
    dspex::bridge::process::kill_process(first).unwrap();
    poll_until(Duration::from_secs(30), "a replacement worker", || {
        let status = pool.status();
        status.idle == 1 && !status.pids().contains(&first)
    })
    .await
    .unwrap();
    let fresh = dspex
        .evaluate("capitals", &dev, &metric, EvaluateOptions::default())
        .unwrap()
        .await
        .unwrap();
    assert_eq!(fresh.outcomes, after.outcomes);
    service.finish().await;
}

/// DSPy alone, on the same offline LM: loads DSPex's file and scores it
/// with `dspy.Evaluate`; saves a program of its own with `save`.
const DIRECT: &str = r#"
import json, sys
import dspy
from dspex_bridge.lm import build_lm, parse_lm_config
from dspex_bridge.signatures import build_dspy_signature, parse_signature

job = json.load(sys.stdin)
lm = build_lm(parse_lm_config({"model": "dummy", "follow_examples": True})).lm
signature = build_dspy_signature(parse_signature(job["signature"]))
devset = [dspy.Example(question=q, answer=a).with_inputs("question") for q, a in job["dev"]]
out = {}
with dspy.context(lm=lm):
    loaded = dspy.Predict(signature)
    loaded.load(job["dspex_file"])
    out["loaded"] = [loaded(question=q).answer for q, _ in job["dev"]]
    evaluate = dspy.Evaluate(devset=devset, metric=dspy.evaluate.answer_exact_match, num_threads=1)
    out["score"] = evaluate(loaded).score
    own = dspy.Predict(signature)
    own.demos = [dspy.Example(question=q, answer=a) for q, a in job["demos"]]
    own.save(job["dspy_file"])
    out["own"] = [own(question=q).answer for q, _ in job["dev"]]
print(json.dumps(out))
"#;

fn pairs(data: &Dataset) -> Vec<(Value, Value)> {
    data.examples()
        .iter()
        .map(|e| (e.inputs["question"].clone(), e.labels["answer"].clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn dspy_alone_scores_and_loads_what_dspex_does() {
    let service = service(1).await;
    let dspex = &service.dspex;
    dspex
        .create_program("capitals", signature(), Module::Predict)
        .await
        .unwrap();
    let (train, dev) = (capitals("train"), capitals("dev"));
    let (head, _) = train.split_at(12);
    dspex
        .optimize(
            "capitals",
            Optimizer::bootstrap_few_shot().option("max_labeled_demos", 12),
            &head,
            None,
            &Metric::answer_exact_match(),
            OptimizeOptions::default(),
        )
        .unwrap()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (ours, theirs) = (dir.path().join("dspex.json"), dir.path().join("dspy.json"));
    dspex.save_program("capitals", &ours).await.unwrap();
    let (demos, _) = capitals("train").split_at(5);
    let job = json!({
        "signature": signature().to_spec(),
        "dev": pairs(&dev),
        "demos": pairs(&demos),
        "dspex_file": ours,
        "dspy_file": theirs,
    });
    let alone: Value =
        serde_json::from_str(&dspex_tests::run_plain_python(DIRECT, &job.to_string())).unwrap();

    // The same score from dspy.Evaluate and Dspex::evaluate.
    let ours_score = dspex
        .evaluate(
            "capitals",
            &dev,
            &Metric::answer_exact_match(),
            EvaluateOptions::default(),
        )
        .unwrap()
        .await
        .unwrap()
        .score;
    assert_eq!(json!(ours_score), alone["score"]);
    // DSPex's file, loaded by DSPy, predicts what DSPex predicts.
    let mut predicted = Vec::new();
    for example in dev.examples() {
        let prediction = dspex
            .execute("capitals", &example.inputs, ExecuteOptions::default())
            .await
            .unwrap();
        predicted.push(prediction.outputs["answer"].clone());
    }
    assert_eq!(json!(predicted), alone["loaded"]);
    // DSPy's file, loaded by DSPex, predicts what DSPy predicts.
    let info = dspex
        .load_program("theirs", signature(), Module::Predict, &theirs)
        .await
        .unwrap();
    assert!(info.compiled);
    let mut loaded = Vec::new();
    for example in dev.examples() {
        let prediction = dspex
            .execute("theirs", &example.inputs, ExecuteOptions::default())
            .await
            .unwrap();
        loaded.push(prediction.outputs["answer"].clone());
    }
    assert_eq!(json!(loaded), alone["own"]);
    service.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rust_metric_is_called_back_in_batches() {
    let service = service(1).await;
    let dspex = &service.dspex;
    dspex
        .create_program("capitals", signature(), Module::Predict)
        .await
        .unwrap();
    let stats = || async {
        let stats = service
            .pool()
            .call(
                Command::GetStats,
                dspex::bridge::pool::RequestOptions::default(),
            )
            .await
            .unwrap();
        stats["callbacks"]["sent"].as_u64().unwrap()
    };
    let scored = Arc::new(AtomicUsize::new(0));
    let metric = {
        let scored = Arc::clone(&scored);
        Metric::new(move |example, prediction| {
            scored.fetch_add(1, Ordering::SeqCst);
            let question = example.inputs["question"].as_str().unwrap();
            if question.contains("Peru") {
                panic!("the metric cannot score Peru");
            }
            prediction.outputs["answer"] == example.labels["answer"]
        })
        .batch(4)
    };
    let dev = capitals("dev");
    let sent = stats().await;
    let evaluation = dspex
        .evaluate("capitals", &dev, &metric, EvaluateOptions::default())
        .unwrap()
        .await
        .unwrap();
    let callbacks = stats().await - sent;
    assert_eq!(scored.load(Ordering::SeqCst), dev.len());
    assert_eq!(
        callbacks,
        dev.len().div_ceil(4) as u64,
        "{callbacks} callbacks"
    );
    let peru = dev
        .examples()
        .iter()
        .filter(|e| e.inputs["question"].as_str().unwrap().contains("Peru"))
        .count();
    assert_eq!(evaluation.failed(), peru);
    if peru > 0 {
        let failed = evaluation.worst(1)[0];
        assert!(
            failed
                .error
                .as_deref()
                .unwrap()
                .contains("cannot score Peru"),
            "{failed:?}"
        );
    }
    service.finish().await;
}

/// A metric that blocks its first call until released: the job is then
/// surely running.
fn blocking_metric() -> (Metric, std::sync::mpsc::Receiver<()>, Arc<AtomicBool>) {
    let (entered_tx, entered) = std::sync::mpsc::channel();
    let release = Arc::new(AtomicBool::new(false));
    let first = Arc::new(AtomicBool::new(true));
    let metric = {
        let release = Arc::clone(&release);
        Metric::new(move |example, prediction| {
            if first.swap(false, Ordering::SeqCst) {
                let _ = entered_tx.send(());
                let deadline = Instant::now() + Duration::from_secs(60);
                while !release.load(Ordering::SeqCst) && Instant::now() < deadline {
                    std::thread::park_timeout(Duration::from_millis(5));
                }
            }
            prediction.outputs["answer"] == example.labels["answer"]
        })
    };
    (metric, entered, release)
}

async fn wait_entered(entered: std::sync::mpsc::Receiver<()>) {
    tokio::task::spawn_blocking(move || entered.recv_timeout(Duration::from_secs(60)))
        .await
        .unwrap()
        .expect("the job's first metric call");
}

/// `n` calls of `other`, and the slowest.
async fn serve_others(dspex: &dspex::Dspex, n: usize) -> Duration {
    let mut slowest = Duration::ZERO;
    for i in 0..n {
        let started = Instant::now();
        dspex
            .execute(
                "other",
                json!({"question": format!("other {i}")}),
                ExecuteOptions::default(),
            )
            .await
            .unwrap();
        slowest = slowest.max(started.elapsed());
    }
    slowest
}

#[tokio::test(flavor = "multi_thread")]
async fn scenario_46_an_optimization_cancelled_or_killed_stores_nothing() {
    let service = service(2).await;
    let dspex = service.dspex.clone();
    let pool = service.pool().clone();
    for id in ["capitals", "other"] {
        dspex
            .create_program(id, signature(), Module::Predict)
            .await
            .unwrap();
    }
    let hash = dspex.program_info("capitals").unwrap().hash;
    let baseline = serve_others(&dspex, 20).await;
    let train = capitals("train");

    // Cancelled by its caller mid-run.
    let (metric, entered, release) = blocking_metric();
    let job = dspex
        .optimize(
            "capitals",
            Optimizer::bootstrap_few_shot(),
            &train,
            None,
            &metric,
            OptimizeOptions::default(),
        )
        .unwrap();
    let canceller = job.canceller();
    let running = tokio::spawn(async move { job.await });
    wait_entered(entered).await;
    let during = serve_others(&dspex, 20).await;
    eprintln!("scenario 46: slowest other call {baseline:?} before the job, {during:?} during it");
    canceller.cancel();
    let error = running.await.unwrap().unwrap_err();
    release.store(true, Ordering::SeqCst);
    assert!(matches!(error, Error::Cancelled), "{error:?}");
    assert_eq!(dspex.program_info("capitals").unwrap().hash, hash);
    poll_until(Duration::from_secs(10), "both workers free", || {
        pool.status().idle == 2
    })
    .await
    .unwrap();
    assert_eq!(pool.status().restarts, 0);

    // Its worker killed mid-run.
    let (metric, entered, release) = blocking_metric();
    let job = dspex
        .optimize(
            "capitals",
            Optimizer::bootstrap_few_shot(),
            &train,
            None,
            &metric,
            OptimizeOptions::default(),
        )
        .unwrap();
    let running = tokio::spawn(async move { job.await });
    wait_entered(entered).await;
    let busy: Vec<u32> = pool
        .status()
        .workers
        .iter()
        .filter(|w| w.leases > 0)
        .map(|w| w.pid)
        .collect();
    assert_eq!(busy.len(), 1, "{:?}", pool.status());
    dspex::bridge::process::kill_process(busy[0]).unwrap();
    let error = running.await.unwrap().unwrap_err();
    release.store(true, Ordering::SeqCst);
    assert!(matches!(error, Error::WorkerCrashed { .. }), "{error:?}");
    assert_eq!(dspex.program_info("capitals").unwrap().hash, hash);
    assert!(!dspex.program_info("capitals").unwrap().compiled);
    serve_others(&dspex, 5).await;
    service.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_optimizer_compiles_through_the_api() {
    let service = service(1).await;
    let dspex = &service.dspex;
    dspex
        .create_program("capitals", signature(), Module::Predict)
        .await
        .unwrap();
    let (train, dev) = (capitals("train"), capitals("dev"));
    let (small, _) = train.split_at(6);
    let (val, _) = dev.split_at(3);
    let metric = Metric::answer_exact_match();
    let optimizers = [
        Optimizer::bootstrap_few_shot().option("max_labeled_demos", 2),
        Optimizer::bootstrap_few_shot_with_random_search(1).option("max_labeled_demos", 2),
        // `auto: null`: the searches sized by hand, as small as they go.
        Optimizer::mipro_v2(dspex::Auto::Light)
            .option("auto", Value::Null)
            .option("num_candidates", 2)
            .option("num_trials", 2)
            .option("minibatch", false),
        Optimizer::gepa(dspex::Auto::Light, following())
            .option("auto", Value::Null)
            .option("max_metric_calls", 16)
            .option("reflection_minibatch_size", 2),
        Optimizer::copro().option("breadth", 2).option("depth", 1),
        Optimizer::simba()
            .option("max_steps", 1)
            .option("num_candidates", 2)
            .option("bsize", 4),
    ];
    for optimizer in optimizers {
        let name = optimizer.name();
        let uses_valset = !matches!(name, "bootstrap_few_shot" | "copro" | "simba");
        let started = Instant::now();
        let optimized = dspex
            .optimize(
                "capitals",
                optimizer,
                &small,
                uses_valset.then_some(&val),
                &metric,
                OptimizeOptions {
                    seed: Some(7),
                    ..OptimizeOptions::default()
                },
            )
            .unwrap()
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        eprintln!(
            "{name}: {} metric calls, {} LM calls, {:?}",
            optimized.metric_calls,
            optimized.lm_calls,
            started.elapsed()
        );
        assert!(optimized.program.compiled, "{name}");
        assert_eq!(optimized.optimizer, name);
        // Back to the plain program for the next optimizer.
        dspex
            .set_demos("capitals", Vec::<Map<String, Value>>::new())
            .await
            .unwrap();
    }
    service.finish().await;
}
