//! Glue shared by the end-to-end tests.

use std::path::PathBuf;

pub use dspex_testkit::managed_python;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// Runs `script` with plain DSPy (`python -c`, the managed environment, no
/// DSPex in between), feeds it `input` on stdin, and returns its stdout;
/// panics if it fails. The "DSPy alone" side of the differential tests.
pub fn run_plain_python(script: &str, input: &str) -> String {
    use std::io::Write;
    let python = managed_python().expect("managed python");
    let mut child = std::process::Command::new(&python.interpreter)
        .arg("-c")
        .arg(script)
        .env("PYTHONPATH", python.python_path())
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python starts");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("writing the job");
    let output = child.wait_with_output().expect("python ends");
    assert!(
        output.status.success(),
        "plain DSPy failed: {}",
        output.status
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

pub mod logs;
pub mod pool;
pub mod service;
