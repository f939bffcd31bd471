//! The pool actor's side of worker lifecycles: the workers' supervisor,
//! starting slots (eagerly, lazily, as overflow), following each worker
//! from spawn through its LM configuration to ready, and reacting to exits;
//! plus closing, failing, and publishing the status snapshot.

use std::sync::Arc;

use dspex_protocol::{Command, LmConfig};
use dspex_supervision::{
    OnGiveUp, Restart, Strategy, Supervisor, SupervisorEvent, SupervisorHandle, SupervisorOptions,
};
use ractor::{ActorProcessingErr, ActorRef};
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::actor::{Inner, PoolActorState, PoolMsg, Slot};
use super::status::{PoolEvent, PoolState, PoolStatus, SlotPhase, SlotStatus};
use super::{PoolConfig, PoolError};
use crate::worker::{CallOptions, WorkerEvent, WorkerHandle, WorkerState};

/// Starts the one_for_one supervisor of the pool's workers, linked to the
/// pool actor, with the pool's restart budget, and the eager slots as its
/// initial children (so a worker that cannot even be spawned counts against
/// the budget like one that crashes). When it gives up, the pool hears
/// `Failed` tagged with `generation`.
pub(super) async fn start_workers_supervisor(
    config: &PoolConfig,
    ctx: &Arc<crate::context::TreeContext>,
    myself: &ActorRef<PoolMsg>,
    generation: u64,
    eager: &[(usize, String)],
) -> Result<SupervisorHandle, ActorProcessingErr> {
    let mut supervisor = Supervisor::new(SupervisorOptions {
        strategy: Strategy::OneForOne,
        intensity: config.intensity,
        backoff: config.backoff,
        // A one-off crash is replaced at once; the backoff is for loops.
        immediate_first_restart: true,
        on_give_up: OnGiveUp::Remain,
        event_capacity: 1024,
        ..SupervisorOptions::default()
    });
    for (slot, id) in eager {
        supervisor = supervisor.child(ctx.worker_child(id.clone(), on_start(myself, *slot)));
    }
    let mut events = supervisor.subscribe();
    let me = myself.clone();
    tokio::spawn(async move {
        loop {
            let message = match events.recv().await {
                Ok(SupervisorEvent::Failed { cause }) => Inner::Failed {
                    generation,
                    cause: cause.to_string(),
                },
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if me.send_message(PoolMsg(message)).is_err() {
                return;
            }
        }
    });
    Ok(supervisor.spawn_linked(myself.get_cell()).await?)
}

/// What a worker child does at every (re)start: hand its handle to the pool.
fn on_start(myself: &ActorRef<PoolMsg>, slot: usize) -> Arc<dyn Fn(WorkerHandle) + Send + Sync> {
    let me = myself.clone();
    Arc::new(move |handle: WorkerHandle| {
        let _ = me.send_message(PoolMsg(Inner::WorkerStarted { slot, handle }));
    })
}

impl PoolActorState {
    // --- workers --------------------------------------------------------------------------

    /// The slots an eager pool starts with its supervisor (marked starting).
    pub(super) fn eager_slots(&mut self) -> Vec<(usize, String)> {
        if self.config.lazy {
            return Vec::new();
        }
        self.slots
            .iter_mut()
            .enumerate()
            .filter(|(_, s)| !s.overflow && s.phase == SlotPhase::NotStarted)
            .map(|(i, s)| {
                s.phase = SlotPhase::Starting;
                (i, s.id.clone())
            })
            .collect()
    }

    /// Starts one slot as a new child of the running supervisor.
    pub(super) fn start_slot(&mut self, myself: &ActorRef<PoolMsg>, slot: usize) {
        let s = &mut self.slots[slot];
        if s.phase != SlotPhase::NotStarted {
            return;
        }
        s.phase = SlotPhase::Starting;
        let mut spec = self.ctx.worker_child(s.id.clone(), on_start(myself, slot));
        if s.overflow {
            spec = spec.restart(Restart::Temporary);
        }
        let workers = self.workers.clone();
        let me = myself.clone();
        tokio::spawn(async move {
            if let Err(error) = workers.start_child(spec).await {
                let _ = me.send_message(PoolMsg(Inner::StartFailed {
                    slot,
                    error: error.to_string(),
                }));
            }
        });
    }

    /// A slot for a new worker: a retired one is reused, else one is added.
    pub(super) fn new_slot(&mut self, id: String, overflow: bool) -> usize {
        match self
            .slots
            .iter()
            .position(|s| s.phase == SlotPhase::Retired)
        {
            Some(index) => {
                self.slots[index] = Slot::new(id, overflow);
                index
            }
            None => {
                self.slots.push(Slot::new(id, overflow));
                self.slots.len() - 1
            }
        }
    }

    /// Starts more workers when callers wait and nothing is on its way: a
    /// lazily started slot first, then an overflow worker.
    pub(super) fn grow(&mut self, myself: &ActorRef<PoolMsg>) {
        if self.queue.is_empty() || self.failed.is_some() || self.closing {
            return;
        }
        let coming = self
            .slots
            .iter()
            .filter(|s| {
                matches!(
                    s.phase,
                    SlotPhase::Starting | SlotPhase::Configuring | SlotPhase::Down
                )
            })
            .count();
        if coming > 0 {
            return;
        }
        if let Some(slot) = self
            .slots
            .iter()
            .position(|s| s.phase == SlotPhase::NotStarted)
        {
            return self.start_slot(myself, slot);
        }
        let active_overflow = self
            .slots
            .iter()
            .filter(|s| s.overflow && s.phase != SlotPhase::Retired)
            .count();
        if active_overflow < self.config.max_overflow {
            self.overflow_started += 1;
            let id = format!("{}-overflow-{}", self.config.name, self.overflow_started);
            let slot = self.new_slot(id, true);
            self.start_slot(myself, slot);
        }
    }

    /// Retires idle overflow workers once nobody waits.
    pub(super) fn shrink(&mut self, _myself: &ActorRef<PoolMsg>) {
        if !self.queue.is_empty() {
            return;
        }
        for slot in 0..self.slots.len() {
            let s = &self.slots[slot];
            if s.overflow && s.phase == SlotPhase::Ready && s.leases == 0 && s.pinned.is_empty() {
                let id = s.id.clone();
                let pid = s.pid;
                self.slot_down(slot);
                self.slots[slot].phase = SlotPhase::Retired;
                self.terminate(&id);
                self.emit(PoolEvent::WorkerRetired { id, pid });
            }
        }
    }

    /// Stops and forgets a child of the workers' supervisor (not a crash).
    pub(super) fn terminate(&self, id: &str) {
        let workers = self.workers.clone();
        let id = id.to_owned();
        tokio::spawn(async move {
            let _ = workers.terminate_child(&id).await;
        });
    }

    pub(super) fn worker_started(
        &mut self,
        myself: &ActorRef<PoolMsg>,
        slot: usize,
        handle: WorkerHandle,
    ) {
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        if s.id != handle.worker_id() {
            // A late start of a worker whose slot was retired and reused:
            // its child is being terminated; it is nobody's now.
            tracing::debug!(
                worker = handle.worker_id(),
                slot,
                "pool: start of a retired worker ignored"
            );
            return;
        }
        if s.phase == SlotPhase::Retired {
            handle.replace("its slot was retired");
            return;
        }
        s.pid = handle.pid();
        let already_ready = matches!(handle.state(), WorkerState::Ready(_));
        s.worker = Some(handle);
        s.phase = SlotPhase::Starting;
        s.reset_worker();
        if already_ready {
            // Its Ready event may have come (and been ignored) before this.
            self.worker_ready(myself, slot);
        }
    }

    /// A slot's new worker sent its handshake: it gets the LM, then serves.
    pub(super) fn worker_ready(&mut self, myself: &ActorRef<PoolMsg>, slot: usize) {
        if self.slots[slot].phase != SlotPhase::Starting {
            return;
        }
        match self.lm.clone() {
            // The LM first: a worker never serves with a stale one.
            Some((config, generation)) => self.configure(myself, slot, config, generation),
            None => self.slot_ready(myself, slot),
        }
    }

    pub(super) fn start_failed(&mut self, slot: usize, error: &str) {
        tracing::warn!(slot, error, "pool: a worker could not be started");
        let Some(s) = self.slots.get(slot) else {
            return;
        };
        let replacing = self.slots.iter().any(|s| s.replacement == Some(slot));
        if s.overflow || s.phase == SlotPhase::Retired {
            self.slots[slot].phase = SlotPhase::Retired;
        } else if replacing {
            // A recycling replacement: the old worker keeps serving, and the
            // recycle is tried again later.
            self.slots[slot].phase = SlotPhase::Retired;
            for old in &mut self.slots {
                if old.replacement == Some(slot) {
                    old.replacement = None;
                }
            }
            return;
        } else {
            // A lazily started slot: tried again when a caller comes.
            self.slots[slot].phase = SlotPhase::NotStarted;
        }
        let serving = self
            .slots
            .iter()
            .any(|s| matches!(s.phase, SlotPhase::Ready | SlotPhase::Starting));
        if !serving {
            // Nothing will serve the callers waiting now: tell them why
            // rather than let them time out.
            let cause = format!("a worker could not be started: {error}");
            for waiter in self.queue.drain(..) {
                let _ = waiter.reply.send(Err(PoolError::Unavailable {
                    cause: cause.clone(),
                    retry_in: None,
                }));
            }
        }
        // Not started again from here: the next caller (or exit) grows the
        // pool, so a worker that cannot start is never retried in a loop.
    }

    pub(super) fn slot_of(&self, worker_id: &str, pid: u32) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.id == worker_id && s.pid == pid && s.phase != SlotPhase::Retired)
    }

    pub(super) fn worker_event(&mut self, myself: &ActorRef<PoolMsg>, event: WorkerEvent) {
        match event {
            WorkerEvent::Spawned { .. } => {}
            WorkerEvent::Ready { worker_id, pid } => {
                if let Some(slot) = self.slot_of(&worker_id, pid) {
                    self.worker_ready(myself, slot);
                }
            }
            WorkerEvent::Exited {
                worker_id,
                pid,
                exit,
                ..
            } => {
                let Some(slot) = self.slot_of(&worker_id, pid) else {
                    return;
                };
                let was_overflow = self.slots[slot].overflow;
                let was_retiring = self.slots[slot].phase == SlotPhase::Retiring;
                self.slot_down(slot);
                if was_overflow || was_retiring {
                    self.slots[slot].phase = SlotPhase::Retired;
                }
                if was_retiring {
                    // It went before it was idle: its replacement serves.
                    self.terminate(&worker_id);
                }
                self.emit(PoolEvent::WorkerExited {
                    id: worker_id,
                    pid,
                    exit,
                });
                self.grow(myself);
            }
        }
    }

    pub(super) fn configure(
        &mut self,
        myself: &ActorRef<PoolMsg>,
        slot: usize,
        config: Arc<LmConfig>,
        generation: u64,
    ) {
        let s = &mut self.slots[slot];
        s.phase = SlotPhase::Configuring;
        let Some(worker) = s.worker.clone() else {
            return;
        };
        let pid = s.pid;
        let me = myself.clone();
        tokio::spawn(async move {
            let result = worker
                .call(
                    Command::ConfigureLm((*config).clone()),
                    CallOptions::default(),
                )
                .await
                .map(|_| ())
                .map_err(|e| e.to_string());
            let _ = me.send_message(PoolMsg(Inner::LmApplied {
                slot,
                pid,
                generation,
                result,
            }));
        });
    }

    pub(super) fn lm_applied(
        &mut self,
        myself: &ActorRef<PoolMsg>,
        slot: usize,
        pid: u32,
        generation: u64,
        result: Result<(), String>,
    ) {
        if self
            .slots
            .get(slot)
            .is_none_or(|s| s.pid != pid || s.phase != SlotPhase::Configuring)
        {
            return;
        }
        match result {
            Ok(()) => {
                self.slots[slot].lm_generation = generation;
                self.slot_ready(myself, slot);
            }
            // Counted as a crash: an LM every new worker rejects must end in
            // `Failed`, not in a loop.
            Err(error) => self.remove(slot, format!("could not configure the LM: {error}")),
        }
    }

    pub(super) fn slot_ready(&mut self, myself: &ActorRef<PoolMsg>, slot: usize) {
        let s = &mut self.slots[slot];
        s.phase = SlotPhase::Ready;
        s.ready_since = Some(Instant::now());
        let (id, pid) = (s.id.clone(), s.pid);
        self.emit(PoolEvent::WorkerReady { id, pid });
        if self.revival.in_progress {
            self.revived();
        }
        self.replacement_ready(slot);
        self.dispatch(myself, slot);
    }

    /// Stops accepting callers (those waiting are told the pool is shutting
    /// down); leases out may finish and come back.
    pub(super) fn close(&mut self) {
        self.closing = true;
        if let Some(timer) = self.revival.timer.take() {
            timer.abort();
        }
        self.revival.due = None;
        for waiter in self.queue.drain(..) {
            let _ = waiter.reply.send(Err(PoolError::ShuttingDown));
        }
        for slot in &mut self.slots {
            for waiter in slot.pinned.drain(..) {
                let _ = waiter.reply.send(Err(PoolError::ShuttingDown));
            }
        }
    }

    pub(super) fn fail(&mut self, myself: &ActorRef<PoolMsg>, cause: String) {
        if self.failed.is_some() && !self.revival.in_progress {
            return;
        }
        tracing::error!(%cause, "pool failed");
        self.revival.in_progress = false;
        // Recycling is over: a revive starts the pool's size again, not the
        // replacements of workers that are gone anyway.
        for slot in 0..self.slots.len() {
            if let Some(replacement) = self.slots[slot].replacement.take() {
                self.slots[replacement].phase = SlotPhase::Retired;
            }
            if self.slots[slot].phase == SlotPhase::Retiring {
                self.slots[slot].phase = SlotPhase::Retired;
            }
        }
        let mut waiters: Vec<_> = self.queue.drain(..).collect();
        for slot in 0..self.slots.len() {
            waiters.extend(std::mem::take(&mut self.slots[slot].pinned));
            if self.slots[slot].phase != SlotPhase::Retired {
                self.slot_down(slot);
            }
        }
        self.failed = Some(cause.clone());
        // Scheduled first: the status that says Failed says when it retries.
        self.schedule_revive(myself);
        self.emit(PoolEvent::PoolFailed {
            cause: cause.clone(),
        });
        // Answered last: a caller refused here already sees `Failed` in the
        // status (and the event), as every later caller does.
        for waiter in waiters {
            let _ = waiter.reply.send(Err(PoolError::Unavailable {
                cause: cause.clone(),
                retry_in: None,
            }));
        }
    }

    /// Starts the workers afresh under a new supervisor (a new restart
    /// budget), after a revive cool-down.
    pub(super) async fn revive(
        &mut self,
        myself: &ActorRef<PoolMsg>,
        attempt: u32,
    ) -> Result<(), ActorProcessingErr> {
        if self.failed.is_none() || self.closing || attempt != self.revival.attempts {
            return Ok(());
        }
        self.revival.due = None;
        self.revival.timer = None;
        tracing::info!(attempt, "pool: reviving after failure");
        self.emit(PoolEvent::Reviving { attempt });
        let old = self.workers.clone();
        self.past_restarts += old
            .status()
            .children
            .iter()
            .map(|c| c.restarts)
            .sum::<u32>();
        old.stop(std::time::Duration::from_secs(10)).await;
        for slot in &mut self.slots {
            if slot.overflow || slot.phase == SlotPhase::Retired {
                slot.phase = SlotPhase::Retired;
            } else {
                *slot = Slot::new(slot.id.clone(), false);
            }
        }
        // The slots of replacements started by recycling are ordinary slots
        // now; forget who replaced whom.
        self.generation += 1;
        self.revival.in_progress = true;
        let mut eager = self.eager_slots();
        if eager.is_empty()
            && let Some(first) = self
                .slots
                .iter()
                .position(|s| s.phase == SlotPhase::NotStarted)
        {
            // A lazy pool starts one worker to see whether it serves again.
            self.slots[first].phase = SlotPhase::Starting;
            eager.push((first, self.slots[first].id.clone()));
        }
        self.workers =
            start_workers_supervisor(&self.config, &self.ctx, myself, self.generation, &eager)
                .await?;
        self.workers_watch.send_replace(Some(self.workers.clone()));
        Ok(())
    }

    fn schedule_revive(&mut self, myself: &ActorRef<PoolMsg>) {
        let Some(policy) = self.config.revive else {
            return;
        };
        if self.closing {
            return;
        }
        let delay = policy.cooldown.delay(self.revival.attempts);
        self.revival.attempts += 1;
        let attempt = self.revival.attempts;
        self.revival.due = Some(std::time::Instant::now() + delay);
        let me = myself.clone();
        self.revival.timer = Some(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = me.send_message(PoolMsg(Inner::Revive(attempt)));
        }));
        tracing::info!(?delay, attempt, "pool: revive scheduled");
    }

    fn revived(&mut self) {
        tracing::info!(attempts = self.revival.attempts, "pool revived");
        self.failed = None;
        self.revival = super::actor::Revival::default();
        self.counters.revived += 1;
        self.emit(PoolEvent::Revived);
    }

    // --- observation ----------------------------------------------------------------------

    /// Publishes the status, then the event: a subscriber that has seen an
    /// event and then reads the status sees that change or a later one.
    pub(super) fn emit(&mut self, event: PoolEvent) {
        self.publish();
        let _ = self.events.send(event);
    }

    pub(super) fn publish(&mut self) {
        let state = match &self.failed {
            Some(cause) => PoolState::Failed(cause.clone()),
            None if self.closing => PoolState::Draining,
            None => PoolState::Running,
        };
        self.publish_state(state);
    }

    pub(super) fn publish_stopped(&mut self) {
        self.publish_state(PoolState::Stopped);
    }

    /// Publishes the status in place: in steady state (the same workers,
    /// changing counts) nothing is allocated, so publishing after every
    /// message stays cheap on the request path.
    fn publish_state(&mut self, state: PoolState) {
        let capacity = self.capacity();
        let queued = self.queued();
        let restarts = self.past_restarts + self.workers.restarts();
        let slots = self.slots.iter().filter(|s| s.phase != SlotPhase::Retired);
        let (config, sessions, lm_generation) =
            (&self.config, self.sessions.len(), self.lm_generation);
        let (revive_at, counters) = (self.revival.due, &self.counters);
        self.status.send_modify(|status| {
            let mut shown = 0;
            for slot in slots {
                let fresh = SlotStatus {
                    id: String::new(),
                    pid: slot.pid,
                    phase: slot.phase,
                    leases: slot.leases,
                    overflow: slot.overflow,
                    programs: slot.loaded.len(),
                    queued: slot.pinned.len(),
                    requests: slot.requests,
                    rss_bytes: slot.rss_bytes,
                };
                match status.workers.get_mut(shown) {
                    Some(entry) => {
                        let mut id = std::mem::take(&mut entry.id);
                        if id != slot.id {
                            id.clone_from(&slot.id);
                        }
                        *entry = SlotStatus { id, ..fresh };
                    }
                    None => status.workers.push(SlotStatus {
                        id: slot.id.clone(),
                        ..fresh
                    }),
                }
                shown += 1;
            }
            status.workers.truncate(shown);
            let workers = &status.workers;
            let count = |f: &dyn Fn(&SlotStatus) -> bool| workers.iter().filter(|w| f(w)).count();
            let ready = |w: &SlotStatus| w.phase == SlotPhase::Ready;
            status.idle = count(&|w| ready(w) && w.leases == 0);
            status.busy = count(&|w| ready(w) && w.leases > 0);
            status.starting = count(&|w| {
                matches!(
                    w.phase,
                    SlotPhase::Starting | SlotPhase::Configuring | SlotPhase::Down
                )
            });
            status.not_started = count(&|w| w.phase == SlotPhase::NotStarted);
            status.retiring = count(&|w| w.phase == SlotPhase::Retiring);
            status.leases = workers.iter().map(|w| w.leases).sum();
            status.state = state;
            status.queued = queued;
            status.max_queue = config.max_queue;
            status.capacity_per_worker = capacity;
            status.restarts = restarts;
            status.sessions = sessions;
            status.lm_generation = lm_generation;
            status.revive_at = revive_at;
            status.counters.clone_from(counters);
        });
        let slots = &self.slots;
        let ready_pids = || {
            slots
                .iter()
                .filter(|s| s.phase == SlotPhase::Ready)
                .filter_map(|s| s.worker.as_ref())
        };
        self.ready_workers.send_if_modified(|current| {
            let same = current.len() == ready_pids().count()
                && current
                    .iter()
                    .zip(ready_pids())
                    .all(|(a, b)| a.pid() == b.pid());
            if !same {
                *current = ready_pids().cloned().collect();
            }
            !same
        });
    }
}

impl PoolStatus {
    /// The status of a pool that has not published yet.
    pub(crate) fn empty() -> Self {
        Self {
            state: PoolState::Running,
            idle: 0,
            busy: 0,
            starting: 0,
            not_started: 0,
            retiring: 0,
            queued: 0,
            max_queue: None,
            leases: 0,
            capacity_per_worker: 1,
            restarts: 0,
            sessions: 0,
            lm_generation: 0,
            revive_at: None,
            counters: super::status::PoolCounters::default(),
            workers: Vec::new(),
        }
    }
}
