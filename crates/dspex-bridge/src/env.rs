//! Finding a Python that can run the worker.
//!
//! Resolution order, first match wins:
//! 1. [`PythonConfig::interpreter`], an explicit path;
//! 2. the `DSPEX_PYTHON` environment variable;
//! 3. a managed virtual environment, created on first use under the cache
//!    directory from the pinned requirements embedded in this crate.
//!
//! In every case the worker package itself comes from this crate: it is
//! embedded at build time and materialized into a versioned directory of the
//! cache ([`PythonEnv::package_root`]), so a service that depends on the crate
//! needs nothing else on disk. Creating the managed environment is guarded by
//! a file lock, so concurrent processes and tests that ask at once create it
//! once and all use it.
//!
//! Resolution blocks (it may run `pip` for a minute on first use); async code
//! calls [`PythonEnv::resolve_async`].

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::{env, fmt, io, thread};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded_python.rs"));
}

/// The environment variable naming an interpreter to use as is.
pub const PYTHON_ENV_VAR: &str = "DSPEX_PYTHON";
/// The environment variable naming the cache directory.
pub const CACHE_ENV_VAR: &str = "DSPEX_CACHE_DIR";

/// How to find the Python that runs workers. `Default` means: `DSPEX_PYTHON`
/// if set, else the managed environment in the default cache directory.
#[derive(Debug, Clone, Default)]
pub struct PythonConfig {
    /// An interpreter to use as is; its installed packages are the caller's
    /// business (it needs `dspy` and `msgpack`).
    pub interpreter: Option<PathBuf>,
    /// Where the managed environment and the worker package live (default:
    /// `DSPEX_CACHE_DIR`, else `$XDG_CACHE_HOME/dspex`, else `~/.cache/dspex`).
    pub cache_dir: Option<PathBuf>,
    /// The interpreter that creates the managed environment (default `python3`).
    pub base_python: Option<PathBuf>,
    /// Also install the test requirements (pytest, ruff) into the managed
    /// environment.
    pub test_extras: bool,
    /// Print no progress lines while creating the managed environment.
    pub quiet: bool,
    /// Always use the managed environment, ignoring `interpreter` and
    /// `DSPEX_PYTHON` (the project's own tests use this).
    pub managed_only: bool,
    /// The service's Python project: the one directory `python` modules
    /// are imported from (workers get it as `DSPEX_PROJECT_DIR`). Its
    /// `requirements.txt`, if any, is installed into a layer of the managed
    /// environment keyed by its hash.
    pub project: Option<PathBuf>,
}

/// Where the interpreter came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterpreterSource {
    /// [`PythonConfig::interpreter`].
    Explicit,
    /// The `DSPEX_PYTHON` environment variable.
    EnvVar,
    /// The managed virtual environment.
    Managed,
}

/// A resolved Python: the interpreter and the directory holding the
/// `dspex_bridge` package (to put on `PYTHONPATH`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonEnv {
    /// The interpreter to run.
    pub interpreter: PathBuf,
    /// Where the interpreter came from.
    pub source: InterpreterSource,
    /// The directory that contains `dspex_bridge/`.
    pub package_root: PathBuf,
    /// The service's Python project directory (absolute), if configured.
    pub project: Option<PathBuf>,
    /// Where the project's requirements are installed (on `PYTHONPATH`).
    pub layer: Option<PathBuf>,
}

/// Why no usable Python could be resolved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnvError {
    /// The interpreter does not exist or cannot be run.
    #[error(
        "cannot run the Python interpreter `{path}`: {source}; install Python 3.11 or newer, \
         or point DSPEX_PYTHON at an interpreter that has dspy and msgpack"
    )]
    PythonNotFound {
        /// The interpreter tried.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// `python -m venv` failed.
    #[error("creating the virtual environment at {path} failed ({status}):\n{output}")]
    VenvFailed {
        /// The environment directory.
        path: PathBuf,
        /// The exit status of `python -m venv`.
        status: ExitStatus,
        /// Its output.
        output: String,
    },
    /// `pip install` failed, usually because the package registry is not reachable.
    #[error(
        "installing the pinned Python requirements into {path} failed ({status}); is the \
         package registry reachable? Last lines of pip's output:\n{output_tail}"
    )]
    InstallFailed {
        /// The environment directory.
        path: PathBuf,
        /// The exit status of pip.
        status: ExitStatus,
        /// The last lines pip printed.
        output_tail: String,
    },
    /// A file operation in the cache directory failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The blocking resolution task was cancelled or panicked.
    #[error("python environment resolution did not complete: {0}")]
    Interrupted(String),
    /// The configured project directory cannot be used.
    #[error("the Python project directory {path} cannot be used: {reason}")]
    Project {
        /// The directory configured.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl PythonEnv {
    /// Resolves the interpreter and materializes the worker package.
    ///
    /// Blocks; may take a minute the first time (creating the managed
    /// environment). Progress goes to stderr unless [`PythonConfig::quiet`].
    ///
    /// # Errors
    /// [`EnvError`] naming what is missing and how to fix it.
    pub fn resolve(config: &PythonConfig) -> Result<Self, EnvError> {
        resolve_with(config, |name| env::var_os(name))
    }

    /// [`PythonEnv::resolve`] on a blocking thread.
    ///
    /// # Cancel safety
    /// Dropping the future does not stop the blocking work: an environment
    /// being created is finished (under its lock) and used by the next call.
    ///
    /// # Errors
    /// As [`PythonEnv::resolve`].
    pub async fn resolve_async(config: PythonConfig) -> Result<Self, EnvError> {
        tokio::task::spawn_blocking(move || Self::resolve(&config))
            .await
            .map_err(|error| EnvError::Interrupted(error.to_string()))?
    }

    /// The `PYTHONPATH` value for a worker: the package root, the
    /// project's layer, then whatever `PYTHONPATH` the host had.
    pub fn python_path(&self) -> OsString {
        let mut paths = vec![self.package_root.clone()];
        paths.extend(self.layer.clone());
        if let Some(existing) = env::var_os("PYTHONPATH") {
            paths.extend(env::split_paths(&existing));
        }
        env::join_paths(paths).unwrap_or_else(|_| self.package_root.clone().into_os_string())
    }

    /// The environment variables a worker needs besides `PYTHONPATH`
    /// (`DSPEX_PROJECT_DIR`).
    pub fn worker_env(&self) -> Vec<(OsString, OsString)> {
        self.project
            .iter()
            .map(|dir| {
                (
                    OsString::from(PROJECT_ENV_VAR),
                    dir.clone().into_os_string(),
                )
            })
            .collect()
    }
}

/// The variable naming the project directory to a worker.
pub const PROJECT_ENV_VAR: &str = "DSPEX_PROJECT_DIR";

fn resolve_with(
    config: &PythonConfig,
    var: impl Fn(&str) -> Option<OsString>,
) -> Result<PythonEnv, EnvError> {
    let cache = cache_dir(config, &var);
    let package_root = materialize_package(&cache)?;
    let explicit = config.interpreter.as_ref().filter(|_| !config.managed_only);
    let from_env = || var(PYTHON_ENV_VAR).filter(|p| !p.is_empty() && !config.managed_only);
    let project = config.project.as_deref().map(project_dir).transpose()?;
    let (interpreter, source, layer) = if let Some(path) = explicit {
        (path.clone(), InterpreterSource::Explicit, None)
    } else if let Some(path) = from_env() {
        (PathBuf::from(path), InterpreterSource::EnvVar, None)
    } else {
        let venv = ManagedVenv::new(&cache, &package_root, config);
        let python = venv.ensure()?;
        let layer = match &project {
            Some(project) => venv.project_layer(&cache, project)?,
            None => None,
        };
        (python, InterpreterSource::Managed, layer)
    };
    if source != InterpreterSource::Managed
        && let Some(project) = &project
        && project.join("requirements.txt").is_file()
    {
        tracing::warn!(
            project = %project.display(),
            "the project's requirements.txt is not installed: the interpreter is not the managed \
             environment, so its packages are its owner's business"
        );
    }
    Ok(PythonEnv {
        interpreter,
        source,
        package_root,
        project,
        layer,
    })
}

/// The project directory, absolute and checked.
fn project_dir(path: &Path) -> Result<PathBuf, EnvError> {
    let bad = |reason: String| EnvError::Project {
        path: path.to_path_buf(),
        reason,
    };
    let dir = fs::canonicalize(path).map_err(|e| bad(e.to_string()))?;
    if !dir.is_dir() {
        return Err(bad("not a directory".into()));
    }
    Ok(dir)
}

fn cache_dir(config: &PythonConfig, var: &impl Fn(&str) -> Option<OsString>) -> PathBuf {
    if let Some(dir) = &config.cache_dir {
        return dir.clone();
    }
    if let Some(dir) = var(CACHE_ENV_VAR).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = var("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("dspex");
    }
    if let Some(home) = var("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join(".cache").join("dspex");
    }
    env::temp_dir().join("dspex-cache")
}

/// The embedded package's content hash (first 16 hex digits), which names its
/// directory in the cache.
pub fn package_version() -> &'static str {
    &embedded::CONTENT_HASH[..16]
}

/// Writes the embedded package into `<cache>/python/<hash>/` unless it is
/// already there. The directory appears atomically (written aside, renamed).
fn materialize_package(cache: &Path) -> Result<PathBuf, EnvError> {
    let root = cache.join("python").join(package_version());
    if root.join("dspex_bridge").is_dir() {
        return Ok(root);
    }
    let parent = cache.join("python");
    let staging = parent.join(format!(".staging-{}-{}", std::process::id(), nonce()));
    let write = |path: &Path, bytes: &[u8]| {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        }
        fs::write(path, bytes).map_err(io_err("write", path))
    };
    for (name, bytes) in embedded::PACKAGE_FILES {
        write(&staging.join(name), bytes)?;
    }
    for (name, text) in requirement_files() {
        write(&staging.join(name), text.as_bytes())?;
    }
    match fs::rename(&staging, &root) {
        Ok(()) => Ok(root),
        // Another process materialized the same version first: use theirs.
        Err(_) if root.join("dspex_bridge").is_dir() => {
            let _ = fs::remove_dir_all(&staging);
            Ok(root)
        }
        Err(error) => {
            let _ = fs::remove_dir_all(&staging);
            Err(EnvError::Io {
                action: "move the worker package into",
                path: root,
                source: error,
            })
        }
    }
}

fn requirement_files() -> [(&'static str, &'static str); 3] {
    [
        ("requirements.txt", embedded::REQUIREMENTS_TXT),
        ("requirements-test.txt", embedded::REQUIREMENTS_TEST_TXT),
        ("constraints.txt", embedded::CONSTRAINTS_TXT),
    ]
}

fn nonce() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> EnvError {
    let path = path.to_path_buf();
    move |source| EnvError::Io {
        action,
        path,
        source,
    }
}

/// The managed virtual environment: `<cache>/venvs/<key>/`, where the key
/// hashes the base interpreter path and the requirement pins.
struct ManagedVenv<'a> {
    dir: PathBuf,
    lock_path: PathBuf,
    base_python: PathBuf,
    package_root: &'a Path,
    test_extras: bool,
    quiet: bool,
}

const READY_MARKER: &str = ".dspex-ready";
const TEST_READY_MARKER: &str = ".dspex-test-ready";

impl<'a> ManagedVenv<'a> {
    fn new(cache: &Path, package_root: &'a Path, config: &PythonConfig) -> Self {
        use sha2::{Digest, Sha256};
        let base_python = config
            .base_python
            .clone()
            .unwrap_or_else(|| PathBuf::from("python3"));
        let mut digest = Sha256::new();
        digest.update(base_python.as_os_str().as_encoded_bytes());
        for (_, text) in requirement_files() {
            digest.update(text.as_bytes());
        }
        let key: String = digest.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let venvs = cache.join("venvs");
        Self {
            dir: venvs.join(&key),
            lock_path: venvs.join(format!("{key}.lock")),
            base_python,
            package_root,
            test_extras: config.test_extras,
            quiet: config.quiet,
        }
    }

    fn python(&self) -> PathBuf {
        self.dir.join("bin").join("python")
    }

    fn is_ready(&self) -> bool {
        self.dir.join(READY_MARKER).is_file()
            && (!self.test_extras || self.dir.join(TEST_READY_MARKER).is_file())
            && self.python().exists()
    }

    /// Returns the environment's interpreter, creating what is missing.
    fn ensure(&self) -> Result<PathBuf, EnvError> {
        if self.is_ready() {
            return Ok(self.python());
        }
        let parent = self.lock_path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(parent).map_err(io_err("create directory", parent))?;
        let lock = File::create(&self.lock_path).map_err(io_err("open lock", &self.lock_path))?;
        // Held until the end of this function; a second process waits here and
        // then finds the environment ready.
        lock.lock().map_err(io_err("lock", &self.lock_path))?;
        if !self.is_ready() {
            self.create()?;
        }
        Ok(self.python())
    }

    fn create(&self) -> Result<(), EnvError> {
        if !self.dir.join(READY_MARKER).is_file() {
            // A half-made environment from an interrupted run: start over.
            if self.dir.exists() {
                fs::remove_dir_all(&self.dir).map_err(io_err("remove", &self.dir))?;
            }
            self.progress(format_args!(
                "creating the Python environment in {} (first use only; this takes a minute)",
                self.dir.display()
            ));
            let output = Command::new(&self.base_python)
                .args(["-m", "venv"])
                .arg(&self.dir)
                .output()
                .map_err(|source| EnvError::PythonNotFound {
                    path: self.base_python.clone(),
                    source,
                })?;
            if !output.status.success() {
                return Err(EnvError::VenvFailed {
                    path: self.dir.clone(),
                    status: output.status,
                    output: String::from_utf8_lossy(&[output.stdout, output.stderr].concat())
                        .into_owned(),
                });
            }
            self.pip_install("requirements.txt")?;
            let marker = self.dir.join(READY_MARKER);
            fs::write(&marker, package_version()).map_err(io_err("write", &marker))?;
        }
        if self.test_extras && !self.dir.join(TEST_READY_MARKER).is_file() {
            self.progress(format_args!("installing the test requirements"));
            self.pip_install("requirements-test.txt")?;
            let marker = self.dir.join(TEST_READY_MARKER);
            fs::write(&marker, package_version()).map_err(io_err("write", &marker))?;
        }
        self.progress(format_args!("Python environment ready"));
        Ok(())
    }

    fn pip_install(&self, requirements: &str) -> Result<(), EnvError> {
        let mut args: Vec<OsString> = vec!["-r".into()];
        args.push(self.package_root.join(requirements).into_os_string());
        self.pip(args, None, &self.dir)
    }

    /// The layer of the project's `requirements.txt`: installed with
    /// `pip install --target` into `<cache>/layers/<key>/`, the key hashing
    /// this environment and the file, under the pins of the environment
    /// (so a project cannot move a package the workers depend on). `None`
    /// when the project has no requirements.
    fn project_layer(&self, cache: &Path, project: &Path) -> Result<Option<PathBuf>, EnvError> {
        use sha2::{Digest, Sha256};
        let requirements = project.join("requirements.txt");
        let Ok(text) = fs::read(&requirements) else {
            return Ok(None);
        };
        let mut digest = Sha256::new();
        digest.update(self.dir.as_os_str().as_encoded_bytes());
        digest.update(&text);
        let key: String = digest.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let layers = cache.join("layers");
        let dir = layers.join(&key);
        let ready = || dir.join(READY_MARKER).is_file();
        if ready() {
            return Ok(Some(dir));
        }
        fs::create_dir_all(&layers).map_err(io_err("create directory", &layers))?;
        let lock_path = layers.join(format!("{key}.lock"));
        let lock = File::create(&lock_path).map_err(io_err("open lock", &lock_path))?;
        lock.lock().map_err(io_err("lock", &lock_path))?;
        if !ready() {
            if dir.exists() {
                fs::remove_dir_all(&dir).map_err(io_err("remove", &dir))?;
            }
            self.progress(format_args!(
                "installing {} into {}",
                requirements.display(),
                dir.display()
            ));
            let mut args: Vec<OsString> = vec!["--target".into(), dir.clone().into_os_string()];
            args.push("-r".into());
            args.push(requirements.into_os_string());
            // Relative paths in the file are the project's.
            self.pip(args, Some(project), &dir)?;
            let marker = dir.join(READY_MARKER);
            fs::write(&marker, key.as_bytes()).map_err(io_err("write", &marker))?;
        }
        Ok(Some(dir))
    }

    /// Runs `pip install ARGS -c constraints.txt` with this environment's
    /// Python, echoing its lines as progress.
    fn pip(&self, args: Vec<OsString>, cwd: Option<&Path>, target: &Path) -> Result<(), EnvError> {
        let mut command = Command::new(self.python());
        command
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "--progress-bar",
                "off",
            ])
            .args(args)
            .arg("-c")
            .arg(self.package_root.join("constraints.txt"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(cwd) = cwd {
            command.current_dir(cwd);
        }
        let mut child = command.spawn().map_err(|source| EnvError::PythonNotFound {
            path: self.python(),
            source,
        })?;
        // Echo pip's lines as progress and keep the last ones for the error.
        let tail = Arc::new(Mutex::new(Tail::new(40)));
        let echoes: Vec<_> = [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        .map(|stream| {
            let tail = Arc::clone(&tail);
            let quiet = self.quiet;
            thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if !quiet {
                        eprintln!("dspex: pip: {line}");
                    }
                    if let Ok(mut tail) = tail.lock() {
                        tail.push(line);
                    }
                }
            })
        })
        .collect();
        let status = child.wait().map_err(io_err("wait for pip in", target))?;
        for echo in echoes {
            let _ = echo.join();
        }
        if status.success() {
            return Ok(());
        }
        let output_tail = tail.lock().map(|t| t.to_string()).unwrap_or_default();
        Err(EnvError::InstallFailed {
            path: target.to_path_buf(),
            status,
            output_tail,
        })
    }

    fn progress(&self, message: fmt::Arguments<'_>) {
        if !self.quiet {
            eprintln!("dspex: {message}");
        }
    }
}

/// The last `cap` lines of a stream.
struct Tail {
    lines: std::collections::VecDeque<String>,
    cap: usize,
}

impl Tail {
    fn new(cap: usize) -> Self {
        Self {
            lines: std::collections::VecDeque::with_capacity(cap),
            cap,
        }
    }

    fn push(&mut self, line: String) {
        if self.lines.len() == self.cap {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }
}

impl fmt::Display for Tail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in &self.lines {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let pairs: Vec<(String, OsString)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), OsString::from(v)))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn explicit_interpreter_wins_over_the_environment() {
        let cache = tempfile::tempdir().unwrap();
        let config = PythonConfig {
            interpreter: Some("/opt/py/bin/python".into()),
            cache_dir: Some(cache.path().into()),
            ..PythonConfig::default()
        };
        let env = resolve_with(&config, vars(&[(PYTHON_ENV_VAR, "/usr/bin/python3")])).unwrap();
        assert_eq!(env.interpreter, PathBuf::from("/opt/py/bin/python"));
        assert_eq!(env.source, InterpreterSource::Explicit);
        assert!(env.package_root.join("dspex_bridge/__main__.py").is_file());
    }

    #[test]
    fn env_var_comes_before_the_managed_environment() {
        let cache = tempfile::tempdir().unwrap();
        let config = PythonConfig {
            cache_dir: Some(cache.path().into()),
            ..PythonConfig::default()
        };
        let env = resolve_with(&config, vars(&[(PYTHON_ENV_VAR, "/usr/bin/python3")])).unwrap();
        assert_eq!(env.source, InterpreterSource::EnvVar);
        assert_eq!(env.interpreter, PathBuf::from("/usr/bin/python3"));
    }

    #[test]
    fn cache_dir_precedence() {
        let config = PythonConfig::default();
        assert_eq!(
            cache_dir(&config, &vars(&[(CACHE_ENV_VAR, "/c"), ("HOME", "/h")])),
            PathBuf::from("/c")
        );
        assert_eq!(
            cache_dir(&config, &vars(&[("XDG_CACHE_HOME", "/x"), ("HOME", "/h")])),
            PathBuf::from("/x/dspex")
        );
        assert_eq!(
            cache_dir(&config, &vars(&[("HOME", "/h")])),
            PathBuf::from("/h/.cache/dspex")
        );
    }

    #[test]
    fn package_is_materialized_once_and_complete() {
        let cache = tempfile::tempdir().unwrap();
        let first = materialize_package(cache.path()).unwrap();
        let second = materialize_package(cache.path()).unwrap();
        assert_eq!(first, second);
        for (name, bytes) in embedded::PACKAGE_FILES {
            assert_eq!(&fs::read(first.join(name)).unwrap(), bytes, "{name}");
        }
        assert!(first.join("requirements.txt").is_file());
        // Nothing left in staging.
        let leftovers: Vec<_> = fs::read_dir(cache.path().join("python"))
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(".staging"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn concurrent_materialization_agrees() {
        let cache = tempfile::tempdir().unwrap();
        let roots: Vec<PathBuf> = thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| materialize_package(cache.path()).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(roots.windows(2).all(|w| w[0] == w[1]));
    }

    #[test]
    fn missing_base_python_is_a_clear_error() {
        let cache = tempfile::tempdir().unwrap();
        let config = PythonConfig {
            cache_dir: Some(cache.path().into()),
            base_python: Some("/nonexistent/python3".into()),
            quiet: true,
            ..PythonConfig::default()
        };
        let error = resolve_with(&config, vars(&[])).unwrap_err();
        assert!(
            matches!(error, EnvError::PythonNotFound { .. }),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(message.contains("/nonexistent/python3"), "{message}");
        assert!(message.contains("DSPEX_PYTHON"), "{message}");
    }
}
