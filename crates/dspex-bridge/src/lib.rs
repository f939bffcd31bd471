//! Owning Python worker processes: the spawner, the worker actor and the
//! Python environment.
//!
//! - [`process`]: creating, draining, stopping and reaping worker processes
//!   (process groups, parent-death signal, run tags, orphan sweep).
//! - [`worker`]: the ractor actor that owns one process and correlates
//!   replies by request id.
//! - [`pool`]: pool mode, and single mode (the same pool with one worker).
//! - [`conditional`]: the root supervisor that picks the mode once at start.
//! - [`health`]: the health monitor.
//! - [`env`]: resolving an interpreter and materializing the embedded
//!   `dspex_bridge` package.

pub mod conditional;
mod context;
pub mod env;
mod error;
pub mod fake;
pub mod health;
pub mod pool;
pub mod process;
pub mod worker;

pub use conditional::{
    ConditionalError, ConditionalStatus, ConditionalSupervisor, EnvironmentReport, Mode, TreeConfig,
};
pub use env::{EnvError, InterpreterSource, PythonConfig, PythonEnv};
pub use error::WorkerError;
pub use pool::{
    DEFAULT_PER_WORKER_CONCURRENCY, Pool, PoolConfig, PoolError, PoolState, PoolStatus, SpawnMode,
};
pub use worker::{
    CallOptions, Callbacks, Hooks, OnHang, RequestEvent, WorkerConfig, WorkerEvent, WorkerHandle,
    WorkerInfo, WorkerState,
};
