//! The pool actor: the checkout queue and the state of every worker slot.
//!
//! It never awaits Python: configuring an LM on a new worker, starting
//! children and draining abandoned leases all run in tasks that report back
//! by message. Its state is published after every message as a
//! [`PoolStatus`] snapshot, so `status()` never waits on the actor.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use dspex_protocol::LmConfig;
use dspex_supervision::SupervisorHandle;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::{broadcast, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::contract::{CheckinDecision, CheckoutDecision, SkipReason, checkout_decision};
use super::lease::Lease;
use super::status::{PoolCounters, PoolEvent, PoolStatus, SlotPhase};
use super::{PoolConfig, PoolError};
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
    /// A lease ended while its worker still owed a reply: check it in once
    /// the worker has answered (or died).
    Drain(Checkin, Settled),
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
    /// The workers' supervisor of this generation gave up.
    Failed {
        generation: u64,
        cause: String,
    },
    /// The revive cool-down of this attempt is over.
    Revive(u32),
    /// Time to look at the recycling limits.
    Tick,
    Barrier(oneshot::Sender<()>),
    Close(oneshot::Sender<()>),
    Pause(oneshot::Receiver<()>),
}

/// Resolves once a worker no longer owes any reply to a lease: `true` if it
/// answered them all, `false` if it went away first.
pub(crate) struct Settled(pub(crate) futures::future::BoxFuture<'static, bool>);

impl std::fmt::Debug for Settled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Settled")
    }
}

/// A caller waiting for a worker.
#[derive(Debug)]
pub(crate) struct Waiter {
    pub(crate) ticket: u64,
    pub(crate) session: Option<SessionRequest>,
    /// The hash of the program it will run, if any.
    pub(crate) program: Option<String>,
    /// The id of the LM override it will use, if any.
    pub(crate) lm: Option<String>,
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
    pub(crate) lm_registered: Option<String>,
    pub(crate) lm_applied: Option<u64>,
    /// Whether the lease sent a request (it counts toward recycling).
    pub(crate) served: bool,
    pub(crate) decision: CheckinDecision,
}

/// How a worker is taken out of service.
enum TakeOut {
    /// It is broken: a crash, counted against the restart budget.
    Broken,
    /// The pool decided it: replaced outside the budget.
    Decided,
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
    pub(super) lms: HashSet<String>,
    pub(super) lm_generation: u64,
    pub(super) pinned: VecDeque<Waiter>,
    /// Requests served by the current worker.
    pub(super) requests: u64,
    /// When the current worker became ready.
    pub(super) ready_since: Option<Instant>,
    /// The current worker's resident memory at the last look.
    pub(super) rss_bytes: u64,
    /// The slot being started to take this one's place (recycling).
    pub(super) replacement: Option<usize>,
    /// Why it is being recycled.
    pub(super) recycle_reason: Option<String>,
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
            lms: HashSet::new(),
            lm_generation: 0,
            pinned: VecDeque::new(),
            requests: 0,
            ready_since: None,
            rss_bytes: 0,
            replacement: None,
            recycle_reason: None,
        }
    }

    /// Forgets everything about the worker it had.
    pub(super) fn reset_worker(&mut self) {
        self.leases = 0;
        self.loaded.clear();
        self.lms.clear();
        self.lm_generation = 0;
        self.requests = 0;
        self.ready_since = None;
        self.rss_bytes = 0;
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
    pub(crate) workers: watch::Sender<Option<SupervisorHandle>>,
}

/// Revive bookkeeping.
#[derive(Debug, Default)]
pub(super) struct Revival {
    /// Consecutive attempts since the pool last served.
    pub(super) attempts: u32,
    /// When the next attempt is due.
    pub(super) due: Option<std::time::Instant>,
    /// The workers were started again and none is ready yet.
    pub(super) in_progress: bool,
    pub(super) timer: Option<JoinHandle<()>>,
}

/// The pool actor's state.
#[derive(Debug)]
pub(crate) struct PoolActorState {
    pub(super) config: PoolConfig,
    pub(super) ctx: Arc<TreeContext>,
    pub(super) workers: SupervisorHandle,
    /// Which workers' supervisor is current (a revive starts a new one).
    pub(super) generation: u64,
    /// Restarts counted by the supervisors that revives replaced.
    pub(super) past_restarts: u32,
    pub(super) slots: Vec<Slot>,
    pub(super) queue: VecDeque<Waiter>,
    pub(super) sessions: HashMap<String, Affinity>,
    pub(super) lost_sessions: HashSet<String>,
    pub(super) lm: Option<(Arc<LmConfig>, u64)>,
    pub(super) lm_generation: u64,
    pub(super) failed: Option<String>,
    pub(super) revival: Revival,
    pub(super) closing: bool,
    pub(super) cursor: usize,
    pub(super) next_worker: usize,
    pub(super) overflow_started: usize,
    pub(super) counters: PoolCounters,
    pub(super) status: watch::Sender<PoolStatus>,
    pub(super) events: broadcast::Sender<PoolEvent>,
    pub(super) ready_workers: watch::Sender<Vec<WorkerHandle>>,
    /// Publishes the current workers' supervisor (a revive replaces it).
    pub(super) workers_watch: watch::Sender<Option<SupervisorHandle>>,
    pub(super) tasks: Vec<JoinHandle<()>>,
}

impl Drop for PoolActorState {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Some(timer) = self.revival.timer.take() {
            timer.abort();
        }
    }
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
        let mut slots: Vec<Slot> = (0..args.config.size)
            .map(|i| Slot::new(format!("{}-{i}", args.config.name), false))
            .collect();
        let eager: Vec<(usize, String)> = if args.config.lazy {
            Vec::new()
        } else {
            slots
                .iter_mut()
                .enumerate()
                .map(|(i, s)| {
                    s.phase = SlotPhase::Starting;
                    (i, s.id.clone())
                })
                .collect()
        };
        // Subscribed before the workers start: no Ready event is missed.
        let mut worker_events = args.ctx.events.subscribe();
        let workers =
            super::workers::start_workers_supervisor(&args.config, &args.ctx, &myself, 0, &eager)
                .await?;
        args.workers.send_replace(Some(workers.clone()));
        let me = myself.clone();
        let mut tasks = vec![tokio::spawn(async move {
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
        })];
        if let Some(every) = super::lifecycle::tick_interval(&args.config.recycle) {
            let me = myself.clone();
            tasks.push(tokio::spawn(async move {
                let mut ticks = tokio::time::interval(every);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticks.tick().await;
                    if me.send_message(PoolMsg(Inner::Tick)).is_err() {
                        return;
                    }
                }
            }));
        }
        Ok(PoolActorState {
            next_worker: slots.len(),
            config: args.config,
            ctx: args.ctx,
            workers,
            generation: 0,
            past_restarts: 0,
            slots,
            queue: VecDeque::new(),
            sessions: HashMap::new(),
            lost_sessions: HashSet::new(),
            lm: None,
            lm_generation: 0,
            failed: None,
            revival: Revival::default(),
            closing: false,
            cursor: 0,
            overflow_started: 0,
            counters: PoolCounters::default(),
            status: args.status,
            events: args.events,
            ready_workers: args.ready_workers,
            workers_watch: args.workers,
            tasks,
        })
    }

    async fn post_start(
        &self,
        _myself: ActorRef<PoolMsg>,
        state: &mut PoolActorState,
    ) -> Result<(), ActorProcessingErr> {
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
            Inner::Drain(checkin, settled) => {
                state.counters.drained += 1;
                let me = myself.clone();
                tokio::spawn(async move {
                    let mut checkin = checkin;
                    if !settled.0.await {
                        checkin.decision = CheckinDecision::Remove("the worker went away".into());
                    }
                    let _ = me.send_message(PoolMsg(Inner::Checkin(checkin)));
                });
            }
            Inner::WorkerStarted { slot, handle } => state.worker_started(&myself, slot, handle),
            Inner::StartFailed { slot, error } => state.start_failed(slot, &error),
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
                // A retiring worker may have waited for this session to end.
                state.retire_idle();
            }
            Inner::Failed { generation, cause } => {
                if generation == state.generation {
                    state.fail(&myself, cause);
                }
            }
            Inner::Revive(attempt) => state.revive(&myself, attempt).await?,
            Inner::Tick => {
                state.check_recycling(&myself);
                state.retire_idle();
            }
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
        state.publish_stopped();
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
                retry_in: self.revive_in(),
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
            && matches!(
                slot.phase,
                SlotPhase::Ready | SlotPhase::Configuring | SlotPhase::Retiring
            );
        if !alive {
            return self.session_lost(waiter);
        }
        if slot.pinned.is_empty() && self.has_room_for_pinned(affinity.slot) {
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

    /// Ready and with room for another lease. A retiring worker takes no
    /// new lease.
    pub(super) fn is_free(&self, slot: usize) -> bool {
        let s = &self.slots[slot];
        s.phase == SlotPhase::Ready && s.leases < self.capacity()
    }

    /// Room for a lease of a session pinned there: a retiring worker still
    /// serves the stateful sessions it holds, until they end.
    pub(super) fn has_room_for_pinned(&self, slot: usize) -> bool {
        let s = &self.slots[slot];
        matches!(s.phase, SlotPhase::Ready | SlotPhase::Retiring) && s.leases < self.capacity()
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
        let has_lm = waiter.lm.as_ref().is_some_and(|id| s.lms.contains(id));
        let lease = Lease::new(
            myself.clone(),
            slot,
            worker,
            pending_lm,
            has_program,
            has_lm,
        );
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
        while self.has_room_for_pinned(slot) {
            let next = match self.slots[slot].pinned.pop_front() {
                Some(waiter) => waiter,
                None if self.is_free(slot) => match self.queue.pop_front() {
                    Some(waiter) => waiter,
                    None => break,
                },
                None => break,
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
        if checkin.served {
            slot.requests += 1;
        }
        if let Some(hash) = checkin.loaded {
            slot.loaded.insert(hash);
        }
        if let Some(id) = checkin.lm_registered {
            slot.lms.insert(id);
        }
        if let Some(generation) = checkin.lm_applied {
            slot.lm_generation = slot.lm_generation.max(generation);
        }
        match checkin.decision {
            CheckinDecision::Ok => {
                self.check_recycle(myself, checkin.slot);
                self.dispatch(myself, checkin.slot);
                self.retire_if_idle(checkin.slot);
            }
            CheckinDecision::Remove(reason) => self.remove(checkin.slot, reason),
            CheckinDecision::Replace(reason) => self.replace(checkin.slot, reason),
        }
    }

    /// Takes a worker out of service as broken: it is killed (a crash: it
    /// counts against the restart budget), and its supervisor restarts it.
    pub(super) fn remove(&mut self, slot: usize, reason: String) {
        self.take_out(slot, reason, TakeOut::Broken);
    }

    /// Takes a worker out of service on the pool's own decision: it is
    /// killed and replaced at once, outside the restart budget.
    pub(super) fn replace(&mut self, slot: usize, reason: String) {
        self.take_out(slot, reason, TakeOut::Decided);
    }

    fn take_out(&mut self, slot: usize, reason: String, how: TakeOut) {
        let s = &mut self.slots[slot];
        match how {
            TakeOut::Broken => {
                self.counters.removed += 1;
                tracing::warn!(worker = %s.id, pid = s.pid, %reason, "pool: removing worker");
                if let Some(worker) = &s.worker {
                    worker.kill(reason.clone());
                }
            }
            TakeOut::Decided => {
                self.counters.replaced += 1;
                tracing::info!(worker = %s.id, pid = s.pid, %reason, "pool: replacing worker");
                if let Some(worker) = &s.worker {
                    worker.replace(reason.clone());
                }
            }
        }
        let (id, pid) = (s.id.clone(), s.pid);
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
        s.reset_worker();
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

    /// Whether a stateful session lives on the slot's current worker.
    pub(super) fn holds_state(&self, slot: usize) -> bool {
        let pid = self.slots[slot].pid;
        self.sessions
            .values()
            .any(|a| a.stateful && a.slot == slot && a.pid == pid)
    }

    pub(super) fn revive_in(&self) -> Option<Duration> {
        self.revival
            .due
            .map(|at| at.saturating_duration_since(std::time::Instant::now()))
    }
}
