//! What every worker of one tree shares, and how a worker becomes a
//! supervised child.

use std::ffi::OsString;
use std::sync::Arc;
use std::time::Duration;

use dspex_supervision::{ChildSpec, StartError};
use tokio::sync::broadcast;

use crate::PythonEnv;
use crate::pool::SpawnMode;
use crate::process::{
    DirectSpawner, FdLedger, RunTag, SpawnStrategy, Watchdog, WorkerCommand, ZygoteSpawner,
};
use crate::worker::{WorkerConfig, WorkerEvent, WorkerHandle};

/// What a tree is started with (the parts the single bridge and the pool
/// share).
pub(crate) struct TreeSpec<'a> {
    pub(crate) name: &'a str,
    pub(crate) python: PythonEnv,
    pub(crate) spawner: Option<&'a Arc<dyn SpawnStrategy>>,
    pub(crate) spawn: &'a SpawnMode,
    pub(crate) sweep_orphans: bool,
    pub(crate) worker: WorkerConfig,
    pub(crate) env: &'a [(OsString, OsString)],
    pub(crate) args: &'a [OsString],
    pub(crate) event_capacity: usize,
}

/// Kills whatever still carries `tag` after its tree stopped (G9); returns
/// how many there were.
pub(crate) fn kill_stragglers(tag: &RunTag) -> usize {
    let stragglers = crate::process::tagged_processes(tag);
    for &pid in &stragglers {
        tracing::error!(pid, "a worker process outlived its tree; killing it");
        let _ = crate::process::kill_process(pid);
    }
    stragglers.len()
}

/// What every worker of one tree shares.
#[derive(Debug)]
pub(crate) struct TreeContext {
    pub(crate) python: PythonEnv,
    pub(crate) spawner: Arc<dyn SpawnStrategy>,
    pub(crate) run_tag: RunTag,
    pub(crate) worker: WorkerConfig,
    pub(crate) env: Vec<(OsString, OsString)>,
    pub(crate) args: Vec<OsString>,
    pub(crate) events: broadcast::Sender<WorkerEvent>,
    /// The pipes the tree opened.
    pub(crate) fds: FdLedger,
    /// Kills the tree's processes once the host (or this context) is gone.
    pub(crate) _watchdog: Option<Watchdog>,
}

impl TreeContext {
    /// Prepares a tree: sweeps orphans of dead hosts (if asked), starts
    /// the spawner (unless one is given) and the watchdog of a fresh run tag.
    ///
    /// The error says which part could not start.
    pub(crate) fn start(spec: TreeSpec<'_>) -> Result<Self, String> {
        if spec.sweep_orphans {
            let killed = crate::process::sweep_orphans();
            if killed > 0 {
                tracing::warn!(killed, "killed orphaned workers of dead hosts");
            }
        }
        let thread = |e: std::io::Error| format!("spawner thread: {e}");
        let spawner: Arc<dyn SpawnStrategy> = match (spec.spawner, spec.spawn) {
            (Some(spawner), _) => Arc::clone(spawner),
            (None, SpawnMode::Direct) => Arc::new(DirectSpawner::new(spec.name).map_err(thread)?),
            (None, SpawnMode::Zygote(options)) => {
                Arc::new(ZygoteSpawner::new(spec.name, options.clone()).map_err(thread)?)
            }
        };
        let run_tag = RunTag::new();
        let fds = FdLedger::default();
        let watchdog = Watchdog::start(&run_tag, &fds).map_err(|e| format!("watchdog: {e}"))?;
        Ok(Self {
            python: spec.python,
            spawner,
            run_tag,
            worker: spec.worker,
            env: spec.env.to_vec(),
            args: spec.args.to_vec(),
            events: broadcast::channel(spec.event_capacity).0,
            fds,
            _watchdog: Some(watchdog),
        })
    }

    pub(crate) fn command(&self, worker_id: &str) -> WorkerCommand {
        WorkerCommand {
            interpreter: self.python.interpreter.clone(),
            python_path: self.python.python_path(),
            worker_id: worker_id.to_owned(),
            args: self.args.clone(),
            env: self
                .python
                .worker_env()
                .into_iter()
                .chain(self.env.iter().cloned())
                .collect(),
            run_tag: self.run_tag.clone(),
            fds: self.fds.clone(),
            inherit_fds: Vec::new(),
        }
    }

    /// A permanent child that starts worker `worker_id` and hands its handle
    /// to `on_start` at every (re)start.
    pub(crate) fn worker_child(
        self: &Arc<Self>,
        worker_id: String,
        on_start: Arc<dyn Fn(WorkerHandle) + Send + Sync>,
    ) -> ChildSpec {
        let grace = self.worker.stop_grace;
        let ctx = Arc::clone(self);
        ChildSpec::new(worker_id.clone(), move |supervisor| {
            let ctx = Arc::clone(&ctx);
            let on_start = Arc::clone(&on_start);
            let worker_id = worker_id.clone();
            async move {
                let handle = WorkerHandle::spawn(
                    ctx.command(&worker_id),
                    Arc::clone(&ctx.spawner),
                    ctx.worker,
                    Some(ctx.events.clone()),
                    Some(supervisor),
                )
                .await
                .map_err(StartError::from_error)?;
                let cell = handle.actor().get_cell();
                on_start(handle);
                Ok(cell)
            }
        })
        // The worker escalates EOF → SIGTERM → SIGKILL itself; give it that
        // long before the supervisor kills the actor.
        .shutdown(grace.after_eof + grace.after_term + Duration::from_millis(500))
    }
}
