//! The SessionStore: the pool's sessions, kept on the Rust side.
//!
//! Sessions carry a last-used time and expire after the TTL; the store's
//! actor sweeps them and tells the pool to forget their worker affinity. The
//! data sits behind a lock callers take directly, so a checkout costs no
//! extra actor round trip; the actor is the janitor. (Programs are not kept
//! here: their one store is the caller's, and each call carries the
//! [`super::ProgramVersion`] it runs.)

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;

use super::actor::{Inner, PoolMsg};

#[derive(Debug, Clone)]
struct Session {
    stateful: bool,
    last_used: Instant,
}

#[derive(Debug, Default)]
struct Data {
    sessions: HashMap<String, Session>,
}

/// The sessions of one pool. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct SessionStore {
    data: Arc<RwLock<Data>>,
}

impl SessionStore {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Data> {
        self.data
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Data> {
        self.data
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a use of a session (creating it).
    pub fn touch_session(&self, session_id: &str, stateful: bool) {
        let mut data = self.write();
        let session = data
            .sessions
            .entry(session_id.to_owned())
            .or_insert(Session {
                stateful,
                last_used: Instant::now(),
            });
        session.last_used = Instant::now();
        session.stateful |= stateful;
    }

    /// Whether a session exists and is stateful.
    pub fn is_stateful(&self, session_id: &str) -> Option<bool> {
        self.read().sessions.get(session_id).map(|s| s.stateful)
    }

    /// Ends a session; `true` if it existed.
    pub fn end_session(&self, session_id: &str) -> bool {
        self.write().sessions.remove(session_id).is_some()
    }

    /// The number of live sessions.
    pub fn session_count(&self) -> usize {
        self.read().sessions.len()
    }

    /// Removes sessions unused for `ttl`; returns their ids.
    pub fn expire(&self, ttl: Duration) -> Vec<String> {
        let mut data = self.write();
        let now = Instant::now();
        let expired: Vec<String> = data
            .sessions
            .iter()
            .filter(|(_, s)| now.duration_since(s.last_used) >= ttl)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            data.sessions.remove(id);
        }
        expired
    }
}

/// The janitor actor: sweeps expired sessions and tells the pool.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SessionJanitor;

/// What the janitor is started with.
#[derive(Debug)]
pub(crate) struct JanitorArgs {
    pub(crate) store: SessionStore,
    pub(crate) ttl: Duration,
    pub(crate) pool: tokio::sync::watch::Receiver<Option<ActorRef<PoolMsg>>>,
}

/// The janitor's state.
#[derive(Debug)]
pub(crate) struct JanitorState {
    args: JanitorArgs,
    timer: JoinHandle<()>,
}

impl Drop for JanitorState {
    fn drop(&mut self) {
        self.timer.abort();
    }
}

/// The janitor's tick.
#[derive(Debug)]
pub(crate) struct Sweep;

impl Actor for SessionJanitor {
    type Msg = Sweep;
    type State = JanitorState;
    type Arguments = JanitorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Sweep>,
        args: JanitorArgs,
    ) -> Result<JanitorState, ActorProcessingErr> {
        let every = (args.ttl / 4).clamp(Duration::from_millis(50), Duration::from_secs(60));
        let timer = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            loop {
                ticks.tick().await;
                if myself.send_message(Sweep).is_err() {
                    return;
                }
            }
        });
        Ok(JanitorState { args, timer })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Sweep>,
        _message: Sweep,
        state: &mut JanitorState,
    ) -> Result<(), ActorProcessingErr> {
        let expired = state.args.store.expire(state.args.ttl);
        if let Some(pool) = state.args.pool.borrow().as_ref() {
            for id in expired {
                let _ = pool.send_message(PoolMsg(Inner::ForgetSession(id)));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn sessions_expire_after_the_ttl() {
        let store = SessionStore::default();
        store.touch_session("s", true);
        assert_eq!(store.is_stateful("s"), Some(true));
        assert!(store.expire(Duration::from_secs(60)).is_empty());
        assert_eq!(store.expire(Duration::ZERO), ["s"]);
        assert_eq!(store.session_count(), 0);
    }
}
