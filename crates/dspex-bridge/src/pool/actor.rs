//! The pool actor: the checkout queue and the state of every worker slot.
//!
//! It never awaits Python: configuring an LM on a new worker, starting
//! children and draining abandoned replies all run in tasks that report back
//! by message. Its state is published after every message as a
//! [`PoolStatus`] snapshot, so `status()` never waits on the actor.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use dspex_protocol::{LmConfig, Value};
use dspex_supervision::{
    OnGiveUp, Strategy, Supervisor, SupervisorEvent, SupervisorHandle, SupervisorOptions,
};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::{broadcast, oneshot, watch};

use super::contract::{
    CheckinDecision, CheckoutDecision, SkipReason, checkin_decision, checkout_decision,
};
use super::lease::Lease;
use super::status::{PoolCounters, PoolEvent, PoolState, PoolStatus, SlotPhase};
use super::{PoolConfig, PoolError};
use crate::WorkerError;
use crate::context::TreeContext;
use crate::worker::{WorkerEvent, WorkerHandle};

/// A message to the pool actor (built by [`super::Pool`] and [`Lease`]).
#[derive(Debug)]
pub struct PoolMsg(pub(crate) Inner);

#[derive(Debug)]
pub(crate) enum Inner {
    Checkout(Box<Waiter>),
    Cancel(u64),
    Checkin(Checkin),
    Drain(Checkin, oneshot::Receiver<Result<Value, WorkerError>>),
    WorkerStarted {
        slot: usize,
        handle: WorkerHandle,
    },
    StartFailed {
        slot: usize,
        error: String,
    },
    Worker(WorkerEvent),
    LmApplied {
        slot: usize,
        pid: u32,
        generation: u64,
        result: Result<(), String>,
    },
    SetLm(Arc<LmConfig>, oneshot::Sender<u64>),
    ForgetSession(String),
    Failed(String),
    Barrier(oneshot::Sender<()>),
    Close(oneshot::Sender<()>),
    Pause(oneshot::Receiver<()>),
}

/// A caller waiting for a worker.
#[derive(Debug)]
pub(crate) struct Waiter {
    pub(crate) ticket: u64,
    pub(crate) session: Option<SessionRequest>,
    pub(crate) program: Option<String>,
    pub(crate) reply: oneshot::Sender<Result<Lease, PoolError>>,
}

/// The session a checkout belongs to.
#[derive(Debug, Clone)]
pub(crate) struct SessionRequest {
    pub(crate) id: String,
    /// A stateful session runs only on the worker that holds its state.
    pub(crate) stateful: bool,
}

/// What a lease reports when it ends.
#[derive(Debug)]
pub(crate) struct Checkin {
    pub(crate) slot: usize,
    pub(crate) pid: u32,
    pub(crate) loaded: Option<String>,
    pub(crate) lm_applied: Option<u64>,
    pub(crate) decision: CheckinDecision,
}

/// Where a session's worker is.
#[derive(Debug, Clone, Copy)]
pub(super) struct Affinity {
    pub(super) slot: usize,
    pub(super) pid: u32,
    pub(super) stateful: bool,
}

#[derive(Debug)]
pub(super) struct Slot {
    pub(super) id: String,
    pub(super) overflow: bool,
    pub(super) phase: SlotPhase,
    pub(super) worker: Option<WorkerHandle>,
    pub(super) pid: u32,
    pub(super) leases: usize,
    pub(super) loaded: HashSet<String>,
    pub(super) lm_generation: u64,
    pub(super) pinned: VecDeque<Waiter>,
}

impl Slot {
    pub(super) fn new(id: String, overflow: bool) -> Self {
        Self {
            id,
            overflow,
            phase: SlotPhase::NotStarted,
            worker: None,
            pid: 0,
            leases: 0,
            loaded: HashSet::new(),
            lm_generation: 0,
            pinned: VecDeque::new(),
        }
    }
}

/// The pool actor.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PoolActor;

/// What the pool actor is started with.
#[derive(Debug)]
pub(crate) struct PoolArgs {
    pub(crate) config: PoolConfig,
    pub(crate) ctx: Arc<TreeContext>,
    pub(crate) status: watch::Sender<PoolStatus>,
    pub(crate) events: broadcast::Sender<PoolEvent>,
    pub(crate) ready_workers: watch::Sender<Vec<WorkerHandle>>,
}

/// The pool actor's state.
#[derive(Debug)]
pub(crate) struct PoolActorState {
    pub(super) config: PoolConfig,
    pub(super) ctx: Arc<TreeContext>,
    pub(super) workers: SupervisorHandle,
    pub(super) slots: Vec<Slot>,
    pub(super) queue: VecDeque<Waiter>,
    pub(super) sessions: HashMap<String, Affinity>,
    pub(super) lost_sessions: HashSet<String>,
    pub(super) lm: Option<(Arc<LmConfig>, u64)>,
    pub(super) lm_generation: u64,
    pub(super) failed: Option<String>,
    pub(super) closing: bool,
    pub(super) cursor: usize,
    pub(super) overflow_started: usize,
    pub(super) counters: PoolCounters,
    pub(super) status: watch::Sender<PoolStatus>,
    pub(super) events: broadcast::Sender<PoolEvent>,
    pub(super) ready_workers: watch::Sender<Vec<WorkerHandle>>,
}

impl Actor for PoolActor {
    type Msg = PoolMsg;
    type State = PoolActorState;
    type Arguments = PoolArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<PoolMsg>,
        args: PoolArgs,
    ) -> Result<PoolActorState, ActorProcessingErr> {
        // The pool supervises its workers through a one_for_one supervisor
        // linked to it, with the pool's restart budget; when that gives up,
        // the pool is Failed.
        let supervisor = Supervisor::new(SupervisorOptions {
            strategy: Strategy::OneForOne,
            intensity: args.config.intensity,
            backoff: args.config.backoff,
            on_give_up: OnGiveUp::Remain,
            event_capacity: 1024,
            ..SupervisorOptions::default()
        });
        let mut supervisor_events = supervisor.subscribe();
        let mut worker_events = args.ctx.events.subscribe();
        let workers = supervisor.spawn_linked(myself.get_cell()).await?;
        let me = myself.clone();
        tokio::spawn(async move {
            loop {
                let message = match supervisor_events.recv().await {
                    Ok(SupervisorEvent::Failed { cause }) => Inner::Failed(cause.to_string()),
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if me.send_message(PoolMsg(message)).is_err() {
                    return;
                }
            }
        });
        let me = myself.clone();
        tokio::spawn(async move {
            loop {
                match worker_events.recv().await {
                    Ok(event) => {
                        if me.send_message(PoolMsg(Inner::Worker(event))).is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::error!(n, "pool: missed worker events");
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        let slots = (0..args.config.size)
            .map(|i| Slot::new(format!("{}-{i}", args.config.name), false))
            .collect();
        Ok(PoolActorState {
            config: args.config,
            ctx: args.ctx,
            workers,
            slots,
            queue: VecDeque::new(),
            sessions: HashMap::new(),
            lost_sessions: HashSet::new(),
            lm: None,
            lm_generation: 0,
            failed: None,
            closing: false,
            cursor: 0,
            overflow_started: 0,
            counters: PoolCounters::default(),
            status: args.status,
            events: args.events,
            ready_workers: args.ready_workers,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<PoolMsg>,
        state: &mut PoolActorState,
    ) -> Result<(), ActorProcessingErr> {
        if !state.config.lazy {
            for slot in 0..state.slots.len() {
                state.start_slot(&myself, slot);
            }
        }
        state.publish();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<PoolMsg>,
        PoolMsg(message): PoolMsg,
        state: &mut PoolActorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            Inner::Checkout(waiter) => state.checkout(&myself, *waiter),
            Inner::Cancel(ticket) => state.cancel(ticket),
            Inner::Checkin(checkin) => state.checkin(&myself, checkin),
            Inner::Drain(checkin, reply) => {
                state.counters.drained += 1;
                let me = myself.clone();
                tokio::spawn(async move {
                    let outcome = reply.await.map(|r| r.map(|_| ())).ok();
                    let decision = match outcome {
                        Some(result) => checkin_decision(Some(&result), false),
                        None => CheckinDecision::Remove("the worker went away".into()),
                    };
                    let _ = me.send_message(PoolMsg(Inner::Checkin(Checkin {
                        decision,
                        ..checkin
                    })));
                });
            }
            Inner::WorkerStarted { slot, handle } => state.worker_started(&myself, slot, handle),
            Inner::StartFailed { slot, error } => state.start_failed(&myself, slot, &error),
            Inner::Worker(event) => state.worker_event(&myself, event),
            Inner::LmApplied {
                slot,
                pid,
                generation,
                result,
            } => state.lm_applied(&myself, slot, pid, generation, result),
            Inner::SetLm(config, reply) => {
                state.lm_generation += 1;
                state.lm = Some((config, state.lm_generation));
                let _ = reply.send(state.lm_generation);
            }
            Inner::ForgetSession(id) => {
                state.sessions.remove(&id);
                state.lost_sessions.remove(&id);
            }
            Inner::Failed(cause) => state.fail(cause),
            Inner::Barrier(done) => {
                let _ = done.send(());
            }
            Inner::Close(done) => {
                state.close();
                let _ = done.send(());
            }
            Inner::Pause(resume) => {
                // Test hook: hold the actor still until told to go on.
                let _ = resume.await;
            }
        }
        state.publish();
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<PoolMsg>,
        event: SupervisionEvent,
        _state: &mut PoolActorState,
    ) -> Result<(), ActorProcessingErr> {
        // The workers' supervisor reports through its event stream; its own
        // lifecycle events need no action here.
        tracing::debug!(?event, "pool: supervision event");
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<PoolMsg>,
        state: &mut PoolActorState,
    ) -> Result<(), ActorProcessingErr> {
        for waiter in state.queue.drain(..) {
            let _ = waiter.reply.send(Err(PoolError::ShuttingDown));
        }
        for slot in &mut state.slots {
            for waiter in slot.pinned.drain(..) {
                let _ = waiter.reply.send(Err(PoolError::ShuttingDown));
            }
        }
        state.workers.stop(Duration::from_secs(30)).await;
        state.publish_state(PoolState::Stopped);
        Ok(())
    }
}

impl PoolActorState {
    // --- checkout -------------------------------------------------------------------------

    pub(super) fn checkout(&mut self, myself: &ActorRef<PoolMsg>, waiter: Waiter) {
        if self.closing {
            let _ = waiter.reply.send(Err(PoolError::ShuttingDown));
            return;
        }
        if let Some(cause) = &self.failed {
            let _ = waiter.reply.send(Err(PoolError::Unavailable {
                cause: cause.clone(),
            }));
            return;
        }
        if let Some(session) = waiter.session.clone() {
            if session.stateful && self.lost_sessions.contains(&session.id) {
                return self.session_lost(waiter);
            }
            if let Some(affinity) = self.sessions.get(&session.id).copied()
                && affinity.stateful
            {
                return self.checkout_pinned(myself, waiter, affinity);
            }
        }
        let preferred = waiter
            .session
            .as_ref()
            .and_then(|s| self.sessions.get(&s.id))
            .map(|a| a.slot);
        let mut waiter = waiter;
        if self.queue.is_empty() {
            while let Some(slot) = self.pick_free(preferred) {
                match self.hand(myself, slot, waiter) {
                    None => return,
                    Some(back) => waiter = back,
                }
            }
        }
        self.enqueue(myself, waiter, None);
    }

    pub(super) fn checkout_pinned(
        &mut self,
        myself: &ActorRef<PoolMsg>,
        waiter: Waiter,
        affinity: Affinity,
    ) {
        let slot = &self.slots[affinity.slot];
        let alive = slot.pid == affinity.pid
            && matches!(slot.phase, SlotPhase::Ready | SlotPhase::Configuring);
        if !alive {
            return self.session_lost(waiter);
        }
        if slot.pinned.is_empty() && self.is_free(affinity.slot) {
            if let Some(back) = self.hand(myself, affinity.slot, waiter) {
                self.enqueue(myself, back, Some(affinity.slot));
            }
            return;
        }
        self.enqueue(myself, waiter, Some(affinity.slot));
    }

    pub(super) fn session_lost(&mut self, waiter: Waiter) {
        let session_id = waiter.session.map(|s| s.id).unwrap_or_default();
        self.counters.session_lost += 1;
        let _ = waiter
            .reply
            .send(Err(PoolError::SessionLost { session_id }));
    }

    pub(super) fn queued(&self) -> usize {
        self.queue.len() + self.slots.iter().map(|s| s.pinned.len()).sum::<usize>()
    }

    pub(super) fn enqueue(
        &mut self,
        myself: &ActorRef<PoolMsg>,
        waiter: Waiter,
        pinned: Option<usize>,
    ) {
        if let Some(max) = self.config.max_queue
            && self.queued() >= max
        {
            self.counters.overloaded += 1;
            let _ = waiter
                .reply
                .send(Err(PoolError::Overloaded { max_queue: max }));
            return;
        }
        match pinned {
            Some(slot) => self.slots[slot].pinned.push_back(waiter),
            None => self.queue.push_back(waiter),
        }
        self.grow(myself);
    }

    pub(super) fn cancel(&mut self, ticket: u64) {
        let before = self.queued();
        self.queue.retain(|w| w.ticket != ticket);
        for slot in &mut self.slots {
            slot.pinned.retain(|w| w.ticket != ticket);
        }
        if self.queued() < before {
            self.counters.cancelled += 1;
        }
    }

    pub(super) fn capacity(&self) -> usize {
        self.config.per_worker_concurrency.max(1)
    }

    pub(super) fn is_free(&self, slot: usize) -> bool {
        let s = &self.slots[slot];
        s.phase == SlotPhase::Ready && s.leases < self.capacity()
    }

    /// A free slot, preferring `preferred`, else the least loaded, round robin.
    pub(super) fn pick_free(&mut self, preferred: Option<usize>) -> Option<usize> {
        if let Some(slot) = preferred.filter(|&s| self.is_free(s)) {
            return Some(slot);
        }
        let n = self.slots.len();
        let best = (0..n)
            .map(|k| (self.cursor + k) % n)
            .filter(|&s| self.is_free(s))
            .min_by_key(|&s| self.slots[s].leases)?;
        self.cursor = (best + 1) % n.max(1);
        Some(best)
    }

    /// Offers `slot` to `waiter`. Returns the waiter if it still needs a
    /// worker (the slot was removed instead).
    pub(super) fn hand(
        &mut self,
        myself: &ActorRef<PoolMsg>,
        slot: usize,
        waiter: Waiter,
    ) -> Option<Waiter> {
        if waiter.reply.is_closed() {
            self.counters.cancelled += 1;
            return None;
        }
        let Some(worker) = self.slots[slot].worker.clone() else {
            return Some(waiter);
        };
        let pinned_pid = waiter
            .session
            .as_ref()
            .and_then(|s| self.sessions.get(&s.id))
            .filter(|a| a.stateful && a.slot == slot)
            .map(|a| a.pid);
        match checkout_decision(&worker.state(), self.slots[slot].pid, pinned_pid) {
            CheckoutDecision::Ok => {}
            CheckoutDecision::Remove(reason) => {
                self.remove(slot, reason);
                if pinned_pid.is_some() {
                    // Its state went with the worker: never run it elsewhere.
                    self.session_lost(waiter);
                    return None;
                }
                return Some(waiter);
            }
            CheckoutDecision::Skip(SkipReason::SessionLost) => {
                self.session_lost(waiter);
                return None;
            }
        }
        let s = &mut self.slots[slot];
        let pending_lm = self
            .lm
            .as_ref()
            .filter(|(_, generation)| s.lm_generation < *generation)
            .map(|(config, generation)| (Arc::clone(config), *generation));
        let has_program = waiter
            .program
            .as_ref()
            .is_some_and(|h| s.loaded.contains(h));
        let lease = Lease::new(myself.clone(), slot, worker, pending_lm, has_program);
        s.leases += 1;
        let pid = s.pid;
        self.counters.checkouts += 1;
        // The status shows the lease before its holder can look.
        self.publish();
        match waiter.reply.send(Ok(lease)) {
            Ok(()) => {
                if let Some(session) = waiter.session {
                    self.sessions.insert(
                        session.id,
                        Affinity {
                            slot,
                            pid,
                            stateful: session.stateful,
                        },
                    );
                }
            }
            Err(returned) => {
                // The caller gave up between our decision and the hand-off:
                // the worker goes straight back, untouched.
                if let Ok(lease) = returned {
                    lease.disarm();
                }
                self.slots[slot].leases -= 1;
                self.counters.checkouts -= 1;
                self.counters.cancelled += 1;
            }
        }
        None
    }

    /// Serves waiters from a slot that has room: its pinned queue first, then
    /// the shared FIFO queue.
    pub(super) fn dispatch(&mut self, myself: &ActorRef<PoolMsg>, slot: usize) {
        while self.is_free(slot) {
            let next = match self.slots[slot].pinned.pop_front() {
                Some(waiter) => waiter,
                None => match self.queue.pop_front() {
                    Some(waiter) => waiter,
                    None => break,
                },
            };
            if let Some(back) = self.hand(myself, slot, next) {
                self.queue.push_front(back);
                break;
            }
        }
        self.shrink(myself);
    }

    // --- check-in -------------------------------------------------------------------------

    pub(super) fn checkin(&mut self, myself: &ActorRef<PoolMsg>, checkin: Checkin) {
        self.counters.checkins += 1;
        let Some(slot) = self.slots.get_mut(checkin.slot) else {
            return;
        };
        if slot.pid != checkin.pid || slot.leases == 0 {
            // The worker it was for is already gone (and its leases with it).
            self.counters.stale_checkins += 1;
            return;
        }
        slot.leases -= 1;
        if let Some(hash) = checkin.loaded {
            slot.loaded.insert(hash);
        }
        if let Some(generation) = checkin.lm_applied {
            slot.lm_generation = slot.lm_generation.max(generation);
        }
        match checkin.decision {
            CheckinDecision::Ok => self.dispatch(myself, checkin.slot),
            CheckinDecision::Remove(reason) => self.remove(checkin.slot, reason),
        }
    }

    /// Takes a worker out of service: it is killed, and its supervisor
    /// replaces it.
    pub(super) fn remove(&mut self, slot: usize, reason: String) {
        self.counters.removed += 1;
        let s = &mut self.slots[slot];
        tracing::warn!(worker = %s.id, pid = s.pid, %reason, "pool: removing worker");
        if let Some(worker) = &s.worker {
            worker.kill(reason.clone());
        }
        let pid = s.pid;
        let id = s.id.clone();
        self.slot_down(slot);
        self.emit(PoolEvent::WorkerRemoved { id, pid, reason });
    }

    /// The slot's worker is gone: forget its leases, programs and sessions.
    pub(super) fn slot_down(&mut self, slot: usize) {
        let s = &mut self.slots[slot];
        if s.phase == SlotPhase::Retired {
            return;
        }
        s.phase = SlotPhase::Down;
        s.leases = 0;
        s.loaded.clear();
        s.lm_generation = 0;
        let pid = s.pid;
        let lost: Vec<Waiter> = s.pinned.drain(..).collect();
        let mut gone = Vec::new();
        self.sessions.retain(|id, a| {
            if a.slot == slot && a.pid == pid {
                gone.push((id.clone(), a.stateful));
                false
            } else {
                true
            }
        });
        for (id, stateful) in gone {
            if stateful {
                self.lost_sessions.insert(id.clone());
                self.emit(PoolEvent::SessionLost { session_id: id });
            }
        }
        for waiter in lost {
            self.session_lost(waiter);
        }
    }
}
