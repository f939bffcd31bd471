//! Waiting on events and conditions with a deadline — never a bare sleep.

use std::time::{Duration, Instant};

use tokio::sync::broadcast;

/// Receives events until one satisfies `predicate`, or fails at the deadline.
///
/// # Errors
/// When the deadline passes or the channel closes first.
pub async fn wait_event<E: Clone>(
    events: &mut broadcast::Receiver<E>,
    timeout: Duration,
    mut predicate: impl FnMut(&E) -> bool,
) -> anyhow::Result<E> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) => anyhow::bail!("no matching event within {timeout:?}"),
            Ok(Err(broadcast::error::RecvError::Lagged(n))) => {
                tracing::warn!(n, "event receiver lagged");
            }
            Ok(Err(broadcast::error::RecvError::Closed)) => {
                anyhow::bail!("event channel closed before a matching event")
            }
            Ok(Ok(event)) if predicate(&event) => return Ok(event),
            Ok(Ok(_)) => {}
        }
    }
}

/// Polls `condition` until it holds, yielding between polls (1 ms apart), or
/// fails at the deadline. For state only the OS can show (`/proc`), where no
/// event exists to wait on.
///
/// # Errors
/// When the deadline passes first.
pub async fn poll_until(
    timeout: Duration,
    what: &str,
    mut condition: impl FnMut() -> bool,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        if condition() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            anyhow::bail!("{what}: still not true after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
