//! [`Session`]: calls that belong together, on one worker.

use dspex_bridge::pool::Session as PoolSession;
use serde::Serialize;

use crate::error::Result;
use crate::handle::{Dspex, ExecuteOptions};
use crate::program::Prediction;

/// A session of a [`Dspex`] instance. Its calls prefer the worker that served
/// it first (its caches stay warm); a stateful session runs only there.
#[derive(Debug, Clone)]
pub struct Session {
    dspex: Dspex,
    session: PoolSession,
}

impl Session {
    pub(crate) fn new(dspex: Dspex, session: PoolSession) -> Self {
        Self { dspex, session }
    }

    /// The session id.
    pub fn id(&self) -> &str {
        &self.session.id
    }

    /// Whether the session is pinned to its worker.
    pub fn is_stateful(&self) -> bool {
        self.session.stateful
    }

    /// Runs a program in this session.
    ///
    /// # Cancel safety
    /// As [`Dspex::execute`].
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
        options.session = Some(self.session.clone());
        self.dspex.execute(program_id, inputs, options).await
    }
}
