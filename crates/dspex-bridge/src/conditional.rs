//! [`ConditionalSupervisor`]: the root of a DSPex tree. It decides **once**,
//! at start, which subtree runs, from an explicit [`Mode`] and a check of the
//! Python environment, and never switches afterwards.
//!
//! ```text
//! ConditionalSupervisor (one_for_one, no restarts of its subtree, Remain)
//! ├─ Disabled: no children; every call fails with PoolError::Unavailable
//! ├─ Single:   PoolSupervisor (rest_for_one) ─ SessionJanitor, Pool ─ one Worker, HealthMonitor
//! └─ Pool:     PoolSupervisor (rest_for_one) ─ SessionJanitor, Pool ─ Workers, HealthMonitor
//! ```
//!
//! Single mode is the pool machinery with exactly one worker: the same
//! queue bound, concurrency, sessions (`SessionLost` after a restart),
//! program and LM tracking, health monitor, recycling and revive.
//!
//! When the workers' restart budget is exhausted, the pool is `Failed` with
//! the cause and stays up to report it (and, with a revive policy, tries
//! again later): an embedding service observes the failure through
//! [`ConditionalSupervisor::status`] and the events instead of its process
//! exiting. There is no hidden override: the mode in the status is the mode
//! the configuration asked for, or `start` failed with the reason.

use std::process::Command as OsCommand;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dspex_supervision::{
    ChildSpec, OnGiveUp, RestartIntensity, StartError, Supervisor, SupervisorHandle,
    SupervisorOptions, SupervisorState,
};
use serde::Deserialize;

use crate::pool::{Pool, PoolConfig, PoolError, PoolState, PoolStatus};
use crate::{EnvError, PythonEnv};

/// Which subtree runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No Python at all; calls fail with a clear error.
    Disabled,
    /// One worker: the pool machinery with a single worker.
    Single,
    /// A pool of workers.
    Pool,
}

/// The mode and its configuration. There is no default: the caller says.
#[derive(Debug, Clone)]
pub enum TreeConfig {
    /// No Python at all.
    Disabled,
    /// One worker: a pool configuration with `size` 1 and no overflow (see
    /// [`PoolConfig::single`]).
    Single(PoolConfig),
    /// A pool of workers.
    Pool(PoolConfig),
}

impl TreeConfig {
    /// The mode this configuration selects.
    pub fn mode(&self) -> Mode {
        match self {
            Self::Disabled => Mode::Disabled,
            Self::Single(_) => Mode::Single,
            Self::Pool(_) => Mode::Pool,
        }
    }
}

/// What the environment check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvironmentReport {
    /// The interpreter checked.
    pub interpreter: std::path::PathBuf,
    /// Where it came from.
    pub source: crate::InterpreterSource,
    /// Its version, if it ran.
    pub python: Option<String>,
    /// The installed DSPy version, if any.
    pub dspy: Option<String>,
    /// The installed msgpack version, if any.
    pub msgpack: Option<String>,
    /// What is wrong, in words a person can act on; empty when all is well.
    pub problems: Vec<String>,
}

impl EnvironmentReport {
    /// `true` when workers can run.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl std::fmt::Display for EnvironmentReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "interpreter: {} ({:?})",
            self.interpreter.display(),
            self.source
        )?;
        let or_missing = |v: &Option<String>| v.clone().unwrap_or_else(|| "missing".into());
        writeln!(f, "python: {}", or_missing(&self.python))?;
        writeln!(f, "dspy: {}", or_missing(&self.dspy))?;
        write!(f, "msgpack: {}", or_missing(&self.msgpack))?;
        for problem in &self.problems {
            write!(f, "\nproblem: {problem}")?;
        }
        Ok(())
    }
}

/// Why the conditional supervisor did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConditionalError {
    /// The configuration does not fit the mode.
    #[error("invalid configuration for {0:?} mode: {1}")]
    InvalidConfig(Mode, String),
    /// No interpreter could be resolved.
    #[error(transparent)]
    Environment(#[from] EnvError),
    /// The interpreter cannot run workers.
    #[error("the Python environment cannot run DSPex workers:\n{0}")]
    EnvironmentCheck(Box<EnvironmentReport>),
    /// The tree did not start.
    #[error("could not start the supervision tree: {0}")]
    Start(String),
}

/// A snapshot of the whole tree.
#[derive(Debug, Clone, PartialEq)]
pub struct ConditionalStatus {
    /// The mode chosen at start.
    pub mode: Mode,
    /// `None` while running; the subtree's cause once it gave up.
    pub failed: Option<String>,
    /// The environment check done at start (absent in `Disabled` mode).
    pub environment: Option<EnvironmentReport>,
    /// The pool's status (its one worker in `Single` mode; absent when
    /// `Disabled`).
    pub pool: Option<PoolStatus>,
}

/// The root supervisor. See the module docs.
#[derive(Debug, Clone)]
pub struct ConditionalSupervisor {
    mode: Mode,
    root: SupervisorHandle,
    pool: Option<Pool>,
    environment: Option<EnvironmentReport>,
}

impl ConditionalSupervisor {
    /// Checks the environment (unless `Disabled`) and starts the subtree the
    /// configuration selects.
    ///
    /// # Cancel safety
    /// Not cancel safe once the tree has started (as [`Pool::start`]).
    ///
    /// # Errors
    /// [`ConditionalError::InvalidConfig`] for a single mode with more than
    /// one worker; [`ConditionalError::Environment`] or
    /// [`ConditionalError::EnvironmentCheck`] (with the report) when Python
    /// cannot run workers; [`ConditionalError::Start`].
    pub async fn start(config: TreeConfig) -> Result<Self, ConditionalError> {
        let mode = config.mode();
        let options = SupervisorOptions {
            // The subtree has its own restart budget; when it gives up, so
            // does the root, and stays up to report why.
            intensity: RestartIntensity {
                max_restarts: 0,
                within: Duration::from_secs(1),
            },
            on_give_up: OnGiveUp::Remain,
            ..SupervisorOptions::default()
        };
        let python_config = match &config {
            TreeConfig::Disabled => {
                let root = Supervisor::new(options)
                    .spawn()
                    .await
                    .map_err(|e| ConditionalError::Start(e.to_string()))?;
                return Ok(Self {
                    mode,
                    root,
                    pool: None,
                    environment: None,
                });
            }
            TreeConfig::Single(pool) if pool.size != 1 || pool.max_overflow != 0 => {
                return Err(ConditionalError::InvalidConfig(
                    mode,
                    format!(
                        "single mode runs exactly one worker (size {}, max_overflow {}); use \
                         PoolConfig::single or pool mode",
                        pool.size, pool.max_overflow
                    ),
                ));
            }
            TreeConfig::Single(pool) | TreeConfig::Pool(pool) => pool.python.clone(),
        };
        let python = PythonEnv::resolve_async(python_config).await?;
        let report = check_environment(&python).await;
        if !report.is_ok() {
            return Err(ConditionalError::EnvironmentCheck(Box::new(report)));
        }
        let started: Arc<Mutex<Option<Pool>>> = Arc::default();
        let slot = Arc::clone(&started);
        let child = ChildSpec::new(mode_name(mode), move |parent| {
            let config = config.clone();
            let python = python.clone();
            let slot = Arc::clone(&slot);
            async move {
                let (TreeConfig::Single(config) | TreeConfig::Pool(config)) = config else {
                    return Err(StartError::new("disabled"));
                };
                let pool = Pool::start_linked(config, python, Some(parent))
                    .await
                    .map_err(StartError::from_error)?;
                let cell = pool.supervisor().cell().clone();
                *slot
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(pool);
                Ok(cell)
            }
        })
        .shutdown(Duration::from_secs(60));
        let root = Supervisor::new(options)
            .child(child)
            .spawn()
            .await
            .map_err(|e| ConditionalError::Start(e.to_string()))?;
        let pool = started
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        Ok(Self {
            mode,
            root,
            pool,
            environment: Some(report),
        })
    }

    /// The mode chosen at start.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The pool (of one worker in `Single` mode; `None` when `Disabled`).
    pub fn pool(&self) -> Option<&Pool> {
        self.pool.as_ref()
    }

    /// The root supervisor, for its status and events.
    pub fn supervisor(&self) -> &SupervisorHandle {
        &self.root
    }

    /// The pool to call, or why there is none.
    ///
    /// # Errors
    /// [`PoolError::Unavailable`] in `Disabled` mode, or after the tree gave
    /// up.
    pub fn serving_pool(&self) -> Result<&Pool, PoolError> {
        if let SupervisorState::Failed(cause) = self.root.status().state {
            return Err(PoolError::Unavailable {
                cause: cause.to_string(),
                retry_in: None,
            });
        }
        self.pool.as_ref().ok_or_else(|| PoolError::Unavailable {
            cause: "DSPex runs in Disabled mode (set by the configuration): no Python workers"
                .into(),
            retry_in: None,
        })
    }

    /// Why the tree serves nothing any more, once it has given up.
    pub fn failure(&self) -> Option<String> {
        if let SupervisorState::Failed(cause) = self.root.status().state {
            return Some(cause.to_string());
        }
        match self.pool.as_ref().map(|p| p.status().state) {
            Some(PoolState::Failed(cause)) => Some(cause),
            _ => None,
        }
    }

    /// A snapshot of the tree. Never waits on an actor.
    pub fn status(&self) -> ConditionalStatus {
        ConditionalStatus {
            mode: self.mode,
            failed: self.failure(),
            environment: self.environment.clone(),
            pool: self.pool.as_ref().map(Pool::status),
        }
    }

    /// Shuts the whole tree down gracefully: the pool stops admitting and
    /// lets the requests in flight finish (up to `grace`), then the tree
    /// stops in order (within `stop_timeout`, each worker with its own
    /// EOF → SIGTERM → SIGKILL), and no worker process is left — stragglers
    /// are killed. Returns how many stragglers there were.
    ///
    /// # Cancel safety
    /// The shutdown proceeds if the future is dropped after the drain.
    pub async fn shutdown(&self, grace: Duration, stop_timeout: Duration) -> usize {
        if let Some(pool) = &self.pool
            && !pool.drain(grace).await
        {
            tracing::warn!(
                ?grace,
                "shutdown: requests still in flight after the grace; stopping anyway"
            );
        }
        self.root.stop(stop_timeout).await;
        if let Some(pool) = &self.pool {
            pool.stop_spawner().await;
        }
        self.pool
            .as_ref()
            .map_or(0, |pool| crate::context::kill_stragglers(pool.run_tag()))
    }
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Disabled => "disabled",
        Mode::Single => "bridge",
        Mode::Pool => "pool",
    }
}

/// The facts the check script prints.
#[derive(Debug, Deserialize)]
struct Facts {
    python: String,
    dspy: Option<String>,
    msgpack: Option<String>,
    dspy_importable: bool,
}

const CHECK_SCRIPT: &str = r#"
import importlib.metadata as m, importlib.util as u, json, platform
def version(name):
    try:
        return m.version(name)
    except m.PackageNotFoundError:
        return None
print(json.dumps({"python": platform.python_version(), "dspy": version("dspy"),
                  "msgpack": version("msgpack"),
                  "dspy_importable": u.find_spec("dspy") is not None}))
"#;

/// Runs the interpreter once to see what it has (about 30 ms; DSPy is found,
/// not imported).
pub async fn check_environment(python: &PythonEnv) -> EnvironmentReport {
    let mut report = EnvironmentReport {
        interpreter: python.interpreter.clone(),
        source: python.source,
        python: None,
        dspy: None,
        msgpack: None,
        problems: Vec::new(),
    };
    let output = tokio::process::Command::from(OsCommand::new(&python.interpreter))
        .arg("-c")
        .arg(CHECK_SCRIPT)
        .env("PYTHONPATH", python.python_path())
        .kill_on_drop(true)
        .output()
        .await;
    let output = match output {
        Ok(output) => output,
        Err(error) => {
            report.problems.push(format!(
                "cannot run {}: {error}; install Python 3.11+ or set DSPEX_PYTHON",
                python.interpreter.display()
            ));
            return report;
        }
    };
    let facts: Option<Facts> = serde_json::from_slice(&output.stdout).ok();
    let Some(facts) = facts.filter(|_| output.status.success()) else {
        report.problems.push(format!(
            "{} failed the environment check ({}): {}",
            python.interpreter.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
        return report;
    };
    report.python = Some(facts.python);
    report.dspy = facts.dspy;
    report.msgpack = facts.msgpack;
    if !facts.dspy_importable || report.dspy.is_none() {
        report
            .problems
            .push("dspy is not installed for this interpreter (pip install dspy)".into());
    }
    if report.msgpack.is_none() {
        report
            .problems
            .push("msgpack is not installed for this interpreter (pip install msgpack)".into());
    }
    report
}
