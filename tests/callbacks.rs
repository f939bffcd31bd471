//! Scenario 44: callback frames from a real worker that name a request the
//! host does not have in flight, or a handler the request does not have,
//! are answered with an error; every other callback reaches the handlers of
//! its own request. 10 000 randomised callbacks, several requests at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dspex_bridge::pool::RequestOptions;
use dspex_bridge::{Callbacks, Hooks};
use dspex_protocol::{CallError, Command, ErrorKind, Value};
use dspex_testkit::TestPool;
use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::json;

/// The handlers of one request: `echo` answers with the request's token.
struct Echo {
    token: u64,
    calls: Arc<AtomicUsize>,
}

impl Callbacks for Echo {
    fn call(&self, name: &str, args: Value) -> BoxFuture<'static, Result<Value, CallError>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let outcome = match name {
            "echo" => Ok(json!({"token": self.token, "args": args})),
            other => Err(CallError::new(
                ErrorKind::ToolError,
                format!("no tool `{other}`"),
            )),
        };
        async move { outcome }.boxed()
    }
}

/// A small deterministic generator (xorshift64*), so a failure replays.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// What a round sends and what each of its callbacks must be answered.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Case {
    /// `echo` for its own request: the request's own token.
    Own,
    /// A handler the request lacks: `ToolError`.
    UnknownTool,
    /// A request id the host never sent (or 0): `Cancelled`.
    UnknownRequest(u64),
}

async fn round(pool: &dspex_bridge::Pool, token: u64, case: Case, count: u64) -> (usize, usize) {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut args = json!({"count": count, "name": "echo"});
    match case {
        Case::Own => {}
        Case::UnknownTool => args["name"] = json!("no_such_tool"),
        Case::UnknownRequest(id) => args["as_request"] = json!(id),
    }
    let options = RequestOptions {
        hooks: Hooks {
            callbacks: Some(Arc::new(Echo {
                token,
                calls: Arc::clone(&calls),
            })),
            events: None,
        },
        timeout: Some(Duration::from_secs(30)),
        ..RequestOptions::default()
    };
    let reply = pool
        .call(Command::custom("call_host", args), options)
        .await
        .unwrap_or_else(|e| panic!("round {token} ({case:?}): {e}"));
    let results = reply["results"].as_array().unwrap();
    assert_eq!(results.len() as u64, count);
    let mut misrouted = 0;
    for (i, result) in results.iter().enumerate() {
        match case {
            Case::Own => {
                assert_eq!(result["ok"], true, "round {token}: {result}");
                let answer = &result["result"];
                if answer["token"] != token || answer["args"]["index"] != i {
                    misrouted += 1;
                }
            }
            Case::UnknownTool => {
                assert_eq!(result["ok"], false, "{result}");
                assert_eq!(result["error"]["kind"], "ToolError", "{result}");
            }
            Case::UnknownRequest(_) => {
                assert_eq!(result["ok"], false, "{result}");
                assert_eq!(result["error"]["kind"], "Cancelled", "{result}");
            }
        }
    }
    let handled = calls.load(Ordering::Relaxed);
    // Only a request's own callbacks reach its handlers.
    match case {
        Case::UnknownRequest(_) => assert_eq!(handled, 0, "round {token}"),
        _ => assert_eq!(handled as u64, count, "round {token}"),
    }
    (results.len(), misrouted)
}

#[tokio::test(flavor = "multi_thread")]
async fn scenario_44_stray_callbacks_are_answered_and_none_is_misrouted() {
    let pool = TestPool::builder()
        .with(|c| {
            c.size = 2;
            c.per_worker_concurrency = 4;
        })
        .start()
        .await
        .unwrap();
    pool.wait_status(Duration::from_secs(30), |s| s.idle == 2)
        .await
        .unwrap();
    let pids = pool.pool().status().pids();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut plan = Vec::new();
    let mut total = 0;
    while total < 10_000 {
        let count = 1 + rng.below(32);
        let case = match rng.below(10) {
            0 => Case::UnknownTool,
            1 => Case::UnknownRequest(if rng.below(2) == 0 { 0 } else { 1 << 40 }),
            _ => Case::Own,
        };
        plan.push((case, count));
        total += count;
    }
    let mut calls = 0;
    let mut misrouted = 0;
    for chunk in plan.chunks(8).enumerate() {
        let (n, rounds) = chunk;
        let runs = rounds.iter().enumerate().map(|(i, (case, count))| {
            let token = (n * 8 + i) as u64;
            round(pool.pool(), token, *case, *count)
        });
        for (sent, wrong) in futures::future::join_all(runs).await {
            calls += sent;
            misrouted += wrong;
        }
    }
    eprintln!("scenario 44: {calls} callbacks, {misrouted} misrouted");
    assert!(calls >= 10_000);
    assert_eq!(misrouted, 0);
    let status = pool.pool().status();
    assert_eq!((status.restarts, status.pids()), (0, pids));
    pool.finish().await;
}
