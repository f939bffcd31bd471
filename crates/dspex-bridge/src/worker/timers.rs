//! [`Timers`]: every deadline of one worker actor in one ordered set, woken
//! by one task.
//!
//! A request's deadline, its hang grace and the boot timeout are entries
//! keyed by the instant they fall due. One long-lived task per worker sleeps
//! until the earliest and sends the actor a tick; the actor takes what is
//! due and re-arms the task with the next instant. Entries are never
//! cancelled: a due entry whose request has been answered is simply ignored,
//! so answering a request costs no timer work at all.

use std::collections::BTreeSet;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use dspex_protocol::RequestId;

/// What falls due.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Timer {
    /// No handshake yet: the worker failed to boot.
    Boot,
    /// A request's deadline: its caller gets `RequestTimeout`.
    Deadline(RequestId),
    /// The grace after a deadline: a request still unanswered means the
    /// worker is hung.
    HangGrace(RequestId),
}

/// The ordered deadlines of one worker and the task that wakes its actor.
#[derive(Debug)]
pub(crate) struct Timers {
    due: BTreeSet<(Instant, Timer)>,
    next: watch::Sender<Option<Instant>>,
    task: JoinHandle<()>,
}

impl Timers {
    /// Starts the waking task; `tick` is how it tells the actor that
    /// something is due (it returns `false` once the actor is gone).
    pub(crate) fn start(tick: impl Fn() -> bool + Send + 'static) -> Self {
        let (next, mut armed) = watch::channel(None::<Instant>);
        let task = tokio::spawn(async move {
            loop {
                let at = *armed.borrow_and_update();
                match at {
                    Some(at) => {
                        tokio::select! {
                            () = tokio::time::sleep_until(at) => {
                                if !tick() {
                                    return;
                                }
                                // The actor re-arms after every tick.
                                if armed.changed().await.is_err() {
                                    return;
                                }
                            }
                            changed = armed.changed() => if changed.is_err() { return },
                        }
                    }
                    None => {
                        if armed.changed().await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Self {
            due: BTreeSet::new(),
            next,
            task,
        }
    }

    /// Adds an entry; wakes the task only if it is now the earliest.
    pub(crate) fn add(&mut self, at: Instant, timer: Timer) {
        let earliest = self.due.first().is_none_or(|(first, _)| at < *first);
        self.due.insert((at, timer));
        if earliest {
            self.next.send_replace(Some(at));
        }
    }

    /// Removes and returns every entry due at `now`, then re-arms the task.
    pub(crate) fn take_due(&mut self, now: Instant) -> Vec<Timer> {
        let mut due = Vec::new();
        while let Some(&(at, timer)) = self.due.first() {
            if at > now {
                break;
            }
            self.due.pop_first();
            due.push(timer);
        }
        self.next.send_replace(self.due.first().map(|(at, _)| *at));
        due
    }
}

impl Drop for Timers {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn entries_fall_due_in_order_and_one_task_wakes_for_them() {
        let ticks = Arc::new(AtomicU32::new(0));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let counter = Arc::clone(&ticks);
        let mut timers = Timers::start(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            tx.send(()).is_ok()
        });
        let start = Instant::now();
        timers.add(start + Duration::from_millis(30), Timer::Deadline(3));
        timers.add(start + Duration::from_millis(10), Timer::Deadline(1));
        timers.add(start + Duration::from_millis(10), Timer::HangGrace(1));
        timers.add(start + Duration::from_millis(20), Timer::Boot);

        rx.recv().await.unwrap();
        assert_eq!(Instant::now() - start, Duration::from_millis(10));
        assert_eq!(
            timers.take_due(Instant::now()),
            [Timer::Deadline(1), Timer::HangGrace(1)]
        );
        rx.recv().await.unwrap();
        assert_eq!(timers.take_due(Instant::now()), [Timer::Boot]);
        rx.recv().await.unwrap();
        assert_eq!(timers.take_due(Instant::now()), [Timer::Deadline(3)]);
        assert_eq!(ticks.load(Ordering::SeqCst), 3);
        // Nothing left: the task sleeps until something is added.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(ticks.load(Ordering::SeqCst), 3);
    }
}
