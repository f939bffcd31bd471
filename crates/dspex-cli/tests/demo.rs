//! The `dspex` binary, run as a user runs it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::alive;

mod common;

fn dspex() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dspex"));
    command.env_remove("DSPEX_PYTHON").env_remove("DSPEX_LM");
    command
}

/// Worker processes (children running `dspex_bridge`) of `parent`.
fn workers_of(host: u32) -> Vec<u64> {
    let ppid_of = |pid: u64| -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit(')')
            .next()?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let cmdline = |pid: u64| {
        String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default())
            .into_owned()
    };
    let pids: Vec<u64> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .filter(|&pid| cmdline(pid).contains("dspex_bridge"))
        .collect();
    // The host's zygote (its child) forks the workers; without one the
    // workers are the host's children.
    let zygotes: Vec<u64> = pids
        .iter()
        .copied()
        .filter(|&pid| ppid_of(pid) == Some(u64::from(host)) && cmdline(pid).contains("zygote"))
        .collect();
    pids.into_iter()
        .filter(|&pid| {
            let parent = ppid_of(pid);
            (parent == Some(u64::from(host)) && !zygotes.contains(&pid))
                || parent.is_some_and(|p| zygotes.contains(&p))
        })
        .collect()
}

/// The host's zygotes.
fn zygotes_of(host: u32) -> Vec<u64> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().nth(1));
            ppid == Some(&host.to_string())
                && String::from_utf8_lossy(
                    &std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default(),
                )
                .contains("zygote")
        })
        .collect()
}

#[test]
fn demo_accounts_for_every_request_recovers_from_the_kill_and_leaves_no_worker() {
    let output = dspex()
        .args([
            "demo",
            "--json",
            "--requests",
            "45",
            "--pool-size",
            "3",
            "--concurrency",
            "6",
        ])
        .output()
        .expect("dspex runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "dspex demo failed:\n{stderr}");
    let summary: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("--json prints JSON");
    assert_eq!(summary["requests"], 45);
    assert_eq!(summary["completed"], 45);
    assert_eq!(summary["failed"], 0);
    assert_eq!(summary["model"], "dummy");
    let killed = summary["killed_pid"].as_u64().expect("a worker was killed");
    assert!(summary["restarts"].as_u64().unwrap() >= 1);
    let after: Vec<u64> = summary["workers_after"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(serde_json::Value::as_u64)
        .collect();
    assert_eq!(after.len(), 3, "the pool is full again: {summary}");
    assert!(!after.contains(&killed));
    // The host has exited: none of its workers is left.
    for pid in after.iter().chain([&killed]) {
        assert!(!alive(*pid), "worker {pid} outlived `dspex demo`");
    }
}

#[test]
fn run_prints_typed_outputs() {
    let output = dspex()
        .args([
            "run",
            "--signature",
            "question: str, n: int -> answer: str, score: float, tags: list[str]",
            "--input",
            "question=What is DSPy?",
            "--input",
            "n=3",
            "--json",
        ])
        .output()
        .expect("dspex runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "dspex run failed:\n{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let outputs = &report["outputs"];
    assert!(outputs["answer"].is_string());
    assert!(outputs["score"].is_number());
    assert!(outputs["tags"].is_array());
}

#[test]
fn run_refuses_bad_input_with_a_clear_error() {
    let output = dspex()
        .args([
            "run",
            "--signature",
            "question: str -> answer: str",
            "--input",
            "n=3",
        ])
        .output()
        .expect("dspex runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown input `n`"), "{stderr}");
}

#[test]
fn ctrl_c_stops_cleanly_with_no_worker_left() {
    let mut child = dspex()
        .args([
            "demo",
            "--requests",
            "1000000",
            "--pool-size",
            "2",
            "--no-kill",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dspex runs");
    let host = child.id();
    // Wait until its workers exist (polling /proc: there is no event to wait on
    // from outside the process).
    let deadline = Instant::now() + Duration::from_secs(120);
    let workers = loop {
        let workers = workers_of(host);
        if workers.len() == 2 {
            break workers;
        }
        assert!(Instant::now() < deadline, "workers never started");
        std::thread::sleep(Duration::from_millis(20));
    };
    let zygotes = zygotes_of(host);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(host as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "exit status after Ctrl-C");
    // The promise: no worker alive within 2 s of the host's exit.
    let deadline = Instant::now() + Duration::from_secs(2);
    while workers.iter().chain(&zygotes).any(|&pid| alive(pid)) {
        assert!(
            Instant::now() < deadline,
            "workers {workers:?} or zygotes {zygotes:?} outlived the interrupted host"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
