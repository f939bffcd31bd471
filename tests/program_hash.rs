//! One program hash on both sides of the pipe: the hash Rust computes for a
//! definition is the one the Python worker computes from what it was sent
//! (docs/protocol.md, "Program hash").

use std::time::Duration;

use dspex_bridge::pool::RequestOptions;
use dspex_protocol::{Command, FieldSpec, ProgramDefinition, SignatureSpec};
use dspex_testkit::TestTree;
use serde_json::json;

fn definitions() -> Vec<ProgramDefinition> {
    let plain = ProgramDefinition {
        program_id: "qa".into(),
        signature: SignatureSpec {
            name: "QA".into(),
            instructions: "Answer the question.".into(),
            inputs: vec![FieldSpec::new("question", "str")],
            outputs: vec![FieldSpec::new("answer", "str")],
        },
        module: "predict".into(),
        ..ProgramDefinition::default()
    };
    let rich = ProgramDefinition {
        program_id: "rich".into(),
        signature: SignatureSpec {
            name: "Rich".into(),
            instructions: "Réponds en français, s'il te plaît:\n\t« ok » \u{1}".into(),
            inputs: vec![
                FieldSpec {
                    description: Some("the text — with unicode ✓".into()),
                    ..FieldSpec::new("text", "str")
                },
                FieldSpec {
                    optional: true,
                    ..FieldSpec::new("hints", "optional[list[str]]")
                },
            ],
            outputs: vec![
                FieldSpec::new("label", "literal[spam|ham]"),
                FieldSpec::new("score", "float"),
                FieldSpec::new("tags", "dict[str, int]"),
            ],
        },
        module: "chain_of_thought".into(),
        demos: vec![
            json!({"text": "win £1,000,000 now", "label": "spam", "score": 0.97, "tags": {"money": 3}}),
            json!({"text": "lunch?", "label": "ham", "score": 1e-7, "tags": {}}),
            json!({"text": "big", "label": "ham", "score": 1e16, "tags": {"n": -4}}),
            json!({"text": "zero", "label": "ham", "score": 0.0, "tags": {"x": 12345678901i64}}),
        ],
        ..ProgramDefinition::default()
    };
    // Module arguments are part of the version: a ReAct program's tools.
    let agent = ProgramDefinition {
        program_id: "agent".into(),
        signature: plain.signature.clone(),
        module: "react".into(),
        module_args: json!({
            "tools": [{
                "name": "lookup",
                "description": "Looks a word up — «vite».",
                "args": {"type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]},
            }],
            "max_iters": 4,
        })
        .as_object()
        .cloned()
        .unwrap_or_default(),
        ..ProgramDefinition::default()
    };
    vec![plain, rich, agent]
}

#[tokio::test(flavor = "multi_thread")]
async fn rust_and_python_compute_the_same_program_hash() {
    let tree = TestTree::start().await.unwrap();
    tree.ready(Duration::from_secs(30)).await.unwrap();
    for definition in definitions() {
        let reply = tree
            .pool()
            .call(
                Command::CreateProgram(definition.clone()),
                RequestOptions::default(),
            )
            .await
            .unwrap();
        assert_eq!(
            reply["hash"],
            json!(definition.hash()),
            "{}: Python hashed what it was sent differently",
            definition.program_id
        );
    }
    tree.finish().await;
}
