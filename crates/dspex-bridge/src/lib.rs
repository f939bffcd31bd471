//! Owning Python worker processes: the spawner, the worker actor and the
//! Python environment.
//!
//! - [`process`]: creating, draining, stopping and reaping worker processes
//!   (process groups, parent-death signal, run tags, orphan sweep).
//! - [`worker`]: the ractor actor that owns one process and correlates
//!   replies by request id.
//! - [`env`]: resolving an interpreter and materializing the embedded
//!   `dspex_bridge` package.

pub mod env;
mod error;
pub mod health;
pub mod process;
pub mod single;
pub mod worker;

pub use env::{EnvError, InterpreterSource, PythonConfig, PythonEnv};
pub use error::WorkerError;
pub use single::{Bridge, BridgeConfig, BridgeError, BridgeState, BridgeStatus};
pub use worker::{CallOptions, WorkerConfig, WorkerEvent, WorkerHandle, WorkerInfo, WorkerState};
