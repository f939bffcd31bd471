//! Restart intensity and backoff: pure arithmetic, no actors, no timers.
//!
//! # Semantics
//!
//! * **Intensity** ([`RestartIntensity`]) is counted per supervisor, as in OTP:
//!   a restart is allowed if the number of restarts inside the last `within`
//!   window, *counting this one*, is at most `max_restarts`. With the default
//!   (3 in 5 s) the 1st, 2nd and 3rd failure inside the window are restarted and
//!   the 4th makes the supervisor give up; a child that can never start is
//!   therefore started 1 + 3 = 4 times. A refused restart is not recorded.
//! * **Backoff** ([`Backoff`]) is counted per child: the delay before a restart
//!   is `initial × factor^n`, capped at `max`, where `n` is the number of
//!   restarts of that child inside the same `within` window. The first restart
//!   after a quiet period longer than `within` therefore waits `initial` again.
//!
//! Times are [`tokio::time::Instant`]s so that paused-clock tests
//! (`#[tokio::test(start_paused = true)]`) see exact delays.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// How many restarts a supervisor may perform in a sliding window before it
/// gives up (OTP's `intensity` / `period`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestartIntensity {
    /// Restarts allowed inside `within`. `0` means the first failure gives up.
    pub max_restarts: u32,
    /// Length of the sliding window.
    pub within: Duration,
}

impl Default for RestartIntensity {
    /// 3 restarts within 5 s (DSPex default config).
    fn default() -> Self {
        Self {
            max_restarts: 3,
            within: Duration::from_secs(5),
        }
    }
}

/// Exponential delay between consecutive restart attempts of one child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first restart (after a quiet period).
    pub initial: Duration,
    /// Multiplier applied per consecutive restart. `1` gives a constant delay.
    pub factor: u32,
    /// Upper bound on any delay.
    pub max: Duration,
}

impl Default for Backoff {
    /// 100 ms, doubling, capped at 5 s (DSPex default config).
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            factor: 2,
            max: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// No delay at all: restarts are scheduled immediately (still through the
    /// supervisor's mailbox, never inline).
    pub const NONE: Backoff = Backoff {
        initial: Duration::ZERO,
        factor: 1,
        max: Duration::ZERO,
    };

    /// Delay before a restart preceded by `recent` restarts of the same child
    /// inside the intensity window: `initial × factor^recent`, capped at `max`.
    /// Saturates instead of overflowing.
    ///
    /// ```
    /// use std::time::Duration;
    /// use dspex_supervision::Backoff;
    ///
    /// let b = Backoff::default();
    /// assert_eq!(b.delay(0), Duration::from_millis(100));
    /// assert_eq!(b.delay(2), Duration::from_millis(400));
    /// assert_eq!(b.delay(40), Duration::from_secs(5));
    /// ```
    pub fn delay(&self, recent: u32) -> Duration {
        let scaled = self
            .factor
            .checked_pow(recent)
            .and_then(|m| self.initial.checked_mul(m))
            .unwrap_or(self.max);
        scaled.min(self.max)
    }
}

/// Timestamps of recent restarts, pruned to a sliding window.
#[derive(Clone, Debug, Default)]
pub(crate) struct RestartWindow {
    times: VecDeque<Instant>,
}

impl RestartWindow {
    /// Forget restarts that happened `within` or longer before `now`, and
    /// return how many remain.
    pub(crate) fn recent(&mut self, now: Instant, within: Duration) -> usize {
        while let Some(&oldest) = self.times.front() {
            if now.saturating_duration_since(oldest) >= within {
                self.times.pop_front();
            } else {
                break;
            }
        }
        self.times.len()
    }

    /// Record a restart at `now`.
    pub(crate) fn record(&mut self, now: Instant) {
        self.times.push_back(now);
    }

    /// OTP intensity check: record a restart at `now` and return `true` if the
    /// restarts inside the window, counting this one, stay within
    /// `max_restarts`; otherwise record nothing and return `false`.
    pub(crate) fn try_restart(&mut self, now: Instant, limit: RestartIntensity) -> bool {
        let recent = self.recent(now, limit.within);
        if recent.saturating_add(1) > limit.max_restarts as usize {
            return false;
        }
        self.record(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn limit(max: u32, within_ms: u64) -> RestartIntensity {
        RestartIntensity {
            max_restarts: max,
            within: Duration::from_millis(within_ms),
        }
    }

    #[test]
    fn default_budget_allows_three_and_refuses_the_fourth() {
        let t0 = Instant::now();
        let mut w = RestartWindow::default();
        let l = RestartIntensity::default();
        assert!(w.try_restart(t0, l));
        assert!(w.try_restart(t0 + 100 * MS, l));
        assert!(w.try_restart(t0 + 300 * MS, l));
        assert!(!w.try_restart(t0 + 700 * MS, l));
        // A refusal is not recorded.
        assert_eq!(w.recent(t0 + 700 * MS, l.within), 3);
    }

    #[test]
    fn zero_budget_refuses_the_first_failure() {
        let mut w = RestartWindow::default();
        assert!(!w.try_restart(Instant::now(), limit(0, 5_000)));
    }

    #[test]
    fn old_restarts_slide_out_of_the_window() {
        let t0 = Instant::now();
        let mut w = RestartWindow::default();
        let l = limit(2, 1_000);
        assert!(w.try_restart(t0, l));
        assert!(w.try_restart(t0 + 500 * MS, l));
        assert!(!w.try_restart(t0 + 999 * MS, l));
        // Exactly `within` after the first restart, it no longer counts.
        assert!(w.try_restart(t0 + 1_000 * MS, l));
        assert!(!w.try_restart(t0 + 1_400 * MS, l));
        assert!(w.try_restart(t0 + 1_500 * MS, l));
    }

    #[test]
    fn a_crash_every_window_fraction_stays_under_budget() {
        // Scenario 18 shape: one crash every 2.5 s against 3 in 5 s.
        let t0 = Instant::now();
        let mut w = RestartWindow::default();
        let l = RestartIntensity::default();
        for i in 0..24u32 {
            assert!(w.try_restart(t0 + i * 2_500 * MS, l), "crash {i}");
        }
    }

    #[test]
    fn a_crash_every_200ms_gives_up_on_the_fourth() {
        // Scenario 19 shape.
        let t0 = Instant::now();
        let mut w = RestartWindow::default();
        let l = RestartIntensity::default();
        let allowed: Vec<bool> = (0..6u32)
            .map(|i| w.try_restart(t0 + i * 200 * MS, l))
            .collect();
        assert_eq!(allowed, [true, true, true, false, false, false]);
    }

    #[test]
    fn backoff_grows_geometrically_and_caps() {
        let b = Backoff {
            initial: 100 * MS,
            factor: 2,
            max: 1_000 * MS,
        };
        let delays: Vec<u128> = (0..6).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1_000, 1_000]);
    }

    #[test]
    fn backoff_saturates_instead_of_overflowing() {
        let b = Backoff {
            initial: Duration::from_secs(u64::MAX / 2),
            factor: 3,
            max: Duration::from_secs(7),
        };
        assert_eq!(b.delay(0), Duration::from_secs(7));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(7));
        let huge_factor = Backoff {
            factor: u32::MAX,
            ..Backoff::default()
        };
        assert_eq!(huge_factor.delay(5), huge_factor.max);
    }

    #[test]
    fn backoff_none_is_always_zero() {
        assert_eq!(Backoff::NONE.delay(0), Duration::ZERO);
        assert_eq!(Backoff::NONE.delay(9), Duration::ZERO);
    }

    #[test]
    fn backoff_resets_after_a_quiet_window() {
        // Per-child exponent = restarts of that child still inside the window.
        let t0 = Instant::now();
        let within = Duration::from_secs(5);
        let b = Backoff::default();
        let mut child = RestartWindow::default();
        let mut next_delay = |now: Instant| {
            let n = child.recent(now, within) as u32;
            child.record(now);
            b.delay(n)
        };
        assert_eq!(next_delay(t0), 100 * MS);
        assert_eq!(next_delay(t0 + 200 * MS), 200 * MS);
        assert_eq!(next_delay(t0 + 600 * MS), 400 * MS);
        // Quiet for longer than the window: back to the initial delay.
        assert_eq!(next_delay(t0 + 6_000 * MS), 100 * MS);
    }
}
