//! `dspex run` on real Python workers, as a user runs it: every module,
//! Rust tools in a ReAct loop, demos from a file, streaming, usage in the
//! JSON, and text inputs that stay text.

use std::process::Command;

fn dspex() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dspex"));
    command.env_remove("DSPEX_PYTHON").env_remove("DSPEX_LM");
    command
}

fn run(args: &[&str]) -> (bool, String, String) {
    let output = dspex().arg("run").args(args).output().expect("dspex runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn react_calls_the_rust_tools_and_reports_usage() {
    let facts = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(facts.path(), r#"{"Paris": "capital of France"}"#).unwrap();
    let path = facts.path().to_str().unwrap();
    let (ok, stdout, stderr) = run(&[
        "-s",
        "question: str -> answer: str",
        "-i",
        "question=42",
        "-m",
        "react",
        "--facts",
        path,
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let steps: serde_json::Value =
        serde_json::from_str(report["outputs"]["trajectory"].as_str().unwrap()).unwrap();
    // The offline LM picks the first tool: the Rust calculator ran.
    assert_eq!(steps["tool_name_0"], "calculator");
    assert!(
        steps["observation_0"]
            .as_str()
            .unwrap()
            .contains("calculator")
    );
    assert!(report["usage"]["dummy"]["total_tokens"].as_u64().unwrap() > 0);
}

#[test]
fn every_module_runs_and_the_deno_ones_are_refused() {
    for module in ["predict", "cot", "best_of_n", "refine", "mcc"] {
        let (ok, stdout, stderr) = run(&[
            "-s",
            "question -> answer",
            "-i",
            "question=hi",
            "-m",
            module,
        ]);
        assert!(ok, "{module}: {stderr}");
        assert!(stdout.contains("answer: "), "{module}: {stdout}");
    }
    let (ok, _, stderr) = run(&["-s", "question -> answer", "-i", "question=hi", "-m", "pot"]);
    assert!(!ok);
    assert!(stderr.contains("Deno"), "{stderr}");
}

#[test]
fn demos_come_from_a_file_and_bad_ones_are_refused() {
    let demos = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        demos.path(),
        "{\"question\": \"2+2?\", \"answer\": \"4\"}\n\n{\"question\": \"3+3?\", \"answer\": \"6\"}\n",
    )
    .unwrap();
    let path = demos.path().to_str().unwrap();
    let (ok, stdout, stderr) = run(&[
        "-s",
        "question -> answer",
        "-i",
        "question=1+1?",
        "--demos",
        path,
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("answer: "), "{stdout}");
    std::fs::write(
        demos.path(),
        "{\"question\": \"2+2?\", \"colour\": \"red\"}\n",
    )
    .unwrap();
    let (ok, _, stderr) = run(&[
        "-s",
        "question -> answer",
        "-i",
        "question=1+1?",
        "--demos",
        path,
    ]);
    assert!(!ok);
    assert!(stderr.contains("colour"), "{stderr}");
}

#[test]
fn streaming_prints_the_fields_as_they_come() {
    let (ok, stdout, stderr) = run(&[
        "-s",
        "question: str -> answer: str, n: int",
        "-i",
        "question=Why?",
        "--stream",
    ]);
    assert!(ok, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines.iter().any(|l| l.starts_with("answer: answer: ")),
        "{stdout}"
    );
    assert!(lines.iter().any(|l| l.starts_with("n: ")), "{stdout}");
}
