//! The README's main job, run as a user runs it.

use std::process::Command;

#[test]
fn demo_runs_a_program_on_the_dummy_lm_and_leaves_no_worker() {
    let output = Command::new(env!("CARGO_BIN_EXE_dspex"))
        .args(["demo", "--json", "--question", "Why is the sky blue?"])
        .env_remove("DSPEX_PYTHON")
        .output()
        .expect("dspex runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "dspex demo failed:\n{stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("--json prints JSON");
    let pid = report["ready"]["pid"].as_u64().expect("the worker's pid");
    assert_eq!(report["ping"]["status"], "ok");
    assert_eq!(report["create_program"]["program_id"], "qa");
    let outputs = &report["execute_program"]["outputs"];
    assert!(
        outputs["answer"]
            .as_str()
            .is_some_and(|a| a.starts_with("answer: "))
    );
    assert!(outputs["confidence"].is_f64());
    assert!(outputs["reasoning"].is_string());
    // The host has exited: its worker must be gone too.
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "worker {pid} outlived `dspex demo`"
    );
}
