//! What the pool shows: its status snapshot and its events.

use crate::process::Exit;

/// The pool's lifecycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolState {
    /// Serving (possibly while workers restart).
    Running,
    /// The restart budget is exhausted; the text is the last failure (with
    /// the worker's exit status and stderr tail). Calls fail at once. Final,
    /// unless the pool has a revive policy (then `revive_at` says when it
    /// tries again).
    Failed(String),
    /// Shutting down: no new callers; leases out are finishing.
    Draining,
    /// Shut down.
    Stopped,
}

/// Where one worker slot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SlotPhase {
    /// Lazy pool: not started yet.
    NotStarted,
    /// The process is starting (no handshake yet).
    Starting,
    /// Ready, receiving the pool's LM configuration before it serves.
    Configuring,
    /// Serving.
    Ready,
    /// Its process is gone; the supervisor is restarting it.
    Down,
    /// Being recycled: its replacement serves; it finishes what it has
    /// (and the stateful sessions it holds), then it is stopped.
    Retiring,
    /// An overflow slot no longer in use.
    Retired,
}

/// One worker in the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotStatus {
    /// The worker id.
    pub id: String,
    /// Its current OS pid (0 before the first start).
    pub pid: u32,
    /// Its phase.
    pub phase: SlotPhase,
    /// Leases held on it.
    pub leases: usize,
    /// Whether it is an overflow worker.
    pub overflow: bool,
    /// Programs it has loaded.
    pub programs: usize,
    /// Callers waiting for it specifically (stateful sessions).
    pub queued: usize,
    /// Requests its current process has served.
    pub requests: u64,
    /// Its resident memory at the last look, in bytes (0: not measured;
    /// measured when a memory recycling limit is set).
    pub rss_bytes: u64,
}

/// Counters since the pool started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolCounters {
    /// Leases handed out.
    pub checkouts: u64,
    /// Leases returned (including stale ones).
    pub checkins: u64,
    /// Callers that gave up while waiting (or just before the hand-off).
    pub cancelled: u64,
    /// Callers refused because the queue was full.
    pub overloaded: u64,
    /// Callers refused because their stateful session's worker was gone.
    pub session_lost: u64,
    /// Workers taken out of service as broken (counted as crashes).
    pub removed: u64,
    /// Workers replaced on the pool's own decision (a panicking caller):
    /// not counted as crashes.
    pub replaced: u64,
    /// Workers retired by recycling, after their replacement was ready.
    pub recycled: u64,
    /// Times the pool served again after `Failed` (revive policy).
    pub revived: u64,
    /// Leases dropped with a request in flight, whose reply was drained.
    pub drained: u64,
    /// Check-ins for a worker that was already gone.
    pub stale_checkins: u64,
}

/// A snapshot of the pool. `idle + busy + starting + not_started` is the
/// number of worker slots in service (`retiring` ones, on their way out, are
/// counted apart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStatus {
    /// Lifecycle.
    pub state: PoolState,
    /// Ready workers with no lease.
    pub idle: usize,
    /// Ready workers with at least one lease.
    pub busy: usize,
    /// Workers starting, configuring, or down awaiting their restart.
    pub starting: usize,
    /// Slots of a lazy pool not started yet.
    pub not_started: usize,
    /// Workers being recycled (finishing their leases; taking no new one).
    pub retiring: usize,
    /// Callers waiting for a worker.
    pub queued: usize,
    /// The bound on waiting callers, if any.
    pub max_queue: Option<usize>,
    /// Leases out.
    pub leases: usize,
    /// Leases one worker takes at once.
    pub capacity_per_worker: usize,
    /// Worker restarts so far.
    pub restarts: u32,
    /// Sessions with a known worker.
    pub sessions: usize,
    /// How many times the LM configuration changed.
    pub lm_generation: u64,
    /// When a `Failed` pool tries again (revive policy), if it will.
    pub revive_at: Option<std::time::Instant>,
    /// Counters.
    pub counters: PoolCounters,
    /// Every worker slot in service.
    pub workers: Vec<SlotStatus>,
}

impl PoolStatus {
    /// The pids of the workers currently in service.
    pub fn pids(&self) -> Vec<u32> {
        self.workers
            .iter()
            .map(|w| w.pid)
            .filter(|&p| p != 0)
            .collect()
    }
}

/// Something that happened in the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PoolEvent {
    /// A worker is ready (and has the pool's LM) and serves.
    WorkerReady {
        /// Its id.
        id: String,
        /// Its pid.
        pid: u32,
    },
    /// A worker's process exited.
    WorkerExited {
        /// Its id.
        id: String,
        /// Its pid.
        pid: u32,
        /// How.
        exit: Exit,
    },
    /// A worker was taken out of service (and killed).
    WorkerRemoved {
        /// Its id.
        id: String,
        /// Its pid.
        pid: u32,
        /// Why.
        reason: String,
    },
    /// An idle overflow worker was stopped.
    WorkerRetired {
        /// Its id.
        id: String,
        /// Its pid.
        pid: u32,
    },
    /// A recycled worker was retired (its replacement serves).
    WorkerRecycled {
        /// Its id.
        id: String,
        /// Its pid.
        pid: u32,
        /// Which limit it reached.
        reason: String,
    },
    /// A stateful session's worker is gone.
    SessionLost {
        /// The session.
        session_id: String,
    },
    /// The pool gave up (emitted once per failure).
    PoolFailed {
        /// The last failure.
        cause: String,
    },
    /// A `Failed` pool starts its workers again (revive policy).
    Reviving {
        /// The attempt since it last served (1 for the first).
        attempt: u32,
    },
    /// A revived pool serves again (emitted once per recovery).
    Revived,
}
