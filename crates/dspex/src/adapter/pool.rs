//! [`PoolAdapter`]: a pool of workers — real Python (layer 3: pool mode,
//! single mode, which is the pool with one worker, or disabled) or
//! in-process fakes speaking the protocol (layer 2, "bridge mock").

use std::sync::Arc;
use std::time::Duration;

use dspex_bridge::fake::FakeSpawner;
use dspex_bridge::pool::{CheckoutOptions, Pool, PoolConfig, PoolState, RequestOptions};
use dspex_bridge::{ConditionalSupervisor, InterpreterSource, Mode, PythonEnv, TreeConfig};
use dspex_protocol::Value;
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::broadcast;

use super::{Adapter, AdapterStatus, Execution, Operation, Readiness};
use crate::config::AdapterKind;
use crate::error::{Error, Result};
use crate::event::Event;

/// How long the tree may take to stop once drained (each worker has its own
/// EOF → SIGTERM → SIGKILL graces inside this).
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves operations through a [`Pool`] (none in disabled mode).
#[derive(Debug)]
pub struct PoolAdapter {
    kind: AdapterKind,
    mode: Mode,
    pool: Option<Pool>,
    tree: Option<ConditionalSupervisor>,
    events: broadcast::Sender<Event>,
    forwarder: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for PoolAdapter {
    fn drop(&mut self) {
        if let Some(forwarder) = &self.forwarder {
            forwarder.abort();
        }
    }
}

impl PoolAdapter {
    /// Real Python workers under a [`ConditionalSupervisor`]: a pool, a
    /// single worker, or none at all (disabled: every call fails with a
    /// clear error). Returns once a first worker is ready.
    ///
    /// # Errors
    /// [`Error::Configuration`] when Python cannot run workers (with the
    /// environment report), [`Error::Unavailable`] when the tree cannot start.
    pub async fn python(config: TreeConfig) -> Result<Self> {
        let boot = match &config {
            TreeConfig::Pool(pool) | TreeConfig::Single(pool) => Some(pool.worker.boot_timeout),
            TreeConfig::Disabled => None,
        };
        let mode = config.mode();
        let tree = ConditionalSupervisor::start(config)
            .await
            .map_err(|e| Error::configuration(e.to_string()))?;
        let pool = tree.pool().cloned();
        let adapter = Self::new(AdapterKind::Python, mode, pool, Some(tree));
        if let Some(boot) = boot {
            adapter.first_ready(boot).await?;
        }
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
            project: None,
            layer: None,
        };
        let boot = config.worker.boot_timeout;
        let mode = if config.size == 1 {
            Mode::Single
        } else {
            Mode::Pool
        };
        let pool = Pool::start_on(config, python).await?;
        let adapter = Self::new(AdapterKind::BridgeMock, mode, Some(pool), None);
        adapter.first_ready(boot).await?;
        Ok(adapter)
    }

    /// Waits until the pool can serve: a first worker is ready (the others
    /// keep starting), or the pool has failed.
    async fn first_ready(&self, within: Duration) -> Result<()> {
        let Some(pool) = &self.pool else {
            return Ok(());
        };
        let mut status = pool.status_watch();
        let reached = tokio::time::timeout(
            within,
            status.wait_for(|s| s.idle + s.busy > 0 || matches!(s.state, PoolState::Failed(_))),
        )
        .await;
        match reached {
            Ok(Ok(status)) => match &status.state {
                PoolState::Failed(cause) => Err(Error::Unavailable {
                    cause: cause.clone(),
                    retry_after: None,
                }),
                _ => Ok(()),
            },
            Ok(Err(_)) => Err(Error::Unavailable {
                cause: "the pool stopped while starting".into(),
                retry_after: None,
            }),
            Err(_) => Err(Error::Unavailable {
                cause: format!("no worker was ready within {within:?}"),
                retry_after: Some(within),
            }),
        }
    }

    fn new(
        kind: AdapterKind,
        mode: Mode,
        pool: Option<Pool>,
        tree: Option<ConditionalSupervisor>,
    ) -> Self {
        let (events, _) = broadcast::channel(1024);
        let forwarder = pool.as_ref().map(|pool| {
            let mut source = pool.subscribe();
            let sink = events.clone();
            tokio::spawn(async move {
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
            })
        });
        Self {
            kind,
            mode,
            pool,
            tree,
            events,
            forwarder,
        }
    }

    /// The pool (none in disabled mode).
    pub fn pool(&self) -> Option<&Pool> {
        self.pool.as_ref()
    }

    fn serving(&self) -> Result<&Pool> {
        match &self.tree {
            Some(tree) => Ok(tree.serving_pool()?),
            None => self.pool.as_ref().ok_or_else(|| Error::Unavailable {
                cause: "no pool".into(),
                retry_after: None,
            }),
        }
    }
}

impl Adapter for PoolAdapter {
    fn readiness(&self) -> Readiness {
        let pool = match self.serving() {
            Ok(pool) => pool,
            Err(error) => return Readiness::Refuse(error),
        };
        if let Err(error) = pool.admission() {
            return Readiness::Refuse(error.into());
        }
        if pool.has_room() {
            return Readiness::Ready;
        }
        let mut status = pool.status_watch();
        status.mark_unchanged();
        Readiness::Busy(Box::pin(async move {
            let _ = status.changed().await;
        }))
    }

    fn call(&self, operation: Operation) -> BoxFuture<'_, Result<Value>> {
        async move {
            let pool = self.serving()?;
            match operation {
                Operation::ConfigureLm(config) => {
                    let generation = pool.configure_lm(config).await?;
                    Ok(serde_json::json!({"status": "configured", "generation": generation}))
                }
                Operation::CreateProgram(program) => {
                    let version = pool.create_program((*program.definition).clone()).await?;
                    Ok(serde_json::json!({"program_id": version.id(), "hash": version.hash}))
                }
                // The handle's store is the only one; workers forget a
                // deleted program lazily (it is never sent again).
                Operation::DeleteProgram(id) => {
                    Ok(serde_json::json!({"program_id": id, "deleted": true}))
                }
                Operation::Execute(execution) => {
                    let Execution {
                        program,
                        run,
                        session,
                        timeout,
                        lm,
                        hooks,
                    } = *execution;
                    let options = RequestOptions {
                        checkout: CheckoutOptions {
                            session,
                            ..CheckoutOptions::default()
                        },
                        timeout,
                        lm,
                        hooks,
                    };
                    Ok(pool.execute(&program, run, options).await?)
                }
            }
        }
        .boxed()
    }

    fn status(&self) -> AdapterStatus {
        let pool = self.pool.as_ref().map(Pool::status);
        let failed = match pool.as_ref().map(|p| &p.state) {
            Some(PoolState::Failed(cause)) => Some(cause.clone()),
            _ => self.tree.as_ref().and_then(ConditionalSupervisor::failure),
        };
        AdapterStatus {
            kind: self.kind,
            mode: Some(self.mode),
            failed,
            pool,
            environment: self.tree.as_ref().and_then(|t| t.status().environment),
        }
    }

    fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    fn shutdown(&self, grace: Duration) -> BoxFuture<'_, ()> {
        async move {
            match (&self.tree, &self.pool) {
                (Some(tree), _) => {
                    tree.shutdown(grace, STOP_TIMEOUT).await;
                }
                (None, Some(pool)) => {
                    pool.shutdown(grace, STOP_TIMEOUT).await;
                }
                (None, None) => {}
            }
        }
        .boxed()
    }
}
