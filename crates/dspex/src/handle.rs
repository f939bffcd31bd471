//! [`Dspex`]: the handle a service holds (built by [`DspexBuilder`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use dspex_bridge::pool::{ProgramVersion, Run, Session as PoolSession};
use dspex_bridge::{Hooks, RequestEvent, WorkerError};
use dspex_protocol::{
    BatchArgs, ExecuteArgs, LmConfig, Map, ProgramDefinition, RemoteError, Value,
};
use futures::FutureExt;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc};
use tower::ServiceExt;
use tracing::Instrument;

use crate::adapter::{Adapter, AdapterStatus, ExecuteRequest, Execution, Operation};
use crate::builder::DspexBuilder;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::module::Module;
use crate::program::{Prediction, Program, ProgramInfo, ProgramUsage};
use crate::resilience::{BreakerStatus, CircuitBreaker, ExecuteStack, Gate, RetryPolicy, Retrying};
use crate::signature::{Signature, TypedSignature};
use crate::stream::PredictionStream;
use crate::telemetry;
use crate::tool::Handlers;

/// Per-call options of [`Dspex::execute`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecuteOptions {
    /// The call's whole time budget (waiting for a worker and retries
    /// included); overrides the request timeout.
    pub timeout: Option<Duration>,
    /// The session (affinity to one worker; stateful sessions stay there).
    pub session: Option<PoolSession>,
    /// An LM for this call only (a worker registers it once; later calls
    /// only name it).
    pub lm: Option<LmConfig>,
    /// The call may run twice without harm, so it is retried even after
    /// failures that may have run it (a crash mid-request). Calls are not
    /// idempotent unless marked.
    pub idempotent: bool,
    /// Overrides the retry policy for this call.
    pub retry: Option<RetryPolicy>,
    /// Return the LM calls' prompts and completions with the prediction
    /// ([`Prediction::lm_history`]; single calls and streams, not batches);
    /// for debugging, off by default.
    pub lm_history: bool,
    /// Threads DSPy runs a batch on ([`Dspex::execute_batch`] only;
    /// default: the worker's choice).
    pub threads: Option<u32>,
}

impl ExecuteOptions {
    /// Sets the timeout.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets an LM for this call only.
    #[must_use]
    pub fn lm(mut self, lm: LmConfig) -> Self {
        self.lm = Some(lm);
        self
    }

    /// Marks the call idempotent (see the field).
    #[must_use]
    pub fn idempotent(mut self) -> Self {
        self.idempotent = true;
        self
    }

    /// Sets the retry policy.
    #[must_use]
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = Some(retry);
        self
    }

    /// Asks for the LM calls' prompts and completions.
    #[must_use]
    pub fn lm_history(mut self) -> Self {
        self.lm_history = true;
        self
    }

    /// Sets the threads of a batch.
    #[must_use]
    pub fn threads(mut self, threads: u32) -> Self {
        self.threads = Some(threads);
        self
    }
}

/// A snapshot of a running instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// The adapter's view (mode, pool status, failure, environment).
    pub adapter: AdapterStatus,
    /// The circuit breaker.
    pub breaker: BreakerStatus,
    /// Retries made so far.
    pub retries: u64,
    /// Retries the policy allowed but the retry budget refused.
    pub retries_denied: u64,
    /// Calls in flight through this handle.
    pub in_flight: usize,
    /// Whether the handle has stopped admitting calls (shutting down).
    pub closing: bool,
    /// Programs known.
    pub programs: usize,
    /// LM usage by program id since the instance started (programs
    /// deleted since included).
    pub usage: BTreeMap<String, ProgramUsage>,
}

/// A running DSPex instance. Cheap to clone; clones share everything.
#[derive(Debug, Clone)]
pub struct Dspex {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) name: String,
    pub(crate) adapter: Arc<dyn Adapter>,
    /// The execute path: the resilience layers around the adapter.
    pub(crate) stack: ExecuteStack,
    pub(crate) gate: Arc<Gate>,
    pub(crate) breaker: Arc<CircuitBreaker>,
    pub(crate) retry: Retrying,
    pub(crate) shutdown_grace: Duration,
    /// The one store of programs: every adapter is given the version it runs.
    pub(crate) programs: RwLock<HashMap<String, Arc<ProgramEntry>>>,
    pub(crate) usage: Mutex<BTreeMap<String, ProgramUsage>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("adapter", &self.adapter)
            .field("gate", &self.gate)
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub(crate) struct ProgramEntry {
    pub(crate) version: ProgramVersion,
    pub(crate) signature: Signature,
    pub(crate) module: Module,
    /// Its tools and reward, run when the worker calls back.
    pub(crate) handlers: Arc<Handlers>,
}

impl Dspex {
    /// A builder with the defaults (Python adapter, pool of 4).
    pub fn builder() -> DspexBuilder {
        DspexBuilder::default()
    }

    pub(crate) fn from_inner(inner: Arc<Inner>) -> Self {
        Self { inner }
    }

    /// The instance's name (`name` of the configuration).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Sets the LM every worker uses (validated on one worker first; a bad
    /// configuration changes nothing).
    ///
    /// # Cancel safety
    /// If dropped before the first worker answered, nothing changes.
    ///
    /// # Errors
    /// The adapter's errors (a rejected configuration is [`Error::Validation`]
    /// or [`Error::Lm`]).
    pub async fn configure_lm(&self, lm: LmConfig) -> Result<()> {
        let _admitted = self.inner.gate.admit()?;
        self.inner.adapter.call(Operation::ConfigureLm(lm)).await?;
        Ok(())
    }

    /// Creates (or replaces) a program from a signature and a module (see
    /// [`Module`]: `predict`, `chain_of_thought`, ReAct over Rust tools,
    /// `best_of_n` and `refine` with a Rust reward, the service's own
    /// Python module, ...).
    ///
    /// # Cancel safety
    /// If dropped before the adapter answered, the program is not known.
    ///
    /// # Errors
    /// [`Error::Validation`] for a bad id, bad module arguments, a module
    /// the workers refuse (one that needs Deno; a Python module with no
    /// project configured) or a signature the worker rejects;
    /// [`Error::Python`] (`ModuleImportError`, with the traceback) for a
    /// Python module that will not import or build, or lies outside the
    /// project.
    pub async fn create_program(
        &self,
        program_id: &str,
        signature: Signature,
        module: impl Into<Module>,
    ) -> Result<ProgramInfo> {
        self.define(program_id, signature, module.into(), Vec::new(), None)
            .await
    }

    /// Gives a program few-shot examples (maps of field values: its inputs
    /// and the outputs they should produce), checked against its signature.
    /// The program is redefined with them; workers load the new version on
    /// their next call. An empty list removes them.
    ///
    /// # Cancel safety
    /// As [`Dspex::create_program`].
    ///
    /// # Errors
    /// [`Error::Validation`] naming the demo and the field when one does not
    /// fit the signature (nothing changes then), or if there is no such
    /// program.
    pub async fn set_demos(
        &self,
        program_id: &str,
        demos: Vec<Map<String, Value>>,
    ) -> Result<ProgramInfo> {
        let entry = self.entry(program_id)?;
        // Demos set by hand replace the compiled state (which carries demos).
        self.define(
            program_id,
            entry.signature.clone(),
            entry.module.clone(),
            demos,
            None,
        )
        .await
    }

    /// The one way a program comes to be.
    pub(crate) async fn define(
        &self,
        program_id: &str,
        signature: Signature,
        module: Module,
        demos: Vec<Map<String, Value>>,
        state: Option<Value>,
    ) -> Result<ProgramInfo> {
        crate::program::validate_id("program", program_id)?;
        let (module_args, handlers) = module.build()?;
        crate::program::check_demos(&signature, &module, &demos)?;
        let version = ProgramVersion::new(ProgramDefinition {
            program_id: program_id.to_owned(),
            signature: signature.to_spec(),
            module: module.name().to_owned(),
            demos: demos.into_iter().map(Value::Object).collect(),
            module_args,
            state,
        });
        let _admitted = self.inner.gate.admit()?;
        self.inner
            .adapter
            .call(Operation::CreateProgram(version.clone()))
            .await?;
        let entry = Arc::new(ProgramEntry {
            version,
            signature,
            module,
            handlers: Arc::new(handlers),
        });
        let info = ProgramInfo::of(&entry);
        self.write_programs().insert(program_id.to_owned(), entry);
        Ok(info)
    }

    /// Creates a typed program for a `#[derive(Signature)]` type.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use dspex::{AdapterKind, Dspex, LmConfig, Module, Signature};
    ///
    /// /// Translate to French.
    /// #[derive(Signature)]
    /// struct Translate {
    ///     #[input]
    ///     english: String,
    ///     #[output]
    ///     french: String,
    /// }
    ///
    /// let dspex = Dspex::builder().adapter(AdapterKind::Mock).lm(LmConfig::dummy()).start().await?;
    /// let translate = dspex.program::<Translate>("translate", Module::Predict).await?;
    /// let out: TranslateOutputs = translate.call(TranslateInputs { english: "cat".into() }).await?;
    /// assert!(!out.french.is_empty());
    /// # Ok::<(), dspex::Error>(())
    /// # });
    /// ```
    ///
    /// # Cancel safety
    /// As [`Dspex::create_program`].
    ///
    /// # Errors
    /// As [`Dspex::create_program`].
    pub async fn program<S: TypedSignature>(
        &self,
        program_id: &str,
        module: impl Into<Module>,
    ) -> Result<Program<S>> {
        self.create_program(program_id, S::signature(), module)
            .await?;
        Ok(Program::new(self.clone(), program_id.to_owned()))
    }

    /// Runs a program. Inputs are checked against its signature before they
    /// leave Rust, and outputs when they come back.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use dspex::{AdapterKind, Category, Dspex, ExecuteOptions, LmConfig, Module, Signature};
    /// use serde_json::json;
    ///
    /// let dspex = Dspex::builder().adapter(AdapterKind::Mock).lm(LmConfig::dummy()).start().await?;
    /// let signature = Signature::parse("question: str -> answer: str, confidence: float")?;
    /// dspex.create_program("qa", signature, Module::Predict).await?;
    ///
    /// let prediction = dspex
    ///     .execute("qa", json!({"question": "Why?"}), ExecuteOptions::default())
    ///     .await?;
    /// assert!(prediction.get::<f64>("confidence")? >= 0.0);
    ///
    /// // A wrong input never leaves Rust, and the error names the field.
    /// let error = dspex
    ///     .execute("qa", json!({"question": 42}), ExecuteOptions::default())
    ///     .await
    ///     .unwrap_err();
    /// assert_eq!(error.category(), Category::Validation);
    /// assert!(error.to_string().contains("question"));
    /// # dspex.shutdown().await;
    /// # Ok::<(), dspex::Error>(())
    /// # });
    /// ```
    ///
    /// The call runs through the resilience layers
    /// ([`crate::resilience`]): one deadline for the whole call; retries
    /// only of failures of the machinery that may be retried (errors that
    /// guarantee the request never ran, others only for calls marked
    /// idempotent), within a budget; refusals — a full queue, no worker in
    /// time, an open circuit — are returned at once with their suggested
    /// delay.
    ///
    /// # Cancel safety
    /// Dropping the future while queued leaves the queue; while a request
    /// runs, its worker stays out of service until the worker has answered,
    /// and the reply reaches nobody.
    ///
    /// # Errors
    /// [`Error::Validation`] (nothing sent) and every category of [`Error`].
    pub async fn execute(
        &self,
        program_id: &str,
        inputs: impl Serialize,
        options: ExecuteOptions,
    ) -> Result<Prediction> {
        let entry = self.entry(program_id)?;
        let inputs = to_map(&inputs)?;
        entry.signature.validate_inputs(&inputs)?;
        let started = Instant::now();
        let run = Run::One(ExecuteArgs {
            inputs,
            lm_history: options.lm_history,
            ..ExecuteArgs::default()
        });
        let executed = self.send(&entry, run, options, None, None).await?;
        self.prediction(&entry, executed.reply, executed.attempts, started)
    }

    /// Runs a program and streams its output fields as the LM writes them
    /// (DSPy's `streamify` with a listener per output field), then yields
    /// the [`Prediction`]. Inputs are checked before anything is sent.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use dspex::{AdapterKind, Dspex, ExecuteOptions, LmConfig, Module, Signature, StreamEvent};
    /// use futures::StreamExt;
    ///
    /// let dspex = Dspex::builder().adapter(AdapterKind::Mock).lm(LmConfig::dummy()).start().await?;
    /// dspex.create_program("qa", Signature::parse("question -> answer")?, Module::Predict).await?;
    /// let mut stream = dspex.execute_stream("qa", serde_json::json!({"question": "Why?"}), ExecuteOptions::default())?;
    /// let mut answer = String::new();
    /// while let Some(event) = stream.next().await {
    ///     match event? {
    ///         StreamEvent::Chunk(chunk) => answer.push_str(&chunk.text),
    ///         StreamEvent::Prediction(prediction) => assert_eq!(prediction.get::<String>("answer")?, answer),
    ///     }
    /// }
    /// # dspex.shutdown().await;
    /// # Ok::<(), dspex::Error>(())
    /// # });
    /// ```
    ///
    /// Only failures that guarantee the call never ran are retried (so no
    /// chunk is ever streamed twice), even for a call marked idempotent.
    ///
    /// # Errors
    /// [`Error::Validation`] at once for bad inputs or an unknown program;
    /// the call's own errors as the stream's last item.
    pub fn execute_stream(
        &self,
        program_id: &str,
        inputs: impl Serialize,
        options: ExecuteOptions,
    ) -> Result<PredictionStream> {
        let entry = self.entry(program_id)?;
        let inputs = to_map(&inputs)?;
        entry.signature.validate_inputs(&inputs)?;
        let (events, received) = mpsc::unbounded_channel();
        let this = self.clone();
        // A call that may have run is not run again: its chunks would be
        // streamed twice.
        let options = ExecuteOptions {
            idempotent: false,
            ..options
        };
        let call = async move {
            let started = Instant::now();
            let run = Run::One(ExecuteArgs {
                inputs,
                stream: true,
                lm_history: options.lm_history,
                ..ExecuteArgs::default()
            });
            let executed = this.send(&entry, run, options, None, Some(events)).await?;
            this.prediction(&entry, executed.reply, executed.attempts, started)
        };
        Ok(PredictionStream::new(received, call.boxed()))
    }

    /// Runs a program on many inputs in one call: the worker runs them with
    /// DSPy's own parallelism (`dspy.Parallel`, `options.threads` threads).
    /// Each input gets its own result, in order; one failing does not fail
    /// the others.
    ///
    /// # Cancel safety
    /// As [`Dspex::execute`]: a dropped call is cancelled on the worker.
    ///
    /// # Errors
    /// [`Error::Validation`] naming the item and the field when an input
    /// does not fit the signature (nothing is sent); the call's errors when
    /// the batch as a whole fails (no worker, a crash, its deadline).
    pub async fn execute_batch<I: Serialize>(
        &self,
        program_id: &str,
        inputs: impl IntoIterator<Item = I>,
        options: ExecuteOptions,
    ) -> Result<Vec<Result<Prediction>>> {
        let entry = self.entry(program_id)?;
        let inputs = inputs
            .into_iter()
            .enumerate()
            .map(|(i, inputs)| {
                let inputs = to_map(&inputs).map_err(|e| in_item(i, e))?;
                entry
                    .signature
                    .validate_inputs(&inputs)
                    .map_err(|e| in_item(i, e.into()))?;
                Ok(inputs)
            })
            .collect::<Result<Vec<_>>>()?;
        let started = Instant::now();
        let run = Run::Batch(BatchArgs {
            inputs,
            num_threads: options.threads,
            ..BatchArgs::default()
        });
        let executed = self.send(&entry, run, options, None, None).await?;
        let mut reply = executed.reply;
        let model = reply.get("model").cloned();
        let Some(Value::Array(results)) = reply.get_mut("results").map(Value::take) else {
            return Err(Error::Protocol {
                message: "execute_batch replied without a results list".into(),
            });
        };
        Ok(results
            .into_iter()
            .map(|mut item| {
                if let Some(error) = item.get_mut("error").map(Value::take) {
                    return Err(match serde_json::from_value::<RemoteError>(error) {
                        Ok(error) => Error::from(WorkerError::Remote(error)),
                        Err(error) => Error::Protocol {
                            message: format!("a batch item's error is malformed: {error}"),
                        },
                    });
                }
                if let (Some(model), Some(map)) = (&model, item.as_object_mut()) {
                    map.entry("model").or_insert_with(|| model.clone());
                }
                self.prediction(&entry, item, executed.attempts, started)
            })
            .collect())
    }

    /// Sends a run of a program through the resilience layers; `callbacks`
    /// (a metric's) instead of the program's own when given.
    pub(crate) async fn send(
        &self,
        entry: &ProgramEntry,
        run: Run,
        options: ExecuteOptions,
        callbacks: Option<Arc<dyn dspex_bridge::Callbacks>>,
        events: Option<mpsc::UnboundedSender<RequestEvent>>,
    ) -> Result<crate::adapter::Executed> {
        let callbacks = callbacks.or_else(|| {
            (!entry.handlers.is_empty())
                .then(|| Arc::clone(&entry.handlers) as Arc<dyn dspex_bridge::Callbacks>)
        });
        let request = ExecuteRequest {
            execution: Execution {
                program: entry.version.clone(),
                run,
                session: options.session,
                timeout: None,
                lm: options.lm,
                hooks: Hooks { callbacks, events },
            },
            timeout: options.timeout,
            deadline: None,
            idempotent: options.idempotent,
            retry: options.retry,
            attempt: 1,
        };
        let operation = telemetry::operation(&request.execution.run);
        let _job = telemetry::JobGauge::start(self.name(), operation);
        let started = Instant::now();
        let span = tracing::info_span!(
            "dspex.call",
            program = entry.version.id(),
            operation,
            worker = tracing::field::Empty,
            pid = tracing::field::Empty,
        );
        let result = self
            .inner
            .stack
            .clone()
            .oneshot(request)
            .instrument(span)
            .await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(error) => error.category().as_str(),
        };
        telemetry::record_call(
            self.name(),
            entry.version.id(),
            operation,
            outcome,
            started.elapsed(),
        );
        result
    }

    /// A reply as a checked [`Prediction`], its usage counted.
    pub(crate) fn prediction(
        &self,
        entry: &ProgramEntry,
        reply: Value,
        attempts: u32,
        started: Instant,
    ) -> Result<Prediction> {
        let mut prediction = Prediction::from_reply(entry.version.id(), reply)?;
        entry.signature.validate_outputs(&prediction.outputs)?;
        prediction.attempts = attempts;
        prediction.latency = started.elapsed();
        let mut usage = self
            .inner
            .usage
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let program = usage.entry(entry.version.id().to_owned()).or_default();
        program.calls += 1;
        program.tokens.add(&prediction.usage);
        telemetry::record_tokens(self.name(), &prediction.usage);
        Ok(prediction)
    }

    /// The programs known, sorted by id.
    pub fn list_programs(&self) -> Vec<ProgramInfo> {
        let mut programs: Vec<ProgramInfo> = self
            .read_programs()
            .values()
            .map(|entry| ProgramInfo::of(entry))
            .collect();
        programs.sort_by(|a, b| a.program_id.cmp(&b.program_id));
        programs
    }

    /// One program's description.
    ///
    /// # Errors
    /// [`Error::Validation`] if there is no such program.
    pub fn program_info(&self, program_id: &str) -> Result<ProgramInfo> {
        Ok(ProgramInfo::of(&*self.entry(program_id)?))
    }

    /// Deletes a program; `true` if it existed.
    ///
    /// # Cancel safety
    /// The program is forgotten on the Rust side at once; dropping the
    /// future only skips telling the workers (they forget it lazily).
    ///
    /// # Errors
    /// The adapter's errors.
    pub async fn delete_program(&self, program_id: &str) -> Result<bool> {
        let _admitted = self.inner.gate.admit()?;
        let existed = self.write_programs().remove(program_id).is_some();
        if existed {
            self.inner
                .adapter
                .call(Operation::DeleteProgram(program_id.to_owned()))
                .await?;
        }
        Ok(existed)
    }

    /// A session: calls made through it prefer one worker.
    pub fn session(&self, id: impl Into<String>) -> crate::Session {
        crate::Session::new(self.clone(), PoolSession::new(id))
    }

    /// A stateful session: calls run only on its worker, and fail with
    /// [`Error::SessionLost`] once that worker is gone.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use dspex::{AdapterKind, Dspex, ExecuteOptions, LmConfig, Module, Signature};
    ///
    /// let dspex = Dspex::builder().adapter(AdapterKind::BridgeMock).pool_size(2)
    ///     .lm(LmConfig::dummy()).start().await?;
    /// dspex.create_program("echo", Signature::parse("q: str -> a: str")?, Module::Predict).await?;
    /// let chat = dspex.stateful_session("user-7");
    /// let a = chat.execute("echo", serde_json::json!({"q": "hi"}), ExecuteOptions::default()).await?;
    /// let b = chat.execute("echo", serde_json::json!({"q": "hi"}), ExecuteOptions::default()).await?;
    /// assert_eq!(a.outputs, b.outputs);
    /// assert!(chat.is_stateful());
    /// # dspex.shutdown().await;
    /// # Ok::<(), dspex::Error>(())
    /// # });
    /// ```
    pub fn stateful_session(&self, id: impl Into<String>) -> crate::Session {
        crate::Session::new(self.clone(), PoolSession::stateful(id))
    }

    /// A snapshot. Never waits on an actor.
    pub fn status(&self) -> Status {
        Status {
            adapter: self.inner.adapter.status(),
            breaker: self.inner.breaker.status(),
            retries: self.inner.retry.retries(),
            retries_denied: self.inner.retry.denied(),
            in_flight: self.inner.gate.in_flight(),
            closing: self.inner.gate.is_closed(),
            programs: self.read_programs().len(),
            usage: self
                .inner
                .usage
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        }
    }

    /// Worker events from now on.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.inner.adapter.events()
    }

    /// Shuts down gracefully, whatever the adapter and mode: stops
    /// admitting (new calls are refused at once), lets the calls in flight
    /// finish within the shutdown grace (`shutdown_grace_ms`, default 10 s),
    /// then stops every worker and waits until they are gone.
    ///
    /// # Cancel safety
    /// The handle stays closed if the future is dropped; the calls in flight
    /// keep running, and the workers stay up until a later shutdown (or the
    /// drop of the last handle's tree).
    pub async fn shutdown(&self) {
        self.shutdown_within(self.inner.shutdown_grace).await;
    }

    /// [`Dspex::shutdown`] with this grace for the calls in flight.
    ///
    /// # Cancel safety
    /// As [`Dspex::shutdown`].
    pub async fn shutdown_within(&self, grace: Duration) {
        let started = Instant::now();
        self.inner.gate.close();
        if !self.inner.gate.drained(grace).await {
            tracing::warn!(
                in_flight = self.inner.gate.in_flight(),
                ?grace,
                "shutdown: calls still in flight after the grace; stopping the workers"
            );
        }
        let left = grace.saturating_sub(started.elapsed());
        self.inner.adapter.shutdown(left).await;
    }

    pub(crate) fn entry(&self, program_id: &str) -> Result<Arc<ProgramEntry>> {
        self.read_programs()
            .get(program_id)
            .cloned()
            .ok_or_else(|| {
                Error::validation(
                    "program",
                    None,
                    format!("no program {program_id:?}; create it first"),
                )
            })
    }

    fn read_programs(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<ProgramEntry>>> {
        self.inner
            .programs
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write_programs(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<ProgramEntry>>> {
        self.inner
            .programs
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// An error of batch item `i`.
fn in_item(i: usize, error: Error) -> Error {
    match error {
        Error::Validation {
            what,
            field,
            message,
        } => Error::Validation {
            what,
            field,
            message: format!("batch item {i}: {message}"),
        },
        other => other,
    }
}

pub(crate) fn to_map(inputs: &impl Serialize) -> Result<Map<String, Value>> {
    match serde_json::to_value(inputs) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(Error::validation(
            "input",
            None,
            format!("inputs must be a map of field names to values, not {other}"),
        )),
        Err(error) => Err(Error::validation("input", None, error.to_string())),
    }
}
