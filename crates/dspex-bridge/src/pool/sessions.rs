//! The SessionStore: program definitions and sessions, kept on the Rust side.
//!
//! Program definitions live here, not in any worker, so any worker can run
//! any program: the pool sends a definition to a worker that lacks it, and a
//! restarted worker simply gets it again. Sessions carry a last-used time and
//! expire after the TTL; the store's actor sweeps them and tells the pool to
//! forget their worker affinity. The data sits behind a lock readers take
//! directly, so an `execute` costs no actor round trip; the actor is the
//! janitor.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use dspex_protocol::ProgramDefinition;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;

use super::actor::{Inner, PoolMsg};

/// A stored program and the hash of its definition.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredProgram {
    /// The definition sent to workers.
    pub definition: Arc<ProgramDefinition>,
    /// SHA-256 of its canonical JSON; a worker that has loaded this hash has
    /// this exact definition.
    pub hash: String,
}

#[derive(Debug, Clone)]
struct Session {
    stateful: bool,
    last_used: Instant,
}

#[derive(Debug, Default)]
struct Data {
    programs: HashMap<String, StoredProgram>,
    sessions: HashMap<String, Session>,
}

/// Programs and sessions of one pool. Cheap to clone.
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

    /// Stores (or replaces) a program; returns its hash.
    pub fn put_program(&self, definition: ProgramDefinition) -> StoredProgram {
        let hash = program_hash(&definition);
        let stored = StoredProgram {
            definition: Arc::new(definition),
            hash,
        };
        self.write()
            .programs
            .insert(stored.definition.program_id.clone(), stored.clone());
        stored
    }

    /// A stored program.
    pub fn program(&self, program_id: &str) -> Option<StoredProgram> {
        self.read().programs.get(program_id).cloned()
    }

    /// Removes a program; `true` if it existed.
    pub fn delete_program(&self, program_id: &str) -> bool {
        self.write().programs.remove(program_id).is_some()
    }

    /// The ids of the stored programs, sorted.
    pub fn program_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.read().programs.keys().cloned().collect();
        ids.sort();
        ids
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

/// SHA-256 (hex) of the definition's canonical JSON (sorted keys, compact).
pub fn program_hash(definition: &ProgramDefinition) -> String {
    // serde_json's map is ordered by key, so `to_value` then `to_string` is
    // canonical.
    let canonical = serde_json::to_value(definition)
        .map(|v| v.to_string())
        .unwrap_or_default();
    Sha256::digest(canonical.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
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
    use dspex_protocol::{FieldSpec, SignatureSpec};

    fn program(id: &str, instructions: &str) -> ProgramDefinition {
        ProgramDefinition {
            program_id: id.into(),
            signature: SignatureSpec {
                name: "S".into(),
                instructions: instructions.into(),
                inputs: vec![FieldSpec::new("q", "str")],
                outputs: vec![FieldSpec::new("a", "str")],
            },
            module: "predict".into(),
            demos: vec![],
        }
    }

    #[test]
    fn the_hash_names_the_definition() {
        assert_eq!(
            program_hash(&program("p", "x")),
            program_hash(&program("p", "x"))
        );
        assert_ne!(
            program_hash(&program("p", "x")),
            program_hash(&program("p", "y"))
        );
        assert_eq!(program_hash(&program("p", "x")).len(), 64);
    }

    #[test]
    fn programs_are_stored_replaced_and_deleted() {
        let store = SessionStore::default();
        let first = store.put_program(program("p", "x"));
        let second = store.put_program(program("p", "y"));
        assert_ne!(first.hash, second.hash);
        assert_eq!(store.program("p").unwrap().hash, second.hash);
        assert_eq!(store.program_ids(), ["p"]);
        assert!(store.delete_program("p"));
        assert!(!store.delete_program("p"));
        assert!(store.program("p").is_none());
    }

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
