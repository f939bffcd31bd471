//! Placeholder; filled by the scenario work in progress.
