//! [`AdmissionLayer`]: the shutdown gate. Calls are admitted until the
//! [`Gate`] closes; then they are refused at once. The calls in flight are
//! counted, so a graceful shutdown waits for exactly those.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::guard::{Guard, GuardLayer, Guarded};
use crate::error::Error;

/// Admits calls until closed, and counts those in flight.
#[derive(Debug)]
pub struct Gate {
    closed: std::sync::atomic::AtomicBool,
    in_flight: watch::Sender<usize>,
}

impl Default for Gate {
    fn default() -> Self {
        Self {
            closed: std::sync::atomic::AtomicBool::new(false),
            in_flight: watch::channel(0).0,
        }
    }
}

impl Gate {
    /// Admits one call: a guard that counts it until dropped.
    ///
    /// # Errors
    /// [`Error::Unavailable`] (shutting down) once the gate is closed.
    pub fn admit(self: &Arc<Self>) -> Result<InFlight, Error> {
        self.in_flight.send_modify(|n| *n += 1);
        // Checked after counting: a call admitted here is one `drained` sees.
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            self.in_flight.send_modify(|n| *n -= 1);
            return Err(Error::shutting_down());
        }
        Ok(InFlight(Arc::clone(self)))
    }

    /// Stops admitting: every later call is refused at once.
    pub fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether the gate is closed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Calls admitted and not finished.
    pub fn in_flight(&self) -> usize {
        *self.in_flight.borrow()
    }

    /// Waits up to `grace` for the calls in flight to finish; `true` if they
    /// all did.
    ///
    /// # Cancel safety
    /// Cancel safe: it only observes.
    pub async fn drained(&self, grace: Duration) -> bool {
        let mut count = self.in_flight.subscribe();
        matches!(
            tokio::time::timeout(grace, count.wait_for(|n| *n == 0)).await,
            Ok(Ok(_))
        )
    }
}

/// One admitted call; dropping it ends the count.
#[derive(Debug)]
pub struct InFlight(Arc<Gate>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.send_modify(|n| *n -= 1);
    }
}

/// The gate as a [`Guard`]: refuses at once once closed, counts the calls
/// it let in while they run.
impl Guard for Gate {
    type Ticket = InFlight;

    fn ready(&self) -> Result<(), Error> {
        if self.is_closed() {
            return Err(Error::shutting_down());
        }
        Ok(())
    }

    fn enter(self: &Arc<Self>) -> Result<InFlight, Error> {
        self.admit()
    }

    fn leave<T>(in_flight: InFlight, _result: &Result<T, Error>) {
        drop(in_flight);
    }
}

/// The layer of [`Admission`].
pub type AdmissionLayer = GuardLayer<Gate>;

/// Refuses calls once its gate is closed; counts the others while they run.
pub type Admission<S> = Guarded<Gate, S>;

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, ServiceExt};

    #[tokio::test]
    async fn a_closed_gate_refuses_and_drained_waits_for_the_calls_in_flight() {
        let gate = Arc::new(Gate::default());
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let released = Arc::new(tokio::sync::Mutex::new(Some(released)));
        let service =
            AdmissionLayer::new(Arc::clone(&gate)).layer(tower::service_fn(move |(): ()| {
                let released = Arc::clone(&released);
                async move {
                    if let Some(wait) = released.lock().await.take() {
                        let _ = wait.await;
                    }
                    Ok::<_, Error>(7)
                }
            }));
        let running = tokio::spawn(service.clone().oneshot(()));
        until(|| gate.in_flight() == 1).await;
        gate.close();
        let refused = service.clone().oneshot(()).await.unwrap_err();
        assert_eq!(refused.category(), crate::Category::Unavailable);
        assert!(refused.to_string().contains("shutting down"), "{refused}");
        assert!(!gate.drained(Duration::from_millis(20)).await);
        release.send(()).unwrap();
        assert!(gate.drained(Duration::from_secs(5)).await);
        assert_eq!(
            running.await.unwrap().unwrap(),
            7,
            "the call in flight finished"
        );
    }

    pub(crate) async fn until(mut condition: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !condition() {
            assert!(tokio::time::Instant::now() < deadline, "condition not met");
            tokio::task::yield_now().await;
        }
    }
}
