//! [`Session`]: calls that belong together — one worker preferred, and the
//! conversation's turns kept on the Rust side.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use dspex_bridge::pool::Session as PoolSession;
use dspex_protocol::{Map, Value};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::handle::{Dspex, ExecuteOptions, to_map};
use crate::program::Prediction;
use crate::signature::{FieldType, FieldValue};

/// The earlier turns of a conversation: the value of a `history` input
/// field (DSPy's `dspy.History`). Each message is one turn's fields
/// (its inputs and the outputs they got).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// The turns, oldest first.
    pub messages: Vec<Map<String, Value>>,
}

impl FieldValue for History {
    fn field_type() -> FieldType {
        FieldType::History
    }
}

/// A session of a [`Dspex`] instance. Its calls prefer the worker that served
/// it first (its caches stay warm); a stateful session runs only there.
///
/// A session is also a conversation: when a program has a `history` input,
/// the session fills it with the turns of its earlier calls of that
/// program and records each new turn (the other inputs and the declared
/// outputs). The turns live here, in Rust, and travel with every call, so a
/// conversation survives the death of any worker. Clones share the turns.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use dspex::{AdapterKind, Dspex, ExecuteOptions, LmConfig, Module, Signature};
/// use serde_json::json;
///
/// let dspex = Dspex::builder().adapter(AdapterKind::Mock).lm(LmConfig::dummy()).start().await?;
/// let chat = Signature::parse("question: str, history: history -> answer: str")?;
/// dspex.create_program("chat", chat, Module::Predict).await?;
/// let session = dspex.session("user-7");
/// session.execute("chat", json!({"question": "Hi"}), ExecuteOptions::default()).await?;
/// session.execute("chat", json!({"question": "And?"}), ExecuteOptions::default()).await?;
/// let turns = session.history("chat").messages;
/// assert_eq!(turns.len(), 2);
/// assert_eq!(turns[0]["question"], "Hi");
/// # dspex.shutdown().await;
/// # Ok::<(), dspex::Error>(())
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct Session {
    dspex: Dspex,
    session: PoolSession,
    /// Turns by program id.
    turns: Arc<Mutex<HashMap<String, History>>>,
}

impl Session {
    pub(crate) fn new(dspex: Dspex, session: PoolSession) -> Self {
        Self {
            dspex,
            session,
            turns: Arc::default(),
        }
    }

    /// The session id.
    pub fn id(&self) -> &str {
        &self.session.id
    }

    /// Whether the session is pinned to its worker.
    pub fn is_stateful(&self) -> bool {
        self.session.stateful
    }

    /// The turns recorded for `program_id`, oldest first.
    pub fn history(&self, program_id: &str) -> History {
        self.lock().get(program_id).cloned().unwrap_or_default()
    }

    /// Forgets every recorded turn.
    pub fn clear_history(&self) {
        self.lock().clear();
    }

    /// Runs a program in this session. A `history` input left out is the
    /// session's turns of this program; a successful call is recorded as a
    /// turn (only when the program has a `history` input).
    ///
    /// # Cancel safety
    /// As [`Dspex::execute`]; a dropped call records no turn.
    ///
    /// # Errors
    /// As [`Dspex::execute`], and [`crate::Error::SessionLost`] for a
    /// stateful session whose worker is gone.
    pub async fn execute(
        &self,
        program_id: &str,
        inputs: impl Serialize,
        mut options: ExecuteOptions,
    ) -> Result<Prediction> {
        let entry = self.dspex.entry(program_id)?;
        let history: Vec<String> = entry
            .signature
            .inputs()
            .iter()
            .filter(|f| f.ty().without_optional() == &FieldType::History)
            .map(|f| f.name().to_owned())
            .collect();
        let mut inputs = to_map(&inputs)?;
        if !history.is_empty() {
            let turns = self.history(program_id);
            for field in &history {
                if !inputs.contains_key(field) {
                    inputs.insert(
                        field.clone(),
                        serde_json::json!({ "messages": turns.messages }),
                    );
                }
            }
        }
        options.session = Some(self.session.clone());
        let prediction = self.dspex.execute(program_id, &inputs, options).await?;
        if !history.is_empty() {
            let mut turn: Map<String, Value> = inputs
                .into_iter()
                .filter(|(name, _)| !history.contains(name))
                .collect();
            for field in entry.signature.outputs() {
                if let Some(value) = prediction.outputs.get(field.name()) {
                    turn.insert(field.name().to_owned(), value.clone());
                }
            }
            self.lock()
                .entry(program_id.to_owned())
                .or_default()
                .messages
                .push(turn);
        }
        Ok(prediction)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, History>> {
        self.turns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
