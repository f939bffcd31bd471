//! Embeds the Python worker package and its pinned requirements.
//!
//! Every file under `python/dspex_bridge/` (bytecode caches excluded) and the
//! requirement files become `include_bytes!` entries, and their combined
//! SHA-256 names the versioned directory they are materialized into at run
//! time. Cargo re-runs this script whenever a file under those paths changes.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::{env, fs};

use sha2::{Digest, Sha256};

const REQUIREMENT_FILES: [&str; 3] = [
    "requirements.txt",
    "requirements-test.txt",
    "constraints.txt",
];

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let python = manifest.join("../../python");
    let package = python.join("dspex_bridge");
    println!("cargo:rerun-if-changed={}", package.display());

    let mut files = Vec::new();
    collect(&package, &mut files);
    files.sort();

    let mut digest = Sha256::new();
    let mut table = String::from("&[\n");
    for path in &files {
        let relative = path.strip_prefix(&python).expect("under python/");
        let name = relative.to_str().expect("utf-8 path").replace('\\', "/");
        digest.update(name.as_bytes());
        digest.update(fs::read(path).expect("readable package file"));
        writeln!(
            table,
            "    ({name:?}, include_bytes!({:?})),",
            path.display().to_string()
        )
        .expect("write to string");
    }
    table.push(']');

    let mut requirements = String::new();
    for file in REQUIREMENT_FILES {
        let path = python.join(file);
        println!("cargo:rerun-if-changed={}", path.display());
        let text = fs::read_to_string(&path).unwrap_or_else(|error| {
            panic!("{}: {error}", path.display());
        });
        digest.update(text.as_bytes());
        writeln!(
            requirements,
            "pub(crate) const {}: &str = include_str!({:?});",
            file.replace(['.', '-'], "_").to_uppercase(),
            path.display().to_string()
        )
        .expect("write to string");
    }

    let hash: String = digest
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    fs::write(
        out.join("embedded_python.rs"),
        format!(
            "/// The package files, as (path under `python/`, contents).\n\
             pub(crate) static PACKAGE_FILES: &[(&str, &[u8])] = {table};\n\
             /// SHA-256 of the package files and requirement pins.\n\
             pub(crate) const CONTENT_HASH: &str = {hash:?};\n{requirements}"
        ),
    )
    .expect("write embedded_python.rs");
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("readable python package") {
        let path = entry.expect("directory entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name == "__pycache__" || name.ends_with(".pyc") || name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            collect(&path, files);
        } else {
            files.push(path);
        }
    }
}
