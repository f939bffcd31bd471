//! The configuration file of `dspex serve`: DSPex's own keys (see
//! [`dspex::Config`]) plus a `[serve]` table and `[[programs]]`.
//!
//! ```toml
//! pool_size = 4
//!
//! [lm]
//! model = "dummy"
//!
//! [serve]
//! bind = "127.0.0.1:8080"
//!
//! [[programs]]
//! id = "qa"
//! signature = "question: str -> answer: str"
//! module = "chain_of_thought"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use dspex::config::LmSettings;
use dspex::{Config, Module, Secret};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ServeError;

/// `[serve]`: how the server listens and what it allows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeSettings {
    /// The address to listen on. Anything but a loopback address needs a
    /// token.
    pub bind: SocketAddr,
    /// Whether `POST /v1/programs` may create programs (built-in modules
    /// only: no import path ever comes from a request).
    pub allow_create: bool,
    /// The largest request body, in bytes.
    pub body_limit_bytes: usize,
    /// The most inputs one batch request may carry.
    pub max_batch: usize,
    /// The largest `timeout_ms` a request may ask for.
    pub max_timeout_ms: u64,
    /// The most programs the server holds (configured and created).
    pub max_programs: usize,
    /// How long a graceful stop keeps serving after `/readyz` turned 503
    /// and before it closes idle connections, in milliseconds: requests
    /// already on their way still land, and clients move off (every
    /// response meanwhile says `Connection: close`).
    pub drain_delay_ms: u64,
}

impl Default for ServeSettings {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            allow_create: false,
            body_limit_bytes: 1024 * 1024,
            max_batch: 256,
            max_timeout_ms: 300_000,
            max_programs: 256,
            drain_delay_ms: 500,
        }
    }
}

/// One `[[programs]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgramSpec {
    /// The program id (the `{id}` of its routes).
    pub id: String,
    /// Its signature, e.g. `"question: str -> answer: str"` (may be left
    /// out when `state` is a file DSPex saved: its signature is used).
    #[serde(default)]
    pub signature: Option<String>,
    /// Its module: `predict`, `chain_of_thought` (`cot`),
    /// `multi_chain_comparison` (`mcc`), or `python:package.module:Class`
    /// (from `[python] project`).
    #[serde(default = "default_module")]
    pub module: String,
    /// A `python:` module's constructor arguments.
    #[serde(default)]
    pub kwargs: Option<Value>,
    /// Instructions for the LM (replace the signature's).
    #[serde(default)]
    pub instructions: Option<String>,
    /// Few-shot examples, each a map of field values.
    #[serde(default)]
    pub demos: Vec<Map<String, Value>>,
    /// A compiled program saved in DSPy's JSON format (`dspex optimize
    /// --out`, or `program.save` in Python), relative to the file.
    #[serde(default)]
    pub state: Option<PathBuf>,
    /// The LM this program runs on (default: the instance's `[lm]`).
    #[serde(default)]
    pub lm: Option<LmSettings>,
}

fn default_module() -> String {
    "predict".into()
}

impl ProgramSpec {
    /// The module its `module` names.
    ///
    /// # Errors
    /// [`ServeError::Config`] for a module that needs Rust code (tools, a
    /// reward) or is unknown.
    pub fn build_module(&self) -> Result<Module, ServeError> {
        let module = module_named(&self.module).ok_or_else(|| {
            ServeError::Config(format!(
                "program {:?}: unknown module {:?}; use predict, chain_of_thought, \
                 multi_chain_comparison or python:package.module:Class",
                self.id, self.module
            ))
        })?;
        Ok(match (module, &self.kwargs) {
            (Module::Python(python), Some(kwargs)) => python.kwargs(kwargs.clone()).into(),
            (_, Some(_)) => {
                return Err(ServeError::Config(format!(
                    "program {:?}: kwargs are for python: modules",
                    self.id
                )));
            }
            (module, None) => module,
        })
    }
}

/// The built-in module a word names (`python:` paths too); `None` for
/// anything else. Requests may only name built-in ones.
pub(crate) fn module_named(word: &str) -> Option<Module> {
    Some(match word.trim() {
        "predict" => Module::Predict,
        "chain_of_thought" | "cot" => Module::ChainOfThought,
        "multi_chain_comparison" | "mcc" => Module::multi_chain_comparison(3).into(),
        word => Module::python(word.strip_prefix("python:")?.trim()).into(),
    })
}

/// A whole `dspex serve` configuration file.
#[derive(Debug, Clone)]
pub struct ServeFile {
    /// DSPex's own configuration (every key but `serve` and `programs`).
    pub dspex: Config,
    /// `[serve]`.
    pub serve: ServeSettings,
    /// `[[programs]]`.
    pub programs: Vec<ProgramSpec>,
    /// The bearer token, from `--token` or `DSPEX_SERVE_TOKEN` (never from
    /// the file).
    pub token: Option<Secret>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServeParts {
    #[serde(default)]
    serve: ServeSettings,
    #[serde(default)]
    programs: Vec<ProgramSpec>,
}

impl ServeFile {
    /// Parses the TOML form; relative paths (`state`, `[python] project`)
    /// are taken from `base`.
    ///
    /// # Errors
    /// [`ServeError::Config`] naming the bad key.
    pub fn from_toml(text: &str, base: Option<&Path>) -> Result<Self, ServeError> {
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| ServeError::Config(format!("in TOML: {e}")))?;
        let mut parts = toml::Table::new();
        for key in ["serve", "programs"] {
            if let Some(value) = table.remove(key) {
                parts.insert(key.to_owned(), value);
            }
        }
        let parts: ServeParts = parts
            .try_into()
            .map_err(|e: toml::de::Error| ServeError::Config(format!("in TOML: {e}")))?;
        let mut dspex: Config = table
            .try_into()
            .map_err(|e: toml::de::Error| ServeError::Config(format!("in TOML: {e}")))?;
        dspex
            .validate()
            .map_err(|e| ServeError::Config(e.to_string()))?;
        let mut programs = parts.programs;
        if let Some(base) = base {
            if let Some(project) = &mut dspex.python.project
                && project.is_relative()
            {
                *project = base.join(&*project);
            }
            for program in &mut programs {
                if let Some(state) = &mut program.state
                    && state.is_relative()
                {
                    *state = base.join(&*state);
                }
            }
        }
        let file = Self {
            dspex,
            serve: parts.serve,
            programs,
            token: None,
        };
        file.validate()?;
        Ok(file)
    }

    /// Reads and parses a file.
    ///
    /// # Errors
    /// [`ServeError::Config`] naming the file and the problem.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ServeError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ServeError::Config(format!("cannot read {}: {e}", path.display())))?;
        Self::from_toml(&text, path.parent()).map_err(|e| match e {
            ServeError::Config(message) => {
                ServeError::Config(format!("{}: {message}", path.display()))
            }
            other => other,
        })
    }

    /// Checks what parsing cannot: unique ids, known modules, limits.
    ///
    /// # Errors
    /// [`ServeError::Config`] naming the problem.
    pub fn validate(&self) -> Result<(), ServeError> {
        let bad = |message: String| Err(ServeError::Config(message));
        if self.serve.body_limit_bytes < 1024 {
            return bad("serve.body_limit_bytes: must be at least 1024".into());
        }
        if self.serve.max_batch == 0 {
            return bad("serve.max_batch: must be at least 1".into());
        }
        if self.programs.len() > self.serve.max_programs {
            return bad(format!(
                "{} programs are configured but serve.max_programs is {}",
                self.programs.len(),
                self.serve.max_programs
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for program in &self.programs {
            if !seen.insert(program.id.as_str()) {
                return bad(format!("program {:?} is configured twice", program.id));
            }
            program.build_module()?;
            if program.signature.is_none() && program.state.is_none() {
                return bad(format!(
                    "program {:?}: give it a signature (or a saved state file)",
                    program.id
                ));
            }
            if let Some(lm) = &program.lm {
                lm.to_lm_config().map_err(|e| {
                    ServeError::Config(format!("program {:?}: lm: {e}", program.id))
                })?;
            }
        }
        Ok(())
    }

    /// Refuses to listen beyond loopback without a token.
    ///
    /// # Errors
    /// [`ServeError::Config`] if `bind` is not a loopback address and there
    /// is no token.
    pub fn check_exposure(&self) -> Result<(), ServeError> {
        if !self.serve.bind.ip().is_loopback() && self.token.is_none() {
            return Err(ServeError::Config(format!(
                "serve.bind is {}, beyond this machine: give a token (--token or \
                 DSPEX_SERVE_TOKEN) or bind 127.0.0.1",
                self.serve.bind
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
pool_size = 2
adapter = "mock"

[serve]
bind = "127.0.0.1:0"

[[programs]]
id = "qa"
signature = "question: str -> answer: str"
module = "cot"
demos = [{ question = "2+2?", answer = "4" }]

[[programs]]
id = "rag"
signature = "q -> a"
module = "python:app.rag:RAG"
kwargs = { k = 3 }
state = "rag.json"
"#;

    #[test]
    fn a_file_splits_into_dspex_serve_and_programs() {
        let file = ServeFile::from_toml(FILE, Some(Path::new("/srv"))).unwrap();
        assert_eq!(file.dspex.pool_size, 2);
        assert_eq!(file.serve.bind.port(), 0);
        assert_eq!(file.programs.len(), 2);
        assert_eq!(
            file.programs[0].build_module().unwrap().name(),
            "chain_of_thought"
        );
        assert_eq!(file.programs[1].build_module().unwrap().name(), "python");
        assert_eq!(
            file.programs[1].state.as_deref(),
            Some(Path::new("/srv/rag.json"))
        );
    }

    #[test]
    fn bad_files_are_refused_with_the_key_named() {
        for (text, says) in [
            ("[serve]\nport = 1", "port"),
            (
                "[[programs]]\nid = \"a\"\nsignature = \"q -> a\"\nmodule = \"react\"",
                "react",
            ),
            ("[[programs]]\nid = \"a\"", "signature"),
            (
                "[[programs]]\nid = \"a\"\nsignature = \"q -> a\"\n[[programs]]\nid = \"a\"\nsignature = \"q -> a\"",
                "twice",
            ),
            ("pool_size = 0", "pool_size"),
            ("[serve]\nmax_batch = 0", "max_batch"),
        ] {
            let error = ServeFile::from_toml(text, None).unwrap_err().to_string();
            assert!(error.contains(says), "{text:?}: {error}");
        }
    }

    #[test]
    fn binding_beyond_loopback_needs_a_token() {
        let mut file = ServeFile::from_toml("[serve]\nbind = \"0.0.0.0:8080\"", None).unwrap();
        assert!(
            file.check_exposure()
                .unwrap_err()
                .to_string()
                .contains("token")
        );
        file.token = Some(Secret::new("t0ken-value"));
        file.check_exposure().unwrap();
        let local = ServeFile::from_toml("", None).unwrap();
        local.check_exposure().unwrap();
    }
}
