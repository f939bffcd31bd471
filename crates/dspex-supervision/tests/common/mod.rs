//! In-memory children and event helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dspex_supervision::{ChildSpec, StartError, SupervisorEvent, SupervisorHandle};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::broadcast;

/// Deadline for any single expected event. Generous: under a paused clock it
/// costs nothing, in real time it only matters when a test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Shared, ordered record of what children did ("start:c1", "stop:c2", ...).
#[derive(Clone, Default, Debug)]
pub struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    pub fn push(&self, entry: String) {
        self.0.lock().unwrap().push(entry);
    }
    pub fn entries(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
    pub fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
}

/// What a test child can be told to do.
#[derive(Debug)]
pub enum ChildMsg {
    /// Return an error from the handler (ractor `ActorFailed`).
    Crash(String),
    /// Panic in the handler (ractor `ActorFailed` with the panic text).
    Panic(String),
    /// Stop itself with this reason.
    Stop(Option<String>),
    /// Block the handler forever, so a `stop` is never processed.
    Hang,
    /// Answer, proving the actor is alive.
    Ping(RpcReplyPort<String>),
}

#[derive(Clone, Debug, Default)]
pub struct Behaviour {
    /// `pre_start` fails with this text.
    pub fail_start: Option<String>,
    /// `post_start` panics.
    pub panic_after_start: bool,
}

pub struct TestChild;

pub struct ChildArgs {
    pub name: String,
    pub log: Log,
    pub behaviour: Behaviour,
}

pub struct ChildState {
    name: String,
    log: Log,
}

impl Actor for TestChild {
    type Msg = ChildMsg;
    type State = ChildState;
    type Arguments = ChildArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<ChildMsg>,
        args: ChildArgs,
    ) -> Result<ChildState, ActorProcessingErr> {
        if let Some(text) = args.behaviour.fail_start {
            args.log.push(format!("failstart:{}", args.name));
            return Err(text.into());
        }
        args.log.push(format!("start:{}", args.name));
        Ok(ChildState {
            name: args.name,
            log: args.log,
        })
    }

    async fn post_start(
        &self,
        _myself: ActorRef<ChildMsg>,
        _state: &mut ChildState,
    ) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<ChildMsg>,
        message: ChildMsg,
        state: &mut ChildState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ChildMsg::Crash(text) => return Err(text.into()),
            ChildMsg::Panic(text) => panic!("{text}"),
            ChildMsg::Stop(reason) => myself.stop(reason),
            ChildMsg::Hang => std::future::pending::<()>().await,
            ChildMsg::Ping(reply) => {
                let _ = reply.send(state.name.clone());
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ChildMsg>,
        state: &mut ChildState,
    ) -> Result<(), ActorProcessingErr> {
        state.log.push(format!("stop:{}", state.name));
        Ok(())
    }
}

/// A child whose post_start panics every time.
pub struct PanicAfterStart;

impl Actor for PanicAfterStart {
    type Msg = ();
    type State = ();
    type Arguments = String;

    async fn pre_start(&self, _: ActorRef<()>, _: String) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn post_start(&self, _: ActorRef<()>, _: &mut ()) -> Result<(), ActorProcessingErr> {
        panic!("leaf cannot run")
    }
}

/// A well-behaved child logging into `log`.
pub fn child(id: &str, log: &Log) -> ChildSpec {
    scripted(id, log, |_| Behaviour::default()).0
}

/// A child whose behaviour depends on the start attempt (1-based); returns the
/// spec and the attempt counter.
pub fn scripted(
    id: &str,
    log: &Log,
    behaviour: impl Fn(u32) -> Behaviour + Send + Sync + 'static,
) -> (ChildSpec, Arc<AtomicU32>) {
    let attempts = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&attempts);
    let name = id.to_owned();
    let log = log.clone();
    let behaviour = Arc::new(behaviour);
    let spec = ChildSpec::new(id, move |supervisor: ActorCell| {
        let attempt = counter.fetch_add(1, Ordering::SeqCst) + 1;
        let args = ChildArgs {
            name: name.clone(),
            log: log.clone(),
            behaviour: behaviour(attempt),
        };
        async move {
            let (child, _) = Actor::spawn_linked(None, TestChild, args, supervisor).await?;
            Ok::<_, StartError>(child.get_cell())
        }
    })
    .shutdown(Duration::from_secs(1));
    (spec, attempts)
}

/// A child that never starts: its `pre_start` always fails with `text`.
pub fn never_starts(id: &str, log: &Log, text: &str) -> (ChildSpec, Arc<AtomicU32>) {
    let text = text.to_owned();
    scripted(id, log, move |_| Behaviour {
        fail_start: Some(text.clone()),
        ..Behaviour::default()
    })
}

/// Send a message to a test child.
pub fn tell(cell: &ActorCell, message: ChildMsg) {
    cell.send_message(message).expect("child alive");
}

/// The current cell of child `id` (panics if down).
pub fn cell_of(handle: &SupervisorHandle, id: &str) -> ActorCell {
    handle
        .child(id)
        .unwrap_or_else(|| panic!("child {id} is down"))
}

/// The next event, within [`DEADLINE`].
pub async fn next_event(events: &mut broadcast::Receiver<SupervisorEvent>) -> SupervisorEvent {
    tokio::time::timeout(DEADLINE, events.recv())
        .await
        .expect("no event before the deadline")
        .expect("event stream closed or lagged")
}

/// Events up to and including the first one matching `stop`.
pub async fn events_until(
    events: &mut broadcast::Receiver<SupervisorEvent>,
    mut stop: impl FnMut(&SupervisorEvent) -> bool,
) -> Vec<SupervisorEvent> {
    let mut seen = Vec::new();
    loop {
        let event = next_event(events).await;
        let done = stop(&event);
        seen.push(event);
        if done {
            return seen;
        }
    }
}

/// `true` if `event` is `ChildStarted` for `id`.
pub fn started(event: &SupervisorEvent, id: &str) -> bool {
    matches!(event, SupervisorEvent::ChildStarted { id: i, .. } if i == id)
}

/// `true` if `event` is `Failed`.
pub fn failed(event: &SupervisorEvent) -> bool {
    matches!(event, SupervisorEvent::Failed { .. })
}

/// A compact, comparable rendering of events: "started:c1", "exited:c2:failed: boom",
/// "restarting:c2#1@100ms", "startfailed:c1", "failed:c1", "stopped".
pub fn brief(events: &[SupervisorEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            SupervisorEvent::ChildStarted { id, .. } => format!("started:{id}"),
            SupervisorEvent::ChildExited { id, cause } => format!("exited:{id}:{cause}"),
            SupervisorEvent::ChildRestarting { id, attempt, delay } => {
                format!("restarting:{id}#{attempt}@{}ms", delay.as_millis())
            }
            SupervisorEvent::StartFailed { id, .. } => format!("startfailed:{id}"),
            SupervisorEvent::Failed { cause } => format!("failed:{}", cause.child),
            SupervisorEvent::Stopped => "stopped".to_owned(),
        })
        .collect()
}

/// Ask a child for its name (proves it is alive and serving).
pub async fn ping(cell: &ActorCell) -> String {
    let actor: ActorRef<ChildMsg> = cell.clone().into();
    ractor::call_t!(actor, ChildMsg::Ping, 5_000).expect("ping")
}
