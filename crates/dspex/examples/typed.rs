//! A typed program, start to finish.
//!
//! ```sh
//! cargo run -p dspex --example typed                       # real Python workers
//! DSPEX_ADAPTER=mock cargo run -p dspex --example typed    # pure Rust
//! ```

use dspex::{Dspex, LmConfig, Module, Signature};

/// Classify the sentiment of a product review.
#[derive(Signature)]
struct Sentiment {
    /// The review text.
    #[input]
    review: String,
    #[output(literal = "positive|negative|neutral")]
    sentiment: String,
    #[output(kind = "probability")]
    probability: f64,
    /// Short phrases that justify the label.
    #[output]
    evidence: Vec<String>,
}

#[tokio::main]
async fn main() -> Result<(), dspex::Error> {
    let dspex = Dspex::builder()
        .name("typed-example")
        .pool_size(1)
        .from_env()
        .lm(LmConfig::dummy())
        .start()
        .await?;
    let classify = dspex
        .program::<Sentiment>("sentiment", Module::ChainOfThought)
        .await?;
    let out = classify
        .call(SentimentInputs {
            review: "Arrived on time, works as described.".into(),
        })
        .await?;
    println!(
        "{} (p = {:.2}); evidence: {:?}",
        out.sentiment, out.probability, out.evidence
    );
    dspex.shutdown().await;
    Ok(())
}
