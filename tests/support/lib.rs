//! Glue shared by the end-to-end tests: paths of the source tree and the
//! managed Python environment.

use std::path::PathBuf;

use dspex_bridge::{PythonConfig, PythonEnv};

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// The managed environment with the test requirements, created on first use
/// (under a file lock, so parallel test binaries share one).
pub fn managed_python() -> anyhow::Result<PythonEnv> {
    Ok(PythonEnv::resolve(&PythonConfig {
        managed_only: true,
        test_extras: true,
        ..PythonConfig::default()
    })?)
}
