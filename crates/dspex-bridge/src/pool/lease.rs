//! [`Lease`]: a worker checked out of the pool. Dropping it is the check-in.

use std::sync::Arc;

use dspex_protocol::{Command, ErrorKind, ExecuteArgs, LmConfig, Map, ProgramDefinition, Value};
use ractor::ActorRef;
use tokio::sync::oneshot;

use super::actor::{Inner, PoolMsg};
use super::contract::checkin_decision;
use crate::WorkerError;
use crate::worker::{CallOptions, WorkerHandle};

type Reply = oneshot::Receiver<Result<Value, WorkerError>>;

/// A worker checked out of the pool, for one caller.
///
/// Dropping the lease checks the worker back in. The check-in decision is
/// typed ([`super::CheckinDecision`]) and follows from what happened:
/// - the last call succeeded or got a structured error reply: `Ok`;
/// - the worker crashed, timed out or broke the protocol: `Remove` (it is
///   killed and replaced);
/// - the holder panicked (the lease is dropped while unwinding): `Remove`;
/// - the holder's future was dropped while a call was in flight: the reply is
///   *drained* — the pool keeps the worker out of service until the reply
///   arrives (and discards it, matched by request id), then checks it in.
///   The late reply never reaches anyone.
pub struct Lease {
    pool: ActorRef<PoolMsg>,
    slot: usize,
    worker: WorkerHandle,
    pending_lm: Option<(Arc<LmConfig>, u64)>,
    lm_applied: Option<u64>,
    has_program: bool,
    loaded: Option<String>,
    in_flight: Option<Reply>,
    outcome: Option<Result<(), WorkerError>>,
    armed: bool,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("slot", &self.slot)
            .field("worker", &self.worker.worker_id())
            .field("pid", &self.worker.pid())
            .field("in_flight", &self.in_flight.is_some())
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
    ) -> Self {
        Self {
            pool,
            slot,
            worker,
            pending_lm,
            lm_applied: None,
            has_program,
            loaded: None,
            in_flight: None,
            outcome: None,
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

    /// Sends a command to the leased worker and waits for its reply. If the
    /// pool's LM configuration changed since this worker last received it,
    /// the worker gets it first.
    ///
    /// # Cancel safety
    /// Dropping the future while the request is in flight leaves the lease
    /// holding its reply; dropping the lease then drains it (see the type's
    /// docs). The worker is never handed to another caller before its reply
    /// is in.
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
            let applied = self.round_trip(configure, options.clone()).await;
            if let Err(error) = applied {
                self.pending_lm = Some((config, generation));
                return Err(error);
            }
            self.lm_applied = Some(generation);
        }
        self.round_trip(command, options).await
    }

    /// Runs `program` on `inputs`, sending its definition along only if this
    /// worker does not have it yet (or lost it).
    ///
    /// # Cancel safety
    /// As [`Lease::call`].
    ///
    /// # Errors
    /// The worker's errors ([`WorkerError`]).
    pub async fn execute(
        &mut self,
        program: &ProgramDefinition,
        hash: &str,
        inputs: Map<String, Value>,
        lm: Option<LmConfig>,
        options: CallOptions,
    ) -> Result<Value, WorkerError> {
        let args = |with_definition: bool| ExecuteArgs {
            program_id: program.program_id.clone(),
            inputs: inputs.clone(),
            program: with_definition.then(|| program.clone()),
            lm: lm.clone(),
        };
        let first = self
            .call(
                Command::ExecuteProgram(args(!self.has_program)),
                options.clone(),
            )
            .await;
        let result = match first {
            // The worker lost it (reset_state, or deleted by hand): resend once.
            Err(WorkerError::Remote(error))
                if error.kind == ErrorKind::ProgramNotFound && self.has_program =>
            {
                self.call(Command::ExecuteProgram(args(true)), options)
                    .await
            }
            other => other,
        };
        if result.is_ok() && !self.has_program {
            self.has_program = true;
            self.loaded = Some(hash.to_owned());
        }
        result
    }

    async fn round_trip(
        &mut self,
        command: Command,
        options: CallOptions,
    ) -> Result<Value, WorkerError> {
        let result = match self.worker.send(command, options) {
            Ok(reply) => {
                let reply = self.in_flight.insert(reply);
                let result = reply
                    .await
                    .unwrap_or_else(|_| Err(self.worker.unavailable()));
                self.in_flight = None;
                result
            }
            Err(error) => Err(error),
        };
        self.outcome = Some(result.as_ref().map(|_| ()).map_err(Clone::clone));
        result
    }
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
            lm_applied: self.lm_applied,
            decision: checkin_decision(self.outcome.as_ref(), panicked),
        };
        let message = match self.in_flight.take() {
            Some(reply) if !panicked => Inner::Drain(report, reply),
            _ => Inner::Checkin(report),
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
