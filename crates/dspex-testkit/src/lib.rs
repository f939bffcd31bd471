//! Per-test supervision trees for DSPex.
//!
//! Every test starts its own isolated tree (own name prefix, own spawner, own
//! temporary directory) and ends with a leak check: no worker process alive, no
//! zombie, file descriptors back to baseline.
