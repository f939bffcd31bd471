//! What a request to the pool carries: checkout options, the session,
//! per-request options, the [`Run`] of a program and its [`ProgramVersion`].

use std::sync::Arc;
use std::time::Duration;

use dspex_protocol::{
    BatchArgs, Command, EvaluateArgs, ExecuteArgs, LmConfig, Map, OptimizeArgs, ProgramDefinition,
    ProgramStateArgs, Value,
};

use crate::worker::Hooks;

/// How to check a worker out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckoutOptions {
    /// Overrides the pool's checkout timeout.
    pub timeout: Option<Duration>,
    /// The session, for affinity.
    pub session: Option<Session>,
}

/// A session: affinity to one worker; a stateful session runs only there.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Session {
    /// The session id.
    pub id: String,
    /// Whether the session keeps state on its worker (then it never runs
    /// elsewhere, and fails with [`PoolError::SessionLost`] if that worker dies).
    pub stateful: bool,
}

impl Session {
    /// A session that prefers its worker but may move.
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            stateful: false,
        }
    }

    /// A session pinned to its worker.
    pub fn stateful(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            stateful: true,
        }
    }
}

/// Per-request options of [`Pool::call`] and [`Pool::execute`].
#[derive(Debug, Clone, Default)]
pub struct RequestOptions {
    /// The checkout options.
    pub checkout: CheckoutOptions,
    /// The request's whole time budget, waiting for a worker included
    /// (default: the worker's `request_timeout`). The worker is given what
    /// is left of it when the request is sent.
    pub timeout: Option<Duration>,
    /// An LM for this request only (`execute` only). A worker registers it
    /// once (by [`LmConfig::id`]); later requests only name it.
    pub lm: Option<LmConfig>,
    /// The request's callbacks and events.
    pub hooks: Hooks,
}

/// What [`Pool::execute`] runs with a program: one call, a batch, an
/// evaluation, an optimization, or the dump of its state. The pool fills in
/// the program (`program_id`, and the definition when the worker lacks it)
/// and the LM override's id.
#[derive(Debug, Clone, PartialEq)]
pub enum Run {
    /// `execute_program`: one map of inputs.
    One(ExecuteArgs),
    /// `execute_batch`: many, run with DSPy's own parallelism.
    Batch(BatchArgs),
    /// `evaluate`: a devset scored with a metric.
    Evaluate(EvaluateArgs),
    /// `optimize`: the program compiled by one of DSPy's optimizers.
    Optimize(OptimizeArgs),
    /// `get_program_state`: the program's state as DSPy dumps it.
    State(ProgramStateArgs),
}

impl Run {
    /// One call on `inputs`.
    pub fn once(inputs: Map<String, Value>) -> Self {
        Self::One(ExecuteArgs {
            inputs,
            ..ExecuteArgs::default()
        })
    }

    /// The command for `program`, with its definition or without.
    pub fn command(
        &self,
        program: &ProgramVersion,
        with_definition: bool,
        lm_id: Option<&str>,
    ) -> Command {
        let program_id = program.id().to_owned();
        let definition = with_definition.then(|| (*program.definition).clone());
        let lm_id = lm_id.map(str::to_owned);
        match self {
            Self::One(args) => Command::ExecuteProgram(ExecuteArgs {
                program_id,
                program: definition,
                lm_id,
                lm: None,
                ..args.clone()
            }),
            Self::Batch(args) => Command::ExecuteBatch(BatchArgs {
                program_id,
                program: definition,
                lm_id,
                ..args.clone()
            }),
            Self::Evaluate(args) => Command::Evaluate(EvaluateArgs {
                program_id,
                program: definition,
                lm_id,
                ..args.clone()
            }),
            Self::Optimize(args) => Command::Optimize(OptimizeArgs {
                program_id,
                program: definition,
                lm_id,
                ..args.clone()
            }),
            Self::State(_) => Command::GetProgramState(ProgramStateArgs {
                program_id,
                program: definition,
            }),
        }
    }
}

/// One version of a program: its definition and [`ProgramDefinition::hash`].
/// A worker that has loaded this hash has this exact definition.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgramVersion {
    /// The definition sent to workers that lack it.
    pub definition: Arc<ProgramDefinition>,
    /// Its hash.
    pub hash: String,
}

impl ProgramVersion {
    /// The version of `definition`.
    pub fn new(definition: ProgramDefinition) -> Self {
        Self::from_arc(Arc::new(definition))
    }

    /// The version of a shared definition.
    pub fn from_arc(definition: Arc<ProgramDefinition>) -> Self {
        let hash = definition.hash();
        Self { definition, hash }
    }

    /// The program id.
    pub fn id(&self) -> &str {
        &self.definition.program_id
    }
}
