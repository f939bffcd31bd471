//! [`Lease`]: a worker checked out of the pool. Dropping it is the check-in.

use std::sync::Arc;

use dspex_protocol::{Command, ErrorKind, LmConfig, Value};
use futures::FutureExt;
use ractor::ActorRef;
use tokio::sync::oneshot;

use super::actor::{Inner, PoolMsg};
use super::contract::checkin_decision;
use super::{ProgramVersion, Run};
use crate::WorkerError;
use crate::worker::{Abandon, CallOptions, Hooks, Tracked, WorkerHandle};

/// A worker checked out of the pool, for one caller.
///
/// Dropping the lease checks the worker back in. The check-in decision is
/// typed ([`super::CheckinDecision`]) and follows from what happened:
/// - the last call succeeded, got a structured error reply, or passed its
///   deadline: `Ok`;
/// - the worker crashed or broke the protocol: `Remove` (it is killed and
///   restarted);
/// - the holder panicked (the lease is dropped while unwinding): `Replace`
///   (its state is not trusted);
/// - the worker still owes a reply (the holder's future was dropped while a
///   call was in flight, or the call passed its deadline): the pool keeps
///   the worker out of service until that reply arrives (and is discarded,
///   matched by request id) or the worker dies, then checks it in. The late
///   reply never reaches anyone.
pub struct Lease {
    pool: ActorRef<PoolMsg>,
    slot: usize,
    worker: WorkerHandle,
    pending_lm: Option<(Arc<LmConfig>, u64)>,
    lm_applied: Option<u64>,
    has_program: bool,
    has_lm: bool,
    loaded: Option<String>,
    lm_registered: Option<String>,
    /// Resolve when the worker no longer owes a reply to a request of ours.
    unsettled: Vec<oneshot::Receiver<()>>,
    outcome: Option<Result<(), WorkerError>>,
    served: bool,
    armed: bool,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("slot", &self.slot)
            .field("worker", &self.worker.worker_id())
            .field("pid", &self.worker.pid())
            .field("unsettled", &self.unsettled.len())
            .finish_non_exhaustive()
    }
}

impl Lease {
    pub(crate) fn new(
        pool: ActorRef<PoolMsg>,
        slot: usize,
        worker: WorkerHandle,
        pending_lm: Option<(Arc<LmConfig>, u64)>,
        has_program: bool,
        has_lm: bool,
    ) -> Self {
        Self {
            pool,
            slot,
            worker,
            pending_lm,
            lm_applied: None,
            has_program,
            has_lm,
            loaded: None,
            lm_registered: None,
            unsettled: Vec::new(),
            outcome: None,
            served: false,
            armed: true,
        }
    }

    /// The worker's id.
    pub fn worker_id(&self) -> &str {
        self.worker.worker_id()
    }

    /// The worker's OS pid.
    pub fn pid(&self) -> u32 {
        self.worker.pid()
    }

    /// The leased worker's handle.
    pub fn worker(&self) -> &WorkerHandle {
        &self.worker
    }

    /// Sends a command to the leased worker and waits for its reply. If the
    /// pool's LM configuration changed since this worker last received it,
    /// the worker gets it first.
    ///
    /// # Cancel safety
    /// Dropping the future while the request is in flight leaves the lease
    /// owing that reply; dropping the lease then keeps the worker out of
    /// service until it is in (see the type's docs). The worker is never
    /// handed to another caller before its reply is in.
    ///
    /// # Errors
    /// The worker's errors ([`WorkerError`]).
    pub async fn call(
        &mut self,
        command: Command,
        options: CallOptions,
    ) -> Result<Value, WorkerError> {
        if let Some((config, generation)) = self.pending_lm.take() {
            let configure = Command::ConfigureLm((*config).clone());
            let applied = self.round_trip(configure, plain(&options)).await;
            if let Err(error) = applied {
                self.pending_lm = Some((config, generation));
                return Err(error);
            }
            self.lm_applied = Some(generation);
        }
        self.round_trip(command, options).await
    }

    /// Runs `program` (once or on a batch: `run`), sending its definition
    /// along only if this worker does not have it yet (or lost it), and
    /// registering the LM override `lm` (its id and configuration) only if
    /// this worker has not.
    ///
    /// # Cancel safety
    /// As [`Lease::call`].
    ///
    /// # Errors
    /// The worker's errors ([`WorkerError`]).
    pub async fn execute(
        &mut self,
        program: &ProgramVersion,
        run: &Run,
        lm: Option<(&str, &LmConfig)>,
        options: CallOptions,
    ) -> Result<Value, WorkerError> {
        if let Some((lm_id, config)) = lm
            && !self.has_lm
        {
            self.register_lm(lm_id, config, &options).await?;
        }
        let lm_id = lm.map(|(id, _)| id);
        let mut with_definition = !self.has_program;
        let mut resent = false;
        let result = loop {
            let result = self
                .call(
                    run.command(program, with_definition, lm_id),
                    options.clone(),
                )
                .await;
            let Err(WorkerError::Remote(error)) = &result else {
                break result;
            };
            if resent {
                break result;
            }
            // The worker lost what it was sent (reset_state, eviction): send
            // it again, once.
            match (&error.kind, lm) {
                (ErrorKind::ProgramNotFound, _) if !with_definition => with_definition = true,
                (ErrorKind::LmNotConfigured, Some((lm_id, config)))
                    if names_lm(error.details.as_ref(), lm_id) =>
                {
                    self.register_lm(lm_id, config, &options).await?;
                }
                _ => break result,
            }
            resent = true;
        };
        if result.is_ok() && !self.has_program {
            self.has_program = true;
            self.loaded = Some(program.hash.clone());
        }
        result
    }

    async fn register_lm(
        &mut self,
        lm_id: &str,
        config: &LmConfig,
        options: &CallOptions,
    ) -> Result<(), WorkerError> {
        let register = Command::RegisterLm {
            lm_id: lm_id.to_owned(),
            config: config.clone(),
        };
        self.call(register, plain(options)).await?;
        self.has_lm = true;
        self.lm_registered = Some(lm_id.to_owned());
        Ok(())
    }

    async fn round_trip(
        &mut self,
        command: Command,
        options: CallOptions,
    ) -> Result<Value, WorkerError> {
        self.served = true;
        let result = match self.worker.send_tracked(command, options) {
            Ok(Tracked {
                reply,
                settled,
                abandon,
            }) => {
                self.unsettled.push(settled);
                // Dropped while waiting: the worker is told its caller went.
                let abandon = AbandonOnDrop(Some(abandon));
                let result = reply
                    .await
                    .unwrap_or_else(|_| Err(self.worker.unavailable()));
                abandon.disarm();
                if !matches!(result, Err(WorkerError::RequestTimeout { .. })) {
                    // Answered: the worker owes nothing for this request.
                    self.unsettled.pop();
                }
                result
            }
            Err(error) => Err(error),
        };
        self.outcome = Some(result.as_ref().map(|_| ()).map_err(Clone::clone));
        result
    }
}

/// The options without the request's hooks: for the LM set-up a request
/// needs first.
fn plain(options: &CallOptions) -> CallOptions {
    CallOptions {
        hooks: Hooks::default(),
        ..options.clone()
    }
}

/// Abandons a request when the future waiting for its reply is dropped.
struct AbandonOnDrop(Option<Abandon>);

impl AbandonOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        if let Some(abandon) = self.0.take() {
            abandon.abandon();
        }
    }
}

/// Whether an `LmNotConfigured` error's details name this LM id (the worker
/// has forgotten a registered LM, rather than having none).
fn names_lm(details: Option<&Value>, lm_id: &str) -> bool {
    details
        .and_then(|d| d.get("lm_id"))
        .and_then(Value::as_str)
        .is_some_and(|id| id == lm_id)
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let panicked = std::thread::panicking();
        let report = super::actor::Checkin {
            slot: self.slot,
            pid: self.worker.pid(),
            loaded: self.loaded.take(),
            lm_registered: self.lm_registered.take(),
            lm_applied: self.lm_applied,
            served: self.served,
            decision: checkin_decision(self.outcome.as_ref(), panicked),
        };
        let unsettled = std::mem::take(&mut self.unsettled);
        let message = if unsettled.is_empty() || panicked {
            Inner::Checkin(report)
        } else {
            let settled = futures::future::join_all(unsettled)
                .map(|answers| answers.iter().all(Result::is_ok))
                .boxed();
            Inner::Drain(report, super::actor::Settled(settled))
        };
        // A pool that is gone has nobody to give the worker back to.
        let _ = self.pool.send_message(PoolMsg(message));
    }
}

impl Lease {
    pub(crate) fn mark_loaded(&mut self, hash: &str) {
        self.has_program = true;
        self.loaded = Some(hash.to_owned());
    }

    pub(crate) fn mark_lm(&mut self, generation: u64) {
        self.pending_lm = None;
        self.lm_applied = Some(generation);
    }

    /// Takes the lease apart without a check-in (the pool does it itself when
    /// a hand-off finds its caller gone).
    pub(crate) fn disarm(mut self) -> (usize, u32) {
        self.armed = false;
        (self.slot, self.worker.pid())
    }
}
