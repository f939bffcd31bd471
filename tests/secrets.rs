//! Secrets: an API key is redacted wherever a configuration is printed,
//! never written to a log line — the host's or the worker's, at any level —
//! and sent to a worker once per LM (generation, or per-call override), not
//! with every request.

use std::time::Duration;

use dspex::config::LmSettings;
use dspex::protocol::Command;
use dspex::{Dspex, ExecuteOptions, LmConfig, ModeSetting, Secret};
use dspex_tests::logs;
use dspex_tests::service::{Service, config, create_qa};
use serde_json::json;

const KEY: &str = "sk-dspex-test-5c1e9d0a7f3b4e21";
const OVERRIDE_KEY: &str = "sk-dspex-override-8d2f6b1c9e0a";

/// An LM that is a real provider model pointed at a closed loopback port:
/// configuring it builds a `dspy.LM`, calling it fails fast.
fn provider(key: &str) -> LmConfig {
    LmConfig {
        model: "openai/gpt-4o-mini".into(),
        api_key: Some(Secret::new(key)),
        api_base: Some("http://127.0.0.1:9/v1".into()),
        ..LmConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn api_keys_never_reach_a_log_and_cross_the_pipe_once() {
    let logs = logs::capture("trace");
    let mut config = config(ModeSetting::Single);
    config
        .worker_env
        .push(("DSPEX_LOG_LEVEL".into(), "DEBUG".into()));
    config.lm = Some(LmSettings {
        model: "openai/gpt-4o-mini".into(),
        api_key: Some(Secret::new(KEY)),
        api_base: Some("http://127.0.0.1:9/v1".into()),
        ..LmSettings::default()
    });
    // Printing a configuration, a builder or an LM shows no key.
    let printed = format!(
        "{config:?} {:?} {:?}",
        Dspex::builder().config(config.clone()),
        provider(KEY)
    );
    assert!(!printed.contains(KEY), "{printed}");
    assert!(printed.contains("[redacted]"));

    let service = Service::start(config).await.unwrap();
    let dspex = &service.dspex;
    create_qa(dspex).await;
    let quick = ExecuteOptions::default().timeout(Duration::from_secs(20));
    for n in 0..3 {
        let error = dspex
            .execute("qa", json!({"q": format!("q{n}")}), quick.clone())
            .await
            .unwrap_err();
        assert!(!format!("{error} {error:?}").contains(KEY), "{error:?}");
        let error = dspex
            .execute(
                "qa",
                json!({"q": format!("o{n}")}),
                quick.clone().lm(provider(OVERRIDE_KEY)),
            )
            .await
            .unwrap_err();
        assert!(
            !format!("{error} {error:?}").contains(OVERRIDE_KEY),
            "{error:?}"
        );
    }
    // A configuration the worker rejects is reported without its key too.
    let mut bad = provider(KEY);
    bad.extra
        .insert("temperature_bad".into(), json!({"nested": [KEY]}));
    let _ = dspex.configure_lm(bad).await;

    // Each key crossed the pipe once: the default LM when the worker
    // started, the override when it first served it; 6 executions carried
    // neither.
    let worker = service.pool().ready_workers().pop().unwrap();
    let stats = worker
        .call(Command::GetStats, Default::default())
        .await
        .unwrap();
    let by_command = &stats["requests"]["by_command"];
    assert_eq!(by_command["execute_program"], 6, "{stats}");
    // The default LM, the override once, and the rejected configuration.
    assert_eq!(by_command["configure_lm"], 3, "{stats}");
    assert_eq!(stats["named_lms"], 1, "{stats}");
    service.finish().await;

    let logs = logs.lock().unwrap();
    // The capture saw both sides: the host's own lines and the worker's
    // stderr (DEBUG), folded into the host's log.
    assert!(
        logs.contains("dspex::worker::stderr"),
        "no worker log captured"
    );
    assert!(
        logs.contains("configured LM"),
        "the worker's log lines are there"
    );
    for key in [KEY, OVERRIDE_KEY] {
        let leaks: Vec<&str> = logs.lines().filter(|l| l.contains(key)).collect();
        assert!(leaks.is_empty(), "{key} logged: {leaks:#?}");
    }
}
