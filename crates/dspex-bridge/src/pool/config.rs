//! What a pool is configured with: [`PoolConfig`], how its workers start
//! ([`SpawnMode`]), and its lifecycle policies.

use std::ffi::OsString;
use std::sync::Arc;
use std::time::Duration;

use dspex_supervision::{Backoff, RestartIntensity};

use crate::PythonConfig;
use crate::health::HealthConfig;
use crate::process::{SpawnStrategy, ZygoteOptions};
use crate::worker::WorkerConfig;

/// Configuration of a pool.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Prefix of worker ids and the spawner thread's name.
    pub name: String,
    /// Where the Python comes from.
    pub python: PythonConfig,
    /// Each worker's timeouts and limits (`request_timeout` is the default
    /// request deadline).
    pub worker: WorkerConfig,
    /// Workers kept in service (1 in single mode).
    pub size: usize,
    /// Extra workers started while callers wait and every worker is busy;
    /// stopped again once idle.
    pub max_overflow: usize,
    /// Start workers on demand instead of all at once at start.
    pub lazy: bool,
    /// Leases one worker serves at once (1: one request per worker at a
    /// time; more lets an LM-bound worker overlap requests).
    pub per_worker_concurrency: usize,
    /// How long a caller waits for a worker.
    pub checkout_timeout: Duration,
    /// Callers allowed to wait at once (`None`: unbounded).
    pub max_queue: Option<usize>,
    /// The workers' restart budget (default 3 in 5 s).
    pub intensity: RestartIntensity,
    /// Delay between restarts (default 100 ms ×2, capped at 5 s).
    pub backoff: Backoff,
    /// When workers are replaced although healthy.
    pub recycle: RecyclePolicy,
    /// Whether, and how soon, a `Failed` pool tries again (`None`: `Failed`
    /// is terminal).
    pub revive: Option<RevivePolicy>,
    /// Health checks of ready workers.
    pub health: HealthConfig,
    /// How long an unused session is kept.
    pub session_ttl: Duration,
    /// Extra environment variables for workers.
    pub env: Vec<(OsString, OsString)>,
    /// Extra command-line arguments for workers.
    pub args: Vec<OsString>,
    /// Kill tagged workers of dead hosts at start.
    pub sweep_orphans: bool,
    /// How the pool creates its workers, unless `spawner` is given
    /// (default: forked from a zygote).
    pub spawn: SpawnMode,
    /// A spawn strategy of the caller's own; overrides `spawn`.
    pub spawner: Option<Arc<dyn SpawnStrategy>>,
}

/// Requests one worker serves at once by default. LM-bound work spends
/// nearly all its time waiting on the LM, so one process overlaps many
/// requests: with a 50 ms LM, 16 in flight per worker is 320 calls/s per
/// worker, past what a core can format and parse (see the README).
pub const DEFAULT_PER_WORKER_CONCURRENCY: usize = 16;

/// How a tree creates its worker processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpawnMode {
    /// Fork workers from a zygote that imported DSPy once
    /// ([`ZygoteSpawner`](crate::process::ZygoteSpawner)); direct spawning
    /// takes over whenever the zygote cannot serve.
    Zygote(ZygoteOptions),
    /// Start every worker as its own interpreter
    /// ([`DirectSpawner`](crate::process::DirectSpawner)).
    Direct,
}

impl Default for SpawnMode {
    fn default() -> Self {
        Self::Zygote(ZygoteOptions::default())
    }
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            name: "pool".into(),
            python: PythonConfig::default(),
            worker: WorkerConfig::default(),
            size: 4,
            max_overflow: 0,
            lazy: false,
            per_worker_concurrency: DEFAULT_PER_WORKER_CONCURRENCY,
            checkout_timeout: Duration::from_secs(5),
            max_queue: None,
            intensity: RestartIntensity::default(),
            backoff: Backoff::default(),
            recycle: RecyclePolicy::default(),
            revive: None,
            health: HealthConfig::default(),
            session_ttl: Duration::from_secs(30 * 60),
            env: Vec::new(),
            args: Vec::new(),
            sweep_orphans: true,
            spawn: SpawnMode::default(),
            spawner: None,
        }
    }
}

impl PoolConfig {
    /// Single mode: this configuration with exactly one worker and no
    /// overflow — the same machinery (queue, concurrency, sessions, LM and
    /// program tracking, health monitor, recycling, revive) with one worker.
    #[must_use]
    pub fn single(mut self) -> Self {
        self.size = 1;
        self.max_overflow = 0;
        self
    }
}

/// When a healthy worker is replaced anyway, as gunicorn's `max_requests`,
/// Celery's `max_tasks_per_child` or snakepit's `worker_ttl` do. The
/// replacement is started first and the old worker retired once idle, so no
/// caller sees an error and the pool never has fewer ready workers than its
/// size. A worker holding a stateful session is recycled only once its
/// sessions have ended or expired (its state would be lost).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecyclePolicy {
    /// After this many requests (leases) served.
    pub max_requests: Option<u64>,
    /// After this long in service.
    pub max_age: Option<Duration>,
    /// Once its resident memory exceeds this many MiB.
    pub max_rss_mb: Option<u64>,
}

impl RecyclePolicy {
    /// Whether any limit is set.
    pub fn is_enabled(&self) -> bool {
        self.max_requests.is_some() || self.max_age.is_some() || self.max_rss_mb.is_some()
    }
}

/// How a `Failed` pool tries again: after `cooldown.delay(n)` for the `n`th
/// consecutive attempt (so the default waits 1 s, 2 s, 4 s, ... up to 60 s),
/// it starts its workers afresh under a new restart budget, and emits
/// [`PoolEvent::Revived`] once a worker serves again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RevivePolicy {
    /// The cool-down before each attempt.
    pub cooldown: Backoff,
}

impl Default for RevivePolicy {
    fn default() -> Self {
        Self {
            cooldown: Backoff {
                initial: Duration::from_secs(1),
                factor: 2,
                max: Duration::from_secs(60),
            },
        }
    }
}
