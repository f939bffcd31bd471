//! The Python worker's own pytest suite and its format/lint checks, run
//! through the managed environment so `cargo test` covers both languages.

use std::process::Command;

use dspex_tests::{managed_python, repo_root};

fn run(args: &[&str]) -> anyhow::Result<()> {
    let env = managed_python()?;
    let python_dir = repo_root().join("python");
    let output = Command::new(&env.interpreter)
        .args(args)
        .current_dir(&python_dir)
        .env_remove("DSPEX_PYTHON")
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{text}");
    anyhow::ensure!(
        output.status.success(),
        "`python {}` failed ({}):\n{text}",
        args.join(" "),
        output.status
    );
    Ok(())
}

#[test]
fn pytest_suite_passes() -> anyhow::Result<()> {
    run(&["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"])
}

#[test]
fn python_is_formatted() -> anyhow::Result<()> {
    run(&["-m", "ruff", "format", "--check", "."])
}

#[test]
fn python_passes_lint() -> anyhow::Result<()> {
    run(&["-m", "ruff", "check", "--no-cache", "."])
}
