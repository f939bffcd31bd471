//! Layer 1: [`MockAdapter`], pure Rust.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use dspex_bridge::fake::fake_outputs;
use dspex_bridge::pool::ProgramVersion;
use dspex_protocol::Value;
use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::json;
use tokio::sync::broadcast;

use super::{Adapter, AdapterStatus, Operation};
use crate::config::AdapterKind;
use crate::error::{Error, Result};
use crate::event::Event;

/// Chooses an error to inject for an operation (`None`: serve it).
pub type Injector = Arc<dyn Fn(&Operation) -> Option<Error> + Send + Sync>;

/// Deterministic outputs computed from the signature, in process, with
/// optional error injection. Values match the bridge-mock layer's exactly
/// (the same function computes both).
pub struct MockAdapter {
    state: Mutex<MockState>,
    events: broadcast::Sender<Event>,
}

#[derive(Default)]
struct MockState {
    lm: Option<String>,
    programs: HashMap<String, ProgramVersion>,
    injector: Option<Injector>,
}

impl std::fmt::Debug for MockAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockAdapter").finish_non_exhaustive()
    }
}

impl Default for MockAdapter {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            events: broadcast::channel(16).0,
        }
    }
}

impl MockAdapter {
    /// A mock with no LM and no programs.
    pub fn new() -> Self {
        Self::default()
    }

    /// Injects errors: `injector` sees every operation and may fail it.
    pub fn inject(&self, injector: impl Fn(&Operation) -> Option<Error> + Send + Sync + 'static) {
        self.lock().injector = Some(Arc::new(injector));
    }

    /// Stops injecting errors.
    pub fn clear_injection(&self) {
        self.lock().injector = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MockState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn serve(&self, operation: Operation) -> Result<Value> {
        let mut state = self.lock();
        if let Some(error) = state
            .injector
            .as_ref()
            .and_then(|inject| inject(&operation))
        {
            return Err(error);
        }
        match operation {
            Operation::ConfigureLm(config) => {
                if config.model.trim().is_empty() {
                    return Err(Error::validation(
                        "lm",
                        Some("model".into()),
                        "no model given",
                    ));
                }
                state.lm = Some(config.model.clone());
                Ok(json!({"status": "configured", "model": config.model}))
            }
            Operation::CreateProgram(program) => {
                let reply = json!({"program_id": program.id(), "hash": program.hash});
                state.programs.insert(program.id().to_owned(), program);
                Ok(reply)
            }
            Operation::DeleteProgram(id) => {
                let deleted = state.programs.remove(&id).is_some();
                Ok(json!({"program_id": id, "deleted": deleted}))
            }
            Operation::Execute(execution) => {
                let model = execution
                    .lm
                    .as_ref()
                    .map(|lm| lm.model.clone())
                    .or_else(|| state.lm.clone())
                    .ok_or_else(|| Error::Lm {
                        message: "no LM configured; call configure_lm first".into(),
                        configured: false,
                    })?;
                let program = &execution.program.definition;
                let outputs = fake_outputs(program, &execution.inputs);
                Ok(json!({
                    "program_id": program.program_id,
                    "outputs": outputs,
                    "duration_ms": 0.0,
                    "model": model,
                }))
            }
        }
    }
}

impl Adapter for MockAdapter {
    fn call(&self, operation: Operation) -> BoxFuture<'_, Result<Value>> {
        let result = self.serve(operation);
        async move { result }.boxed()
    }

    fn status(&self) -> AdapterStatus {
        AdapterStatus {
            kind: AdapterKind::Mock,
            mode: None,
            failed: None,
            pool: None,
            environment: None,
        }
    }

    fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    fn shutdown(&self, _grace: std::time::Duration) -> BoxFuture<'_, ()> {
        async {}.boxed()
    }
}
