//! [`Config`]: everything a [`crate::Dspex`] is started with, from code, a
//! TOML file, or `DSPEX_*` environment variables — in that order of
//! precedence when a builder applies them (later wins), and only when it asks:
//! nothing is read from the environment behind the caller's back.
//!
//! ```toml
//! adapter = "python"        # python | bridge_mock | mock
//! mode = "pool"             # pool | single (one worker) | disabled
//! pool_size = 4             # pool mode only
//! checkout_timeout_ms = 5000
//! request_timeout_ms = 30000
//! hang_grace_ms = 2000      # silence after a deadline that means "hung"
//! shutdown_grace_ms = 10000 # how long shutdown lets calls in flight finish
//! max_queue = 1000
//! max_in_flight = 5000      # calls through this handle at once (unbounded when absent)
//!
//! [restart]
//! max_restarts = 3
//! within_ms = 5000
//!
//! [revive]                  # present: a failed pool tries again
//! cooldown_ms = 1000        # doubling per attempt ...
//! max_cooldown_ms = 60000   # ... up to this
//!
//! [recycle]                 # replace healthy workers after any of these
//! max_requests = 10000
//! max_age_ms = 3600000
//! max_rss_mb = 1024
//!
//! [health]
//! interval_ms = 5000
//! timeout_ms = 10000
//! degraded_after = 1
//! unhealthy_after = 3
//! restart_after = 3
//!
//! [python]
//! project = "py/"           # the service's own DSPy code (relative to this file);
//!                           # its requirements.txt is installed as a layer
//! spawn = "zygote"          # zygote (fork workers from one import) | direct
//! preload = ["myapp.rag"]   # project modules the zygote imports before forking
//!
//! [lm]
//! model = "openai/gpt-4o-mini"
//! api_key_env = "OPENAI_API_KEY"
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use dspex_bridge::health::HealthConfig;
use dspex_bridge::pool::{PoolConfig, RecyclePolicy, RevivePolicy};
use dspex_bridge::process::ZygoteOptions;
use dspex_bridge::{PythonConfig, SpawnMode, TreeConfig, WorkerConfig};
use dspex_protocol::{LmConfig, Secret};
use dspex_supervision::{Backoff, RestartIntensity};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::resilience::{BreakerConfig, RetryBudget, RetryPolicy};

/// Which implementation serves calls. Chosen explicitly; there is no test
/// mode hidden anywhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdapterKind {
    /// Real Python workers (single bridge or pool).
    #[default]
    Python,
    /// The real codec, actors and pool against in-process fake workers.
    BridgeMock,
    /// Pure Rust, deterministic outputs from the signature.
    Mock,
}

/// The supervision mode of the Python adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModeSetting {
    /// A pool of workers.
    #[default]
    Pool,
    /// One worker.
    Single,
    /// No workers; calls fail with a clear error.
    Disabled,
}

/// Restart budget and backoff of the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RestartSettings {
    /// Restarts allowed within the window.
    pub max_restarts: u32,
    /// The window, in milliseconds.
    pub within_ms: u64,
    /// The first backoff delay, in milliseconds.
    pub backoff_initial_ms: u64,
    /// The largest backoff delay, in milliseconds.
    pub backoff_max_ms: u64,
}

impl Default for RestartSettings {
    fn default() -> Self {
        Self {
            max_restarts: 3,
            within_ms: 5_000,
            backoff_initial_ms: 100,
            backoff_max_ms: 5_000,
        }
    }
}

/// Retry settings of the execute path.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetrySettings {
    /// Attempts in all (1: no retry).
    pub max_attempts: u32,
    /// The smallest delay, in milliseconds.
    pub base_ms: u64,
    /// The largest delay, in milliseconds.
    pub cap_ms: u64,
    /// Retries allowed per request, on average (the retry budget).
    pub budget_ratio: f32,
    /// Retries allowed per second whatever the traffic.
    pub budget_min_per_sec: u32,
}

impl Default for RetrySettings {
    fn default() -> Self {
        let policy = RetryPolicy::default();
        let budget = RetryBudget::default();
        Self {
            max_attempts: policy.max_attempts,
            base_ms: millis(policy.base),
            cap_ms: millis(policy.cap),
            budget_ratio: budget.ratio,
            budget_min_per_sec: budget.min_per_sec,
        }
    }
}

/// The revive policy: present, a `Failed` pool tries again after a
/// cool-down that doubles per attempt, capped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReviveSettings {
    /// The first cool-down, in milliseconds.
    pub cooldown_ms: u64,
    /// The longest cool-down, in milliseconds.
    pub max_cooldown_ms: u64,
}

impl Default for ReviveSettings {
    fn default() -> Self {
        let backoff = RevivePolicy::default().cooldown;
        Self {
            cooldown_ms: millis(backoff.initial),
            max_cooldown_ms: millis(backoff.max),
        }
    }
}

/// Recycling: healthy workers replaced (start the new one, retire the old
/// one when idle) after any of these limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecycleSettings {
    /// Requests one worker serves.
    pub max_requests: Option<u64>,
    /// How long one worker serves, in milliseconds.
    pub max_age_ms: Option<u64>,
    /// Resident memory one worker may reach, in MiB.
    pub max_rss_mb: Option<u64>,
}

/// Health checks of the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthSettings {
    /// Time between pings, in milliseconds.
    pub interval_ms: u64,
    /// How long one ping may take, in milliseconds (a later answer is a
    /// failed check).
    pub timeout_ms: u64,
    /// Consecutive failed checks that make a worker degraded.
    pub degraded_after: u32,
    /// Consecutive failed checks that make a worker unhealthy.
    pub unhealthy_after: u32,
    /// Consecutive failed checks after which a worker is replaced (absent:
    /// never).
    pub restart_after: Option<u32>,
}

impl Default for HealthSettings {
    fn default() -> Self {
        let health = HealthConfig::default();
        Self {
            interval_ms: millis(health.interval),
            timeout_ms: millis(health.timeout),
            degraded_after: health.degraded_after,
            unhealthy_after: health.unhealthy_after,
            restart_after: health.restart_after,
        }
    }
}

/// Circuit-breaker settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerSettings {
    /// Consecutive failures that open the circuit (0: never).
    pub failure_threshold: u32,
    /// How long it stays open, in milliseconds.
    pub cooldown_ms: u64,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        let config = BreakerConfig::default();
        Self {
            failure_threshold: config.failure_threshold,
            cooldown_ms: millis(config.cooldown),
        }
    }
}

/// The language model configured at start.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LmSettings {
    /// A litellm model string, or `dummy` for the offline LM.
    pub model: String,
    /// The API key itself (prefer `api_key_env`); redacted when printed.
    pub api_key: Option<Secret>,
    /// The environment variable holding the API key.
    pub api_key_env: Option<String>,
    /// The provider's base URL.
    pub api_base: Option<String>,
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// Token limit of one answer.
    pub max_tokens: Option<u32>,
    /// Simulated latency of the `dummy` LM, in milliseconds.
    pub latency_ms: Option<u64>,
}

impl LmSettings {
    /// The LM configuration sent to workers.
    ///
    /// # Errors
    /// [`Error::Configuration`] when `api_key_env` names an unset variable.
    pub fn to_lm_config(&self) -> Result<LmConfig> {
        let api_key = match (&self.api_key, &self.api_key_env) {
            (Some(key), _) => Some(key.clone()),
            (None, Some(var)) => Some(Secret::new(std::env::var(var).map_err(|_| {
                Error::configuration(format!(
                    "lm.api_key_env names {var}, which is not set in the environment"
                ))
            })?)),
            (None, None) => None,
        };
        let mut config = LmConfig {
            model: self.model.clone(),
            api_key,
            api_base: self.api_base.clone(),
            temperature: self.temperature,
            max_tokens: self.max_tokens,
            extra: Default::default(),
        };
        if let Some(latency) = self.latency_ms {
            config.extra.insert("latency_ms".into(), latency.into());
        }
        Ok(config)
    }
}

/// Where Python comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PythonSettings {
    /// An interpreter to use as is (default: `DSPEX_PYTHON`, else the managed
    /// environment).
    pub interpreter: Option<PathBuf>,
    /// The cache directory of the managed environment.
    pub cache_dir: Option<PathBuf>,
    /// The service's Python project: the only directory `python` modules
    /// ([`crate::Module::python`]) are imported from. Its `requirements.txt`,
    /// if any, is installed into a layer of the managed environment keyed by
    /// its hash. In a file, a relative path is relative to the file.
    pub project: Option<PathBuf>,
    /// How workers are started.
    pub spawn: SpawnSetting,
    /// Modules of the project the zygote imports before it reports ready
    /// (DSPy is too, unless workers import it lazily; litellm follows while
    /// the zygote is idle), so that forked workers start with them.
    pub preload: Vec<String>,
}

/// How workers are started (`[python] spawn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpawnSetting {
    /// Forked from a zygote that imported DSPy once (milliseconds per
    /// worker); direct spawning takes over whenever the zygote cannot serve.
    #[default]
    Zygote,
    /// Each worker is its own interpreter and imports DSPy itself.
    Direct,
}

/// The whole configuration. See the module docs for the file form.
///
/// Its `Debug` output redacts the LM's API key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// A name for this instance (prefix of worker ids).
    pub name: String,
    /// Which implementation serves calls.
    pub adapter: AdapterKind,
    /// Pool, single worker, or disabled (Python and bridge-mock adapters).
    pub mode: ModeSetting,
    /// Workers in the pool (pool mode; single mode has one).
    pub pool_size: usize,
    /// Extra workers while callers wait.
    pub max_overflow: usize,
    /// Requests one worker serves at once.
    pub per_worker_concurrency: usize,
    /// Callers allowed to wait at once (unbounded when absent).
    pub max_queue: Option<usize>,
    /// How long a call waits for a free worker, in milliseconds.
    pub checkout_timeout_ms: u64,
    /// How long a request may take, waiting for a worker included, in
    /// milliseconds.
    pub request_timeout_ms: u64,
    /// How long a worker may stay silent after a request's deadline before
    /// it is judged hung and replaced, in milliseconds.
    pub hang_grace_ms: u64,
    /// How long a shutdown lets the calls in flight finish, in milliseconds.
    pub shutdown_grace_ms: u64,
    /// Calls through this handle at once; more are refused at once
    /// (`Overloaded`). Unbounded when absent.
    pub max_in_flight: Option<usize>,
    /// Restart budget.
    pub restart: RestartSettings,
    /// Whether (and how soon) a failed pool tries again; off when absent.
    pub revive: Option<ReviveSettings>,
    /// Recycling of healthy workers.
    pub recycle: RecycleSettings,
    /// Health checks.
    pub health: HealthSettings,
    /// Retries.
    pub retry: RetrySettings,
    /// Circuit breaker.
    pub breaker: BreakerSettings,
    /// The LM configured at start, if any.
    pub lm: Option<LmSettings>,
    /// Where Python comes from.
    pub python: PythonSettings,
    /// Extra environment variables for the workers.
    pub worker_env: Vec<(String, String)>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            name: "dspex".into(),
            adapter: AdapterKind::default(),
            mode: ModeSetting::default(),
            pool_size: 4,
            max_overflow: 0,
            per_worker_concurrency: dspex_bridge::DEFAULT_PER_WORKER_CONCURRENCY,
            max_queue: None,
            checkout_timeout_ms: 5_000,
            request_timeout_ms: 30_000,
            hang_grace_ms: 2_000,
            shutdown_grace_ms: 10_000,
            max_in_flight: None,
            restart: RestartSettings::default(),
            revive: None,
            recycle: RecycleSettings::default(),
            health: HealthSettings::default(),
            retry: RetrySettings::default(),
            breaker: BreakerSettings::default(),
            lm: None,
            python: PythonSettings::default(),
            worker_env: Vec::new(),
        }
    }
}

pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl Config {
    /// Parses the TOML form, then validates it.
    ///
    /// ```
    /// use dspex::{AdapterKind, Config};
    ///
    /// let config = Config::from_toml("adapter = \"mock\"\npool_size = 2")?;
    /// assert_eq!((config.adapter, config.pool_size), (AdapterKind::Mock, 2));
    /// let error = Config::from_toml("pool_size = 0").unwrap_err();
    /// assert!(error.to_string().contains("pool_size: must be at least 1"));
    /// # Ok::<(), dspex::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Configuration`] naming the bad key (unknown keys included).
    pub fn from_toml(text: &str) -> Result<Self> {
        let config: Self = toml::from_str(text)
            .map_err(|e| Error::configuration(format!("in TOML: {}", e.message())))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and parses a TOML file.
    ///
    /// # Errors
    /// [`Error::Configuration`] naming the file and the problem.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::configuration(format!("cannot read {}: {e}", path.display())))?;
        let mut config = Self::from_toml(&text).map_err(|e| match e {
            Error::Configuration { message } => {
                Error::configuration(format!("{}: {message}", path.display()))
            }
            other => other,
        })?;
        if let (Some(project), Some(dir)) = (&mut config.python.project, path.parent())
            && project.is_relative()
        {
            *project = dir.join(&*project);
        }
        Ok(config)
    }

    /// Applies the `DSPEX_*` variables found by `var` over this config:
    /// `DSPEX_ADAPTER`, `DSPEX_MODE`, `DSPEX_SPAWN`, `DSPEX_POOL_SIZE`, `DSPEX_MAX_OVERFLOW`,
    /// `DSPEX_MAX_QUEUE`, `DSPEX_CHECKOUT_TIMEOUT_MS`,
    /// `DSPEX_REQUEST_TIMEOUT_MS`, `DSPEX_LM` (model), `DSPEX_LM_API_KEY`,
    /// `DSPEX_LM_API_BASE`. (`DSPEX_PYTHON` and `DSPEX_CACHE_DIR` are read
    /// when Python is resolved.)
    ///
    /// # Errors
    /// [`Error::Configuration`] naming the variable and the bad value.
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<()> {
        fn parse<T: std::str::FromStr>(name: &str, value: &str) -> Result<T> {
            value
                .trim()
                .parse()
                .map_err(|_| Error::configuration(format!("{name}={value:?} is not a valid value")))
        }
        fn word<T: for<'de> Deserialize<'de>>(name: &str, value: &str) -> Result<T> {
            T::deserialize(
                serde::de::value::StrDeserializer::<serde::de::value::Error>::new(value.trim()),
            )
            .map_err(|e| Error::configuration(format!("{name}={value:?}: {e}")))
        }
        if let Some(v) = var("DSPEX_ADAPTER") {
            self.adapter = word("DSPEX_ADAPTER", &v)?;
        }
        if let Some(v) = var("DSPEX_MODE") {
            self.mode = word("DSPEX_MODE", &v)?;
        }
        if let Some(v) = var("DSPEX_SPAWN") {
            self.python.spawn = word("DSPEX_SPAWN", &v)?;
        }
        if let Some(v) = var("DSPEX_POOL_SIZE") {
            self.pool_size = parse("DSPEX_POOL_SIZE", &v)?;
        }
        if let Some(v) = var("DSPEX_MAX_OVERFLOW") {
            self.max_overflow = parse("DSPEX_MAX_OVERFLOW", &v)?;
        }
        if let Some(v) = var("DSPEX_MAX_QUEUE") {
            self.max_queue = Some(parse("DSPEX_MAX_QUEUE", &v)?);
        }
        if let Some(v) = var("DSPEX_CHECKOUT_TIMEOUT_MS") {
            self.checkout_timeout_ms = parse("DSPEX_CHECKOUT_TIMEOUT_MS", &v)?;
        }
        if let Some(v) = var("DSPEX_REQUEST_TIMEOUT_MS") {
            self.request_timeout_ms = parse("DSPEX_REQUEST_TIMEOUT_MS", &v)?;
        }
        if let Some(model) = var("DSPEX_LM") {
            let lm = self.lm.get_or_insert_with(LmSettings::default);
            lm.model = model;
        }
        if let Some(key) = var("DSPEX_LM_API_KEY") {
            self.lm.get_or_insert_with(LmSettings::default).api_key = Some(Secret::new(key));
        }
        if let Some(base) = var("DSPEX_LM_API_BASE") {
            self.lm.get_or_insert_with(LmSettings::default).api_base = Some(base);
        }
        self.validate()
    }

    /// Checks the values make sense together.
    ///
    /// # Errors
    /// [`Error::Configuration`] naming the key.
    pub fn validate(&self) -> Result<()> {
        let fail = |key: &str, why: &str| Err(Error::configuration(format!("{key}: {why}")));
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return fail(
                "name",
                "must be non-empty ASCII letters, digits, '-' or '_'",
            );
        }
        if self.pool_size == 0 {
            return fail("pool_size", "must be at least 1");
        }
        if self.per_worker_concurrency == 0 {
            return fail("per_worker_concurrency", "must be at least 1");
        }
        if self.max_queue == Some(0) {
            return fail("max_queue", "must be at least 1 (omit it for no bound)");
        }
        if self.checkout_timeout_ms == 0 {
            return fail("checkout_timeout_ms", "must be positive");
        }
        if self.request_timeout_ms == 0 {
            return fail("request_timeout_ms", "must be positive");
        }
        if self.hang_grace_ms == 0 {
            return fail("hang_grace_ms", "must be positive");
        }
        if self.max_in_flight == Some(0) {
            return fail("max_in_flight", "must be at least 1 (omit it for no bound)");
        }
        if let Some(revive) = &self.revive
            && revive.cooldown_ms > revive.max_cooldown_ms
        {
            return fail(
                "revive.cooldown_ms",
                "must not exceed revive.max_cooldown_ms",
            );
        }
        if self.recycle.max_requests == Some(0) {
            return fail(
                "recycle.max_requests",
                "must be at least 1 (omit it for no limit)",
            );
        }
        if self.recycle.max_age_ms == Some(0) {
            return fail(
                "recycle.max_age_ms",
                "must be positive (omit it for no limit)",
            );
        }
        if self.recycle.max_rss_mb == Some(0) {
            return fail(
                "recycle.max_rss_mb",
                "must be positive (omit it for no limit)",
            );
        }
        if self.health.interval_ms == 0 || self.health.timeout_ms == 0 {
            return fail("health", "interval_ms and timeout_ms must be positive");
        }
        if self.health.degraded_after > self.health.unhealthy_after {
            return fail(
                "health.degraded_after",
                "must not exceed health.unhealthy_after",
            );
        }
        if !(0.0..=1000.0).contains(&self.retry.budget_ratio) {
            return fail("retry.budget_ratio", "must be between 0 and 1000");
        }
        if self.restart.within_ms == 0 {
            return fail("restart.within_ms", "must be positive");
        }
        if self.restart.backoff_initial_ms > self.restart.backoff_max_ms {
            return fail(
                "restart.backoff_initial_ms",
                "must not exceed restart.backoff_max_ms",
            );
        }
        if self.retry.max_attempts == 0 {
            return fail(
                "retry.max_attempts",
                "must be at least 1 (1 means no retry)",
            );
        }
        if self.retry.base_ms > self.retry.cap_ms {
            return fail("retry.base_ms", "must not exceed retry.cap_ms");
        }
        if let Some(lm) = &self.lm
            && lm.model.trim().is_empty()
        {
            return fail(
                "lm.model",
                "must name a model (e.g. \"dummy\" or \"openai/gpt-4o-mini\")",
            );
        }
        Ok(())
    }

    /// The checkout timeout.
    pub fn checkout_timeout(&self) -> Duration {
        Duration::from_millis(self.checkout_timeout_ms)
    }

    /// The request timeout.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// The hang grace.
    pub fn hang_grace(&self) -> Duration {
        Duration::from_millis(self.hang_grace_ms)
    }

    /// The shutdown grace.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    /// The retry budget.
    pub fn retry_budget(&self) -> RetryBudget {
        RetryBudget {
            ratio: self.retry.budget_ratio,
            min_per_sec: self.retry.budget_min_per_sec,
            ..RetryBudget::default()
        }
    }

    /// The revive policy, if on.
    pub fn revive_policy(&self) -> Option<RevivePolicy> {
        self.revive.map(|revive| RevivePolicy {
            cooldown: Backoff {
                initial: Duration::from_millis(revive.cooldown_ms),
                factor: 2,
                max: Duration::from_millis(revive.max_cooldown_ms),
            },
        })
    }

    /// The recycling limits.
    pub fn recycle_policy(&self) -> RecyclePolicy {
        RecyclePolicy {
            max_requests: self.recycle.max_requests,
            max_age: self.recycle.max_age_ms.map(Duration::from_millis),
            max_rss_mb: self.recycle.max_rss_mb,
        }
    }

    /// The health checks.
    pub fn health_config(&self) -> HealthConfig {
        HealthConfig {
            interval: Duration::from_millis(self.health.interval_ms),
            timeout: Duration::from_millis(self.health.timeout_ms),
            degraded_after: self.health.degraded_after,
            unhealthy_after: self.health.unhealthy_after,
            restart_after: self.health.restart_after,
        }
    }

    /// The pool this configuration describes (pool mode; single mode is it
    /// with one worker, [`PoolConfig::single`]).
    pub fn pool_config(&self) -> PoolConfig {
        PoolConfig {
            name: self.name.clone(),
            python: PythonConfig {
                interpreter: self.python.interpreter.clone(),
                cache_dir: self.python.cache_dir.clone(),
                project: self.python.project.clone(),
                ..PythonConfig::default()
            },
            worker: WorkerConfig {
                request_timeout: self.request_timeout(),
                hang_grace: self.hang_grace(),
                ..WorkerConfig::default()
            },
            size: self.pool_size,
            max_overflow: self.max_overflow,
            per_worker_concurrency: self.per_worker_concurrency,
            checkout_timeout: self.checkout_timeout(),
            max_queue: self.max_queue,
            intensity: RestartIntensity {
                max_restarts: self.restart.max_restarts,
                within: Duration::from_millis(self.restart.within_ms),
            },
            backoff: Backoff {
                initial: Duration::from_millis(self.restart.backoff_initial_ms),
                max: Duration::from_millis(self.restart.backoff_max_ms),
                ..Backoff::default()
            },
            recycle: self.recycle_policy(),
            revive: self.revive_policy(),
            health: self.health_config(),
            env: self
                .worker_env
                .iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            spawn: match self.python.spawn {
                SpawnSetting::Zygote => SpawnMode::Zygote(ZygoteOptions {
                    preload: self.python.preload.clone(),
                    ..ZygoteOptions::default()
                }),
                SpawnSetting::Direct => SpawnMode::Direct,
            },
            ..PoolConfig::default()
        }
    }

    /// The supervision tree the Python adapter starts for this
    /// configuration's mode.
    pub fn tree_config(&self) -> TreeConfig {
        match self.mode {
            ModeSetting::Pool => TreeConfig::Pool(self.pool_config()),
            ModeSetting::Single => TreeConfig::Single(self.pool_config().single()),
            ModeSetting::Disabled => TreeConfig::Disabled,
        }
    }

    /// The retry policy.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.retry.max_attempts,
            base: Duration::from_millis(self.retry.base_ms),
            cap: Duration::from_millis(self.retry.cap_ms),
        }
    }

    /// The circuit-breaker settings.
    pub fn breaker_config(&self) -> BreakerConfig {
        BreakerConfig {
            failure_threshold: self.breaker.failure_threshold,
            cooldown: Duration::from_millis(self.breaker.cooldown_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_file_form_parses() {
        let config = Config::from_toml(
            r#"
            adapter = "python"
            mode = "pool"
            pool_size = 4
            checkout_timeout_ms = 5000
            request_timeout_ms = 30000
            max_queue = 1000
            [restart]
            max_restarts = 3
            within_ms = 5000
            [lm]
            model = "openai/gpt-4o-mini"
            api_key_env = "OPENAI_API_KEY"
            "#,
        )
        .unwrap();
        assert_eq!(config.max_queue, Some(1000));
        assert_eq!(config.lm.unwrap().model, "openai/gpt-4o-mini");
    }

    #[test]
    fn bad_files_name_the_problem() {
        let unknown = Config::from_toml("pool_sise = 4").unwrap_err().to_string();
        assert!(unknown.contains("pool_sise"), "{unknown}");
        let zero = Config::from_toml("pool_size = 0").unwrap_err().to_string();
        assert!(zero.contains("pool_size"), "{zero}");
        let mode = Config::from_toml("mode = \"cluster\"")
            .unwrap_err()
            .to_string();
        assert!(mode.contains("cluster"), "{mode}");
        let missing = Config::from_file("/nonexistent/dspex.toml")
            .unwrap_err()
            .to_string();
        assert!(missing.contains("/nonexistent/dspex.toml"), "{missing}");
    }

    #[test]
    fn environment_variables_apply_only_when_asked_and_are_checked() {
        let vars = |pairs: &'static [(&str, &str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let mut config = Config::default();
        config
            .apply_env(vars(&[
                ("DSPEX_POOL_SIZE", "8"),
                ("DSPEX_MODE", "single"),
                ("DSPEX_ADAPTER", "bridge_mock"),
                ("DSPEX_LM", "dummy"),
            ]))
            .unwrap();
        assert_eq!(config.pool_size, 8);
        assert_eq!(config.mode, ModeSetting::Single);
        assert_eq!(config.adapter, AdapterKind::BridgeMock);
        assert_eq!(config.lm.as_ref().unwrap().model, "dummy");

        let error = Config::default()
            .apply_env(vars(&[("DSPEX_POOL_SIZE", "many")]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("DSPEX_POOL_SIZE"), "{error}");
        let error = Config::default()
            .apply_env(vars(&[("DSPEX_MODE", "cluster")]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("DSPEX_MODE"), "{error}");
    }

    #[test]
    fn lm_keys_come_from_the_named_variable() {
        let lm = LmSettings {
            model: "openai/gpt-4o-mini".into(),
            api_key_env: Some("DSPEX_TEST_SURELY_UNSET_KEY".into()),
            ..LmSettings::default()
        };
        let error = lm.to_lm_config().unwrap_err().to_string();
        assert!(error.contains("DSPEX_TEST_SURELY_UNSET_KEY"), "{error}");
        let dummy = LmSettings {
            model: "dummy".into(),
            latency_ms: Some(50),
            ..LmSettings::default()
        };
        let config = dummy.to_lm_config().unwrap();
        assert_eq!(config.extra["latency_ms"], 50);
    }
}
