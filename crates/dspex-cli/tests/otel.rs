//! With the `otel` feature, `dspex serve` exports its spans over OTLP/HTTP
//! to the endpoint of `OTEL_EXPORTER_OTLP_ENDPOINT` (here a collector on
//! loopback that keeps what it is sent). Run by CI with
//! `cargo test -p dspex-cli --features otel --test otel`.
#![cfg(feature = "otel")]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_exports_its_request_spans_over_otlp() {
    let received: Arc<Mutex<Vec<u8>>> = Arc::default();
    let sink = Arc::clone(&received);
    let collector = Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let sink = Arc::clone(&sink);
            async move {
                sink.lock().unwrap().extend_from_slice(&body);
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, collector).await });

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("dspex.toml");
    std::fs::write(
        &config,
        "adapter = \"mock\"\n[lm]\nmodel = \"dummy\"\n[[programs]]\nid = \"qa\"\nsignature = \"question -> answer\"\n",
    )
    .unwrap();
    let (mut child, base) = common::start_serve(
        &config,
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())],
    );
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/programs/qa/execute"))
        .json(&serde_json::json!({"inputs": {"question": "traced?"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // SIGTERM: a graceful stop flushes the spans before the process ends.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = received.lock().unwrap().clone();
        let has = |needle: &[u8]| got.windows(needle.len()).any(|w| w == needle);
        if has(b"http.request") && has(b"dspex.call") {
            assert!(has(b"dspex"), "no service name");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the collector got no request span ({} bytes)",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
