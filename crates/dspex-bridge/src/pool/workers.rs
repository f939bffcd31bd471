//! The pool actor's side of worker lifecycles: starting slots (eagerly,
//! lazily, as overflow), following each worker from spawn through its LM
//! configuration to ready, and reacting to exits; plus closing, failing, and
//! publishing the status snapshot.

use std::sync::Arc;

use dspex_protocol::{Command, LmConfig};
use dspex_supervision::Restart;
use ractor::ActorRef;

use super::PoolError;
use super::actor::{Inner, PoolActorState, PoolMsg, Slot};
use super::status::{PoolEvent, PoolState, PoolStatus, SlotPhase, SlotStatus};
use crate::worker::{CallOptions, WorkerEvent, WorkerHandle, WorkerState};

impl PoolActorState {
    // --- workers --------------------------------------------------------------------------

    pub(super) fn start_slot(&mut self, myself: &ActorRef<PoolMsg>, slot: usize) {
        let s = &mut self.slots[slot];
        if s.phase != SlotPhase::NotStarted {
            return;
        }
        s.phase = SlotPhase::Starting;
        let me = myself.clone();
        let on_start = Arc::new(move |handle: WorkerHandle| {
            let _ = me.send_message(PoolMsg(Inner::WorkerStarted { slot, handle }));
        });
        let mut spec = self.ctx.worker_child(s.id.clone(), on_start);
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

    /// Starts more workers when callers wait and nothing is on its way: a
    /// lazily started slot first, then an overflow worker.
    pub(super) fn grow(&mut self, myself: &ActorRef<PoolMsg>) {
        if self.queue.is_empty() || self.failed.is_some() {
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
            let slot = match self
                .slots
                .iter()
                .position(|s| s.phase == SlotPhase::Retired)
            {
                Some(index) => {
                    self.slots[index] = Slot::new(id, true);
                    index
                }
                None => {
                    self.slots.push(Slot::new(id, true));
                    self.slots.len() - 1
                }
            };
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
                let workers = self.workers.clone();
                tokio::spawn(async move {
                    let _ = workers.terminate_child(&id).await;
                });
                self.emit(PoolEvent::WorkerRetired {
                    id: self.slots[slot].id.clone(),
                    pid,
                });
            }
        }
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
        if s.phase == SlotPhase::Retired {
            handle.kill("overflow worker retired");
            return;
        }
        s.pid = handle.pid();
        let already_ready = matches!(handle.state(), WorkerState::Ready(_));
        s.worker = Some(handle);
        s.phase = SlotPhase::Starting;
        s.leases = 0;
        s.loaded.clear();
        s.lm_generation = 0;
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

    pub(super) fn start_failed(&mut self, myself: &ActorRef<PoolMsg>, slot: usize, error: &str) {
        tracing::warn!(slot, error, "pool: a worker could not be started");
        if let Some(s) = self.slots.get_mut(slot)
            && s.overflow
        {
            s.phase = SlotPhase::Retired;
        }
        self.grow(myself);
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
                self.slot_down(slot);
                if was_overflow {
                    self.slots[slot].phase = SlotPhase::Retired;
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
            Err(error) => self.remove(slot, format!("could not configure the LM: {error}")),
        }
    }

    pub(super) fn slot_ready(&mut self, myself: &ActorRef<PoolMsg>, slot: usize) {
        let s = &mut self.slots[slot];
        s.phase = SlotPhase::Ready;
        let (id, pid) = (s.id.clone(), s.pid);
        self.emit(PoolEvent::WorkerReady { id, pid });
        self.dispatch(myself, slot);
    }

    /// Stops accepting callers (those waiting are told the pool is shutting
    /// down); leases out may finish and come back.
    pub(super) fn close(&mut self) {
        self.closing = true;
        for waiter in self.queue.drain(..) {
            let _ = waiter.reply.send(Err(PoolError::ShuttingDown));
        }
        for slot in &mut self.slots {
            for waiter in slot.pinned.drain(..) {
                let _ = waiter.reply.send(Err(PoolError::ShuttingDown));
            }
        }
    }

    pub(super) fn fail(&mut self, cause: String) {
        if self.failed.is_some() {
            return;
        }
        tracing::error!(%cause, "pool failed");
        for waiter in self.queue.drain(..) {
            let _ = waiter.reply.send(Err(PoolError::Unavailable {
                cause: cause.clone(),
            }));
        }
        for slot in &mut self.slots {
            for waiter in slot.pinned.drain(..) {
                let _ = waiter.reply.send(Err(PoolError::Unavailable {
                    cause: cause.clone(),
                }));
            }
            if slot.phase != SlotPhase::Retired {
                slot.phase = SlotPhase::Down;
                slot.leases = 0;
            }
        }
        self.failed = Some(cause.clone());
        self.emit(PoolEvent::PoolFailed { cause });
    }

    // --- observation ----------------------------------------------------------------------

    pub(super) fn emit(&self, event: PoolEvent) {
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

    pub(super) fn publish_state(&mut self, state: PoolState) {
        let capacity = self.capacity();
        let workers: Vec<SlotStatus> = self
            .slots
            .iter()
            .filter(|s| s.phase != SlotPhase::Retired)
            .map(|s| SlotStatus {
                id: s.id.clone(),
                pid: s.pid,
                phase: s.phase,
                leases: s.leases,
                overflow: s.overflow,
                programs: s.loaded.len(),
                queued: s.pinned.len(),
            })
            .collect();
        let count = |f: &dyn Fn(&SlotStatus) -> bool| workers.iter().filter(|w| f(w)).count();
        let ready = |w: &SlotStatus| w.phase == SlotPhase::Ready;
        let status = PoolStatus {
            state,
            idle: count(&|w| ready(w) && w.leases == 0),
            busy: count(&|w| ready(w) && w.leases > 0),
            starting: count(&|w| {
                matches!(
                    w.phase,
                    SlotPhase::Starting | SlotPhase::Configuring | SlotPhase::Down
                )
            }),
            not_started: count(&|w| w.phase == SlotPhase::NotStarted),
            queued: self.queued(),
            leases: workers.iter().map(|w| w.leases).sum(),
            capacity_per_worker: capacity,
            restarts: self
                .workers
                .status()
                .children
                .iter()
                .map(|c| c.restarts)
                .sum(),
            sessions: self.sessions.len(),
            lm_generation: self.lm_generation,
            counters: self.counters.clone(),
            workers,
        };
        let ready: Vec<WorkerHandle> = self
            .slots
            .iter()
            .filter(|s| s.phase == SlotPhase::Ready)
            .filter_map(|s| s.worker.clone())
            .collect();
        self.ready_workers.send_if_modified(|current| {
            let same = current.len() == ready.len()
                && current.iter().zip(&ready).all(|(a, b)| a.pid() == b.pid());
            if !same {
                *current = ready;
            }
            !same
        });
        self.status.send_replace(status);
    }
}
