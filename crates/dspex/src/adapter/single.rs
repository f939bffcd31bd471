//! [`SingleAdapter`]: one Python worker under a bridge supervisor (or none,
//! in disabled mode).

use std::sync::Mutex;

use dspex_bridge::{BridgeConfig, CallOptions, ConditionalSupervisor, TreeConfig};
use dspex_protocol::{Command, ExecuteArgs, LmConfig, Value};
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::broadcast;

use super::{Adapter, AdapterStatus, Operation};
use crate::config::AdapterKind;
use crate::error::{Error, Result};
use crate::event::Event;

/// Serves operations through a single bridge.
///
/// A restarted worker has lost what its predecessor was told, so every
/// execution carries the program's definition (the worker rebuilds it only
/// when its hash differs) and the configured LM.
#[derive(Debug)]
pub struct SingleAdapter {
    tree: ConditionalSupervisor,
    lm: Mutex<Option<LmConfig>>,
    events: broadcast::Sender<Event>,
    forwarder: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for SingleAdapter {
    fn drop(&mut self) {
        if let Some(forwarder) = &self.forwarder {
            forwarder.abort();
        }
    }
}

impl SingleAdapter {
    /// A single bridge, or no worker at all when `config` is `None`
    /// (disabled mode: every call fails with a clear error).
    ///
    /// # Errors
    /// [`Error::Configuration`] when Python cannot run workers.
    pub async fn start(config: Option<BridgeConfig>) -> Result<Self> {
        let boot = config.as_ref().map(|c| c.worker.boot_timeout);
        let tree_config = match config {
            Some(config) => TreeConfig::Single(config),
            None => TreeConfig::Disabled,
        };
        let tree = ConditionalSupervisor::start(tree_config)
            .await
            .map_err(|e| Error::configuration(e.to_string()))?;
        let (events, _) = broadcast::channel(1024);
        let forwarder = tree.bridge().map(|bridge| {
            let mut source = bridge.subscribe();
            let sink = events.clone();
            tokio::spawn(async move {
                loop {
                    match source.recv().await {
                        Ok(event) => {
                            if let Some(event) = Event::from_worker(event) {
                                let _ = sink.send(event);
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            })
        });
        if let (Some(boot), Some(bridge)) = (boot, tree.bridge()) {
            // Serve from the first call on: wait for the worker's handshake.
            bridge.ready_worker(boot).await?;
        }
        Ok(Self {
            tree,
            lm: Mutex::new(None),
            events,
            forwarder,
        })
    }

    /// The supervision tree.
    pub fn tree(&self) -> &ConditionalSupervisor {
        &self.tree
    }

    fn lm(&self) -> Option<LmConfig> {
        self.lm
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Adapter for SingleAdapter {
    fn call(&self, operation: Operation) -> BoxFuture<'_, Result<Value>> {
        async move {
            let bridge = self.tree.serving_bridge()?;
            match operation {
                Operation::ConfigureLm(config) => {
                    let reply = bridge
                        .call(Command::ConfigureLm(config.clone()), CallOptions::default())
                        .await?;
                    *self
                        .lm
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(config);
                    Ok(reply)
                }
                Operation::CreateProgram(program) => Ok(bridge
                    .call(
                        Command::CreateProgram((*program).clone()),
                        CallOptions::default(),
                    )
                    .await?),
                Operation::DeleteProgram(program_id) => Ok(bridge
                    .call(
                        Command::DeleteProgram { program_id },
                        CallOptions::default(),
                    )
                    .await?),
                Operation::Execute(execution) => {
                    let args = ExecuteArgs {
                        program_id: execution.program.program_id.clone(),
                        inputs: execution.inputs,
                        program: Some((*execution.program).clone()),
                        lm: execution.lm.or_else(|| self.lm()),
                    };
                    let options = CallOptions {
                        session_id: execution.session.map(|s| s.id),
                        timeout: execution.timeout,
                    };
                    Ok(bridge.call(Command::ExecuteProgram(args), options).await?)
                }
            }
        }
        .boxed()
    }

    fn status(&self) -> AdapterStatus {
        let status = self.tree.status();
        AdapterStatus {
            kind: AdapterKind::Python,
            mode: Some(status.mode),
            failed: status.failed,
            pool: None,
            bridge: status.bridge,
            environment: status.environment,
        }
    }

    fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        async move {
            self.tree.shutdown(std::time::Duration::from_secs(30)).await;
        }
        .boxed()
    }
}
