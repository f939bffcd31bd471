//! Layer 1: [`MockAdapter`], pure Rust.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use dspex_bridge::fake::{FakeLm, fake_check, fake_execute};
use dspex_bridge::pool::ProgramVersion;
use dspex_bridge::worker::run_callback;
use dspex_bridge::{RequestEvent, WorkerError};
use dspex_protocol::{CallError, ErrorKind, Value};
use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::json;
use tokio::sync::broadcast;

use super::{Adapter, AdapterStatus, Execution, Operation};
use crate::config::AdapterKind;
use crate::error::{Error, Result};
use crate::event::Event;

/// Chooses an error to inject for an operation (`None`: serve it).
pub type Injector = Arc<dyn Fn(&Operation) -> Option<Error> + Send + Sync>;

/// Deterministic outputs computed from the signature, in process, with
/// optional error injection. Values match the bridge-mock layer's exactly
/// (the same functions, [`dspex_bridge::fake`], compute both): a ReAct
/// program calls each of its Rust tools once with arguments built from the
/// tool's schema, `best_of_n` and `refine` call their reward, a streamed
/// call sends its text outputs in pieces.
pub struct MockAdapter {
    state: Mutex<MockState>,
    events: broadcast::Sender<Event>,
}

#[derive(Default)]
struct MockState {
    lm: Option<FakeLm>,
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

    fn serve(&self, operation: Operation) -> Result<Served> {
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
                state.lm = fake_lm(&config);
                Ok(Served::Done(
                    json!({"status": "configured", "model": config.model}),
                ))
            }
            Operation::CreateProgram(program) => {
                fake_check(&program.definition).map_err(|e| Error::from(WorkerError::Remote(e)))?;
                let reply = json!({"program_id": program.id(), "hash": program.hash});
                state.programs.insert(program.id().to_owned(), program);
                Ok(Served::Done(reply))
            }
            Operation::DeleteProgram(id) => {
                let deleted = state.programs.remove(&id).is_some();
                Ok(Served::Done(json!({"program_id": id, "deleted": deleted})))
            }
            Operation::Execute(execution) => {
                let model = execution
                    .lm
                    .as_ref()
                    .and_then(fake_lm)
                    .or_else(|| state.lm.clone())
                    .ok_or_else(|| Error::Lm {
                        message: "no LM configured; call configure_lm first".into(),
                        configured: false,
                    })?;
                Ok(Served::Run(model, execution))
            }
        }
    }
}

/// What serving an operation comes to: done at once, or a run to make.
enum Served {
    Done(Value),
    Run(FakeLm, Box<Execution>),
}

fn fake_lm(config: &dspex_protocol::LmConfig) -> Option<FakeLm> {
    match serde_json::to_value(config) {
        Ok(Value::Object(map)) => FakeLm::from_config(&map),
        _ => None,
    }
}

/// Runs a program the fake way, calling its Rust handlers directly.
async fn run(lm: FakeLm, execution: Execution) -> Result<Value> {
    let Execution {
        program,
        run,
        hooks,
        ..
    } = execution;
    let callbacks = hooks.callbacks;
    // As the worker actor runs them: a panic is the tool's error.
    let host = move |name: &str, args: Value| match &callbacks {
        Some(callbacks) => {
            let (callbacks, name) = (Arc::clone(callbacks), name.to_owned());
            async move { run_callback(&*callbacks, &name, args).await }.boxed()
        }
        None => {
            let error = CallError::new(ErrorKind::ToolError, format!("no handler for `{name}`"));
            async move { Err(error) }.boxed()
        }
    };
    let events = hooks.events;
    let event = move |event: &str, data: Value| {
        if let Some(events) = &events {
            let _ = events.send(RequestEvent {
                event: event.to_owned(),
                data,
            });
        }
    };
    let (name, args) = run.command(&program, false, None).into_parts();
    let Value::Object(args) = args else {
        return Err(Error::validation(
            "request",
            None,
            "arguments that are not a map",
        ));
    };
    fake_execute(&program.definition, &name, &args, &lm, &host, &event)
        .await
        .map_err(|error| Error::from(WorkerError::Remote(error)))
}

impl Adapter for MockAdapter {
    fn call(&self, operation: Operation) -> BoxFuture<'_, Result<Value>> {
        let served = self.serve(operation);
        async move {
            match served? {
                Served::Done(reply) => Ok(reply),
                Served::Run(model, execution) => run(model, *execution).await,
            }
        }
        .boxed()
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
