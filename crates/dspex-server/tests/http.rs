//! The HTTP API end to end over a real socket, on the mock adapter (the
//! same routes on real workers are tested in the workspace's tests/serve.rs).

use std::time::Duration;

use dspex::{AdapterKind, Dspex, LmConfig, Secret};
use dspex_server::{ServeFile, Server};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

const FILE: &str = r#"
[serve]
bind = "127.0.0.1:0"
body_limit_bytes = 4096
max_batch = 4

[[programs]]
id = "qa"
signature = "question: str -> answer: str, confidence: float"
module = "cot"
instructions = "Answer briefly."

[[programs]]
id = "echo"
signature = "text: str -> reply: str"
"#;

/// A handle on the mock adapter with the offline LM.
async fn mock() -> Dspex {
    Dspex::builder()
        .adapter(AdapterKind::Mock)
        .lm(LmConfig::dummy())
        .start()
        .await
        .unwrap()
}

async fn server(extra: &str, token: Option<&str>) -> Server {
    let mut file = ServeFile::from_toml(&format!("{FILE}\n{extra}"), None).unwrap();
    file.token = token.map(Secret::new);
    let dspex = mock().await;
    Server::start_with(dspex, file, dspex_server::prometheus())
        .await
        .unwrap()
}

fn url(server: &Server, path: &str) -> String {
    format!("http://{}{path}", server.addr())
}

async fn post(server: &Server, path: &str, body: Value) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .post(url(server, path))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn get(server: &Server, path: &str) -> (StatusCode, String) {
    let response = reqwest::get(url(server, path)).await.unwrap();
    (response.status(), response.text().await.unwrap())
}

#[tokio::test]
async fn execute_answers_typed_json_and_refuses_bad_inputs_by_category() {
    let server = server("", None).await;
    let (status, body) = post(
        &server,
        "/v1/programs/qa/execute",
        json!({"inputs": {"question": "Why?"}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["program_id"], "qa");
    assert!(body["outputs"]["answer"].is_string(), "{body}");
    assert!(body["outputs"]["confidence"].is_number(), "{body}");
    assert_eq!(body["attempts"], 1);

    let (status, body) = post(
        &server,
        "/v1/programs/qa/execute",
        json!({"inputs": {"question": 3}}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["category"], "validation");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("question"),
        "{body}"
    );

    let (status, body) = post(&server, "/v1/programs/nope/execute", json!({"inputs": {}})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["category"], "not_found");

    let (status, body) = post(
        &server,
        "/v1/programs/qa/execute",
        json!({"inputs": {"question": "q"}, "bogus": 1}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    let (status, body) = post(
        &server,
        "/v1/programs/qa/execute",
        json!({"inputs": {"question": "q"}, "timeout_ms": 0}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    let (status, body) = post(
        &server,
        "/v1/programs/qa/execute",
        json!({"inputs": {"question": "q"}, "session": "bad id!"}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    let response = reqwest::Client::new()
        .post(url(&server, "/v1/programs/qa/execute"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["category"], "bad_request");

    let big = "x".repeat(8192);
    let (status, body) = post(
        &server,
        "/v1/programs/qa/execute",
        json!({"inputs": {"question": big}}),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");

    let (status, body) = post(
        &server,
        "/v1/programs/qa/execute",
        json!({"inputs": {"question": "a"}, "session": "user-1", "timeout_ms": 5000}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn stream_sends_chunks_then_the_prediction() {
    let server = server("", None).await;
    let response = reqwest::Client::new()
        .post(url(&server, "/v1/programs/echo/stream"))
        .json(&json!({"inputs": {"text": "hello"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut text = String::new();
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    let events = sse(&text);
    let chunks: String = events
        .iter()
        .filter(|(kind, _)| kind == "chunk")
        .map(|(_, data)| data["text"].as_str().unwrap().to_owned())
        .collect();
    let (kind, last) = events.last().unwrap();
    assert_eq!(kind, "prediction", "{text}");
    assert!(events.len() > 1, "no chunk before the prediction: {text}");
    assert_eq!(last["outputs"]["reply"].as_str().unwrap(), chunks);
    server.stop().await.unwrap();
}

/// `(event, data)` pairs of a server-sent event stream.
fn sse(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter_map(|block| {
            let mut kind = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(k) = line.strip_prefix("event:") {
                    kind = Some(k.trim().to_owned());
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim_start());
                }
            }
            Some((kind?, serde_json::from_str(&data).ok()?))
        })
        .collect()
}

#[tokio::test]
async fn batch_gives_one_result_per_input_and_bounds_its_size() {
    let server = server("", None).await;
    let inputs: Vec<Value> = (0..3).map(|i| json!({"text": format!("t{i}")})).collect();
    let (status, body) = post(
        &server,
        "/v1/programs/echo/batch",
        json!({"inputs": inputs}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert!(
        results
            .iter()
            .all(|r| r["prediction"]["outputs"]["reply"].is_string()),
        "{body}"
    );

    let inputs: Vec<Value> = (0..5).map(|i| json!({"text": format!("t{i}")})).collect();
    let (status, _) = post(
        &server,
        "/v1/programs/echo/batch",
        json!({"inputs": inputs}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, body) = post(
        &server,
        "/v1/programs/echo/batch",
        json!({"inputs": [{"text": "a"}, {"text": 1}]}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("batch item 1"),
        "{body}"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn programs_are_listed_and_described_with_their_schemas() {
    let server = server("", None).await;
    let (status, text) = get(&server, "/v1/programs").await;
    assert_eq!(status, StatusCode::OK);
    let list: Value = serde_json::from_str(&text).unwrap();
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["echo", "qa"]);
    let (status, text) = get(&server, "/v1/programs/qa").await;
    assert_eq!(status, StatusCode::OK);
    let qa: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(qa["module"], "chain_of_thought");
    assert_eq!(qa["instructions"], "Answer briefly.");
    assert_eq!(qa["input_schema"]["required"], json!(["question"]));
    assert_eq!(
        qa["output_schema"]["properties"]["confidence"]["type"],
        "number"
    );
    let (status, _) = get(&server, "/v1/programs/none").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn creating_programs_over_http_needs_the_configuration_and_no_import_path() {
    let closed = server("", None).await;
    let body = json!({"id": "new", "signature": "a -> b"});
    let (status, reply) = post(&closed, "/v1/programs", body.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{reply}");
    closed.stop().await.unwrap();

    let open = server("", None).await;
    let open = {
        let mut file = ServeFile::from_toml(
            &FILE.replace("max_batch = 4", "max_batch = 4\nallow_create = true"),
            None,
        )
        .unwrap();
        file.token = None;
        open.stop().await.unwrap();
        let dspex = mock().await;
        Server::start_with(dspex, file, None).await.unwrap()
    };
    let (status, reply) = post(&open, "/v1/programs", body.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{reply}");
    assert_eq!(reply["signature"], "a: str -> b: str");
    let (status, _) = post(&open, "/v1/programs", body).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, reply) = post(
        &open,
        "/v1/programs",
        json!({"id": "py", "signature": "a -> b", "module": "python:os:system"}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{reply}");
    let (status, reply) = post(
        &open,
        "/v1/programs",
        json!({"id": "bad", "signature": "a ->"}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{reply}");
    let (status, reply) = post(
        &open,
        "/v1/programs/new/execute",
        json!({"inputs": {"a": "x"}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    open.stop().await.unwrap();
}

#[tokio::test]
async fn a_token_guards_everything_but_health() {
    let server = server("", Some("s3cret-token")).await;
    let client = reqwest::Client::new();
    let response = client
        .get(url(&server, "/v1/programs"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let body = response.text().await.unwrap();
    assert!(!body.contains("s3cret-token"));
    let wrong = client
        .get(url(&server, "/v1/programs"))
        .bearer_auth("s3cret-tokem")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let right = client
        .get(url(&server, "/v1/programs"))
        .bearer_auth("s3cret-token")
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), StatusCode::OK);
    for open in ["/healthz", "/readyz", "/"] {
        assert_eq!(
            client
                .get(url(&server, open))
                .send()
                .await
                .unwrap()
                .status(),
            StatusCode::OK,
            "{open}"
        );
    }
    // The live stream takes the token as a query parameter; nothing else does.
    let live = client
        .get(url(&server, "/v1/live?token=s3cret-token"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), StatusCode::OK);
    drop(live);
    let query = client
        .get(url(&server, "/v1/programs?token=s3cret-token"))
        .send()
        .await
        .unwrap();
    assert_eq!(query.status(), StatusCode::UNAUTHORIZED);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn openapi_describes_every_route_and_each_programs_schemas() {
    let server = server("", None).await;
    let (status, text) = get(&server, "/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/v1/programs/{id}/execute",
        "/v1/programs/{id}/stream",
        "/v1/programs/{id}/batch",
        "/v1/programs",
        "/v1/programs/{id}",
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/status",
        "/v1/programs/qa/execute",
        "/v1/programs/echo/execute",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing");
    }
    assert_eq!(
        doc["components"]["schemas"]["qa.inputs"]["required"],
        json!(["question"])
    );
    assert!(doc["components"]["schemas"]["qa.outputs"]["properties"]["confidence"].is_object());
    assert!(doc["components"]["schemas"]["ExecuteBody"].is_object());
    server.stop().await.unwrap();
}

#[tokio::test]
async fn metrics_count_requests_by_program_and_outcome() {
    let server = server("", None).await;
    post(
        &server,
        "/v1/programs/echo/execute",
        json!({"inputs": {"text": "m"}}),
    )
    .await;
    post(
        &server,
        "/v1/programs/echo/execute",
        json!({"inputs": {"text": "m"}}),
    )
    .await;
    let (status, text) = get(&server, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("dspex_requests_total{")
                && l.contains("program=\"echo\"")
                && l.contains("operation=\"execute\"")
                && l.contains("outcome=\"ok\"")
        })
        .unwrap_or_else(|| panic!("no request counter in:\n{text}"));
    let count: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 2.0, "{line}");
    assert!(
        text.contains("dspex_request_duration_seconds_bucket{"),
        "{text}"
    );
    assert!(text.contains("dspex_breaker_state"), "{text}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn status_and_the_live_stream_show_the_instance() {
    let server = server("", None).await;
    post(
        &server,
        "/v1/programs/echo/execute",
        json!({"inputs": {"text": "s"}}),
    )
    .await;
    let (status, text) = get(&server, "/v1/status").await;
    assert_eq!(status, StatusCode::OK);
    let snapshot: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(snapshot["adapter"], "mock");
    assert_eq!(snapshot["state"], "running");
    assert_eq!(
        snapshot["series"].as_array().unwrap().last().unwrap()["ok"],
        1
    );
    let live = reqwest::get(url(&server, "/v1/live")).await.unwrap();
    let mut body = live.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&first).contains("event: snapshot"));
    // A graceful stop ends the live stream instead of waiting on it.
    tokio::time::timeout(Duration::from_secs(10), server.stop())
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn draining_turns_readiness_off_and_lets_in_flight_calls_finish() {
    let server = {
        let file = ServeFile::from_toml(FILE, None).unwrap();
        let mut lm = LmConfig::dummy();
        lm.extra.insert("latency_ms".into(), 300.into());
        let dspex = Dspex::builder()
            .adapter(AdapterKind::Mock)
            .lm(lm)
            .start()
            .await
            .unwrap();
        Server::start_with(dspex, file, None).await.unwrap()
    };
    let (status, _) = get(&server, "/readyz").await;
    assert_eq!(status, StatusCode::OK);
    let target = url(&server, "/v1/programs/echo/execute");
    let calls: Vec<_> = (0..8)
        .map(|i| {
            let target = target.clone();
            tokio::spawn(async move {
                reqwest::Client::new()
                    .post(target)
                    .json(&json!({"inputs": {"text": format!("{i}")}}))
                    .send()
                    .await
            })
        })
        .collect();
    // Stop once every call is in flight.
    let state = server.state().clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while state.dspex().status().in_flight < 8 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "calls never got in flight"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let readiness = url(&server, "/readyz");
    let stopping = tokio::spawn(server.stop());
    for call in calls {
        let response = call
            .await
            .unwrap()
            .expect("an in-flight call lost its response");
        assert_eq!(response.status(), StatusCode::OK);
    }
    stopping.await.unwrap().unwrap();
    assert!(
        reqwest::get(readiness).await.is_err(),
        "still listening after the stop"
    );
}

async fn slow_server(extra_config: &str, latency_ms: u64) -> Server {
    let file = ServeFile::from_toml(&format!("{extra_config}\n{FILE}"), None).unwrap();
    let mut lm = LmConfig::dummy();
    lm.extra.insert("latency_ms".into(), latency_ms.into());
    let dspex = Dspex::builder()
        .config(file.dspex.clone())
        .adapter(AdapterKind::Mock)
        .lm(lm)
        .start()
        .await
        .unwrap();
    Server::start_with(dspex, file, None).await.unwrap()
}

#[tokio::test]
async fn overload_is_429_and_a_passed_deadline_504_each_with_its_category() {
    let server = slow_server("max_in_flight = 1", 400).await;
    let target = url(&server, "/v1/programs/echo/execute");
    let first = tokio::spawn({
        let target = target.clone();
        async move {
            reqwest::Client::new()
                .post(target)
                .json(&json!({"inputs": {"text": "first"}}))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.state().dspex().status().in_flight < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first call never got in flight"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let response = reqwest::Client::new()
        .post(&target)
        .json(&json!({"inputs": {"text": "second"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["category"], "overloaded");
    assert_eq!(body["error"]["retryable"], true);
    assert_eq!(first.await.unwrap(), StatusCode::OK);

    let (status, body) = post(
        &server,
        "/v1/programs/echo/execute",
        json!({"inputs": {"text": "late"}, "timeout_ms": 50}),
    )
    .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(body["error"]["category"], "timeout");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_programs_lm_key_never_appears_in_a_response() {
    let key = "sk-never-shown-0123456789";
    let extra = format!(
        "[[programs]]\nid = \"keyed\"\nsignature = \"q -> a\"\nlm = {{ model = \"dummy\", api_key = \"{key}\" }}\n"
    );
    let server = server(&extra, None).await;
    let (status, body) = post(
        &server,
        "/v1/programs/keyed/execute",
        json!({"inputs": {"q": "x"}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(!body.to_string().contains(key));
    for path in [
        "/v1/programs",
        "/v1/programs/keyed",
        "/v1/status",
        "/openapi.json",
        "/metrics",
        "/",
    ] {
        let (_, text) = get(&server, path).await;
        assert!(!text.contains(key), "{path} shows the key");
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_configured_program_loads_its_compiled_state_file() {
    // A program saved as `dspex optimize --out` saves it, with its demos.
    let dir = std::env::temp_dir().join(format!("dspex-serve-state-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let saved = dir.join("capital.json");
    let author = mock().await;
    author
        .create_program(
            "capital",
            dspex::Signature::parse("country: str -> capital: str").unwrap(),
            dspex::Module::Predict,
        )
        .await
        .unwrap();
    let demos =
        vec![serde_json::from_value(json!({"country": "France", "capital": "Paris"})).unwrap()];
    author.set_demos("capital", demos).await.unwrap();
    author.save_program("capital", &saved).await.unwrap();
    author.shutdown().await;

    // No signature in the file: the saved one is used.
    let toml = "[serve]\nbind = \"127.0.0.1:0\"\n[[programs]]\nid = \"capital\"\nstate = \"capital.json\"\n";
    let file = ServeFile::from_toml(toml, Some(&dir)).unwrap();
    let dspex = mock().await;
    let server = Server::start_with(dspex, file, None).await.unwrap();
    let (status, text) = get(&server, "/v1/programs/capital").await;
    assert_eq!(status, StatusCode::OK);
    let detail: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(detail["signature"], "country: str -> capital: str");
    assert_eq!(detail["compiled"], true, "{detail}");
    let (status, body) = post(
        &server,
        "/v1/programs/capital/execute",
        json!({"inputs": {"country": "Japan"}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    server.stop().await.unwrap();

    // A state file that is not there is refused at start, naming the program.
    let toml = "[serve]\nbind = \"127.0.0.1:0\"\n[[programs]]\nid = \"gone\"\nsignature = \"a -> b\"\nstate = \"missing.json\"\n";
    let file = ServeFile::from_toml(toml, Some(&dir)).unwrap();
    let dspex = mock().await;
    let error = Server::start_with(dspex, file, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("gone"), "{error}");
    let _ = std::fs::remove_dir_all(&dir);
}
