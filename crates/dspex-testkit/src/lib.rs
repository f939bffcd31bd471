//! Per-test supervision trees for DSPex.
//!
//! Every test starts its own isolated pool with [`TestPool`] (or a
//! single-mode one with [`TestTree`]): its own name prefix, its own spawner
//! thread, its own run tag and temporary directory. Nothing is global, so
//! any number of pools run in parallel in one test binary (under `cargo
//! test`) or one per process (under `cargo nextest`).
//!
//! A pool ends with a leak check ([`TestPool::finish`], or on drop): no
//! process carrying the pool's run tag alive (descendants included), none of
//! the worker pids it ever spawned left as a zombie, none of the pipes it
//! opened still open (checked by descriptor and inode, so it holds while
//! other tests in the same process open their own) — and, when the test has
//! the process to itself (nextest), the open-fd count back to its baseline.
//!
//! Workers start with the fault commands enabled (`DSPEX_TEST_FAULTS=1`) and
//! DSPy imported lazily (`DSPEX_LAZY_DSPY=1`), so they boot in tens of
//! milliseconds; tests that run DSPy programs turn the lazy import off.
//!
//! The fd count is the whole process's: a test that runs several pools at
//! once finishes them in reverse start order.
//!
//! `TestPool` needs a multi-threaded runtime
//! (`#[tokio::test(flavor = "multi_thread")]`): its drop-time cleanup blocks
//! on the shutdown.

mod leak;
mod lm_server;
mod pool;
mod wait;

pub use leak::{LeakReport, check as check_leaks, fd_count, zombie_children, zygote_pids};
pub use lm_server::LmServer;
pub use pool::{TestPool, TestPoolBuilder, TestTree, managed_python, managed_python_for};
pub use wait::{poll_until, wait_event};
