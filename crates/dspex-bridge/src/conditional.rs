//! [`ConditionalSupervisor`]: the root of a DSPex tree. It decides **once**,
//! at start, which subtree runs, from an explicit [`Mode`] and a check of the
//! Python environment, and never switches afterwards.
//!
//! ```text
//! ConditionalSupervisor (one_for_one, no restarts of its subtree, Remain)
//! ├─ Disabled: no children; every call fails with BridgeError::Unavailable
//! └─ Single:   BridgeSupervisor (one_for_one) ─ Worker, HealthMonitor
//! ```
//!
//! When the subtree gives up (its own restart budget exhausted), the
//! conditional supervisor enters `Failed` with the subtree's cause and stays
//! up to report it: an embedding service observes the failure through
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

use crate::single::{Bridge, BridgeConfig, BridgeError, BridgeStatus};
use crate::{EnvError, PythonEnv};

/// Which subtree to run. There is no default: the configuration says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No Python at all; calls fail with a clear error.
    Disabled,
    /// One worker under a bridge supervisor.
    Single,
    /// A pool of workers (not available in this version).
    Pool,
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
    /// The mode is not available in this version.
    #[error(
        "mode {0:?} is not available in this version of DSPex; use Mode::Single or Mode::Disabled"
    )]
    ModeUnavailable(Mode),
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
    /// The single bridge's status, in `Single` mode.
    pub bridge: Option<BridgeStatus>,
}

/// The root supervisor. See the module docs.
#[derive(Debug, Clone)]
pub struct ConditionalSupervisor {
    mode: Mode,
    root: SupervisorHandle,
    bridge: Option<Bridge>,
    environment: Option<EnvironmentReport>,
}

impl ConditionalSupervisor {
    /// Checks the environment (unless `Disabled`) and starts the subtree for
    /// `mode`.
    ///
    /// # Cancel safety
    /// Not cancel safe once the tree has started (as [`Bridge::start`]).
    ///
    /// # Errors
    /// [`ConditionalError::ModeUnavailable`] for `Pool`;
    /// [`ConditionalError::Environment`] or
    /// [`ConditionalError::EnvironmentCheck`] (with the report) when Python
    /// cannot run workers; [`ConditionalError::Start`].
    pub async fn start(mode: Mode, config: BridgeConfig) -> Result<Self, ConditionalError> {
        if mode == Mode::Pool {
            return Err(ConditionalError::ModeUnavailable(mode));
        }
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
        if mode == Mode::Disabled {
            let root = Supervisor::new(options)
                .spawn()
                .await
                .map_err(|e| ConditionalError::Start(e.to_string()))?;
            return Ok(Self {
                mode,
                root,
                bridge: None,
                environment: None,
            });
        }

        let python = PythonEnv::resolve_async(config.python.clone()).await?;
        let report = check_environment(&python).await;
        if !report.is_ok() {
            return Err(ConditionalError::EnvironmentCheck(Box::new(report)));
        }
        let slot: Arc<Mutex<Option<Bridge>>> = Arc::default();
        let started = Arc::clone(&slot);
        let root = Supervisor::new(options)
            .child(
                ChildSpec::new("bridge", move |parent| {
                    let config = config.clone();
                    let python = python.clone();
                    let started = Arc::clone(&started);
                    async move {
                        let bridge =
                            Bridge::start_with(config, python, Some(parent), OnGiveUp::Escalate)
                                .await
                                .map_err(StartError::from_error)?;
                        let cell = bridge.supervisor().cell().clone();
                        *started
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(bridge);
                        Ok(cell)
                    }
                })
                .shutdown(Duration::from_secs(30)),
            )
            .spawn()
            .await
            .map_err(|e| ConditionalError::Start(e.to_string()))?;
        let bridge = slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        Ok(Self {
            mode,
            root,
            bridge,
            environment: Some(report),
        })
    }

    /// The mode chosen at start.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The single bridge, in `Single` mode.
    pub fn bridge(&self) -> Option<&Bridge> {
        self.bridge.as_ref()
    }

    /// The root supervisor, for its status and events.
    pub fn supervisor(&self) -> &SupervisorHandle {
        &self.root
    }

    /// The bridge to call, or why there is none.
    ///
    /// # Errors
    /// [`BridgeError::Unavailable`] in `Disabled` mode or after the tree gave up.
    pub fn serving_bridge(&self) -> Result<&Bridge, BridgeError> {
        if let SupervisorState::Failed(cause) = self.root.status().state {
            return Err(BridgeError::Unavailable {
                cause: cause.to_string(),
            });
        }
        self.bridge
            .as_ref()
            .ok_or_else(|| BridgeError::Unavailable {
                cause: "DSPex runs in Disabled mode (set by the configuration)".into(),
            })
    }

    /// A snapshot of the tree. Never waits on an actor.
    pub fn status(&self) -> ConditionalStatus {
        let failed = match self.root.status().state {
            SupervisorState::Failed(cause) => Some(cause.to_string()),
            _ => None,
        };
        ConditionalStatus {
            mode: self.mode,
            failed,
            environment: self.environment.clone(),
            bridge: self.bridge.as_ref().map(Bridge::status),
        }
    }

    /// Stops the whole tree in order and verifies no worker is left.
    ///
    /// # Cancel safety
    /// The shutdown proceeds if the future is dropped.
    pub async fn shutdown(&self, timeout: Duration) -> usize {
        self.root.stop(timeout).await;
        match &self.bridge {
            Some(bridge) => bridge.shutdown(timeout).await,
            None => 0,
        }
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
                "cannot run {}: {error}; install Python 3.10+ or set DSPEX_PYTHON",
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
