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
//! default LM's executions), `create_program`, `execute_program` and
//! `execute_batch` (the module semantics of [`fake_run`]: typed values
//! derived from the signature and inputs, tools and rewards called back;
//! `lm` or `lm_id` overrides; `stream` sends [`fake_chunks`] as `chunk`
//! events), `cancel`, `list_programs`, `delete_program`, `get_stats`,
//! `reset_state`, `shutdown`; anything else is `UnknownCommand`. Like the
//! real worker it speaks Protocol 2 (features `deadline`, `events`,
//! `callbacks`, `cancel`): a request with `deadline_ms` is answered
//! `DeadlineExceeded` at its deadline if it is not done by then.

mod run;
mod work;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dspex_protocol::{
    CallError, CallFrame, CallId, ErrorKind, EventFrame, HostFrame, MessageCodec,
    ProgramDefinition, Ready, RemoteError, Request, RequestId, Response, Value, WorkerFrame,
};
use futures::future::BoxFuture;
use futures::{FutureExt, SinkExt, StreamExt};
use nix::sys::signal::Signal;
use serde_json::{Map, json};
use tokio::io::DuplexStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::codec::{FramedRead, FramedWrite};

pub use run::{CallHost, fake_check, fake_chunks, fake_outputs, fake_run, fake_usage};
pub use work::{FakeLm, fake_execute};

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
        next_call: Arc::new(AtomicU64::new(1)),
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
    lm: Option<FakeLm>,
    /// The default LM's simulated latency (`latency_ms`).
    lm_latency: Duration,
    named_lms: HashMap<String, FakeLm>,
    programs: HashMap<String, ProgramDefinition>,
    requests: u64,
    /// Requests being served: a handle to end each (`None` until spawned).
    running: HashMap<RequestId, Option<tokio::task::AbortHandle>>,
    /// Callbacks waiting for the host's answer, with their request.
    calls: HashMap<CallId, (RequestId, oneshot::Sender<Result<Value, CallError>>)>,
}

#[derive(Debug, Clone)]
struct Fake {
    pid: u32,
    worker_id: String,
    controls: Arc<Controls>,
    state: Arc<Mutex<FakeState>>,
    next_call: Arc<AtomicU64>,
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
        let (frames, mut outbox) = mpsc::unbounded_channel::<WorkerFrame>();
        let mut writer_frames =
            FramedWrite::new(stdout, MessageCodec::<WorkerFrame, HostFrame>::default());
        let mut paused = self.controls.paused.subscribe();
        let writer = async move {
            while let Some(frame) = outbox.recv().await {
                // A stopped process writes nothing.
                let _ = paused.wait_for(|p| !p).await;
                if writer_frames.send(frame).await.is_err() {
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
                features: ["deadline", "events", "callbacks", "cancel"]
                    .map(String::from)
                    .to_vec(),
            };
            let _ = frames.send(WorkerFrame::Reply(Response::ok(
                0,
                json!(ready_value(&ready)),
            )));
            let mut incoming =
                FramedRead::new(stdin, MessageCodec::<WorkerFrame, HostFrame>::default());
            let mut paused = self.controls.paused.subscribe();
            while let Some(frame) = incoming.next().await {
                let _ = paused.wait_for(|p| !p).await;
                match frame {
                    Ok(HostFrame::Request(request)) if request.command == "cancel" => {
                        self.cancel(request, &frames);
                    }
                    Ok(HostFrame::Request(request)) => self.start(request, &frames),
                    Ok(HostFrame::Answer(answer)) => {
                        let waiting = self.with_state(|s| s.calls.remove(&answer.call));
                        if let Some((_, waiting)) = waiting {
                            let _ = waiting.send(answer.outcome);
                        }
                    }
                    Err(_) => {
                        let _ = frames.send(WorkerFrame::Reply(Response::error(
                            0,
                            RemoteError::new(ErrorKind::ProtocolError, "undecodable request"),
                        )));
                    }
                }
            }
            0 // EOF: exit 0
        };
        tokio::select! {
            code = reader => code,
            () = writer => 0,
        }
    }

    /// Serves a request in a task of its own, answered once: by the task,
    /// or by a `cancel` that ends it first.
    fn start(&self, request: Request, frames: &mpsc::UnboundedSender<WorkerFrame>) {
        let id = request.id;
        self.with_state(|s| s.running.insert(id, None));
        let fake = self.clone();
        let frames = frames.clone();
        let task = tokio::spawn(async move {
            let reply = match request.deadline_ms.map(Duration::from_millis) {
                Some(deadline) => tokio::time::timeout(deadline, fake.handle(request, &frames))
                    .await
                    .unwrap_or_else(|_| Some(deadline_exceeded(id, deadline))),
                None => fake.handle(request, &frames).await,
            };
            let current = fake.with_state(|s| s.running.remove(&id).is_some());
            if let Some(reply) = reply.filter(|_| current) {
                let _ = frames.send(WorkerFrame::Reply(reply));
            }
        });
        self.with_state(|s| {
            if let Some(slot) = s.running.get_mut(&id) {
                *slot = Some(task.abort_handle());
            }
        });
    }

    /// `cancel`: ends request `request_id` at once (answered `Cancelled`,
    /// its callbacks released), then answers whether it did.
    fn cancel(&self, request: Request, frames: &mpsc::UnboundedSender<WorkerFrame>) {
        let target = request
            .args
            .get("request_id")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let ended = self.with_state(|s| {
            let ended = s.running.remove(&target);
            if ended.is_some() {
                s.calls.retain(|_, (owner, _)| *owner != target);
            }
            ended
        });
        let cancelled = ended.is_some();
        if let Some(handle) = ended.flatten() {
            handle.abort();
        }
        if cancelled {
            let _ = frames.send(WorkerFrame::Reply(Response::error(
                target,
                RemoteError::new(ErrorKind::Cancelled, "cancelled by the host"),
            )));
        }
        let _ = frames.send(WorkerFrame::Reply(Response::ok(
            request.id,
            json!({"cancelled": cancelled}),
        )));
    }

    async fn handle(
        &self,
        request: Request,
        frames: &mpsc::UnboundedSender<WorkerFrame>,
    ) -> Option<Response> {
        let id = request.id;
        if let Ok(mut state) = self.state.lock() {
            state.requests += 1;
        }
        let events = request.events.then_some(frames);
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
            command @ ("execute_program" | "execute_batch" | "evaluate" | "optimize"
            | "get_program_state") => {
                let latency = self.with_state(|s| s.lm_latency);
                tokio::time::sleep(latency).await;
                let host = self.host(id, frames);
                self.execute(command, args, &*host, events.map(|f| (id, f)))
                    .await
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
                       "programs": s.programs.len(), "lm": s.lm.as_ref().map(|lm| &lm.model),
                       "callbacks": {"pending": s.calls.len()}})
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

    /// Callbacks of request `id` to the host: each sent as a `call` frame,
    /// answered when the host's answer arrives.
    #[allow(clippy::type_complexity)]
    fn host(
        &self,
        id: RequestId,
        frames: &mpsc::UnboundedSender<WorkerFrame>,
    ) -> Box<dyn Fn(&str, Value) -> BoxFuture<'static, Result<Value, CallError>> + Send + Sync>
    {
        let fake = self.clone();
        let frames = frames.clone();
        Box::new(move |name: &str, args: Value| {
            let call = fake.next_call.fetch_add(1, Ordering::Relaxed);
            let (answer, answered) = oneshot::channel();
            fake.with_state(|s| s.calls.insert(call, (id, answer)));
            let _ = frames.send(WorkerFrame::Call(CallFrame {
                id,
                call,
                name: name.to_owned(),
                args,
            }));
            async move {
                answered.await.unwrap_or_else(|_| {
                    Err(CallError::new(
                        ErrorKind::Cancelled,
                        "the request was cancelled",
                    ))
                })
            }
            .boxed()
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
        let Some(lm) = FakeLm::from_config(args) else {
            return Err(invalid("configure_lm needs a string `model`", "model"));
        };
        let model = lm.model.clone();
        if let Some(lm_id) = args.get("lm_id").and_then(Value::as_str) {
            self.with_state(|s| s.named_lms.insert(lm_id.to_owned(), lm));
            return Ok(json!({"status": "configured", "model": model, "lm_id": lm_id}));
        }
        let latency = args
            .get("latency_ms")
            .and_then(Value::as_u64)
            .map_or(Duration::ZERO, Duration::from_millis);
        self.with_state(|s| {
            s.lm = Some(lm);
            s.lm_latency = latency;
        });
        Ok(json!({"status": "configured", "model": model}))
    }

    fn create_program(&self, args: Value) -> Result<Value, RemoteError> {
        let program: ProgramDefinition = serde_json::from_value(args)
            .map_err(|e| RemoteError::new(ErrorKind::InvalidArguments, e.to_string()))?;
        fake_check(&program)?;
        let reply = json!({
            "program_id": program.program_id,
            "inputs": program.signature.inputs.iter().map(|f| &f.name).collect::<Vec<_>>(),
            "outputs": program.signature.outputs.iter().map(|f| &f.name).collect::<Vec<_>>(),
        });
        self.with_state(|s| s.programs.insert(program.program_id.clone(), program));
        Ok(reply)
    }

    /// A command on a program (see [`fake_execute`]).
    async fn execute(
        &self,
        command: &str,
        mut args: Map<String, Value>,
        host: CallHost<'_>,
        events: Option<(RequestId, &mpsc::UnboundedSender<WorkerFrame>)>,
    ) -> Result<Value, RemoteError> {
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
            .and_then(Value::as_object)
            .and_then(FakeLm::from_config)
            .or_else(|| {
                let id = args.get("lm_id").and_then(Value::as_str)?;
                self.with_state(|s| s.named_lms.get(id).cloned())
            });
        let lm = override_lm.or_else(|| self.with_state(|s| s.lm.clone()));
        let Some(lm) = lm else {
            return Err(RemoteError::new(
                ErrorKind::LmNotConfigured,
                "no LM configured",
            ));
        };
        let send = |event: &str, data: Value| {
            if let Some((id, frames)) = events {
                let _ = frames.send(WorkerFrame::Event(EventFrame {
                    id,
                    event: event.to_owned(),
                    data,
                }));
            }
        };
        fake_execute(&program, command, &args, &lm, host, &send).await
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

#[cfg(test)]
mod tests {
    use super::run::fake_value;
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
            inherit_fds: vec![],
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
