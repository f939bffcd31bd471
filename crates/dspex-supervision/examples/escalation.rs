//! A leaf that panics on every start, two supervisors deep.
//!
//! ```text
//! root (one_for_one, remain, 1 restart / 60 s)
//! └── pool (one_for_one, escalate, 2 restarts / 60 s)
//!     └── worker-0 (permanent; its post_start panics)
//! ```
//!
//! `pool` restarts the worker twice, then gives up and escalates; `root` sees
//! `pool` fail like any child, restarts it once, and when it fails again
//! `root` gives up too and stays up in `Failed`, naming `pool` and carrying the
//! whole chain of causes. Run with `cargo run -p dspex-supervision --example escalation`.

use std::time::Duration;

use dspex_supervision::{
    Backoff, ChildSpec, OnGiveUp, RestartIntensity, StartError, Supervisor, SupervisorEvent,
    SupervisorOptions,
};
use ractor::{Actor, ActorProcessingErr, ActorRef};

struct Worker;

impl Actor for Worker {
    type Msg = ();
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn post_start(&self, _: ActorRef<()>, _: &mut ()) -> Result<(), ActorProcessingErr> {
        panic!("ModuleNotFoundError: No module named 'dspy'")
    }
}

fn options(on_give_up: OnGiveUp, max_restarts: u32) -> SupervisorOptions {
    SupervisorOptions {
        on_give_up,
        intensity: RestartIntensity {
            max_restarts,
            within: Duration::from_secs(60),
        },
        backoff: Backoff {
            initial: Duration::from_millis(10),
            factor: 2,
            max: Duration::from_millis(100),
        },
        ..SupervisorOptions::default()
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Keep the demo output to the events: silence the worker's panic message.
    std::panic::set_hook(Box::new(|_| {}));

    let pool = ChildSpec::supervisor("pool", || {
        Supervisor::new(options(OnGiveUp::Escalate, 2)).child(ChildSpec::new(
            "worker-0",
            |sup| async move {
                let (worker, _) = Actor::spawn_linked(None, Worker, (), sup).await?;
                Ok::<_, StartError>(worker.get_cell())
            },
        ))
    });
    let root = Supervisor::new(options(OnGiveUp::Remain, 1)).child(pool);
    let mut events = root.subscribe();
    let handle = root.spawn().await?;

    loop {
        let event = tokio::time::timeout(Duration::from_secs(5), events.recv()).await??;
        match &event {
            SupervisorEvent::ChildStarted { id, .. } => println!("root: started {id}"),
            SupervisorEvent::ChildExited { id, cause } => println!("root: {id} exited: {cause}"),
            SupervisorEvent::ChildRestarting { id, delay, .. } => {
                println!("root: restarting {id} in {delay:?}")
            }
            SupervisorEvent::Failed { cause } => {
                println!("root: FAILED: {cause}");
                break;
            }
            other => println!("root: {other:?}"),
        }
    }
    println!(
        "root is still up and failed: {}",
        handle.status().state.is_failed()
    );
    handle.stop(Duration::from_secs(5)).await;
    Ok(())
}
