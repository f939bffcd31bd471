//! OTP-style supervisors on [ractor].
//!
//! ractor has no supervisor behaviour of its own: an actor's default
//! `handle_supervisor_evt` stops the parent when a child fails. This crate adds
//! the OTP one: restart strategies (`one_for_one`, `one_for_all`,
//! `rest_for_one`), child restart types (`permanent`, `transient`, `temporary`),
//! restart intensity with exponential backoff, a terminal `Failed` state, and
//! ordered shutdown.
