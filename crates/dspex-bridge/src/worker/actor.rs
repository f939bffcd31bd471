//! The worker actor's message handling. See the module docs of
//! [`crate::worker`] for the semantics.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use dspex_protocol::{
    CallAnswer, CallError, CallFrame, CallId, Command, ErrorKind, EventFrame, HostFrame,
    MessageCodec, ProtocolError, Request, RequestId, Response, Value, WorkerFrame,
};
use dspex_supervision::replace_reason;
use futures::{FutureExt, StreamExt};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::io::AsyncWriteExt;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::codec::{Encoder, FramedRead};

use super::timers::{Timer, Timers};
use super::{Callbacks, OnHang, RequestEvent, WorkerConfig, WorkerEvent, WorkerInfo, WorkerState};
use crate::WorkerError;
use crate::process::{SpawnStrategy, WorkerCommand, WorkerProcess};

/// How long an exit waits for the reader to deliver the replies the process
/// wrote before it went.
const READ_SETTLE: Duration = Duration::from_millis(100);

/// The worker actor. Start it with [`super::WorkerHandle::spawn`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Worker;

/// What a worker actor is started with.
#[derive(Debug)]
pub struct WorkerArgs {
    /// How to start the process.
    pub command: WorkerCommand,
    /// The tree's spawn strategy.
    pub spawner: Arc<dyn SpawnStrategy>,
    /// Timeouts and limits.
    pub config: WorkerConfig,
    /// Where to publish [`WorkerEvent`]s, if anyone listens.
    pub events: Option<broadcast::Sender<WorkerEvent>>,
    pub(crate) status: watch::Sender<Status>,
}

/// What a worker's handle can see without asking the actor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Status {
    pub(crate) pid: u32,
    pub(crate) state: WorkerState,
}

/// A message to the worker actor (built by [`super::WorkerHandle`]).
#[derive(Debug)]
pub struct WorkerMsg(pub(crate) Inner);

#[derive(Debug)]
pub(crate) enum Inner {
    Call(Box<Call>),
    Info(RpcReplyPort<WorkerInfo>),
    CloseStdin,
    /// Kill the process; the exit is a failure (it counts as a crash).
    Kill(String),
    /// Kill the process on its owner's decision; the supervisor replaces the
    /// worker without counting it as a crash.
    Replace(String),
    Frame(Result<WorkerFrame, Arc<ProtocolError>>),
    /// A callback's handler finished.
    Answered(CallId, Result<Value, CallError>),
    /// The caller of request `id` has gone.
    Abandon(RequestId),
    WriteFailed(String, Vec<RequestId>),
    Exited,
    Tick,
}

type ReplyTx = oneshot::Sender<Result<Value, WorkerError>>;

/// What a request asks the worker to send besides its reply.
#[derive(Debug, Clone, Copy, Default)]
struct Asks {
    /// Event frames (chunks, progress).
    events: bool,
    /// Its Python log records, as `log` events.
    logs: bool,
}

/// Emits a request's Python log record (a `log` event) under its caller's
/// span, at the record's level, with target `dspex::python`.
fn python_log(span: &tracing::Span, worker: &str, pid: u32, data: &Value) {
    let text = |key: &str| data.get(key).and_then(Value::as_str).unwrap_or("");
    let (level, logger, message) = (text("level"), text("logger"), text("message"));
    macro_rules! emit {
        ($level:expr) => {
            tracing::event!(target: "dspex::python", parent: span, $level, worker, pid, logger, "{message}")
        };
    }
    match level {
        "CRITICAL" | "ERROR" => emit!(tracing::Level::ERROR),
        "WARNING" => emit!(tracing::Level::WARN),
        "INFO" => emit!(tracing::Level::INFO),
        "DEBUG" => emit!(tracing::Level::DEBUG),
        _ => emit!(tracing::Level::TRACE),
    }
}

pub(crate) struct Call {
    pub(crate) command: Command,
    pub(crate) session_id: Option<String>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) on_hang: OnHang,
    pub(crate) callbacks: Option<Arc<dyn Callbacks>>,
    pub(crate) events: Option<mpsc::UnboundedSender<RequestEvent>>,
    /// The caller's span: the request's Python log records are emitted
    /// under it (and asked for only when it is enabled).
    pub(crate) span: tracing::Span,
    /// Dropped once the worker owes no reply for this request.
    pub(crate) settled: Option<oneshot::Sender<()>>,
    /// Where the request's id is stored once it has one (for an abandon).
    pub(crate) assigned: Option<Arc<AtomicU64>>,
    pub(crate) reply: ReplyTx,
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("command", &self.command.name())
            .field("timeout", &self.timeout)
            .field("on_hang", &self.on_hang)
            .finish_non_exhaustive()
    }
}

struct Pending {
    /// `None` once the caller has been answered at the deadline (or has
    /// gone); the entry then only waits for the worker's late reply (or its
    /// hang).
    reply: Option<ReplyTx>,
    callbacks: Option<Arc<dyn Callbacks>>,
    events: Option<mpsc::UnboundedSender<RequestEvent>>,
    /// Where the request's Python log records go.
    span: tracing::Span,
    timeout: Duration,
    on_hang: OnHang,
    /// Encoded and waiting for the handshake, if not sent yet.
    unsent: Option<Bytes>,
    /// The `shutdown` command: once answered, the exit that follows is expected.
    shutdown: bool,
    /// Sent by the actor itself (a `cancel`): not counted as served.
    internal: bool,
    /// Tells whoever tracks the request that the worker is done with it:
    /// sent when a reply comes (even late), dropped when it never will.
    settled: Option<oneshot::Sender<()>>,
}

/// A callback being run on this side: the task running its handler.
struct Running {
    request: RequestId,
    task: JoinHandle<()>,
}

/// The actor's state: the process and everything in flight on it.
pub struct WorkerActorState {
    worker_id: String,
    config: WorkerConfig,
    process: WorkerProcess,
    /// Frames for the worker: a request's (with its id) or a callback's
    /// answer.
    writer: Option<mpsc::UnboundedSender<(Option<RequestId>, Bytes)>>,
    /// The id of the last request whose frame the writer began to write.
    written: Arc<AtomicU64>,
    codec: MessageCodec<HostFrame, WorkerFrame>,
    state: WorkerState,
    pending: HashMap<RequestId, Pending>,
    /// The callbacks being run, by their id.
    calls: HashMap<CallId, Running>,
    timers: Timers,
    next_id: RequestId,
    served: u64,
    /// Why this actor killed its process, once it has.
    kill_reason: Option<WorkerError>,
    /// The kill was its owner's decision: the exit asks for a replacement.
    replace: bool,
    events: Option<broadcast::Sender<WorkerEvent>>,
    status: watch::Sender<Status>,
    tasks: Vec<JoinHandle<()>>,
    _spawner: Arc<dyn SpawnStrategy>,
}

impl std::fmt::Debug for WorkerActorState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerActorState")
            .field("worker_id", &self.worker_id)
            .field("pid", &self.process.pid())
            .field("state", &self.state)
            .field("in_flight", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl Drop for WorkerActorState {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        for running in self.calls.values() {
            running.task.abort();
        }
        // Dropping `process` kills what is left; its reaper still reaps.
    }
}

impl Actor for Worker {
    type Msg = WorkerMsg;
    type State = WorkerActorState;
    type Arguments = WorkerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<WorkerMsg>,
        args: WorkerArgs,
    ) -> Result<WorkerActorState, ActorProcessingErr> {
        let worker_id = args.command.worker_id.clone();
        let spawned = args.spawner.spawn(args.command).await?;
        // Held for the process's life: a direct spawner's thread is the
        // parent its death signal is tied to.
        let spawner = args.spawner;
        let mut process = WorkerProcess::new(spawned, worker_id.clone());
        let pid = process.pid();
        tracing::debug!(worker = %worker_id, pid, "worker process spawned");
        args.status.send_replace(Status {
            pid,
            state: WorkerState::Booting,
        });
        if let Some(events) = &args.events {
            let _ = events.send(WorkerEvent::Spawned {
                worker_id: worker_id.clone(),
                pid,
            });
        }

        let mut tasks = Vec::with_capacity(3);
        let (writer, outbox) = mpsc::unbounded_channel();
        let written = Arc::new(AtomicU64::new(0));
        if let Some(stdin) = process.take_stdin() {
            tasks.push(tokio::spawn(write_frames(
                stdin,
                outbox,
                Arc::clone(&written),
                myself.clone(),
            )));
        }
        let (read_all, reader_done) = tokio::sync::oneshot::channel::<()>();
        if let Some(stdout) = process.take_stdout() {
            let frames = FramedRead::new(stdout, MessageCodec::new(args.config.max_frame));
            let me = myself.clone();
            tasks.push(tokio::spawn(async move {
                read_frames(frames, me).await;
                drop(read_all);
            }));
        }
        let mut exit = process.exit_watch();
        let me = myself.clone();
        tasks.push(tokio::spawn(async move {
            let _ = exit.wait_for(Option::is_some).await;
            // Replies written just before the exit are delivered first.
            let _ = tokio::time::timeout(READ_SETTLE, reader_done).await;
            let _ = me.send_message(WorkerMsg(Inner::Exited));
        }));
        let me = myself.clone();
        let mut timers = Timers::start(move || me.send_message(WorkerMsg(Inner::Tick)).is_ok());
        timers.add(Instant::now() + args.config.boot_timeout, Timer::Boot);

        Ok(WorkerActorState {
            worker_id,
            config: args.config,
            codec: MessageCodec::new(args.config.max_frame),
            process,
            writer: Some(writer),
            written,
            state: WorkerState::Booting,
            pending: HashMap::new(),
            calls: HashMap::new(),
            timers,
            next_id: 1,
            served: 0,
            kill_reason: None,
            replace: false,
            events: args.events,
            status: args.status,
            tasks,
            _spawner: spawner,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<WorkerMsg>,
        WorkerMsg(message): WorkerMsg,
        state: &mut WorkerActorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            Inner::Call(call) => state.call(*call),
            Inner::Answered(call, outcome) => state.answer(call, outcome),
            Inner::Abandon(id) => state.abandon(id),
            Inner::Info(reply) => {
                let _ = reply.send(state.info());
            }
            Inner::CloseStdin => {
                state.writer.take();
            }
            Inner::Kill(reason) => {
                tracing::warn!(worker = %state.worker_id, pid = state.process.pid(), %reason, "killing the worker");
                state.kill(WorkerError::Killed {
                    worker_id: state.worker_id.clone(),
                    reason,
                });
            }
            Inner::Replace(reason) => {
                tracing::info!(worker = %state.worker_id, pid = state.process.pid(), %reason, "replacing the worker");
                state.replace = true;
                state.kill(WorkerError::Killed {
                    worker_id: state.worker_id.clone(),
                    reason,
                });
            }
            Inner::Frame(Ok(WorkerFrame::Reply(response))) => state.on_response(response),
            Inner::Frame(Ok(WorkerFrame::Event(event))) => state.on_event(event),
            Inner::Frame(Ok(WorkerFrame::Call(call))) => state.on_call(&myself, call),
            Inner::Frame(Err(error)) => state.stream_unusable(error),
            Inner::WriteFailed(error, ids) => {
                // A broken pipe means the process is gone; its exit follows.
                // The requests whose frames were not written never ran.
                tracing::debug!(worker = %state.worker_id, pid = state.process.pid(), %error, "write to worker failed");
                state.writer.take();
                state.not_delivered(&ids);
            }
            Inner::Tick => {
                for timer in state.timers.take_due(Instant::now()) {
                    state.on_timer(timer);
                }
            }
            Inner::Exited => return state.on_exit(&myself),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<WorkerMsg>,
        state: &mut WorkerActorState,
    ) -> Result<(), ActorProcessingErr> {
        if state.process.try_exit().is_none() {
            state.set_state(WorkerState::Stopping);
            state.writer.take();
            let exit = state.process.stop(state.config.stop_grace).await;
            tracing::debug!(worker = %state.worker_id, pid = state.process.pid(), %exit, "worker stopped");
            state.publish_exit(exit, true);
            state.fail_pending(exit);
        }
        Ok(())
    }
}

impl WorkerActorState {
    fn call(&mut self, call: Call) {
        if call.reply.is_closed() {
            // Its caller went before it was sent: it never runs, and the
            // worker owes nothing for it.
            if let Some(settled) = call.settled {
                let _ = settled.send(());
            }
            return;
        }
        let timeout = call.timeout.unwrap_or(self.config.request_timeout);
        let framed = self.frame(
            call.command,
            call.session_id,
            timeout,
            Asks {
                events: call.events.is_some(),
                logs: !call.span.is_disabled(),
            },
        );
        match framed {
            Err(error) => {
                let _ = call.reply.send(Err(error));
            }
            Ok((id, frame, shutdown)) => {
                if let Some(assigned) = &call.assigned {
                    assigned.store(id, Ordering::Release);
                }
                let pending = Pending {
                    reply: Some(call.reply),
                    callbacks: call.callbacks,
                    events: call.events,
                    span: call.span,
                    timeout,
                    on_hang: call.on_hang,
                    unsent: None,
                    shutdown,
                    internal: false,
                    settled: call.settled,
                };
                self.dispatch(id, frame, pending);
            }
        }
    }

    /// Gives a command its id and encodes it, or says why it cannot go.
    fn frame(
        &mut self,
        command: Command,
        session_id: Option<String>,
        timeout: Duration,
        asks: Asks,
    ) -> Result<(RequestId, Bytes, bool), WorkerError> {
        // Refused before any byte reached the worker: it stays as it was.
        command
            .validate()
            .map_err(|error| WorkerError::Refused(Arc::new(error)))?;
        let id = self.next_id;
        let shutdown = matches!(command, Command::Shutdown);
        let mut request = Request::new(id, command)
            .with_deadline_ms(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        request.session_id = session_id;
        request.events = asks.events;
        request.logs = asks.logs;
        let mut frame = BytesMut::new();
        self.codec
            .encode(&HostFrame::Request(request), &mut frame)
            .map_err(|error| WorkerError::Refused(Arc::new(error)))?;
        if matches!(self.state, WorkerState::Stopping | WorkerState::Exited(_)) {
            // Nothing is sent to a process that is going or gone: the
            // request did not run, and may go to another worker.
            return Err(WorkerError::NotDelivered {
                worker_id: self.worker_id.clone(),
            });
        }
        self.next_id += 1;
        Ok((id, frame.freeze(), shutdown))
    }

    /// Tracks a request and sends it (or holds it until the handshake).
    fn dispatch(&mut self, id: RequestId, frame: Bytes, mut pending: Pending) {
        self.timers
            .add(Instant::now() + pending.timeout, Timer::Deadline(id));
        let ready = matches!(self.state, WorkerState::Ready(_));
        let to_send = if ready {
            Some(frame)
        } else {
            pending.unsent = Some(frame);
            None
        };
        self.pending.insert(id, pending);
        if let Some(frame) = to_send {
            self.send_frame(id, frame);
        }
    }

    /// The caller of request `id` has gone. A request not sent yet is
    /// dropped; one the worker runs is cancelled (Protocol 2 `cancel`, when
    /// the worker has it), and its callbacks are ended. The request stays
    /// tracked until the worker answers it (or its hang grace runs out).
    fn abandon(&mut self, id: RequestId) {
        let Some(pending) = self.pending.get_mut(&id) else {
            return;
        };
        if pending.reply.take().is_none() {
            // Already answered at its deadline: the worker ends it itself.
            return;
        }
        pending.events = None;
        pending.callbacks = None;
        if pending.unsent.is_some() {
            // Never sent: the worker owes nothing for it.
            if let Some(settled) = self.pending.remove(&id).and_then(|p| p.settled) {
                let _ = settled.send(());
            }
            return;
        }
        let can_cancel =
            matches!(&self.state, WorkerState::Ready(ready) if ready.has_feature("cancel"));
        tracing::debug!(worker = %self.worker_id, pid = self.process.pid(), id, can_cancel, "caller gone; ending its request");
        if can_cancel {
            // First, so that no callback's `Cancelled` lets the work go on.
            self.cancel(id);
        }
        self.end_calls(id);
    }

    /// Sends `cancel` for request `request_id`, answered to nobody.
    fn cancel(&mut self, request_id: RequestId) {
        let timeout = self.config.hang_grace;
        if let Ok((id, frame, _)) = self.frame(
            Command::Cancel { request_id },
            None,
            timeout,
            Asks::default(),
        ) {
            let pending = Pending {
                reply: None,
                callbacks: None,
                events: None,
                span: tracing::Span::none(),
                timeout,
                on_hang: OnHang::Report,
                unsent: None,
                shutdown: false,
                internal: true,
                settled: None,
            };
            self.dispatch(id, frame, pending);
        }
    }

    fn on_event(&mut self, event: EventFrame) {
        let Some(pending) = self.pending.get(&event.id) else {
            // Late, or for a request this side never sent: nobody's.
            tracing::debug!(worker = %self.worker_id, pid = self.process.pid(), id = event.id, event = %event.event, "event for a request not in flight; dropped");
            return;
        };
        if event.event == "log" {
            return python_log(
                &pending.span,
                &self.worker_id,
                self.process.pid(),
                &event.data,
            );
        }
        if let Some(sink) = pending.events.as_ref().filter(|_| pending.reply.is_some()) {
            let _ = sink.send(RequestEvent {
                event: event.event,
                data: event.data,
            });
        }
    }

    /// A callback: its handler runs in a task of its own, never here; its
    /// answer comes back as [`Inner::Answered`].
    fn on_call(&mut self, myself: &ActorRef<WorkerMsg>, frame: CallFrame) {
        if self.calls.contains_key(&frame.call) {
            return self.stream_unusable(Arc::new(ProtocolError::Shape(format!(
                "callback id {} reused while it is outstanding",
                frame.call
            ))));
        }
        // A caller that dropped a plain `call` has closed its reply.
        let waited_for = |p: &Pending| p.reply.as_ref().is_some_and(|r| !r.is_closed());
        let handler = match self.pending.get(&frame.id) {
            Some(pending) if waited_for(pending) => pending.callbacks.clone().ok_or_else(|| {
                tool_error(
                    &frame.name,
                    format!(
                        "no handler for `{}`: the request was sent without callbacks",
                        frame.name
                    ),
                )
            }),
            Some(_) => Err(CallError::new(
                ErrorKind::Cancelled,
                "the request's caller has gone",
            )),
            None => Err(CallError::new(
                ErrorKind::Cancelled,
                format!("request {} is not in flight", frame.id),
            )),
        };
        let handler = match handler {
            Ok(handler) => handler,
            Err(error) => return self.write_answer(frame.call, Err(error)),
        };
        let CallFrame {
            id,
            call,
            name,
            args,
        } = frame;
        let me = myself.clone();
        let task = tokio::spawn(async move {
            let outcome = run_callback(&*handler, &name, args).await;
            let _ = me.send_message(WorkerMsg(Inner::Answered(call, outcome)));
        });
        self.calls.insert(call, Running { request: id, task });
    }

    /// A handler finished: its answer goes to the worker, unless the
    /// callback was ended meanwhile.
    fn answer(&mut self, call: CallId, outcome: Result<Value, CallError>) {
        if self.calls.remove(&call).is_some() {
            self.write_answer(call, outcome);
        }
    }

    fn write_answer(&mut self, call: CallId, outcome: Result<Value, CallError>) {
        let mut frame = BytesMut::new();
        let answer = HostFrame::Answer(CallAnswer { call, outcome });
        if let Err(error) = self.codec.encode(&answer, &mut frame) {
            // An answer too big for a frame is still one answer.
            frame.clear();
            let failed = CallAnswer {
                call,
                outcome: Err(CallError::new(
                    ErrorKind::ToolError,
                    format!("the callback's result could not be sent: {error}"),
                )),
            };
            if self
                .codec
                .encode(&HostFrame::Answer(failed), &mut frame)
                .is_err()
            {
                return;
            }
        }
        if let Some(writer) = &self.writer {
            let _ = writer.send((None, frame.freeze()));
        }
    }

    /// Ends the callbacks of request `request`: their handlers stop, and
    /// the worker is told `Cancelled` for each.
    fn end_calls(&mut self, request: RequestId) {
        let ended: Vec<CallId> = self
            .calls
            .iter()
            .filter(|(_, running)| running.request == request)
            .map(|(call, _)| *call)
            .collect();
        for call in ended {
            if let Some(running) = self.calls.remove(&call) {
                running.task.abort();
            }
            self.write_answer(
                call,
                Err(CallError::new(
                    ErrorKind::Cancelled,
                    "the request has ended",
                )),
            );
        }
    }

    /// Queues a request's frame for the writer. If the writer has ended (the
    /// pipe broke: the process is gone), the request was never delivered.
    fn send_frame(&mut self, id: RequestId, frame: Bytes) {
        let sent = self
            .writer
            .as_ref()
            .is_some_and(|writer| writer.send((Some(id), frame)).is_ok());
        if !sent {
            self.not_delivered(&[id]);
        }
    }

    /// Fails requests that never reached the process: they did not run.
    fn not_delivered(&mut self, ids: &[RequestId]) {
        for id in ids {
            if let Some(reply) = self.pending.remove(id).and_then(|p| p.reply) {
                let _ = reply.send(Err(WorkerError::NotDelivered {
                    worker_id: self.worker_id.clone(),
                }));
            }
        }
    }

    fn on_response(&mut self, response: Response) {
        if response.id == 0 {
            return self.on_id_zero(response);
        }
        let Some(mut pending) = self.pending.remove(&response.id) else {
            if response.id >= self.next_id {
                return self.stream_unusable(Arc::new(ProtocolError::Shape(format!(
                    "reply for request id {} which was never sent",
                    response.id
                ))));
            }
            tracing::debug!(worker = %self.worker_id, pid = self.process.pid(), id = response.id, "dropping a reply whose request is no longer pending");
            return;
        };
        if !pending.internal {
            self.served += 1;
        }
        if let Some(settled) = pending.settled.take() {
            let _ = settled.send(());
        }
        // A reply ends the request: handlers still running for it are
        // stopped, and the worker (past a deadline, it may still wait on
        // them) is told.
        self.end_calls(response.id);
        if pending.shutdown && response.outcome.is_ok() {
            // The worker said it is leaving: its exit is not a crash.
            self.set_state(WorkerState::Stopping);
            self.writer.take();
        }
        let Some(reply) = pending.reply else {
            tracing::debug!(worker = %self.worker_id, pid = self.process.pid(), id = response.id, "a reply nobody waits for (past its deadline, or its caller gone); dropped");
            return;
        };
        // The worker's own `DeadlineExceeded` and this side's timer are the
        // same event seen from two ends (whichever arrives first): one error.
        let outcome = response.outcome.map_err(|error| match error.kind {
            ErrorKind::DeadlineExceeded => WorkerError::RequestTimeout {
                worker_id: self.worker_id.clone(),
                after: pending.timeout,
            },
            _ => WorkerError::Remote(error),
        });
        if reply.send(outcome).is_err() {
            tracing::debug!(worker = %self.worker_id, pid = self.process.pid(), id = response.id, "caller gave up before the reply; dropped");
        }
    }

    fn on_id_zero(&mut self, response: Response) {
        if self.state != WorkerState::Booting {
            // After the handshake, id 0 means the worker could not decode a
            // frame we sent. When it names the request, the worker stayed in
            // step (frames are length-prefixed): that caller gets the error.
            if let Err(error) = &response.outcome
                && error.kind == ErrorKind::ProtocolError
                && let Some(id) = error
                    .details
                    .as_ref()
                    .and_then(|d| d.get("request_id"))
                    .and_then(Value::as_u64)
                && self.pending.contains_key(&id)
            {
                return self.on_response(Response::error(id, error.clone()));
            }
            let reason = match &response.outcome {
                Err(error) if error.kind == ErrorKind::ProtocolError => error.message.clone(),
                _ => "unexpected frame with id 0".to_owned(),
            };
            return self.stream_unusable(Arc::new(ProtocolError::Shape(reason)));
        }
        match response.into_ready() {
            Ok(ready) => {
                tracing::debug!(worker = %self.worker_id, pid = self.process.pid(), python = %ready.python, dspy = ?ready.dspy, protocol = ready.protocol, features = ?ready.features, "worker ready");
                self.set_state(WorkerState::Ready(ready));
                self.emit(WorkerEvent::Ready {
                    worker_id: self.worker_id.clone(),
                    pid: self.process.pid(),
                });
                let mut unsent: Vec<(RequestId, Bytes)> = self
                    .pending
                    .iter_mut()
                    .filter_map(|(id, p)| Some((*id, p.unsent.take()?)))
                    .collect();
                unsent.sort_by_key(|(id, _)| *id);
                for (id, frame) in unsent {
                    self.send_frame(id, frame);
                }
            }
            Err(error) => self.stream_unusable(Arc::new(error)),
        }
    }

    /// G7: the stream cannot be trusted any more. Kill the process; its exit
    /// fails the actor with this reason.
    fn stream_unusable(&mut self, error: Arc<ProtocolError>) {
        tracing::warn!(worker = %self.worker_id, pid = self.process.pid(), %error, "protocol violation; killing the worker");
        self.kill(WorkerError::Protocol {
            worker_id: self.worker_id.clone(),
            error,
        });
    }

    fn on_timer(&mut self, timer: Timer) {
        match timer {
            Timer::Boot => self.on_boot_timeout(),
            Timer::Deadline(id) => self.on_deadline(id),
            Timer::HangGrace(id) => self.on_hang_grace(id),
        }
    }

    /// The caller's deadline: it gets `RequestTimeout` now. The worker knew
    /// the deadline too (it travels with the request) and answers
    /// `DeadlineExceeded` on its own; only if it stays silent for the hang
    /// grace is it hung.
    fn on_deadline(&mut self, id: RequestId) {
        let Some(pending) = self.pending.get_mut(&id) else {
            return;
        };
        if let Some(reply) = pending.reply.take() {
            let _ = reply.send(Err(WorkerError::RequestTimeout {
                worker_id: self.worker_id.clone(),
                after: pending.timeout,
            }));
        }
        pending.events = None;
        if pending.unsent.is_some() || pending.on_hang == OnHang::Report {
            // Never sent (it did not run), or the caller judges the silence
            // itself (a health check): nothing more to wait for.
            self.pending.remove(&id);
            return;
        }
        self.timers.add(
            Instant::now() + self.config.hang_grace,
            Timer::HangGrace(id),
        );
    }

    fn on_hang_grace(&mut self, id: RequestId) {
        let Some(pending) = self.pending.get(&id) else {
            return;
        };
        let reason = format!(
            "no answer to request {id} within its deadline of {:?} and the hang grace of {:?}: \
             the worker is hung",
            pending.timeout, self.config.hang_grace
        );
        tracing::warn!(worker = %self.worker_id, pid = self.process.pid(), id, "{reason}; killing it");
        self.replace = true;
        self.kill(WorkerError::Killed {
            worker_id: self.worker_id.clone(),
            reason,
        });
    }

    fn on_boot_timeout(&mut self) {
        if self.state == WorkerState::Booting {
            let after = self.config.boot_timeout;
            tracing::warn!(worker = %self.worker_id, pid = self.process.pid(), ?after, "no ready handshake; killing the worker");
            self.kill(WorkerError::BootTimeout {
                worker_id: self.worker_id.clone(),
                after,
                stderr_tail: self.process.stderr_tail().snapshot(),
            });
        }
    }

    fn kill(&mut self, reason: WorkerError) {
        self.kill_reason.get_or_insert(reason);
        self.writer.take();
        self.process.kill();
    }

    fn on_exit(&mut self, myself: &ActorRef<WorkerMsg>) -> Result<(), ActorProcessingErr> {
        let exit = self
            .process
            .try_exit()
            .unwrap_or(crate::process::Exit::Code(-1));
        let requested = self.state == WorkerState::Stopping;
        self.publish_exit(exit, requested);
        self.fail_pending(exit);
        if requested {
            myself.stop(None);
            return Ok(());
        }
        let cause = self.kill_reason.take().unwrap_or_else(|| self.exited(exit));
        if self.replace {
            // Its owner's decision, not a crash: replaced outside the budget.
            tracing::info!(worker = %self.worker_id, pid = self.process.pid(), %exit, "worker replaced: {cause}");
            myself.stop(Some(replace_reason(&cause.to_string())));
            return Ok(());
        }
        tracing::warn!(worker = %self.worker_id, pid = self.process.pid(), %exit, "worker failed: {cause}");
        Err(Box::new(cause))
    }

    fn publish_exit(&mut self, exit: crate::process::Exit, requested: bool) {
        self.set_state(WorkerState::Exited(exit));
        self.emit(WorkerEvent::Exited {
            worker_id: self.worker_id.clone(),
            pid: self.process.pid(),
            exit,
            requested,
        });
    }

    fn fail_pending(&mut self, exit: crate::process::Exit) {
        // A broken stream or a missed handshake is what the callers ran
        // into; otherwise they saw the process go.
        let error = match &self.kill_reason {
            Some(reason @ (WorkerError::Protocol { .. } | WorkerError::BootTimeout { .. })) => {
                reason.clone()
            }
            _ => self.exited(exit),
        };
        // Frames go out in request-id order; those past the last one the
        // writer began never reached the process.
        let written = self.written.load(Ordering::Acquire);
        for (_, running) in self.calls.drain() {
            running.task.abort();
        }
        for (id, pending) in self.pending.drain() {
            let Some(reply) = pending.reply else {
                continue;
            };
            let error = if id > written && pending.unsent.is_none() {
                WorkerError::NotDelivered {
                    worker_id: self.worker_id.clone(),
                }
            } else {
                error.clone()
            };
            let _ = reply.send(Err(error));
        }
    }

    fn exited(&self, exit: crate::process::Exit) -> WorkerError {
        WorkerError::WorkerExited {
            worker_id: self.worker_id.clone(),
            pid: self.process.pid(),
            exit,
            stderr_tail: self.process.stderr_tail().snapshot(),
        }
    }

    fn info(&self) -> WorkerInfo {
        let late = self.pending.values().filter(|p| p.reply.is_none()).count();
        WorkerInfo {
            worker_id: self.worker_id.clone(),
            pid: self.process.pid(),
            state: self.state.clone(),
            in_flight: self.pending.len() - late,
            overdue: late,
            served: self.served,
            callbacks: self.calls.len(),
        }
    }

    fn set_state(&mut self, state: WorkerState) {
        self.state = state.clone();
        self.status.send_replace(Status {
            pid: self.process.pid(),
            state,
        });
    }

    fn emit(&self, event: WorkerEvent) {
        if let Some(events) = &self.events {
            let _ = events.send(event);
        }
    }
}

async fn write_frames(
    mut stdin: Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
    mut outbox: mpsc::UnboundedReceiver<(Option<RequestId>, Bytes)>,
    written: Arc<AtomicU64>,
    myself: ActorRef<WorkerMsg>,
) {
    while let Some((id, frame)) = outbox.recv().await {
        // Marked before the first byte goes: once any of it may have
        // reached the process, the request may have run (the process can
        // read it and act before this task runs again).
        if let Some(id) = id {
            written.store(id, Ordering::Release);
        }
        if let Err(error) = stdin.write_all(&frame).await {
            // This frame (whole or cut: undecodable either way) and every
            // one queued behind it never arrived.
            let mut lost: Vec<RequestId> = id.into_iter().collect();
            outbox.close();
            while let Ok((id, _)) = outbox.try_recv() {
                lost.extend(id);
            }
            let _ = myself.send_message(WorkerMsg(Inner::WriteFailed(error.to_string(), lost)));
            return;
        }
    }
    // The actor closed the outbox: dropping stdin is the worker's EOF.
}

async fn read_frames(
    mut frames: FramedRead<
        Box<dyn tokio::io::AsyncRead + Send + Unpin>,
        MessageCodec<HostFrame, WorkerFrame>,
    >,
    myself: ActorRef<WorkerMsg>,
) {
    while let Some(frame) = frames.next().await {
        let failed = frame.is_err();
        let message = WorkerMsg(Inner::Frame(frame.map_err(Arc::new)));
        if myself.send_message(message).is_err() || failed {
            return;
        }
    }
}

fn tool_error(name: &str, message: String) -> CallError {
    CallError {
        kind: ErrorKind::ToolError,
        message,
        details: Some(serde_json::json!({ "tool": name })),
    }
}

/// Runs a callback's handler: its answer, or a `ToolError` with the text of
/// its panic if it panics (starting, or while it runs). The one way a
/// callback runs, here and in the mock adapter.
pub async fn run_callback(
    handler: &dyn Callbacks,
    name: &str,
    args: Value,
) -> Result<Value, CallError> {
    let started = std::panic::catch_unwind(AssertUnwindSafe(|| handler.call(name, args)));
    match started {
        Ok(future) => AssertUnwindSafe(future)
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| Err(panicked(name, &*panic))),
        Err(panic) => Err(panicked(name, &*panic)),
    }
}

/// The text of a caught panic.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// A handler's panic, as the answer the worker gets.
fn panicked(name: &str, panic: &(dyn std::any::Any + Send)) -> CallError {
    let text = panic_message(panic);
    tracing::warn!(handler = name, panic = %text, "a callback handler panicked");
    tool_error(name, format!("`{name}` panicked: {text}"))
}
