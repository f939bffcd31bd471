//! An in-process fake worker that speaks the wire protocol, behind the same
//! [`SpawnStrategy`] interface as real Python processes.
//!
//! [`FakeSpawner`] runs each "process" as tokio tasks connected by in-memory
//! pipes, so the real codec, worker actor, supervisor and pool are exercised
//! at memory speed: model-based tests run thousands of cases, and the
//! bridge-mock adapter runs without Python. Signals act on the fake:
//! `SIGKILL`/`SIGTERM` end it (exit `Signal(n)`), `SIGSTOP`/`SIGCONT` pause and
//! resume it, and EOF on its stdin ends it with exit code 0.
//!
//! Fake pids start above `u32::MAX / 2`, beyond any real pid and beyond
//! `i32::MAX`, so no code path can signal a real process with one.
//!
//! Commands: `ping`, `echo`, `sleep {ms}`, `hang`, `exit {code}`,
//! `configure_lm` (with `lm_id`: a named LM; `latency_ms` delays the
//! default LM's executions), `create_program`,
//! `execute_program` (typed values derived from the signature and inputs;
//! `lm` or `lm_id` overrides), `list_programs`, `delete_program`,
//! `get_stats`, `reset_state`, `shutdown`; anything else is
//! `UnknownCommand`. Like the real worker (Protocol 2, feature `deadline`),
//! a request with `deadline_ms` is answered `DeadlineExceeded` at its
//! deadline if it is not done by then.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dspex_protocol::{
    ErrorKind, MessageCodec, ProgramDefinition, Ready, RemoteError, Request, Response, Value,
};
use futures::future::BoxFuture;
use futures::{FutureExt, SinkExt, StreamExt};
use nix::sys::signal::Signal;
use serde_json::{Map, json};
use tokio::io::DuplexStream;
use tokio::sync::{mpsc, watch};
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::process::{
    Exit, ProcessControl, Signaller, SpawnError, SpawnStrategy, Spawned, WorkerCommand,
};

const PIPE_BYTES: usize = 256 * 1024;

/// Spawns in-process fake workers. See the module docs.
#[derive(Debug)]
pub struct FakeSpawner {
    next_pid: AtomicU32,
    spawned: AtomicU32,
    /// How long a fake takes from spawn to its handshake.
    pub boot_delay: Duration,
}

impl Default for FakeSpawner {
    fn default() -> Self {
        Self::new(Duration::ZERO)
    }
}

impl FakeSpawner {
    /// A spawner whose fakes send their handshake after `boot_delay`.
    pub fn new(boot_delay: Duration) -> Self {
        Self {
            next_pid: AtomicU32::new(u32::MAX / 2 + 1),
            spawned: AtomicU32::new(0),
            boot_delay,
        }
    }

    /// How many fakes this spawner has started.
    pub fn spawned(&self) -> u32 {
        self.spawned.load(Ordering::Relaxed)
    }
}

impl SpawnStrategy for FakeSpawner {
    fn spawn(&self, command: WorkerCommand) -> BoxFuture<'static, Result<Spawned, SpawnError>> {
        let pid = self.next_pid.fetch_add(1, Ordering::Relaxed);
        self.spawned.fetch_add(1, Ordering::Relaxed);
        let boot_delay = self.boot_delay;
        async move { Ok(start_fake(pid, command.worker_id, boot_delay)) }.boxed()
    }
}

/// What signals do to a running fake.
#[derive(Debug)]
struct Controls {
    exit: watch::Sender<Option<Exit>>,
    paused: watch::Sender<bool>,
}

impl Controls {
    fn end(&self, exit: Exit) {
        self.exit.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(exit);
                true
            } else {
                false
            }
        });
    }
}

fn start_fake(pid: u32, worker_id: String, boot_delay: Duration) -> Spawned {
    let (stdin_host, stdin_fake) = tokio::io::duplex(PIPE_BYTES);
    let (stdout_fake, stdout_host) = tokio::io::duplex(PIPE_BYTES);
    let (stderr_fake, stderr_host) = tokio::io::duplex(PIPE_BYTES);
    let controls = Arc::new(Controls {
        exit: watch::channel(None).0,
        paused: watch::channel(false).0,
    });
    let exit_rx = controls.exit.subscribe();
    let fake = Fake {
        pid,
        worker_id,
        controls: Arc::clone(&controls),
        state: Arc::default(),
    };
    tokio::spawn(fake.run(stdin_fake, stdout_fake, stderr_fake, boot_delay));
    let signals = Arc::clone(&controls);
    Spawned {
        pid,
        stdin: Box::new(stdin_host),
        stdout: Box::new(stdout_host),
        stderr: Box::new(stderr_host),
        control: Box::new(FakeControl { exit: exit_rx }),
        signaller: Signaller::new(move |signal| {
            match signal {
                Signal::SIGSTOP | Signal::SIGTSTP => {
                    signals.paused.send_replace(true);
                }
                Signal::SIGCONT => {
                    signals.paused.send_replace(false);
                }
                other => signals.end(Exit::Signal(other as i32)),
            }
            Ok(())
        }),
    }
}

#[derive(Debug)]
struct FakeControl {
    exit: watch::Receiver<Option<Exit>>,
}

impl ProcessControl for FakeControl {
    fn wait(&mut self) -> BoxFuture<'_, std::io::Result<Exit>> {
        async move {
            let exit = self
                .exit
                .wait_for(Option::is_some)
                .await
                .map_err(|_| std::io::Error::other("fake worker vanished"))?;
            Ok(exit.unwrap_or(Exit::Code(-1)))
        }
        .boxed()
    }
}

#[derive(Debug, Default)]
struct FakeState {
    lm: Option<String>,
    /// The default LM's simulated latency (`latency_ms`).
    lm_latency: Duration,
    named_lms: HashMap<String, String>,
    programs: HashMap<String, ProgramDefinition>,
    requests: u64,
}

#[derive(Debug, Clone)]
struct Fake {
    pid: u32,
    worker_id: String,
    controls: Arc<Controls>,
    state: Arc<Mutex<FakeState>>,
}

impl Fake {
    async fn run(
        self,
        stdin: DuplexStream,
        stdout: DuplexStream,
        stderr: DuplexStream,
        boot_delay: Duration,
    ) {
        let mut exit = self.controls.exit.subscribe();
        let body = self.clone().serve(stdin, stdout, boot_delay);
        tokio::select! {
            exit_code = body => self.controls.end(Exit::Code(exit_code)),
            _ = exit.wait_for(Option::is_some) => {}
        }
        // Every pipe end of the fake is dropped here: the host sees EOF.
        drop(stderr);
    }

    async fn serve(self, stdin: DuplexStream, stdout: DuplexStream, boot_delay: Duration) -> i32 {
        let (replies, mut outbox) = mpsc::unbounded_channel::<Response>();
        let mut frames = FramedWrite::new(stdout, MessageCodec::<Response, Request>::default());
        let mut paused = self.controls.paused.subscribe();
        let writer = async move {
            while let Some(reply) = outbox.recv().await {
                // A stopped process writes nothing.
                let _ = paused.wait_for(|p| !p).await;
                if frames.send(reply).await.is_err() {
                    return;
                }
            }
        };
        let reader = async {
            tokio::time::sleep(boot_delay).await;
            let ready = Ready {
                event: "ready".into(),
                protocol: dspex_protocol::PROTOCOL_VERSION,
                worker_id: Some(self.worker_id.clone()),
                pid: self.pid,
                python: "fake".into(),
                dspy: None,
                features: vec!["deadline".into()],
            };
            let _ = replies.send(Response::ok(0, json!(ready_value(&ready))));
            let mut requests = FramedRead::new(stdin, MessageCodec::<Response, Request>::default());
            let mut paused = self.controls.paused.subscribe();
            while let Some(request) = requests.next().await {
                let _ = paused.wait_for(|p| !p).await;
                let Ok(request) = request else {
                    let _ = replies.send(Response::error(
                        0,
                        RemoteError::new(ErrorKind::ProtocolError, "undecodable request"),
                    ));
                    continue;
                };
                let fake = self.clone();
                let replies = replies.clone();
                tokio::spawn(async move {
                    let id = request.id;
                    let reply = match request.deadline_ms.map(Duration::from_millis) {
                        Some(deadline) => tokio::time::timeout(deadline, fake.handle(request))
                            .await
                            .unwrap_or_else(|_| Some(deadline_exceeded(id, deadline))),
                        None => fake.handle(request).await,
                    };
                    if let Some(reply) = reply {
                        let _ = replies.send(reply);
                    }
                });
            }
            0 // EOF: exit 0
        };
        tokio::select! {
            code = reader => code,
            () = writer => 0,
        }
    }

    async fn handle(&self, request: Request) -> Option<Response> {
        let id = request.id;
        if let Ok(mut state) = self.state.lock() {
            state.requests += 1;
        }
        let args = request.args.as_object().cloned().unwrap_or_default();
        let result = match request.command.as_str() {
            "ping" => Ok(json!({"status": "ok", "worker_id": self.worker_id, "pid": self.pid})),
            "echo" => Ok(Value::Object(args)),
            "sleep" => {
                let ms = args.get("ms").and_then(Value::as_u64).unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(json!({"slept_ms": ms}))
            }
            "hang" => return std::future::pending().await,
            "exit" => {
                let code = args.get("code").and_then(Value::as_i64).unwrap_or(0);
                self.controls
                    .end(Exit::Code(i32::try_from(code).unwrap_or(1)));
                return None;
            }
            "shutdown" => {
                let controls = Arc::clone(&self.controls);
                tokio::spawn(async move {
                    tokio::task::yield_now().await;
                    controls.end(Exit::Code(0));
                });
                Ok(json!({"status": "shutting_down", "pid": self.pid}))
            }
            "configure_lm" => self.configure_lm(&args),
            "create_program" => self.create_program(Value::Object(args)),
            "execute_program" => {
                let latency = self.with_state(|s| s.lm_latency);
                tokio::time::sleep(latency).await;
                self.execute_program(args)
            }
            "list_programs" => Ok(self.with_state(|s| {
                let mut ids: Vec<&String> = s.programs.keys().collect();
                ids.sort();
                json!({"programs": ids, "count": ids.len()})
            })),
            "delete_program" => {
                let program_id = args.get("program_id").and_then(Value::as_str).unwrap_or("");
                let deleted = self.with_state(|s| s.programs.remove(program_id).is_some());
                Ok(json!({"program_id": program_id, "deleted": deleted}))
            }
            "get_stats" => Ok(self.with_state(|s| {
                json!({"worker_id": self.worker_id, "pid": self.pid, "requests": s.requests,
                       "programs": s.programs.len(), "lm": s.lm})
            })),
            "reset_state" => Ok(self.with_state(|s| {
                let cleared = s.programs.len();
                s.programs.clear();
                s.named_lms.clear();
                json!({"status": "reset", "programs_cleared": cleared})
            })),
            other => Err(RemoteError::new(
                ErrorKind::UnknownCommand,
                format!("unknown command {other:?}"),
            )),
        };
        Some(Response {
            id,
            outcome: result,
        })
    }

    fn with_state<T>(&self, f: impl FnOnce(&mut FakeState) -> T) -> T {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut state)
    }

    fn configure_lm(&self, args: &Map<String, Value>) -> Result<Value, RemoteError> {
        let Some(model) = args.get("model").and_then(Value::as_str) else {
            return Err(invalid("configure_lm needs a string `model`", "model"));
        };
        if let Some(lm_id) = args.get("lm_id").and_then(Value::as_str) {
            self.with_state(|s| s.named_lms.insert(lm_id.to_owned(), model.to_owned()));
            return Ok(json!({"status": "configured", "model": model, "lm_id": lm_id}));
        }
        let latency = args
            .get("latency_ms")
            .and_then(Value::as_u64)
            .map_or(Duration::ZERO, Duration::from_millis);
        self.with_state(|s| {
            s.lm = Some(model.to_owned());
            s.lm_latency = latency;
        });
        Ok(json!({"status": "configured", "model": model}))
    }

    fn create_program(&self, args: Value) -> Result<Value, RemoteError> {
        let program: ProgramDefinition = serde_json::from_value(args)
            .map_err(|e| RemoteError::new(ErrorKind::InvalidArguments, e.to_string()))?;
        let reply = json!({
            "program_id": program.program_id,
            "inputs": program.signature.inputs.iter().map(|f| &f.name).collect::<Vec<_>>(),
            "outputs": program.signature.outputs.iter().map(|f| &f.name).collect::<Vec<_>>(),
        });
        self.with_state(|s| s.programs.insert(program.program_id.clone(), program));
        Ok(reply)
    }

    fn execute_program(&self, mut args: Map<String, Value>) -> Result<Value, RemoteError> {
        if let Some(program) = args.remove("program") {
            self.create_program(program)?;
        }
        let program_id = args
            .get("program_id")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let Some(program) = self.with_state(|s| s.programs.get(&program_id).cloned()) else {
            return Err(RemoteError::new(
                ErrorKind::ProgramNotFound,
                format!("no program {program_id:?} on this worker"),
            ));
        };
        if let Some(lm_id) = args.get("lm_id").and_then(Value::as_str)
            && self.with_state(|s| !s.named_lms.contains_key(lm_id))
        {
            let mut error = RemoteError::new(
                ErrorKind::LmNotConfigured,
                format!("no LM registered as {lm_id:?}"),
            );
            error.details = Some(json!({"lm_id": lm_id, "reason": "unknown_lm_id"}));
            return Err(error);
        }
        let override_lm = args
            .get("lm")
            .and_then(|lm| lm.get("model"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| {
                let id = args.get("lm_id").and_then(Value::as_str)?;
                self.with_state(|s| s.named_lms.get(id).cloned())
            });
        let lm = override_lm.or_else(|| self.with_state(|s| s.lm.clone()));
        let Some(model) = lm else {
            return Err(RemoteError::new(
                ErrorKind::LmNotConfigured,
                "no LM configured",
            ));
        };
        let inputs = args
            .get("inputs")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for field in &program.signature.inputs {
            if !field.optional && !inputs.contains_key(&field.name) {
                return Err(invalid(
                    &format!("missing input `{}`", field.name),
                    &field.name,
                ));
            }
        }
        let outputs = fake_outputs(&program, &inputs);
        Ok(json!({
            "program_id": program_id, "outputs": outputs, "duration_ms": 0.0, "model": model
        }))
    }
}

fn deadline_exceeded(id: u64, deadline: Duration) -> Response {
    let mut error = RemoteError::new(
        ErrorKind::DeadlineExceeded,
        format!("the request was not done within its deadline of {deadline:?}"),
    );
    error.details = Some(json!({"deadline_ms": deadline.as_millis() as u64, "started": true}));
    Response::error(id, error)
}

fn invalid(message: &str, field: &str) -> RemoteError {
    let mut error = RemoteError::new(ErrorKind::InvalidArguments, message);
    error.details = Some(json!({"field": field}));
    error
}

fn ready_value(ready: &Ready) -> Value {
    serde_json::to_value(ready).unwrap_or(Value::Null)
}

/// Deterministic outputs of `program` for `inputs`: a value of each output's
/// declared type derived from a hash of the inputs, and a `reasoning` string
/// first for chain-of-thought modules — the shape the real worker's offline
/// `dummy` LM produces.
pub fn fake_outputs(
    program: &ProgramDefinition,
    inputs: &Map<String, Value>,
) -> Map<String, Value> {
    let mut hasher = DefaultHasher::new();
    serde_json::to_string(inputs)
        .unwrap_or_default()
        .hash(&mut hasher);
    let seed = hasher.finish();
    let mut outputs = Map::new();
    if matches!(
        program.module.as_str(),
        "chain_of_thought" | "chainofthought" | "cot"
    ) {
        outputs.insert(
            "reasoning".into(),
            json!(format!("reasoning: {:08x}", seed as u32)),
        );
    }
    for field in &program.signature.outputs {
        outputs.insert(field.name.clone(), fake_value(&field.name, &field.ty, seed));
    }
    outputs
}

/// A deterministic value of the declared type.
fn fake_value(name: &str, ty: &str, seed: u64) -> Value {
    let ty = ty.trim();
    let inner = |prefix: &str| {
        ty.strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(']'))
            .map(str::trim)
    };
    if let Some(inner) = inner("optional[") {
        return fake_value(name, inner, seed);
    }
    if let Some(inner) = inner("list[") {
        return json!([
            fake_value(name, inner, seed),
            fake_value(name, inner, seed / 3)
        ]);
    }
    if let Some(inner) = inner("dict[") {
        let value_ty = inner.split_once(',').map_or("str", |(_, v)| v.trim());
        return json!({"k0": fake_value(name, value_ty, seed)});
    }
    if let Some(inner) = inner("literal[") {
        let members: Vec<&str> = inner.split('|').map(str::trim).collect();
        let pick = usize::try_from(seed % members.len().max(1) as u64).unwrap_or(0);
        return json!(members.get(pick).copied().unwrap_or_default());
    }
    match ty {
        "int" => json!(seed % 1000),
        // In [0, 1): fits probabilities and confidence scores too.
        "float" => json!((seed % 10_000) as f64 / 10_000.0),
        "bool" => json!(seed % 2 == 1),
        _ => json!(format!("{name}: {:08x}", seed as u32)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::WorkerConfig;
    use crate::process::RunTag;
    use crate::worker::{CallOptions, WorkerHandle};
    use dspex_protocol::Command;

    fn command() -> WorkerCommand {
        WorkerCommand {
            interpreter: "fake".into(),
            python_path: Default::default(),
            worker_id: "fake-0".into(),
            args: vec![],
            env: vec![],
            run_tag: RunTag::new(),
            fds: crate::process::FdLedger::default(),
        }
    }

    #[tokio::test]
    async fn a_fake_worker_serves_through_the_real_worker_actor() {
        let spawner = Arc::new(FakeSpawner::default());
        let worker = WorkerHandle::spawn(command(), spawner, WorkerConfig::default(), None, None)
            .await
            .unwrap();
        let ready = worker.ready().await.unwrap();
        assert!(ready.pid > u32::MAX / 2);
        let echo = worker
            .call(
                Command::custom("echo", json!({"a": 1})),
                CallOptions::default(),
            )
            .await
            .unwrap();
        assert_eq!(echo, json!({"a": 1}));
        let error = worker
            .call(Command::custom("nope", json!({})), CallOptions::default())
            .await
            .unwrap_err();
        assert_eq!(error.remote().unwrap().kind, ErrorKind::UnknownCommand);
        worker.stop().await;
    }

    #[test]
    fn fake_values_follow_the_declared_types() {
        assert!(fake_value("n", "int", 7).is_u64());
        assert!(fake_value("x", "float", 7).is_f64());
        assert!(fake_value("b", "bool", 7).is_boolean());
        assert!(fake_value("l", "list[int]", 7).as_array().unwrap()[0].is_u64());
        assert_eq!(fake_value("c", "literal[a|b]", 1), json!("b"));
        assert!(
            fake_value("s", "optional[str]", 1)
                .as_str()
                .unwrap()
                .starts_with("s: ")
        );
    }
}
