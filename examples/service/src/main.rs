//! DSPex embedded in a web service.
//!
//! One `Dspex` handle is built at start and shared by every request handler
//! (it is cheap to clone). Requests run a typed program; errors become HTTP
//! statuses by category; SIGINT/SIGTERM shut the workers down before exit.
//!
//! ```sh
//! cargo run -p dspex-example-service            # Python workers, offline `dummy` LM
//! DSPEX_ADAPTER=mock cargo run -p dspex-example-service
//! curl -s localhost:3000/answer -H 'content-type: application/json' \
//!      -d '{"question": "What is DSPy?"}'
//! ```

use std::net::SocketAddr;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use dspex::{Category, Dspex, LmConfig, Module, Program, Signature};
use serde_json::{Value, json};

/// Answer the question in one sentence and say how sure you are.
#[derive(Signature)]
struct Answer {
    /// The user's question.
    #[input]
    question: String,
    #[output]
    answer: String,
    #[output(kind = "confidence")]
    confidence: f64,
}

#[derive(Clone)]
struct App {
    dspex: Dspex,
    answer: Program<Answer>,
}

async fn answer(
    State(app): State<App>,
    Json(inputs): Json<AnswerInputs>,
) -> Result<Json<AnswerOutputs>, (StatusCode, Json<Value>)> {
    app.answer.call(inputs).await.map(Json).map_err(|error| {
        let status = match error.category() {
            Category::Validation => StatusCode::UNPROCESSABLE_ENTITY,
            Category::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            Category::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Category::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_GATEWAY,
        };
        let retry_after = error.suggested_delay().map(|d| d.as_millis());
        (
            status,
            Json(json!({"error": error.to_string(), "retry_after_ms": retry_after})),
        )
    })
}

async fn health(State(app): State<App>) -> Json<Value> {
    let status = app.dspex.status();
    let pool = status.adapter.pool.as_ref();
    Json(json!({
        "adapter": format!("{:?}", status.adapter.kind),
        "failed": status.adapter.failed,
        "workers": pool.map(|p| p.workers.len()),
        "idle": pool.map(|p| p.idle),
        "restarts": pool.map(|p| p.restarts),
        "breaker": format!("{:?}", status.breaker.state),
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("warn").init();
    // Explicit: the environment is read because this service asks for it.
    let dspex = Dspex::builder()
        .name("service")
        .pool_size(2)
        .from_env()
        .lm(LmConfig::dummy())
        .start()
        .await?;
    let program = dspex
        .program::<Answer>("answer", Module::ChainOfThought)
        .await?;
    let app = App {
        dspex: dspex.clone(),
        answer: program,
    };
    let router = Router::new()
        .route("/answer", post(answer))
        .route("/health", get(health))
        .with_state(app);
    let addr = SocketAddr::from(([127, 0, 0, 1], 3000));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on http://{addr}");
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        })
        .await?;
    dspex.shutdown().await;
    Ok(())
}
