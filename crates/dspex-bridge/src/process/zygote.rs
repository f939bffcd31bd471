//! [`ZygoteSpawner`]: workers forked from a zygote that imported DSPy once.
//!
//! Importing DSPy costs about half a second of CPU per process, and two cores
//! serialise the imports of a pool's workers. The zygote (`python -m
//! dspex_bridge --mode zygote`, itself started by the [`DirectSpawner`] on
//! the first spawn, with every guarantee of a direct child) preloads in two
//! phases: before it is ready, what a direct worker imports before its
//! handshake (DSPy and the `dspex_bridge` modules; only the latter with
//! `DSPEX_LAZY_DSPY=1`) and the configured project modules
//! ([`ZygoteOptions::preload`]); then, one at a time while it is idle, what a
//! worker imports only on first use (litellm, `anyio.to_thread`, optuna).
//! Each phase ends with `gc.freeze()`. It forks a worker per request in a
//! few milliseconds.
//!
//! The host keeps ownership of every worker's pipes: it creates them, hands
//! the child's ends to the zygote with `SCM_RIGHTS` over a `SOCK_SEQPACKET`
//! socket, and closes its copies; the zygote forks, closes its copies and
//! answers with the child's pid and a pidfd of it. The child leads its own
//! process group (G3) and carries the tree's run tag in the environment it
//! inherits (G9); its stdin's only writer is the host, so EOF still means
//! exit (G1). The zygote reaps its children and reports each exit with its
//! status (G2, G6); the pidfd lets the host see an exit even if the zygote
//! is gone (the status is then unknown: exit code -1). A forked worker has
//! no parent-death signal (it would follow the zygote, not the host, G4):
//! when the host dies it sees EOF, and the tree's watchdog kills everything
//! tagged.
//!
//! Supervision: a zygote that dies is started again on the next spawn, up to
//! [`ZygoteOptions::max_restarts`] in [`ZygoteOptions::window`]; workers it
//! forked keep serving meanwhile (they do not depend on it). A zygote that
//! cannot start, refuses to fork (a thread alive after preloading), or
//! exhausts its budget hands over to the direct spawner for
//! [`ZygoteOptions::retry_after`].
//!
//! Wire contract (`python/dspex_bridge/zygote.py`): one JSON object per
//! packet; `{"ready": {...}}` or `{"refused": {"reason"}}` once at start;
//! `{"spawn": {"id", "worker_id", "argv", "env"}}` with the worker's stdin,
//! stdout and stderr ends → `{"spawned": {"id", "pid"}}` with a pidfd, or
//! `{"error": {"id", "message"}}`; `{"exit": {"pid", "code" | "signal"}}`
//! whenever a child is reaped.

#![allow(unsafe_code)] // `OwnedFd`s from SCM_RIGHTS; registering descriptors with tokio.

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use nix::fcntl::OFlag;
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr,
    recvmsg, sendmsg, socketpair,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::{
    DirectSpawner, Exit, ProcessControl, Signaller, SpawnError, SpawnStrategy, Spawned, StopGrace,
    WorkerCommand, WorkerProcess,
};

/// The environment variable naming the zygote's control descriptor.
pub const ZYGOTE_FD_ENV: &str = "DSPEX_ZYGOTE_FD";
/// The environment variable listing the modules the zygote preloads.
pub const ZYGOTE_PRELOAD_ENV: &str = "DSPEX_ZYGOTE_PRELOAD";
/// How long after a forked worker's pidfd reports its end the zygote's exit
/// report may take before the exit is reported without a status.
const EXIT_REPORT_GRACE: Duration = Duration::from_secs(2);
/// The largest control message, either way.
const MAX_MESSAGE: usize = 64 * 1024;

/// How a [`ZygoteSpawner`] runs its zygote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZygoteOptions {
    /// Modules of the service's project the zygote imports before forking
    /// before it reports ready (see the module docs for the rest).
    pub preload: Vec<String>,
    /// How long the zygote may take to import everything (default 60 s).
    pub boot_timeout: Duration,
    /// How long a fork may take to be answered (default 10 s).
    pub fork_timeout: Duration,
    /// Zygote starts allowed in [`ZygoteOptions::window`] (default 3).
    pub max_restarts: usize,
    /// The restart budget's window (default 60 s).
    pub window: Duration,
    /// How long the direct spawner serves after the zygote failed to start,
    /// refused to fork or exhausted its budget (default 30 s).
    pub retry_after: Duration,
}

impl Default for ZygoteOptions {
    fn default() -> Self {
        Self {
            preload: Vec::new(),
            boot_timeout: Duration::from_secs(60),
            fork_timeout: Duration::from_secs(10),
            max_restarts: 3,
            window: Duration::from_secs(60),
            retry_after: Duration::from_secs(30),
        }
    }
}

/// Spawns workers by forking them from a zygote; falls back to a
/// [`DirectSpawner`] when the zygote cannot serve.
///
/// The zygote starts with the first spawn (so a pool's first workers wait
/// for one import, not one each). [`SpawnStrategy::shutdown`] stops it.
#[derive(Debug, Clone)]
pub struct ZygoteSpawner {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    direct: DirectSpawner,
    options: ZygoteOptions,
    state: tokio::sync::Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    zygote: Option<Zygote>,
    /// When zygotes were started, within the window.
    starts: VecDeque<Instant>,
    /// Direct spawning until then.
    direct_until: Option<Instant>,
    /// Shut down: no new zygote.
    closed: bool,
}

impl ZygoteSpawner {
    /// A zygote spawner whose spawner thread (for the zygote itself and the
    /// fallback) is named after `name`.
    ///
    /// Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// The OS error if the spawner thread cannot be created.
    pub fn new(name: &str, options: ZygoteOptions) -> io::Result<Self> {
        Ok(Self {
            inner: Arc::new(Inner {
                direct: DirectSpawner::new(name)?,
                options,
                state: tokio::sync::Mutex::default(),
            }),
        })
    }

    /// The pid of the zygote serving now, if any (tests, status).
    pub async fn zygote_pid(&self) -> Option<u32> {
        let state = self.inner.state.lock().await;
        state.zygote.as_ref().filter(|z| z.alive()).map(|z| z.pid)
    }
}

impl SpawnStrategy for ZygoteSpawner {
    fn spawn(&self, command: WorkerCommand) -> BoxFuture<'static, Result<Spawned, SpawnError>> {
        let inner = Arc::clone(&self.inner);
        async move {
            if let Some(shared) = inner.zygote(&command).await {
                match shared.fork(&command, inner.options.fork_timeout).await {
                    Ok(spawned) => return Ok(spawned),
                    Err(ForkError::Host(source)) => {
                        return Err(SpawnError {
                            worker_id: command.worker_id.clone(),
                            interpreter: command.interpreter.clone(),
                            source,
                        });
                    }
                    Err(ForkError::Zygote(reason)) => {
                        tracing::warn!(
                            worker = %command.worker_id,
                            %reason,
                            "the zygote could not fork this worker; spawning it directly"
                        );
                        inner.fall_back(&reason).await;
                    }
                }
            }
            inner.direct.spawn(command).await
        }
        .boxed()
    }

    fn shutdown(&self, grace: StopGrace) -> BoxFuture<'static, ()> {
        let inner = Arc::clone(&self.inner);
        async move {
            let zygote = {
                let mut state = inner.state.lock().await;
                state.closed = true;
                state.zygote.take()
            };
            if let Some(mut zygote) = zygote {
                let exit = zygote.process.stop(grace).await;
                tracing::debug!(pid = zygote.pid, %exit, "zygote stopped");
            }
        }
        .boxed()
    }
}

impl Inner {
    /// The live zygote, starting one if the budget allows; `None`: spawn
    /// directly.
    async fn zygote(&self, command: &WorkerCommand) -> Option<Arc<Shared>> {
        let mut state = self.state.lock().await;
        if state.closed {
            return None;
        }
        let now = Instant::now();
        if state.direct_until.is_some_and(|until| now < until) {
            return None;
        }
        if let Some(zygote) = &state.zygote {
            if zygote.alive() {
                return Some(Arc::clone(&zygote.shared));
            }
            let exit = zygote.process.try_exit();
            tracing::warn!(
                pid = zygote.pid,
                exit = ?exit,
                stderr = %zygote.process.stderr_tail().snapshot(),
                "the zygote died; starting a new one (its workers keep serving)"
            );
            state.zygote = None;
        }
        while state
            .starts
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.options.window)
        {
            state.starts.pop_front();
        }
        if state.starts.len() >= self.options.max_restarts.max(1) {
            tracing::error!(
                starts = state.starts.len(),
                window = ?self.options.window,
                "the zygote keeps dying; spawning workers directly"
            );
            state.starts.clear();
            state.direct_until = Some(now + self.options.retry_after);
            return None;
        }
        state.starts.push_back(now);
        match Zygote::start(&self.direct, command, &self.options).await {
            Ok(zygote) => {
                let shared = Arc::clone(&zygote.shared);
                state.zygote = Some(zygote);
                Some(shared)
            }
            Err(reason) => {
                tracing::warn!(%reason, "the zygote did not start; spawning workers directly");
                state.direct_until = Some(Instant::now() + self.options.retry_after);
                None
            }
        }
    }

    /// After a refusal: direct spawning for a while, and the zygote goes.
    async fn fall_back(&self, reason: &str) {
        let mut state = self.state.lock().await;
        state.direct_until = Some(Instant::now() + self.options.retry_after);
        if let Some(mut zygote) = state.zygote.take() {
            tracing::debug!(pid = zygote.pid, reason, "retiring the zygote");
            // Its workers do not depend on it; a short stop is enough.
            tokio::spawn(async move {
                zygote
                    .process
                    .stop(StopGrace {
                        after_eof: Duration::from_millis(200),
                        after_term: Duration::from_millis(200),
                    })
                    .await
            });
        }
    }
}

/// One running zygote: its process (owned like a worker's) and the state
/// its control socket's reader shares.
#[derive(Debug)]
struct Zygote {
    pid: u32,
    process: WorkerProcess,
    shared: Arc<Shared>,
}

impl Zygote {
    fn alive(&self) -> bool {
        self.process.try_exit().is_none() && !self.shared.dead.is_cancelled()
    }

    async fn start(
        direct: &DirectSpawner,
        template: &WorkerCommand,
        options: &ZygoteOptions,
    ) -> Result<Self, String> {
        let (host, child) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        )
        .map_err(|e| format!("socketpair: {e}"))?;
        // The child end must block in Python.
        nix::fcntl::fcntl(&child, nix::fcntl::FcntlArg::F_SETFL(OFlag::empty()))
            .map_err(|e| format!("fcntl: {e}"))?;
        let mut command = template.clone();
        command.worker_id = "zygote".into();
        command.args = vec!["--mode".into(), "zygote".into()];
        command
            .env
            .push((ZYGOTE_FD_ENV.into(), child.as_raw_fd().to_string().into()));
        if !options.preload.is_empty() {
            command
                .env
                .push((ZYGOTE_PRELOAD_ENV.into(), options.preload.join(",").into()));
        }
        command.inherit_fds = vec![Arc::new(child)];
        let spawned = direct.spawn(command).await.map_err(|e| e.to_string())?;
        let process = WorkerProcess::new(spawned, "zygote");
        let pid = process.pid();
        // SAFETY: the `OwnedFd` is a valid socket that only the `AsyncFd` owns,
        // so it is neither replaced nor closed while registered.
        let control = unsafe { AsyncFd::register(host) }
            .map_err(|e| format!("registering the socket: {e}"))?;
        template.fds.record([control.as_raw_fd()]);
        let control = Arc::new(control);

        let ready = async {
            let (message, fds) = receive(&control).await?;
            drop(fds);
            Ok::<_, io::Error>(message)
        };
        let message = tokio::select! {
            message = tokio::time::timeout(options.boot_timeout, ready) => message,
            exit = process.wait() => {
                return Err(format!(
                    "the zygote exited ({exit}) before it was ready; stderr: {}",
                    process.stderr_tail().snapshot().trim_end()
                ));
            }
        };
        let message = match message {
            Err(_) => return Err(format!("not ready within {:?}", options.boot_timeout)),
            Ok(Err(e)) => return Err(format!("reading its control socket: {e}")),
            Ok(Ok(message)) => message,
        };
        match message {
            Some(Message::Ready(ready)) => {
                tracing::info!(
                    pid,
                    import_ms = ready.import_ms,
                    dspy = %ready.dspy,
                    preloaded = ?ready.preloaded,
                    "zygote ready"
                );
            }
            Some(Message::Refused { reason }) => return Err(format!("it refused: {reason}")),
            Some(other) => return Err(format!("unexpected first message {other:?}")),
            None => return Err("it closed its control socket".into()),
        }
        let shared = Arc::new(Shared {
            control,
            pending: Mutex::default(),
            exits: Mutex::default(),
            dead: CancellationToken::new(),
            next_id: AtomicU64::new(1),
            fds: template.fds.clone(),
        });
        tokio::spawn(read_loop(Arc::clone(&shared)));
        Ok(Self {
            pid,
            process,
            shared,
        })
    }
}

/// What the zygote said about one spawn request.
type ForkReply = Result<(u32, OwnedFd, watch::Receiver<Option<Exit>>), String>;

/// The zygote's control socket and what its reader routes.
#[derive(Debug)]
struct Shared {
    control: Arc<AsyncFd<OwnedFd>>,
    /// Spawn requests waiting for their answer.
    pending: Mutex<HashMap<u64, oneshot::Sender<ForkReply>>>,
    /// The exit slots of live forked workers, by pid.
    exits: Mutex<HashMap<u32, watch::Sender<Option<Exit>>>>,
    /// Cancelled when the control socket is closed (the zygote is gone).
    dead: CancellationToken,
    next_id: AtomicU64,
    fds: super::FdLedger,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

enum ForkError {
    /// Making the pipes failed on the host: a spawn error.
    Host(io::Error),
    /// The zygote failed or refused: spawn directly instead.
    Zygote(String),
}

impl Shared {
    async fn fork(
        self: &Arc<Self>,
        command: &WorkerCommand,
        timeout: Duration,
    ) -> Result<Spawned, ForkError> {
        let pipe_pair = || nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from);
        let (stdin_child, stdin_host) = pipe_pair().map_err(ForkError::Host)?;
        let (stdout_host, stdout_child) = pipe_pair().map_err(ForkError::Host)?;
        let (stderr_host, stderr_child) = pipe_pair().map_err(ForkError::Host)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut argv: Vec<String> = vec!["--worker-id".into(), command.worker_id.clone()];
        argv.extend(
            command
                .args
                .iter()
                .map(|a| a.to_string_lossy().into_owned()),
        );
        let env: Map<String, Value> = command
            .env
            .iter()
            .map(|(k, v)| (lossy(k), Value::String(lossy(v))))
            .chain([
                (
                    "PYTHONPATH".to_owned(),
                    Value::String(lossy(&command.python_path)),
                ),
                (
                    super::RUN_TAG_ENV.to_owned(),
                    Value::String(command.run_tag.as_str().to_owned()),
                ),
            ])
            .collect();
        let message = json!({"spawn": {
            "id": id,
            "worker_id": command.worker_id,
            "argv": argv,
            "env": env,
        }});
        let (reply_tx, reply) = oneshot::channel();
        lock(&self.pending).insert(id, reply_tx);
        // Whatever happens below, the request is not left behind.
        let _pending = scopeguard(|| {
            lock(&self.pending).remove(&id);
        });
        let sent = send(
            &self.control,
            &message,
            &[
                stdin_child.as_raw_fd(),
                stdout_child.as_raw_fd(),
                stderr_child.as_raw_fd(),
            ],
        )
        .await;
        // The zygote has its own copies now (or never will): ours go, so
        // the worker's stdin has exactly one writer, the host (G1).
        drop((stdin_child, stdout_child, stderr_child));
        if let Err(e) = sent {
            return Err(ForkError::Zygote(format!("sending the spawn request: {e}")));
        }
        let answer = tokio::select! {
            answer = reply => answer.unwrap_or_else(|_| Err("the zygote is gone".into())),
            () = self.dead.cancelled() => Err("the zygote is gone".into()),
            () = tokio::time::sleep(timeout) => Err(format!("no answer within {timeout:?}")),
        };
        let (pid, pidfd, exit) = answer.map_err(ForkError::Zygote)?;
        let host = |e: io::Error| ForkError::Host(e);
        self.fds.record([
            stdin_host.as_raw_fd(),
            stdout_host.as_raw_fd(),
            stderr_host.as_raw_fd(),
            pidfd.as_raw_fd(),
        ]);
        let control = ForkedControl {
            pid,
            // SAFETY: as for the control socket: the pidfd is owned by the
            // `AsyncFd` alone.
            pidfd: unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) }
                .map_err(|e| host(e.into()))?,
            exit,
            exited: false,
            orphaned: false,
        };
        Ok(Spawned {
            pid,
            stdin: Box::new(pipe::Sender::from_owned_fd(stdin_host).map_err(host)?),
            stdout: Box::new(pipe::Receiver::from_owned_fd(stdout_host).map_err(host)?),
            stderr: Box::new(pipe::Receiver::from_owned_fd(stderr_host).map_err(host)?),
            control: Box::new(control),
            signaller: Signaller::process_group(pid),
        })
    }
}

fn lossy(s: &std::ffi::OsStr) -> String {
    s.to_string_lossy().into_owned()
}

/// Runs `f` when dropped.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// Routes the zygote's messages until its control socket closes.
async fn read_loop(shared: Arc<Shared>) {
    loop {
        let (message, mut fds) = match receive(&shared.control).await {
            Ok((Some(message), fds)) => (message, fds),
            Ok((None, _)) => break,
            Err(error) => {
                tracing::warn!(%error, "reading the zygote's control socket failed");
                break;
            }
        };
        match message {
            Message::Spawned { id, pid } => {
                let Some(pidfd) = fds.pop() else {
                    tracing::error!(pid, "the zygote sent no pidfd; killing the worker");
                    let _ = Signaller::process_group(pid).send(nix::sys::signal::Signal::SIGKILL);
                    continue;
                };
                // The slot exists before anyone can see the pid, so no exit
                // report (which always comes after this message) is missed.
                let (slot, exit) = watch::channel(None);
                lock(&shared.exits).insert(pid, slot);
                let waiter = lock(&shared.pending).remove(&id);
                if waiter.is_none_or(|w| w.send(Ok((pid, pidfd, exit))).is_err()) {
                    // Its caller gave up: nobody will own the worker.
                    let _ = Signaller::process_group(pid).send(nix::sys::signal::Signal::SIGKILL);
                }
            }
            Message::Error { id, message } => {
                if let Some(waiter) = lock(&shared.pending).remove(&id) {
                    let _ = waiter.send(Err(message));
                }
            }
            Message::Exit { pid, code, signal } => {
                let exit = match (code, signal) {
                    (_, Some(signal)) => Exit::Signal(signal),
                    (Some(code), None) => Exit::Code(code),
                    (None, None) => Exit::Code(-1),
                };
                if let Some(slot) = lock(&shared.exits).remove(&pid) {
                    let _ = slot.send(Some(exit));
                }
            }
            other => tracing::warn!(message = ?other, "unexpected message from the zygote"),
        }
    }
    shared.dead.cancel();
    for (_, waiter) in lock(&shared.pending).drain() {
        let _ = waiter.send(Err("the zygote is gone".into()));
    }
    // Dropping the slots tells each worker's control to rely on its pidfd.
    lock(&shared.exits).clear();
}

/// A message from the zygote.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Message {
    Ready(Ready),
    Refused {
        reason: String,
    },
    Spawned {
        id: u64,
        pid: u32,
    },
    Error {
        id: u64,
        message: String,
    },
    Exit {
        pid: u32,
        #[serde(default)]
        code: Option<i32>,
        #[serde(default)]
        signal: Option<i32>,
    },
}

#[derive(Debug, Deserialize)]
struct Ready {
    #[serde(default)]
    import_ms: f64,
    #[serde(default)]
    dspy: String,
    #[serde(default)]
    preloaded: Vec<String>,
}

/// Sends one message with `fds` attached.
async fn send(control: &AsyncFd<OwnedFd>, message: &Value, fds: &[RawFd]) -> io::Result<()> {
    let bytes = serde_json::to_vec(message).map_err(io::Error::other)?;
    if bytes.len() > MAX_MESSAGE {
        return Err(io::Error::other("control message too large"));
    }
    control
        .async_io(Interest::WRITABLE, |fd| {
            let rights = [ControlMessage::ScmRights(fds)];
            let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
            sendmsg::<UnixAddr>(
                fd.as_raw_fd(),
                &[IoSlice::new(&bytes)],
                cmsgs,
                MsgFlags::MSG_NOSIGNAL,
                None,
            )
            .map_err(io::Error::from)
        })
        .await
        .map(drop)
}

/// Receives one message and the descriptors attached to it; `None` at EOF.
async fn receive(control: &AsyncFd<OwnedFd>) -> io::Result<(Option<Message>, Vec<OwnedFd>)> {
    let mut buffer = vec![0u8; MAX_MESSAGE];
    let (len, fds) = control
        .async_io(Interest::READABLE, |fd| {
            let mut space = nix::cmsg_space!([RawFd; 4]);
            let mut iov = [IoSliceMut::new(&mut buffer)];
            let msg = recvmsg::<UnixAddr>(
                fd.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .map_err(io::Error::from)?;
            let mut fds = Vec::new();
            for cmsg in msg.cmsgs().map_err(io::Error::from)? {
                if let ControlMessageOwned::ScmRights(received) = cmsg {
                    // SAFETY: the kernel just installed these descriptors in
                    // this process for us; nothing else owns them.
                    fds.extend(
                        received
                            .into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
            Ok((msg.bytes, fds))
        })
        .await?;
    if len == 0 {
        return Ok((None, fds));
    }
    let message = serde_json::from_slice(&buffer[..len])
        .map_err(|e| io::Error::other(format!("undecodable message: {e}")))?;
    Ok((Some(message), fds))
}

/// Reaps a forked worker: its exit comes from the zygote's report, or, if
/// the zygote is gone, its pidfd says when it ended (the status is then
/// unknown: `Exit::Code(-1)`).
#[derive(Debug)]
struct ForkedControl {
    pid: u32,
    pidfd: AsyncFd<OwnedFd>,
    exit: watch::Receiver<Option<Exit>>,
    exited: bool,
    orphaned: bool,
}

impl ProcessControl for ForkedControl {
    fn wait(&mut self) -> BoxFuture<'_, io::Result<Exit>> {
        async move {
            loop {
                if let Some(exit) = *self.exit.borrow() {
                    return Ok(exit);
                }
                if self.exited && self.orphaned {
                    tracing::warn!(
                        pid = self.pid,
                        "a forked worker ended after its zygote; its exit status is unknown"
                    );
                    return Ok(Exit::Code(-1));
                }
                // Once the pidfd says the process is gone, its report is
                // due at once; a report that never comes (a zygote that
                // stopped reporting) must not hold the exit back for ever.
                let report_due = async {
                    if self.exited {
                        tokio::time::sleep(EXIT_REPORT_GRACE).await;
                    } else {
                        std::future::pending::<()>().await;
                    }
                };
                tokio::select! {
                    changed = self.exit.changed(), if !self.orphaned => {
                        if changed.is_err() {
                            self.orphaned = true;
                        }
                    }
                    ready = self.pidfd.readable(), if !self.exited => {
                        ready?.retain_ready();
                        self.exited = true;
                    }
                    () = report_due => {
                        tracing::warn!(
                            pid = self.pid,
                            "a forked worker ended but its zygote sent no exit report; its exit status is unknown"
                        );
                        return Ok(Exit::Code(-1));
                    }
                }
            }
        }
        .boxed()
    }
}
