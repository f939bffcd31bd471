//! Retrieval-augmented generation whose retrieval runs in Rust: the
//! service keeps its documents and ranks them itself (here a small
//! keyword-overlap ranking over an in-memory corpus; in a real service, its
//! search index), and DSPy only writes the answer from what was retrieved.
//! Many questions go to the worker as one batch.
//!
//! ```sh
//! cargo run -p dspex --example rag
//! ```

use std::collections::HashSet;

use dspex::{Dspex, ExecuteOptions, LmConfig, Module, Signature};

const CORPUS: &[&str] = &[
    "DSPex runs DSPy programs from Rust services through supervised Python workers.",
    "A worker that crashes is replaced; its requests are retried only if they never ran.",
    "Tools written in Rust are called back from a running ReAct program.",
    "The offline dummy LM answers deterministically, so tests need no network.",
    "Sessions keep the turns of a conversation on the Rust side.",
];

fn words(text: &str) -> HashSet<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.len() > 2)
        .map(str::to_lowercase)
        .collect()
}

/// The `k` passages sharing the most words with the question.
fn retrieve(question: &str, k: usize) -> Vec<String> {
    let asked = words(question);
    let mut scored: Vec<(usize, &str)> = CORPUS
        .iter()
        .map(|passage| (words(passage).intersection(&asked).count(), *passage))
        .collect();
    scored.sort_by_key(|(score, _)| std::cmp::Reverse(*score));
    scored
        .into_iter()
        .take(k)
        .map(|(_, p)| p.to_owned())
        .collect()
}

#[tokio::main]
async fn main() -> Result<(), dspex::Error> {
    let mut builder = Dspex::builder().name("rag-example").pool_size(1).from_env();
    if builder.current_config().lm.is_none() {
        builder = builder.lm(LmConfig::dummy());
    }
    let dspex = builder.start().await?;
    let signature = Signature::parse("context: list[str], question: str -> answer: str")?
        .with_instructions("Answer the question from the context only.");
    dspex
        .create_program("rag", signature, Module::ChainOfThought)
        .await?;
    let questions = [
        "What happens when a worker crashes?",
        "Where do tools run?",
        "Do tests need the network?",
    ];
    let batch: Vec<serde_json::Value> = questions
        .iter()
        .map(|q| serde_json::json!({"question": q, "context": retrieve(q, 2)}))
        .collect();
    let results = dspex
        .execute_batch("rag", batch, ExecuteOptions::default().threads(3))
        .await?;
    for (question, result) in questions.iter().zip(results) {
        let prediction = result?;
        println!("{question}\n  -> {}", prediction.get::<String>("answer")?);
    }
    println!("usage: {:?}", dspex.status().usage["rag"]);
    dspex.shutdown().await;
    Ok(())
}
