//! Recycling: replacing healthy workers after [`RecyclePolicy`] limits,
//! start-new-then-retire, so capacity never drops.
//!
//! 1. A worker reaches a limit (requests served, checked at each check-in;
//!    age or resident memory, checked on a tick). If it holds a stateful
//!    session, nothing happens until the session has ended.
//! 2. A replacement slot (a fresh worker id) is started; the old worker
//!    keeps serving meanwhile.
//! 3. Once the replacement is ready, the old worker is *retiring*: it takes
//!    no new lease (only the stateful sessions it still holds), and once its
//!    leases are back and its sessions gone it is stopped (EOF → SIGTERM →
//!    SIGKILL) and forgotten — a stop, not a crash.

use std::time::Duration;

use ractor::ActorRef;

use super::RecyclePolicy;
use super::actor::{PoolActorState, PoolMsg};
use super::status::{PoolEvent, SlotPhase};

/// How often age and memory are looked at, if they are limited at all.
pub(super) fn tick_interval(policy: &RecyclePolicy) -> Option<Duration> {
    let by_age = policy
        .max_age
        .map(|age| (age / 4).clamp(Duration::from_millis(20), Duration::from_secs(1)));
    let by_rss = policy.max_rss_mb.map(|_| Duration::from_secs(1));
    match (by_age, by_rss) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl PoolActorState {
    /// The tick: age and memory limits of every serving worker.
    pub(super) fn check_recycling(&mut self, myself: &ActorRef<PoolMsg>) {
        let policy = self.config.recycle;
        for slot in 0..self.slots.len() {
            let s = &mut self.slots[slot];
            if s.phase != SlotPhase::Ready || s.overflow || s.replacement.is_some() {
                continue;
            }
            if policy.max_rss_mb.is_some() {
                s.rss_bytes = crate::process::rss_bytes(s.pid).unwrap_or(0);
            }
            let reason = match (policy.max_age, policy.max_rss_mb) {
                (Some(max), _) if s.ready_since.is_some_and(|t| t.elapsed() >= max) => {
                    Some(format!("in service for {max:?} (max_age)"))
                }
                (_, Some(max)) if s.rss_bytes > max * 1024 * 1024 => Some(format!(
                    "resident memory {} MiB above {max} MiB (max_rss_mb)",
                    s.rss_bytes / (1024 * 1024)
                )),
                _ => None,
            };
            if let Some(reason) = reason {
                self.recycle(myself, slot, reason);
            }
        }
    }

    /// At check-in: the request limit of this worker.
    pub(super) fn check_recycle(&mut self, myself: &ActorRef<PoolMsg>, slot: usize) {
        let s = &self.slots[slot];
        if let Some(max) = self.config.recycle.max_requests
            && s.requests >= max
            && s.phase == SlotPhase::Ready
            && !s.overflow
            && s.replacement.is_none()
        {
            self.recycle(
                myself,
                slot,
                format!("served {max} requests (max_requests)"),
            );
        }
    }

    /// Starts the replacement of `slot`'s worker.
    fn recycle(&mut self, myself: &ActorRef<PoolMsg>, slot: usize, reason: String) {
        if self.closing || self.failed.is_some() || self.holds_state(slot) {
            // Its stateful sessions would be lost: wait until they end.
            return;
        }
        let id = format!("{}-{}", self.config.name, self.next_worker);
        self.next_worker += 1;
        let replacement = self.new_slot(id.clone(), false);
        let old = &mut self.slots[slot];
        tracing::info!(worker = %old.id, pid = old.pid, replacement = %id, %reason, "pool: recycling worker");
        old.replacement = Some(replacement);
        old.recycle_reason = Some(reason);
        self.start_slot(myself, replacement);
    }

    /// A slot became ready: if it replaces a worker, that one retires now.
    pub(super) fn replacement_ready(&mut self, slot: usize) {
        let Some(old) = self.slots.iter().position(|s| {
            s.replacement == Some(slot) && matches!(s.phase, SlotPhase::Ready | SlotPhase::Retiring)
        }) else {
            return;
        };
        self.slots[old].phase = SlotPhase::Retiring;
        // Its callers go to the others now; its non-stateful affinities too.
        let pid = self.slots[old].pid;
        self.sessions
            .retain(|_, a| a.stateful || !(a.slot == old && a.pid == pid));
        self.retire_if_idle(old);
    }

    /// Stops a retiring worker once nothing is left for it to do.
    pub(super) fn retire_if_idle(&mut self, slot: usize) {
        let s = &self.slots[slot];
        if s.phase != SlotPhase::Retiring
            || s.leases > 0
            || !s.pinned.is_empty()
            || self.holds_state(slot)
        {
            return;
        }
        let (id, pid) = (s.id.clone(), s.pid);
        let reason = s.recycle_reason.clone().unwrap_or_default();
        let served = s.requests;
        self.slot_down(slot);
        let s = &mut self.slots[slot];
        s.phase = SlotPhase::Retired;
        s.replacement = None;
        self.counters.recycled += 1;
        tracing::info!(worker = %id, pid, served, %reason, "pool: retiring recycled worker");
        self.terminate(&id);
        self.emit(PoolEvent::WorkerRecycled { id, pid, reason });
    }

    /// [`Self::retire_if_idle`] for every retiring worker.
    pub(super) fn retire_idle(&mut self) {
        for slot in 0..self.slots.len() {
            self.retire_if_idle(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_only_when_age_or_memory_are_limited() {
        assert_eq!(tick_interval(&RecyclePolicy::default()), None);
        let requests_only = RecyclePolicy {
            max_requests: Some(10),
            ..RecyclePolicy::default()
        };
        assert_eq!(tick_interval(&requests_only), None);
        let age = RecyclePolicy {
            max_age: Some(Duration::from_millis(200)),
            ..RecyclePolicy::default()
        };
        assert_eq!(tick_interval(&age), Some(Duration::from_millis(50)));
        let both = RecyclePolicy {
            max_age: Some(Duration::from_secs(3600)),
            max_rss_mb: Some(512),
            ..RecyclePolicy::default()
        };
        assert_eq!(tick_interval(&both), Some(Duration::from_secs(1)));
    }
}
