//! Owning Python worker processes.
