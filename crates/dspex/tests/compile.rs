//! Datasets, metrics, evaluation, optimization and saved programs on the
//! mock layers (the pure mock and the bridge mock's fake workers): what the
//! API checks before anything is sent, and the shape of what comes back.
//! The real DSPy side is tested in `tests/compile.rs` at the workspace root.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dspex::{
    AdapterKind, Budget, Category, Dataset, Dspex, Error, EvaluateOptions, Example, JobEvent,
    LmConfig, Metric, Module, OptimizeOptions, Optimizer, SavedProgram, Score, Signature,
};
use futures::StreamExt;
use serde_json::{Value, json};

fn following() -> LmConfig {
    let mut lm = LmConfig::dummy();
    lm.extra.insert("follow_examples".into(), json!(true));
    lm
}

async fn layers() -> Vec<Dspex> {
    let mut all = Vec::new();
    for kind in [AdapterKind::Mock, AdapterKind::BridgeMock] {
        let dspex = Dspex::builder()
            .adapter(kind)
            .pool_size(2)
            .lm(following())
            .start()
            .await
            .unwrap();
        all.push(dspex);
    }
    all
}

fn qa() -> Signature {
    Signature::parse("question: str -> answer: str").unwrap()
}

fn data(n: usize) -> Dataset {
    let records = (0..n).map(|i| {
        json!({"question": format!("capital of country {i}?"), "answer": format!("City {i}")})
            .as_object()
            .unwrap()
            .clone()
    });
    Dataset::from_records(&qa(), records).unwrap()
}

#[test]
fn datasets_come_from_files_and_are_checked() {
    let signature =
        Signature::parse("question: str, hops: int -> answer: str, score: float").unwrap();
    let mut jsonl = tempfile::Builder::new()
        .suffix(".jsonl")
        .tempfile()
        .unwrap();
    writeln!(
        jsonl,
        r#"{{"question": "a?", "hops": 2, "answer": "x", "score": 0.5}}"#
    )
    .unwrap();
    writeln!(jsonl).unwrap();
    writeln!(jsonl, r#"{{"question": "b?", "hops": 1, "answer": "y"}}"#).unwrap();
    let from_jsonl = Dataset::from_jsonl(jsonl.path(), &signature).unwrap();
    assert_eq!(from_jsonl.len(), 2);
    assert_eq!(from_jsonl.examples()[0].inputs["hops"], 2);
    assert_eq!(
        from_jsonl.examples()[1].labels,
        *json!({"answer": "y"}).as_object().unwrap()
    );

    // In CSV a text cell is text (even "42"); others are JSON.
    let mut csv = tempfile::Builder::new().suffix(".csv").tempfile().unwrap();
    writeln!(csv, "question,hops,answer,score").unwrap();
    writeln!(csv, "42,3,\"Paris, France\",1.0").unwrap();
    let from_csv = Dataset::from_csv(csv.path(), &signature).unwrap();
    let example = &from_csv.examples()[0];
    assert_eq!(example.inputs["question"], "42");
    assert_eq!(example.inputs["hops"], 3);
    assert_eq!(example.labels["answer"], "Paris, France");

    for (record, words) in [
        (
            json!({"question": "q", "hops": 1, "colour": "red"}),
            "unknown field `colour`",
        ),
        (json!({"question": "q", "hops": "two"}), "hops"),
        (json!({"hops": 1}), "question"),
        (
            json!({"question": "q", "hops": 1, "score": "high"}),
            "score",
        ),
    ] {
        let error =
            Dataset::from_records(&signature, [record.as_object().unwrap().clone()]).unwrap_err();
        assert_eq!(error.category(), Category::Validation, "{record}");
        assert!(error.to_string().contains("example 0"), "{error}");
        assert!(error.to_string().contains(words), "{record}: {error}");
    }
    let mut bad = tempfile::Builder::new()
        .suffix(".jsonl")
        .tempfile()
        .unwrap();
    writeln!(bad, "[1, 2]").unwrap();
    let error = Dataset::from_jsonl(bad.path(), &signature).unwrap_err();
    assert!(error.to_string().contains("line 1"), "{error}");
}

/// Answer a question.
#[derive(dspex::Signature)]
struct Answer {
    #[input]
    question: String,
    #[output]
    answer: String,
}

#[test]
fn typed_datasets_use_the_derived_types() {
    let data = Dataset::typed::<Answer>([(
        AnswerInputs {
            question: "q".into(),
        },
        AnswerOutputs { answer: "a".into() },
    )])
    .unwrap();
    assert_eq!(
        data.examples()[0],
        Example {
            inputs: json!({"question": "q"}).as_object().unwrap().clone(),
            labels: json!({"answer": "a"}).as_object().unwrap().clone(),
        }
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn optimizing_raises_the_score_and_the_state_is_kept() {
    for dspex in layers().await {
        let layer = dspex.status().adapter.kind;
        dspex
            .create_program("qa", qa(), Module::Predict)
            .await
            .unwrap();
        let (train, dev) = (data(8), data(4));
        let metric = Metric::exact_match("answer");
        let before = dspex
            .evaluate("qa", &dev, &metric, EvaluateOptions::default())
            .unwrap()
            .await
            .unwrap();
        assert_eq!(before.score, 0.0, "{layer:?}");
        assert_eq!(before.outcomes.len(), 4);
        let mut job = dspex
            .optimize(
                "qa",
                Optimizer::bootstrap_few_shot().option("max_labeled_demos", 8),
                &train,
                Some(&dev),
                &metric,
                OptimizeOptions::default(),
            )
            .unwrap();
        let mut progress = 0;
        let optimized = loop {
            match job.next().await.expect("an event").unwrap() {
                JobEvent::Progress(_) => progress += 1,
                JobEvent::Done(optimized) => break optimized,
            }
        };
        assert!(progress > 0, "{layer:?}: no progress");
        assert!(optimized.program.compiled, "{layer:?}");
        assert_eq!(optimized.metric_calls, 8, "{layer:?}");
        let after = dspex
            .evaluate("qa", &dev, &metric, EvaluateOptions::default())
            .unwrap()
            .await
            .unwrap();
        assert_eq!(after.score, 100.0, "{layer:?}");
        // Saved, then loaded into another program: the same predictions.
        let file = tempfile::Builder::new().suffix(".json").tempfile().unwrap();
        dspex.save_program("qa", file.path()).await.unwrap();
        let saved = SavedProgram::read(file.path()).unwrap();
        assert!(saved.dependency_versions.contains_key("dspy"));
        assert_eq!(saved.signature().unwrap().unwrap().inputs().len(), 1);
        let info = dspex
            .load_program("copy", qa(), Module::Predict, file.path())
            .await
            .unwrap();
        assert!(info.compiled);
        let copied = dspex
            .evaluate("copy", &dev, &metric, EvaluateOptions::default())
            .unwrap()
            .await
            .unwrap();
        assert_eq!(copied.outcomes, after.outcomes, "{layer:?}");
        // Demos set by hand replace the compiled state.
        let info = dspex.set_demos("qa", Vec::new()).await.unwrap();
        assert!(!info.compiled);
        dspex.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rust_metric_is_called_in_batches_and_its_panics_fail_one_example() {
    for dspex in layers().await {
        let layer = dspex.status().adapter.kind;
        dspex
            .create_program("qa", qa(), Module::Predict)
            .await
            .unwrap();
        let scored = Arc::new(AtomicUsize::new(0));
        let metric = {
            let scored = Arc::clone(&scored);
            Metric::with_feedback(move |example, prediction| {
                scored.fetch_add(1, Ordering::SeqCst);
                let question = example.inputs["question"].as_str().unwrap();
                if question.contains('3') {
                    panic!("metric broke on {question}");
                }
                let same = prediction.outputs["answer"] == example.labels["answer"];
                Score::with_feedback(f64::from(u8::from(same)) + 0.5, "half a point for trying")
            })
            .batch(4)
        };
        let evaluation = dspex
            .evaluate("qa", &data(10), &metric, EvaluateOptions::default())
            .unwrap()
            .await
            .unwrap();
        assert_eq!(scored.load(Ordering::SeqCst), 10, "{layer:?}");
        assert_eq!(evaluation.failed(), 1, "{layer:?}");
        let broken = evaluation.worst(1)[0];
        assert_eq!(broken.index, 3);
        assert!(
            broken.error.as_deref().unwrap().contains("metric broke"),
            "{broken:?}"
        );
        assert_eq!(broken.score, 0.0);
        assert_eq!(evaluation.outcomes[0].score, 0.5);
        assert_eq!(
            evaluation.outcomes[0].feedback.as_deref(),
            Some("half a point for trying")
        );
        assert_eq!(evaluation.score, 45.0, "{layer:?}");
        dspex.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_jobs_are_refused_before_anything_runs() {
    let dspex = Dspex::builder()
        .adapter(AdapterKind::Mock)
        .lm(following())
        .start()
        .await
        .unwrap();
    dspex
        .create_program("qa", qa(), Module::Predict)
        .await
        .unwrap();
    let metric = Metric::exact_match("answer");
    let wrong = Metric::exact_match("colour");
    let other = Dataset::from_records(
        &Signature::parse("text -> label").unwrap(),
        [json!({"text": "t", "label": "l"})
            .as_object()
            .unwrap()
            .clone()],
    )
    .unwrap();
    let options = EvaluateOptions::default;
    for error in [
        dspex
            .evaluate("nope", &data(1), &metric, options())
            .unwrap_err(),
        dspex
            .evaluate("qa", &data(1), &wrong, options())
            .unwrap_err(),
        dspex
            .evaluate("qa", &other, &metric, options())
            .unwrap_err(),
        dspex
            .optimize(
                "qa",
                Optimizer::copro(),
                &Dataset::default(),
                None,
                &metric,
                OptimizeOptions::default(),
            )
            .unwrap_err(),
        dspex
            .optimize(
                "qa",
                "gepa".parse().unwrap(),
                &data(2),
                None,
                &metric,
                OptimizeOptions::default(),
            )
            .unwrap_err(),
    ] {
        assert_eq!(error.category(), Category::Validation, "{error}");
    }
    assert!("nope".parse::<Optimizer>().is_err());
    assert!("exact_match:".parse::<Metric>().is_err());
    // Over budget: a typed error, nothing stored.
    let error = dspex
        .optimize(
            "qa",
            Optimizer::bootstrap_few_shot(),
            &data(5),
            None,
            &metric,
            OptimizeOptions {
                budget: Budget {
                    max_metric_calls: Some(2),
                    max_lm_calls: None,
                },
                ..OptimizeOptions::default()
            },
        )
        .unwrap()
        .await
        .unwrap_err();
    assert!(matches!(error, Error::BudgetExceeded { .. }), "{error:?}");
    assert!(!dspex.program_info("qa").unwrap().compiled);
    // A file that is not DSPy's JSON, and a pickle, are refused.
    let mut text = tempfile::Builder::new().suffix(".json").tempfile().unwrap();
    writeln!(text, "[1]").unwrap();
    assert!(SavedProgram::read(text.path()).is_err());
    let pickle = tempfile::Builder::new().suffix(".pkl").tempfile().unwrap();
    let error = SavedProgram::read(pickle.path()).unwrap_err();
    assert!(error.to_string().contains("pickle"), "{error}");
    let value: Value = SavedProgram {
        state: Default::default(),
        dependency_versions: Default::default(),
        definition: None,
    }
    .to_json();
    assert_eq!(value["metadata"]["dependency_versions"], json!({}));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_job_stores_nothing() {
    let dspex = Dspex::builder()
        .adapter(AdapterKind::BridgeMock)
        .pool_size(1)
        .lm(following())
        .start()
        .await
        .unwrap();
    dspex
        .create_program("qa", qa(), Module::Predict)
        .await
        .unwrap();
    // A metric that waits: the job is still running when it is cancelled.
    let (entered_tx, entered) = std::sync::mpsc::channel::<()>();
    let gate = Arc::new(std::sync::Barrier::new(2));
    let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let metric = {
        let gate = Arc::clone(&gate);
        Metric::new(move |_, _| {
            if first.swap(false, Ordering::SeqCst) {
                let _ = entered_tx.send(());
                gate.wait();
            }
            1.0
        })
    };
    let job = dspex
        .optimize(
            "qa",
            Optimizer::bootstrap_few_shot(),
            &data(3),
            None,
            &metric,
            OptimizeOptions::default(),
        )
        .unwrap();
    let canceller = job.canceller();
    let running = tokio::spawn(async move { job.await });
    tokio::task::spawn_blocking(move || entered.recv().unwrap())
        .await
        .unwrap();
    canceller.cancel();
    let error = running.await.unwrap().unwrap_err();
    assert!(matches!(error, Error::Cancelled), "{error:?}");
    gate.wait();
    assert!(!dspex.program_info("qa").unwrap().compiled);
    dspex.shutdown().await;
}
