//! `#[derive(Signature)]` for struct-defined DSPy signatures.
//!
//! The derive arrives with the public API; this crate exists so that the
//! dependency graph (`macros` beside `dspex`) is in place from the start.
