//! [`DspexBuilder`]: how a [`Dspex`] is configured and started.

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use dspex_protocol::LmConfig;

use crate::adapter::{Adapter, AdapterService, MockAdapter, PoolAdapter};
use crate::config::{AdapterKind, Config, ModeSetting, millis};
use crate::error::{Error, Result};
use crate::handle::{Dspex, Inner};
use crate::resilience::{CircuitBreaker, Gate, RetryPolicy, Retrying, StackParts};

/// Builds a [`Dspex`]: from code, a TOML file and/or `DSPEX_*` variables,
/// applied in the order called (later wins), then validated.
///
/// ```
/// # tokio_test_block_on(async {
/// use dspex::{AdapterKind, Dspex};
///
/// let dspex = Dspex::builder()
///     .adapter(AdapterKind::Mock)
///     .pool_size(2)
///     .start()
///     .await?;
/// assert_eq!(dspex.status().adapter.kind, AdapterKind::Mock);
/// dspex.shutdown().await;
/// # Ok::<(), dspex::Error>(())
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Runtime::new().unwrap().block_on(f)
/// # }
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct DspexBuilder {
    config: Config,
    error: Option<Error>,
    lm: Option<LmConfig>,
    adapter: Option<Arc<dyn Adapter>>,
}

impl DspexBuilder {
    /// Replaces the whole configuration.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Applies a TOML file (see [`Config`]).
    pub fn config_file(mut self, path: impl AsRef<Path>) -> Self {
        match Config::from_file(path) {
            Ok(config) => self.config = config,
            Err(error) => self.error = Some(error),
        }
        self
    }

    /// Applies the `DSPEX_*` environment variables (see [`Config::apply_env`]).
    pub fn from_env(mut self) -> Self {
        if let Err(error) = self.config.apply_env(|name| std::env::var(name).ok()) {
            self.error = Some(error);
        }
        self
    }

    /// Chooses the adapter.
    pub fn adapter(mut self, kind: AdapterKind) -> Self {
        self.config.adapter = kind;
        self
    }

    /// Uses this adapter instead of building one from the configuration
    /// (for a mock with injected errors, for example).
    pub fn with_adapter(mut self, adapter: Arc<dyn Adapter>) -> Self {
        self.adapter = Some(adapter);
        self
    }

    /// Chooses pool, single or disabled mode.
    pub fn mode(mut self, mode: ModeSetting) -> Self {
        self.config.mode = mode;
        self
    }

    /// Sets the pool size.
    pub fn pool_size(mut self, size: usize) -> Self {
        self.config.pool_size = size;
        self
    }

    /// Sets how many requests one worker serves at once.
    pub fn per_worker_concurrency(mut self, n: usize) -> Self {
        self.config.per_worker_concurrency = n;
        self
    }

    /// Bounds the wait queue.
    pub fn max_queue(mut self, max: usize) -> Self {
        self.config.max_queue = Some(max);
        self
    }

    /// Sets the checkout timeout.
    pub fn checkout_timeout(mut self, timeout: Duration) -> Self {
        self.config.checkout_timeout_ms = millis(timeout);
        self
    }

    /// Sets the request timeout.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.config.request_timeout_ms = millis(timeout);
        self
    }

    /// Sets how long shutdown lets the calls in flight finish.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.config.shutdown_grace_ms = millis(grace);
        self
    }

    /// Bounds the calls in flight through this handle; more are refused at
    /// once.
    pub fn max_in_flight(mut self, max: usize) -> Self {
        self.config.max_in_flight = Some(max);
        self
    }

    /// Sets the restart budget.
    pub fn restart_budget(mut self, max_restarts: u32, within: Duration) -> Self {
        self.config.restart.max_restarts = max_restarts;
        self.config.restart.within_ms = millis(within);
        self
    }

    /// Sets the retry policy.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.config.retry.max_attempts = policy.max_attempts;
        self.config.retry.base_ms = millis(policy.base);
        self.config.retry.cap_ms = millis(policy.cap);
        self
    }

    /// Configures this LM at start.
    pub fn lm(mut self, lm: LmConfig) -> Self {
        self.lm = Some(lm);
        self
    }

    /// Uses this Python interpreter as is.
    pub fn python(mut self, interpreter: impl Into<std::path::PathBuf>) -> Self {
        self.config.python.interpreter = Some(interpreter.into());
        self
    }

    /// Sets the service's Python project directory (see
    /// [`crate::config::PythonSettings::project`]).
    pub fn python_project(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.config.python.project = Some(dir.into());
        self
    }

    /// How workers are started (default [`crate::SpawnSetting::Zygote`]).
    pub fn spawn(mut self, setting: crate::SpawnSetting) -> Self {
        self.config.python.spawn = setting;
        self
    }

    /// Adds an environment variable for the workers.
    pub fn worker_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.worker_env.push((key.into(), value.into()));
        self
    }

    /// Sets the instance name (prefix of worker ids).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// The configuration as it stands.
    pub fn current_config(&self) -> &Config {
        &self.config
    }

    /// Validates the configuration and starts the adapter it names; then
    /// configures the LM, if one was given.
    ///
    /// # Cancel safety
    /// Not cancel safe once workers have started: a dropped future leaves
    /// them running without a handle.
    ///
    /// # Errors
    /// [`Error::Configuration`] for an invalid configuration or a Python that
    /// cannot run workers; the adapter's start errors; the LM's rejection.
    pub async fn start(self) -> Result<Dspex> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let config = self.config;
        config.validate()?;
        let adapter: Arc<dyn Adapter> = match self.adapter {
            Some(adapter) => adapter,
            None => start_adapter(&config).await?,
        };
        let gate = Arc::new(Gate::default());
        let breaker = Arc::new(CircuitBreaker::new(config.breaker_config()));
        let retry = Retrying::new(config.retry_policy(), config.retry_budget());
        let stack = crate::resilience::stack(
            StackParts {
                gate: Arc::clone(&gate),
                default_timeout: config.request_timeout(),
                retry: retry.clone(),
                breaker: Arc::clone(&breaker),
                max_in_flight: config.max_in_flight,
            },
            AdapterService::new(Arc::clone(&adapter)),
        );
        crate::telemetry::describe_metrics();
        let inner = Arc::new(Inner {
            name: config.name.clone(),
            adapter,
            stack,
            gate,
            breaker,
            retry,
            shutdown_grace: config.shutdown_grace(),
            programs: RwLock::default(),
            usage: Mutex::default(),
        });
        let weak = Arc::downgrade(&inner);
        let dspex = Dspex::from_inner(inner);
        let lm = match (self.lm, &config.lm) {
            (Some(lm), _) => Some(lm),
            (None, Some(settings)) => Some(settings.to_lm_config()?),
            (None, None) => None,
        };
        if let Some(lm) = lm {
            dspex.configure_lm(lm).await?;
        }
        crate::telemetry::spawn_gauge_task(weak);
        Ok(dspex)
    }
}

/// The one place the configured adapter is resolved.
async fn start_adapter(config: &Config) -> Result<Arc<dyn Adapter>> {
    let pool_config = || config.pool_config();
    Ok(match (config.adapter, config.mode) {
        (AdapterKind::Mock, _) => Arc::new(MockAdapter::new()),
        (AdapterKind::BridgeMock, ModeSetting::Pool) => {
            Arc::new(PoolAdapter::bridge_mock(pool_config()).await?)
        }
        (AdapterKind::BridgeMock, ModeSetting::Single) => {
            Arc::new(PoolAdapter::bridge_mock(pool_config().single()).await?)
        }
        (AdapterKind::BridgeMock, ModeSetting::Disabled) => {
            return Err(Error::configuration(
                "mode: the bridge mock runs fake workers; use mode pool or single",
            ));
        }
        (AdapterKind::Python, _) => Arc::new(PoolAdapter::python(config.tree_config()).await?),
    })
}
