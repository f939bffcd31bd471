//! Glue the `dspex` binary's tests share.
// Each test binary uses part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Whether `pid` runs (a zombie does not).
pub(crate) fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// `dspex serve --config <config> --bind 127.0.0.1:0` with `envs`, the
/// user's `DSPEX_*` variables removed; returns the process and the base URL
/// it printed.
pub(crate) fn start_serve(config: &Path, envs: &[(&str, &str)]) -> (Child, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dspex"));
    command
        .args(["serve", "--config"])
        .arg(config)
        .args(["--bind", "127.0.0.1:0"])
        .env_remove("DSPEX_PYTHON")
        .env_remove("DSPEX_LM")
        .env_remove("DSPEX_SERVE_TOKEN")
        .stdout(Stdio::piped());
    for (name, value) in envs {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("dspex serve starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("reading its first line");
    let base = line
        .trim()
        .strip_prefix("dspex serve: listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    (child, base)
}
