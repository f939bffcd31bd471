//! [`PoolAdapter`]: a pool of workers — real Python (layer 3) or in-process
//! fakes speaking the protocol (layer 2, "bridge mock").

use std::sync::Arc;

use dspex_bridge::fake::FakeSpawner;
use dspex_bridge::pool::{CheckoutOptions, Pool, PoolConfig, PoolState, RequestOptions};
use dspex_bridge::{ConditionalSupervisor, InterpreterSource, Mode, PythonEnv, TreeConfig};
use dspex_protocol::Value;
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::broadcast;

use super::{Adapter, AdapterStatus, Operation};
use crate::config::AdapterKind;
use crate::error::{Error, Result};
use crate::event::Event;

/// Serves operations through a [`Pool`].
#[derive(Debug)]
pub struct PoolAdapter {
    kind: AdapterKind,
    pool: Pool,
    tree: Option<ConditionalSupervisor>,
    events: broadcast::Sender<Event>,
    forwarder: tokio::task::JoinHandle<()>,
}

impl Drop for PoolAdapter {
    fn drop(&mut self) {
        self.forwarder.abort();
    }
}

impl PoolAdapter {
    /// Real Python workers under a [`ConditionalSupervisor`] in pool mode.
    ///
    /// # Errors
    /// [`Error::Configuration`] when Python cannot run workers (with the
    /// environment report), [`Error::Unavailable`] when the tree cannot start.
    pub async fn python(config: PoolConfig) -> Result<Self> {
        let boot = config.worker.boot_timeout;
        let tree = ConditionalSupervisor::start(TreeConfig::Pool(config))
            .await
            .map_err(|e| Error::configuration(e.to_string()))?;
        let pool = tree
            .pool()
            .cloned()
            .ok_or_else(|| Error::configuration("the supervision tree started without a pool"))?;
        let adapter = Self::new(AdapterKind::Python, pool, Some(tree));
        adapter.first_ready(boot).await?;
        Ok(adapter)
    }

    /// In-process fake workers behind the real codec, actors and pool.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the pool cannot start.
    pub async fn bridge_mock(mut config: PoolConfig) -> Result<Self> {
        config.spawner = Some(Arc::new(FakeSpawner::default()));
        config.sweep_orphans = false;
        let python = PythonEnv {
            interpreter: "in-process-fake".into(),
            source: InterpreterSource::Explicit,
            package_root: std::env::temp_dir(),
        };
        let boot = config.worker.boot_timeout;
        let pool = Pool::start_on(config, python).await?;
        let adapter = Self::new(AdapterKind::BridgeMock, pool, None);
        adapter.first_ready(boot).await?;
        Ok(adapter)
    }

    /// Waits until the pool can serve: a first worker is ready (the others
    /// keep starting), or the pool has failed.
    async fn first_ready(&self, within: std::time::Duration) -> Result<()> {
        let mut status = self.pool.status_watch();
        let reached = tokio::time::timeout(
            within,
            status.wait_for(|s| s.idle + s.busy > 0 || matches!(s.state, PoolState::Failed(_))),
        )
        .await;
        match reached {
            Ok(Ok(status)) => match &status.state {
                PoolState::Failed(cause) => Err(Error::Unavailable {
                    cause: cause.clone(),
                    transient: false,
                }),
                _ => Ok(()),
            },
            Ok(Err(_)) => Err(Error::Unavailable {
                cause: "the pool stopped while starting".into(),
                transient: false,
            }),
            Err(_) => Err(Error::Unavailable {
                cause: format!("no worker was ready within {within:?}"),
                transient: true,
            }),
        }
    }

    fn new(kind: AdapterKind, pool: Pool, tree: Option<ConditionalSupervisor>) -> Self {
        let (events, _) = broadcast::channel(1024);
        let mut source = pool.subscribe();
        let sink = events.clone();
        let forwarder = tokio::spawn(async move {
            loop {
                match source.recv().await {
                    Ok(event) => {
                        if let Some(event) = Event::from_pool(event) {
                            let _ = sink.send(event);
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Self {
            kind,
            pool,
            tree,
            events,
            forwarder,
        }
    }

    /// The pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}

impl Adapter for PoolAdapter {
    fn call(&self, operation: Operation) -> BoxFuture<'_, Result<Value>> {
        async move {
            match operation {
                Operation::ConfigureLm(config) => {
                    let generation = self.pool.configure_lm(config).await?;
                    Ok(serde_json::json!({"status": "configured", "generation": generation}))
                }
                Operation::CreateProgram(program) => {
                    Ok(self.pool.create_program((*program).clone()).await?)
                }
                Operation::DeleteProgram(id) => {
                    let deleted = self.pool.delete_program(&id);
                    Ok(serde_json::json!({"program_id": id, "deleted": deleted}))
                }
                Operation::Execute(execution) => {
                    let options = RequestOptions {
                        checkout: CheckoutOptions {
                            session: execution.session,
                            ..CheckoutOptions::default()
                        },
                        timeout: execution.timeout,
                        lm: execution.lm,
                    };
                    Ok(self
                        .pool
                        .execute(&execution.program.program_id, execution.inputs, options)
                        .await?)
                }
            }
        }
        .boxed()
    }

    fn status(&self) -> AdapterStatus {
        let pool = self.pool.status();
        let failed = match &pool.state {
            PoolState::Failed(cause) => Some(cause.clone()),
            _ => self.tree.as_ref().and_then(ConditionalSupervisor::failure),
        };
        AdapterStatus {
            kind: self.kind,
            mode: Some(Mode::Pool),
            failed,
            pool: Some(pool),
            bridge: None,
            environment: self.tree.as_ref().and_then(|t| t.status().environment),
        }
    }

    fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        async move {
            let timeout = std::time::Duration::from_secs(30);
            match &self.tree {
                Some(tree) => {
                    tree.shutdown(timeout).await;
                }
                None => {
                    self.pool.shutdown(timeout).await;
                }
            }
        }
        .boxed()
    }
}
