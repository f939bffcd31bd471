//! The worker actor's message handling. See the module docs of
//! [`crate::worker`] for the semantics.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use dspex_protocol::{
    Command, ErrorKind, MessageCodec, ProtocolError, Request, RequestId, Response, Value,
};
use dspex_supervision::replace_reason;
use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::io::AsyncWriteExt;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::codec::{Encoder, FramedRead};

use super::timers::{Timer, Timers};
use super::{OnHang, WorkerConfig, WorkerEvent, WorkerInfo, WorkerState};
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
    Frame(Result<Response, Arc<ProtocolError>>),
    WriteFailed(String, Vec<RequestId>),
    Exited,
    Tick,
}

#[derive(Debug)]
pub(crate) struct Call {
    pub(crate) command: Command,
    pub(crate) session_id: Option<String>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) on_hang: OnHang,
    /// Dropped once the worker owes no reply for this request.
    pub(crate) settled: Option<tokio::sync::oneshot::Sender<()>>,
    pub(crate) reply: RpcReplyPort<Result<Value, WorkerError>>,
}

struct Pending {
    /// `None` once the caller has been answered at the deadline; the entry
    /// then only waits for the worker's late reply (or its hang).
    reply: Option<RpcReplyPort<Result<Value, WorkerError>>>,
    timeout: Duration,
    on_hang: OnHang,
    /// Encoded and waiting for the handshake, if not sent yet.
    unsent: Option<Bytes>,
    /// The `shutdown` command: once answered, the exit that follows is expected.
    shutdown: bool,
    /// Tells whoever tracks the request that the worker is done with it:
    /// sent when a reply comes (even late), dropped when it never will.
    settled: Option<tokio::sync::oneshot::Sender<()>>,
}

/// The actor's state: the process and everything in flight on it.
pub struct WorkerActorState {
    worker_id: String,
    config: WorkerConfig,
    process: WorkerProcess,
    writer: Option<mpsc::UnboundedSender<(RequestId, Bytes)>>,
    /// The id of the last request whose frame the writer finished writing.
    written: Arc<AtomicU64>,
    codec: MessageCodec<Request, Response>,
    state: WorkerState,
    pending: HashMap<RequestId, Pending>,
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
            Inner::Frame(Ok(response)) => state.on_response(response),
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
        if let Err(error) = call.command.validate() {
            // Refused before any byte reached the worker: it stays as it was.
            let _ = call.reply.send(Err(WorkerError::Refused(Arc::new(error))));
            return;
        }
        let id = self.next_id;
        let timeout = call.timeout.unwrap_or(self.config.request_timeout);
        let shutdown = matches!(call.command, Command::Shutdown);
        let mut request = Request::new(id, call.command)
            .with_deadline_ms(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        request.session_id = call.session_id;
        let mut frame = BytesMut::new();
        if let Err(error) = self.codec.encode(&request, &mut frame) {
            let _ = call.reply.send(Err(WorkerError::Refused(Arc::new(error))));
            return;
        }
        if matches!(self.state, WorkerState::Stopping | WorkerState::Exited(_)) {
            // Nothing is sent to a process that is going or gone: the
            // request did not run, and may go to another worker.
            let _ = call.reply.send(Err(WorkerError::NotDelivered {
                worker_id: self.worker_id.clone(),
            }));
            return;
        }
        self.next_id += 1;
        let frame = frame.freeze();
        let ready = matches!(self.state, WorkerState::Ready(_));
        let (unsent, to_send) = if ready {
            (None, Some(frame))
        } else {
            (Some(frame), None)
        };
        self.timers
            .add(Instant::now() + timeout, Timer::Deadline(id));
        self.pending.insert(
            id,
            Pending {
                reply: Some(call.reply),
                timeout,
                on_hang: call.on_hang,
                unsent,
                shutdown,
                settled: call.settled,
            },
        );
        if let Some(frame) = to_send {
            self.send_frame(id, frame);
        }
    }

    /// Queues a request's frame for the writer. If the writer has ended (the
    /// pipe broke: the process is gone), the request was never delivered.
    fn send_frame(&mut self, id: RequestId, frame: Bytes) {
        let sent = self
            .writer
            .as_ref()
            .is_some_and(|writer| writer.send((id, frame)).is_ok());
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
        self.served += 1;
        if let Some(settled) = pending.settled.take() {
            let _ = settled.send(());
        }
        if pending.shutdown && response.outcome.is_ok() {
            // The worker said it is leaving: its exit is not a crash.
            self.set_state(WorkerState::Stopping);
            self.writer.take();
        }
        let Some(reply) = pending.reply else {
            tracing::debug!(worker = %self.worker_id, pid = self.process.pid(), id = response.id, "late reply after the deadline; dropped");
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
        let Some(reply) = pending.reply.take() else {
            return;
        };
        let _ = reply.send(Err(WorkerError::RequestTimeout {
            worker_id: self.worker_id.clone(),
            after: pending.timeout,
        }));
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
        // writer finished never reached the process.
        let written = self.written.load(Ordering::Acquire);
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
    mut outbox: mpsc::UnboundedReceiver<(RequestId, Bytes)>,
    written: Arc<AtomicU64>,
    myself: ActorRef<WorkerMsg>,
) {
    while let Some((id, frame)) = outbox.recv().await {
        if let Err(error) = stdin.write_all(&frame).await {
            // This frame (whole or cut: undecodable either way) and every
            // one queued behind it never arrived.
            let mut lost = vec![id];
            outbox.close();
            while let Ok((id, _)) = outbox.try_recv() {
                lost.push(id);
            }
            let _ = myself.send_message(WorkerMsg(Inner::WriteFailed(error.to_string(), lost)));
            return;
        }
        written.store(id, Ordering::Release);
    }
    // The actor closed the outbox: dropping stdin is the worker's EOF.
}

async fn read_frames(
    mut frames: FramedRead<
        Box<dyn tokio::io::AsyncRead + Send + Unpin>,
        MessageCodec<Request, Response>,
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
