//! The ConditionalSupervisor decides once, from the configuration and an
//! environment check, and says so in its status.

use std::ffi::OsString;
use std::time::Duration;

use dspex_bridge::pool::{PoolConfig, RequestOptions};
use dspex_bridge::{
    BridgeConfig, BridgeError, CallOptions, ConditionalError, ConditionalSupervisor, Mode,
    PythonConfig, TreeConfig,
};
use dspex_protocol::Command;
use dspex_testkit::managed_python;
use serde_json::json;

fn test_config(extra_env: &[(&str, &str)]) -> BridgeConfig {
    let python = managed_python().expect("managed python");
    let mut env: Vec<(OsString, OsString)> = vec![
        ("DSPEX_TEST_FAULTS".into(), "1".into()),
        ("DSPEX_LAZY_DSPY".into(), "1".into()),
    ];
    env.extend(extra_env.iter().map(|(k, v)| ((*k).into(), (*v).into())));
    BridgeConfig {
        name: format!("cond{}", std::process::id()),
        python: PythonConfig {
            interpreter: Some(python.interpreter),
            ..PythonConfig::default()
        },
        env,
        sweep_orphans: false,
        ..BridgeConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn single_mode_serves_and_reports_its_mode_and_environment() {
    let tree = ConditionalSupervisor::start(TreeConfig::Single(test_config(&[])))
        .await
        .unwrap();
    assert_eq!(tree.mode(), Mode::Single);
    let bridge = tree.serving_bridge().unwrap();
    let reply = bridge
        .call(
            Command::custom("echo", json!({"a": 1})),
            CallOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(reply, json!({"a": 1}));
    let status = tree.status();
    assert_eq!(status.mode, Mode::Single);
    assert_eq!(status.failed, None);
    let env = status.environment.unwrap();
    assert!(env.is_ok(), "{env}");
    assert!(env.dspy.is_some() && env.msgpack.is_some());
    assert_eq!(tree.shutdown(Duration::from_secs(10)).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn disabled_mode_starts_nothing_and_says_why_calls_fail() {
    let tree = ConditionalSupervisor::start(TreeConfig::Disabled)
        .await
        .unwrap();
    assert_eq!(tree.status().mode, Mode::Disabled);
    assert!(tree.bridge().is_none());
    match tree.serving_bridge() {
        Err(BridgeError::Unavailable { cause }) => assert!(cause.contains("Disabled"), "{cause}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    tree.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pool_mode_serves_through_a_pool_and_says_so() {
    let bridge = test_config(&[]);
    let config = PoolConfig {
        name: bridge.name.clone(),
        python: bridge.python.clone(),
        env: bridge.env.clone(),
        size: 2,
        sweep_orphans: false,
        ..PoolConfig::default()
    };
    let tree = ConditionalSupervisor::start(TreeConfig::Pool(config))
        .await
        .unwrap();
    assert_eq!(tree.mode(), Mode::Pool);
    assert!(tree.bridge().is_none());
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
    match tree.serving_bridge() {
        Err(BridgeError::Unavailable { cause }) => assert!(cause.contains("Pool"), "{cause}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert_eq!(tree.shutdown(Duration::from_secs(10)).await, 0);
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
async fn a_subtree_that_gives_up_leaves_the_root_failed_with_the_cause() {
    let tree = ConditionalSupervisor::start(TreeConfig::Single(test_config(&[(
        "DSPEX_TEST_FAIL_IMPORT",
        "1",
    )])))
    .await
    .unwrap();
    let failed = tree.supervisor().wait_for(|s| s.state.is_failed());
    tokio::time::timeout(Duration::from_secs(20), failed)
        .await
        .expect("the root fails within the budget")
        .unwrap();
    let cause = tree.status().failed.unwrap();
    assert!(cause.contains("ModuleNotFoundError"), "{cause}");
    assert!(cause.contains("exit code 1"), "{cause}");
    match tree.serving_bridge() {
        Err(BridgeError::Unavailable { cause }) => assert!(cause.contains("ModuleNotFoundError")),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert_eq!(tree.mode(), Mode::Single, "no fallback to another mode");
    assert_eq!(tree.shutdown(Duration::from_secs(10)).await, 0);
}
