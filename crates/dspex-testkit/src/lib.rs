//! Per-test supervision trees for DSPex.
//!
//! Every test starts its own isolated tree with [`TestTree`]: its own name
//! prefix, its own spawner thread, its own run tag and temporary directory.
//! Nothing is global, so any number of trees run in parallel in one test
//! binary (under `cargo test`) or one per process (under `cargo nextest`).
//!
//! A tree ends with a leak check ([`TestTree::finish`], or on drop): no
//! process carrying the tree's run tag alive (descendants included), none of
//! the worker pids it ever spawned left as a zombie, and — when the test has
//! the process to itself (nextest) — the open-fd count back to its baseline.
//!
//! Workers start with the fault commands enabled (`DSPEX_TEST_FAULTS=1`) and
//! DSPy imported lazily (`DSPEX_LAZY_DSPY=1`), so they boot in tens of
//! milliseconds; tests that run DSPy programs turn the lazy import off.
//!
//! The fd count is the whole process's: a test that runs several trees at
//! once finishes them in reverse start order.
//!
//! `TestTree` needs a multi-threaded runtime
//! (`#[tokio::test(flavor = "multi_thread")]`): its drop-time cleanup blocks
//! on the shutdown.

mod leak;
mod pool;
mod tree;
mod wait;

pub use leak::{LeakReport, fd_count, zombie_children};
pub use pool::TestPool;
pub use tree::{TestTree, TestTreeBuilder, managed_python};
pub use wait::{poll_until, wait_event};
