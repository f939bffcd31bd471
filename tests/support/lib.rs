//! Glue shared by the end-to-end tests.

use std::path::PathBuf;

pub use dspex_testkit::managed_python;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

pub mod logs;
pub mod pool;
pub mod service;
