//! The service's own DSPy code, run from Rust: `examples/py/shop/support.py`
//! defines a `dspy.Module`; the Rust side declares the signature it is held
//! to, names the module, and streams its reply.
//!
//! ```sh
//! cargo run -p dspex --example python_module
//! ```

use dspex::{Dspex, ExecuteOptions, LmConfig, Module, Signature, StreamEvent};
use futures::StreamExt;

#[tokio::main]
async fn main() -> Result<(), dspex::Error> {
    let project = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/py");
    let mut builder = Dspex::builder()
        .name("python-module-example")
        .pool_size(1)
        .from_env()
        .python_project(project);
    if builder.current_config().lm.is_none() {
        builder = builder.lm(LmConfig::dummy());
    }
    let dspex = builder.start().await?;
    let signature = Signature::parse("message: str -> category: str, reply: str")?;
    let assistant = Module::python("shop.support:SupportAssistant")
        .kwargs(serde_json::json!({"signature": "Ada, from support"}));
    dspex
        .create_program("support", signature, assistant)
        .await?;
    let mut stream = dspex.execute_stream(
        "support",
        serde_json::json!({"message": "My parcel has not arrived."}),
        ExecuteOptions::default(),
    )?;
    let mut field = String::new();
    while let Some(event) = stream.next().await {
        match event? {
            StreamEvent::Chunk(chunk) => {
                if chunk.field != field {
                    print!("\n[streaming {}] ", chunk.field);
                    field = chunk.field;
                }
                print!("{}", chunk.text);
            }
            StreamEvent::Prediction(prediction) => {
                println!();
                println!("category: {}", prediction.get::<String>("category")?);
                println!("reply: {}", prediction.get::<String>("reply")?);
            }
        }
    }
    dspex.shutdown().await;
    Ok(())
}
