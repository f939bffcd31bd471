//! The `dspex` command.
fn main() {}
