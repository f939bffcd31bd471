//! The ConditionalSupervisor decides once, from the configuration and an
//! environment check, and says so in its status.

use std::ffi::OsString;
use std::time::Duration;

use dspex_bridge::pool::{PoolConfig, PoolError, PoolState, RequestOptions};
use dspex_bridge::{ConditionalError, ConditionalSupervisor, Mode, PythonConfig, TreeConfig};
use dspex_protocol::Command;
use dspex_testkit::managed_python;
use serde_json::json;

/// A single-mode configuration on the managed Python, fault commands on.
fn test_config(extra_env: &[(&str, &str)]) -> PoolConfig {
    let python = managed_python().expect("managed python");
    let mut env: Vec<(OsString, OsString)> = vec![
        ("DSPEX_TEST_FAULTS".into(), "1".into()),
        ("DSPEX_LAZY_DSPY".into(), "1".into()),
    ];
    env.extend(extra_env.iter().map(|(k, v)| ((*k).into(), (*v).into())));
    PoolConfig {
        name: format!("cond{}", std::process::id()),
        python: PythonConfig {
            interpreter: Some(python.interpreter),
            ..PythonConfig::default()
        },
        env,
        sweep_orphans: false,
        ..PoolConfig::default()
    }
    .single()
}

const GRACE: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread")]
async fn single_mode_serves_and_reports_its_mode_and_environment() {
    let tree = ConditionalSupervisor::start(TreeConfig::Single(test_config(&[])))
        .await
        .unwrap();
    assert_eq!(tree.mode(), Mode::Single);
    let pool = tree.serving_pool().unwrap();
    let reply = pool
        .call(
            Command::custom("echo", json!({"a": 1})),
            RequestOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(reply, json!({"a": 1}));
    let status = tree.status();
    assert_eq!(status.mode, Mode::Single);
    assert_eq!(status.failed, None);
    assert_eq!(
        status.pool.unwrap().workers.len(),
        1,
        "single mode: one worker"
    );
    let env = status.environment.unwrap();
    assert!(env.is_ok(), "{env}");
    assert!(env.dspy.is_some() && env.msgpack.is_some());
    assert_eq!(tree.shutdown(GRACE, GRACE).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn single_mode_has_exactly_one_worker() {
    let mut config = test_config(&[]);
    config.size = 2;
    match ConditionalSupervisor::start(TreeConfig::Single(config)).await {
        Err(ConditionalError::InvalidConfig(Mode::Single, why)) => {
            assert!(why.contains("exactly one worker"), "{why}");
        }
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn disabled_mode_starts_nothing_and_says_why_calls_fail() {
    let tree = ConditionalSupervisor::start(TreeConfig::Disabled)
        .await
        .unwrap();
    assert_eq!(tree.status().mode, Mode::Disabled);
    assert!(tree.pool().is_none());
    match tree.serving_pool() {
        Err(PoolError::Unavailable { cause, .. }) => assert!(cause.contains("Disabled"), "{cause}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    tree.shutdown(GRACE, GRACE).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pool_mode_serves_through_a_pool_and_says_so() {
    let config = PoolConfig {
        size: 2,
        ..test_config(&[])
    };
    let tree = ConditionalSupervisor::start(TreeConfig::Pool(config))
        .await
        .unwrap();
    assert_eq!(tree.mode(), Mode::Pool);
    let pool = tree.pool().unwrap();
    let reply = pool
        .call(
            Command::custom("echo", json!({"p": 1})),
            RequestOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(reply, json!({"p": 1}));
    let status = tree.status();
    assert_eq!(status.mode, Mode::Pool);
    assert_eq!(status.pool.unwrap().workers.len(), 2);
    assert_eq!(tree.shutdown(GRACE, GRACE).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interpreter_without_dspy_is_reported_before_anything_starts() {
    // A bare interpreter: the one that created the managed environment.
    let mut config = test_config(&[]);
    config.python.interpreter = Some("python3".into());
    config.python.cache_dir = None;
    let bare = std::process::Command::new("python3")
        .args([
            "-c",
            "import importlib.util as u; print(u.find_spec('dspy') is None)",
        ])
        .output()
        .unwrap();
    if String::from_utf8_lossy(&bare.stdout).trim() != "True" {
        // This machine's python3 has DSPy installed globally; nothing to show.
        return;
    }
    match ConditionalSupervisor::start(TreeConfig::Single(config)).await {
        Err(ConditionalError::EnvironmentCheck(report)) => {
            assert!(!report.is_ok());
            assert!(
                report.problems.iter().any(|p| p.contains("dspy")),
                "{report}"
            );
            assert!(report.python.is_some());
        }
        other => panic!("expected an environment report, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_interpreter_is_reported() {
    let mut config = test_config(&[]);
    config.python.interpreter = Some("/nonexistent/bin/python3".into());
    match ConditionalSupervisor::start(TreeConfig::Single(config)).await {
        Err(ConditionalError::EnvironmentCheck(report)) => {
            let text = report.to_string();
            assert!(text.contains("/nonexistent/bin/python3"), "{text}");
        }
        other => panic!("expected an environment report, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pool_that_gives_up_is_reported_failed_with_the_cause() {
    let tree = ConditionalSupervisor::start(TreeConfig::Single(test_config(&[(
        "DSPEX_TEST_FAIL_IMPORT",
        "1",
    )])))
    .await
    .unwrap();
    let pool = tree.serving_pool().unwrap().clone();
    let mut status = pool.status_watch();
    let failed = status.wait_for(|s| matches!(s.state, PoolState::Failed(_)));
    tokio::time::timeout(Duration::from_secs(20), failed)
        .await
        .expect("the pool fails within the budget")
        .unwrap();
    let cause = tree.status().failed.unwrap();
    assert!(cause.contains("ModuleNotFoundError"), "{cause}");
    assert!(cause.contains("exit code 1"), "{cause}");
    match pool.admission() {
        Err(PoolError::Unavailable { cause, retry_in }) => {
            assert!(cause.contains("ModuleNotFoundError"));
            assert_eq!(retry_in, None, "no revive policy: Failed is final");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert_eq!(tree.mode(), Mode::Single, "no fallback to another mode");
    assert_eq!(tree.shutdown(GRACE, GRACE).await, 0);
}
