//! DSPex: run DSPy programs from Rust services.
//!
//! This is the crate a service embeds. It will grow the `Dspex` handle,
//! signatures, adapters, errors and resilience; today it re-exports the
//! building blocks it stands on.

pub use dspex_bridge as bridge;
pub use dspex_protocol as protocol;

pub mod signature;
pub use signature::{Field, FieldKind, FieldType, FieldValue, Signature, TypedSignature};
