//! `dspex optimize` and `dspex eval` on real Python workers and the shipped
//! dataset: optimizing raises the score, the file it writes is what raises
//! it, and `dspex run --program` runs the compiled program.

use std::path::PathBuf;
use std::process::Command;

fn dspex() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dspex"));
    command.env_remove("DSPEX_PYTHON").env_remove("DSPEX_LM");
    command
}

fn data(split: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../data/capitals")
        .join(format!("{split}.jsonl"))
        .to_string_lossy()
        .into_owned()
}

fn eval_score(args: &[&str]) -> f64 {
    let output = dspex()
        .args([
            "eval",
            "--devset",
            &data("dev"),
            "--metric",
            "exact_match:answer",
            "--json",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["examples"], 10);
    report["score"].as_f64().unwrap()
}

#[test]
fn optimize_then_eval_shows_the_compiled_program_scoring_higher() {
    let dir = tempfile::tempdir().unwrap();
    let compiled = dir.path().join("compiled.json");
    let compiled = compiled.to_str().unwrap();
    let signature = "question: str -> answer: str";
    let before = eval_score(&["-s", signature]);
    let output = dspex()
        .args(["optimize", "-s", signature, "--trainset", &data("train")])
        .args([
            "--metric",
            "exact_match:answer",
            "--optimizer",
            "bootstrap_few_shot",
        ])
        .args(["--option", "max_labeled_demos=20", "--out", compiled])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("compiled with bootstrap_few_shot"),
        "{stdout}"
    );
    let after = eval_score(&["--program", compiled]);
    eprintln!("dspex eval on data/capitals/dev.jsonl: {before} before, {after} after");
    assert!(after > before, "{before} -> {after}");
    // DSPy's own format, with the DSPex definition beside it.
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(compiled).unwrap()).unwrap();
    assert_eq!(file["demos"].as_array().unwrap().len(), 20);
    assert!(file["metadata"]["dependency_versions"]["dspy"].is_string());
    assert_eq!(file["metadata"]["dspex"]["definition"]["module"], "predict");
    // The compiled program answers a training question right.
    let output = dspex()
        .args([
            "run",
            "--program",
            compiled,
            "-i",
            "question=What is the capital of France?",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "answer: Paris"
    );
}
