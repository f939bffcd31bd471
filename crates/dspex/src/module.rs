//! [`Module`]: the DSPy module a program runs, with its own arguments.

use std::fmt;

use dspex_protocol::{Map, Value};
use serde::Serialize;
use serde_json::json;

use crate::error::{Error, Result};
use crate::tool::{Handlers, REWARD, Reward, Tool};

/// The DSPy module a program runs.
///
/// | module | DSPy | what it adds |
/// |---|---|---|
/// | [`Predict`](Self::Predict) | `dspy.Predict` | one LM call |
/// | [`ChainOfThought`](Self::ChainOfThought) | `dspy.ChainOfThought` | a `reasoning` output first |
/// | [`React`](Self::React) | `dspy.ReAct` | an agent loop over [`Tool`]s written in Rust; a `trajectory` output |
/// | [`BestOfN`](Self::BestOfN) | `dspy.BestOfN` | `n` attempts scored by a [`Reward`] in Rust; the best is kept |
/// | [`Refine`](Self::Refine) | `dspy.Refine` | as `BestOfN`, with feedback between attempts |
/// | [`MultiChainComparison`](Self::MultiChainComparison) | `dspy.MultiChainComparison` | compares `m` reasoning attempts |
/// | [`Python`](Self::Python) | the service's own `dspy.Module` | imported from the configured project |
///
/// `program_of_thought` and `codeact` run generated code in Deno, which
/// the workers do not have: a worker refuses them with a clear error.
///
/// ```
/// use dspex::{Module, Reward};
///
/// let cot = Module::ChainOfThought;
/// let best = Module::best_of_n(3, Reward::new(|_, _| 1.0)).threshold(0.5);
/// let mine = Module::python("myapp.rag:RAG").kwargs(serde_json::json!({"k": 3}));
/// assert_eq!(Module::from(best).name(), "best_of_n");
/// # let _ = (cot, mine);
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub enum Module {
    /// `dspy.Predict`: one LM call.
    #[default]
    Predict,
    /// `dspy.ChainOfThought`: reasons step by step first; its prediction
    /// carries a `reasoning` output before the declared ones.
    ChainOfThought,
    /// `dspy.ReAct` over tools written in Rust.
    React(React),
    /// `dspy.BestOfN`.
    BestOfN(BestOfN),
    /// `dspy.Refine`.
    Refine(Refine),
    /// `dspy.MultiChainComparison` of `m` attempts.
    MultiChainComparison(MultiChainComparison),
    /// A `dspy.Module` of the service's own Python project.
    Python(PythonModule),
    /// `dspy.ProgramOfThought` (needs Deno: refused by the workers).
    ProgramOfThought,
    /// `dspy.CodeAct` (needs Deno: refused by the workers).
    CodeAct,
}

impl Module {
    /// `dspy.ReAct` over `tools` (at most 10 iterations unless
    /// [`React::max_iters`] says otherwise).
    pub fn react(tools: impl IntoIterator<Item = Tool>) -> React {
        React {
            tools: tools.into_iter().collect(),
            max_iters: 10,
        }
    }

    /// `dspy.BestOfN`: up to `n` attempts, each scored by `reward`; stops at
    /// the first reaching the threshold (default 1.0).
    pub fn best_of_n(n: u32, reward: Reward) -> BestOfN {
        BestOfN {
            n,
            reward,
            threshold: 1.0,
            base: Base::Predict,
        }
    }

    /// `dspy.Refine`: as [`Module::best_of_n`], and after each failed
    /// attempt DSPy writes advice for the next.
    pub fn refine(n: u32, reward: Reward) -> Refine {
        Refine {
            n,
            reward,
            threshold: 1.0,
            fail_count: None,
            base: Base::Predict,
        }
    }

    /// `dspy.MultiChainComparison` of `m` reasoning attempts.
    pub fn multi_chain_comparison(m: u32) -> MultiChainComparison {
        MultiChainComparison { m }
    }

    /// A module of the configured Python project (`[python] project`):
    /// `path` is `package.module:Class`, a `dspy.Module` subclass (or a
    /// function returning one), built with [`PythonModule::kwargs`].
    pub fn python(path: impl Into<String>) -> PythonModule {
        PythonModule {
            path: path.into(),
            kwargs: Ok(Map::new()),
        }
    }

    /// The module's name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Predict => "predict",
            Self::ChainOfThought => "chain_of_thought",
            Self::React(_) => "react",
            Self::BestOfN(_) => "best_of_n",
            Self::Refine(_) => "refine",
            Self::MultiChainComparison(_) => "multi_chain_comparison",
            Self::Python(_) => "python",
            Self::ProgramOfThought => "program_of_thought",
            Self::CodeAct => "codeact",
        }
    }

    /// The outputs the module adds to the signature's own.
    pub fn added_outputs(&self) -> &'static [&'static str] {
        match self {
            Self::ChainOfThought => &["reasoning"],
            Self::MultiChainComparison(_) => &["rationale"],
            Self::React(_) => &["trajectory", "reasoning"],
            Self::BestOfN(b) if b.base == Base::ChainOfThought => &["reasoning"],
            Self::Refine(r) if r.base == Base::ChainOfThought => &["reasoning"],
            _ => &[],
        }
    }

    /// Checks the module and returns what the worker is told
    /// (`module_args`) and the handlers of its callbacks.
    pub(crate) fn build(&self) -> Result<(Map<String, Value>, Handlers)> {
        let bad = |message: String| Err(Error::validation("module", None, message));
        let (args, handlers) = match self {
            Self::Predict | Self::ChainOfThought | Self::ProgramOfThought | Self::CodeAct => {
                (Value::Object(Map::new()), Handlers::default())
            }
            Self::React(react) => {
                let mut names = std::collections::HashSet::new();
                for tool in &react.tools {
                    tool.validate()?;
                    if !names.insert(tool.name()) {
                        return bad(format!("two tools are named `{}`", tool.name()));
                    }
                }
                if react.max_iters == 0 || react.max_iters > 100 {
                    return bad(format!(
                        "react: max_iters must be 1-100, not {}",
                        react.max_iters
                    ));
                }
                let tools: Vec<Value> = react.tools.iter().map(Tool::spec).collect();
                (
                    json!({"tools": tools, "max_iters": react.max_iters}),
                    Handlers::new(&react.tools, None),
                )
            }
            Self::BestOfN(best) => {
                check_attempts(best.n, best.threshold)?;
                (
                    json!({"n": best.n, "threshold": best.threshold, "reward": REWARD, "base": best.base.name()}),
                    Handlers::new(&[], Some(&best.reward)),
                )
            }
            Self::Refine(refine) => {
                check_attempts(refine.n, refine.threshold)?;
                let mut args = json!({"n": refine.n, "threshold": refine.threshold, "reward": REWARD, "base": refine.base.name()});
                if let Some(fail_count) = refine.fail_count {
                    args["fail_count"] = json!(fail_count);
                }
                (args, Handlers::new(&[], Some(&refine.reward)))
            }
            Self::MultiChainComparison(mcc) => {
                if !(1..=16).contains(&mcc.m) {
                    return bad(format!(
                        "multi_chain_comparison: m must be 1-16, not {}",
                        mcc.m
                    ));
                }
                (json!({"m": mcc.m}), Handlers::default())
            }
            Self::Python(python) => {
                python.validate()?;
                let kwargs = python.kwargs.clone().unwrap_or_default();
                (
                    json!({"path": python.path, "kwargs": kwargs}),
                    Handlers::default(),
                )
            }
        };
        let Value::Object(args) = args else {
            unreachable!("module arguments are built as maps")
        };
        Ok((args, handlers))
    }
}

fn check_attempts(n: u32, threshold: f64) -> Result<()> {
    if !(1..=32).contains(&n) {
        return Err(Error::validation(
            "module",
            None,
            format!("n must be 1-32 attempts, not {n}"),
        ));
    }
    if !threshold.is_finite() {
        return Err(Error::validation(
            "module",
            None,
            format!("the threshold must be a finite number, not {threshold}"),
        ));
    }
    Ok(())
}

impl fmt::Display for Module {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Module {
    type Err = Error;

    /// The modules that need nothing from Rust: `predict`,
    /// `chain_of_thought` (`cot`), `react` (with no tools),
    /// `multi_chain_comparison` (`mcc`, m = 3), `program_of_thought`,
    /// `codeact`, and `python:package.module:Class`. `best_of_n` and
    /// `refine` need a [`Reward`]: build them with [`Module::best_of_n`] and
    /// [`Module::refine`].
    fn from_str(name: &str) -> Result<Self> {
        let name = name.trim();
        if let Some(path) = name.strip_prefix("python:") {
            let module = Module::python(path);
            module.validate()?;
            return Ok(module.into());
        }
        match name.to_ascii_lowercase().as_str() {
            "predict" => Ok(Self::Predict),
            "chain_of_thought" | "chainofthought" | "cot" => Ok(Self::ChainOfThought),
            "react" => Ok(Module::react([]).into()),
            "multi_chain_comparison" | "mcc" => Ok(Module::multi_chain_comparison(3).into()),
            "program_of_thought" | "pot" => Ok(Self::ProgramOfThought),
            "codeact" => Ok(Self::CodeAct),
            "best_of_n" | "refine" => Err(Error::validation(
                "module",
                None,
                format!("{name} needs a reward function; build it with Module::{name}(n, reward)"),
            )),
            other => Err(Error::validation(
                "module",
                None,
                format!(
                    "unknown module {other:?}; use predict, chain_of_thought (cot), react, \
                     best_of_n, refine, multi_chain_comparison (mcc) or python:package.module:Class"
                ),
            )),
        }
    }
}

/// The module `best_of_n` and `refine` run for each attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Base {
    /// `dspy.Predict`.
    #[default]
    Predict,
    /// `dspy.ChainOfThought`.
    ChainOfThought,
}

impl Base {
    fn name(self) -> &'static str {
        match self {
            Self::Predict => "predict",
            Self::ChainOfThought => "chain_of_thought",
        }
    }
}

/// `dspy.ReAct` over Rust tools: see [`Module::react`].
#[derive(Debug, Clone, PartialEq)]
pub struct React {
    tools: Vec<Tool>,
    max_iters: u32,
}

impl React {
    /// Bounds the agent loop (1-100; default 10).
    #[must_use]
    pub fn max_iters(mut self, max_iters: u32) -> Self {
        self.max_iters = max_iters;
        self
    }

    /// Adds a tool.
    #[must_use]
    pub fn tool(mut self, tool: Tool) -> Self {
        self.tools.push(tool);
        self
    }

    /// The tools.
    pub fn tools(&self) -> &[Tool] {
        &self.tools
    }
}

/// `dspy.BestOfN`: see [`Module::best_of_n`].
#[derive(Debug, Clone, PartialEq)]
pub struct BestOfN {
    n: u32,
    reward: Reward,
    threshold: f64,
    base: Base,
}

impl BestOfN {
    /// The score at which an attempt is good enough (default 1.0).
    #[must_use]
    pub fn threshold(mut self, threshold: f64) -> Self {
        self.threshold = threshold;
        self
    }

    /// The module each attempt runs (default `predict`).
    #[must_use]
    pub fn base(mut self, base: Base) -> Self {
        self.base = base;
        self
    }
}

/// `dspy.Refine`: see [`Module::refine`].
#[derive(Debug, Clone, PartialEq)]
pub struct Refine {
    n: u32,
    reward: Reward,
    threshold: f64,
    fail_count: Option<u32>,
    base: Base,
}

impl Refine {
    /// The score at which an attempt is good enough (default 1.0).
    #[must_use]
    pub fn threshold(mut self, threshold: f64) -> Self {
        self.threshold = threshold;
        self
    }

    /// How many attempts may fail with an error before the error is
    /// raised (DSPy's default: `n`).
    #[must_use]
    pub fn fail_count(mut self, fail_count: u32) -> Self {
        self.fail_count = Some(fail_count);
        self
    }

    /// The module each attempt runs (default `predict`).
    #[must_use]
    pub fn base(mut self, base: Base) -> Self {
        self.base = base;
        self
    }
}

/// `dspy.MultiChainComparison`: see [`Module::multi_chain_comparison`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MultiChainComparison {
    /// How many reasoning attempts are compared (1-16).
    pub m: u32,
}

/// A module of the service's Python project: see [`Module::python`].
#[derive(Debug, Clone, PartialEq)]
pub struct PythonModule {
    path: String,
    /// The keyword arguments, or why what was given is not a map.
    kwargs: std::result::Result<Map<String, Value>, String>,
}

impl PythonModule {
    /// The constructor's keyword arguments (a map; anything else is
    /// refused when the program is created).
    #[must_use]
    pub fn kwargs(mut self, kwargs: impl Serialize) -> Self {
        self.kwargs = match serde_json::to_value(kwargs) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(other) => Err(format!("not {other}")),
            Err(error) => Err(error.to_string()),
        };
        self
    }

    /// `package.module:Class`.
    pub fn path(&self) -> &str {
        &self.path
    }

    fn validate(&self) -> Result<()> {
        let bad = |message: String| Err(Error::validation("module", None, message));
        if let Err(why) = &self.kwargs {
            return bad(format!(
                "python: the constructor's kwargs must be a map of names to values ({why})"
            ));
        }
        let valid = self.path.split_once(':').is_some_and(|(module, attr)| {
            module.split('.').all(is_identifier) && is_identifier(attr)
        });
        if !valid {
            return bad(format!(
                "python: {:?} is not `package.module:Class`",
                self.path
            ));
        }
        Ok(())
    }
}

/// Whether `word` is an ASCII identifier (a letter or `_`, then letters,
/// digits and `_`): what a tool, a Python module or attribute may be named.
pub(crate) fn is_identifier(word: &str) -> bool {
    let mut chars = word.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

macro_rules! into_module {
    ($($t:ident),+) => {
        $(impl From<$t> for Module {
            fn from(module: $t) -> Self {
                Self::$t(module)
            }
        })+
    };
}

into_module!(React, BestOfN, Refine, MultiChainComparison);

impl From<PythonModule> for Module {
    fn from(module: PythonModule) -> Self {
        Self::Python(module)
    }
}
