//! Giving up: Remain vs Escalate, nested escalation, no respawn after Failed.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::*;
use dspex_supervision::{
    Backoff, ChildSpec, ExitCause, OnGiveUp, RestartIntensity, StartError, Supervisor,
    SupervisorError, SupervisorEvent, SupervisorOptions, SupervisorState,
};
use ractor::{Actor, ActorStatus};

fn options(on_give_up: OnGiveUp, max_restarts: u32) -> SupervisorOptions {
    SupervisorOptions {
        on_give_up,
        intensity: RestartIntensity {
            max_restarts,
            within: Duration::from_secs(60),
        },
        ..SupervisorOptions::default()
    }
}

#[tokio::test(start_paused = true)]
async fn give_up_stops_the_remaining_children_in_reverse_order() {
    let log = Log::default();
    let supervisor = Supervisor::new(options(OnGiveUp::Remain, 0))
        .child(child("c1", &log))
        .child(child("c2", &log))
        .child(child("c3", &log));
    let mut events = supervisor.subscribe();
    let handle = supervisor.spawn().await.unwrap();
    events_until(&mut events, |e| started(e, "c3")).await;
    log.clear();

    tell(&cell_of(&handle, "c2"), ChildMsg::Crash("fatal".into()));
    let seen = events_until(&mut events, failed).await;
    assert_eq!(
        brief(&seen),
        [
            "exited:c2:failed: fatal",
            "exited:c3:shutdown",
            "exited:c1:shutdown",
            "failed:c2"
        ]
    );
    assert_eq!(log.entries(), ["stop:c3", "stop:c1"]);
    assert_eq!(handle.status().running(), 0);
    handle.stop(DEADLINE).await;
}

#[tokio::test(start_paused = true)]
async fn remain_keeps_answering_and_refuses_new_children() {
    let log = Log::default();
    let (spec, attempts) = never_starts("w", &log, "cannot import");
    let supervisor = Supervisor::new(options(OnGiveUp::Remain, 1)).child(spec);
    let mut events = supervisor.subscribe();
    let handle = supervisor.spawn().await.unwrap();
    events_until(&mut events, failed).await;

    // Still alive, in Failed, answering.
    assert_eq!(handle.cell().get_status(), ActorStatus::Running);
    let state = handle.status().state;
    assert!(state.is_failed(), "{state:?}");
    let refused = handle.start_child(child("late", &log)).await;
    assert!(
        matches!(refused, Err(SupervisorError::Failed(_))),
        "{refused:?}"
    );
    assert!(!log.entries().contains(&"start:late".to_owned()));
    assert_eq!(attempts.load(Ordering::SeqCst), 2);

    // Stopping keeps the Failed state (and its cause) and emits Stopped.
    handle.stop(DEADLINE).await;
    assert_eq!(brief(&[next_event(&mut events).await]), ["stopped"]);
    assert!(handle.status().state.is_failed());
}

#[tokio::test(start_paused = true)]
async fn escalate_fails_the_supervisor_with_the_cause() {
    let log = Log::default();
    let supervisor = Supervisor::new(options(OnGiveUp::Escalate, 0)).child(child("w", &log));
    let mut events = supervisor.subscribe();
    let handle = supervisor.spawn().await.unwrap();
    events_until(&mut events, |e| started(e, "w")).await;

    tell(
        &cell_of(&handle, "w"),
        ChildMsg::Panic("segfault-ish".into()),
    );
    let seen = events_until(&mut events, |e| matches!(e, SupervisorEvent::Stopped)).await;
    assert_eq!(
        brief(&seen),
        ["exited:w:failed: segfault-ish", "failed:w", "stopped"]
    );
    tokio::time::timeout(DEADLINE, handle.wait_stopped())
        .await
        .unwrap();
    assert_eq!(handle.cell().get_status(), ActorStatus::Stopped);
    let SupervisorState::Failed(cause) = handle.status().state else {
        panic!("not failed")
    };
    assert!(matches!(&cause.exit, ExitCause::Failed(t) if t.contains("segfault-ish")));
    // Operations on a terminated supervisor fail cleanly.
    let refused = handle.start_child(child("late", &log)).await;
    assert!(
        matches!(refused, Err(SupervisorError::NotRunning)),
        "{refused:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn escalate_during_the_initial_start_fails_spawn() {
    let log = Log::default();
    let (spec, attempts) = never_starts("w", &log, "no python");
    let result = Supervisor::new(options(OnGiveUp::Escalate, 0))
        .child(spec)
        .spawn()
        .await;
    match result {
        Err(SupervisorError::Failed(cause)) => {
            assert_eq!(cause.child, "w");
            assert!(matches!(&cause.exit, ExitCause::StartFailed(t) if t.contains("no python")));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
}

/// A leaf that always panics right after starting, under an inner supervisor
/// that escalates, under an outer one that remains: the outer sees the inner
/// fail like any child, restarts it within its own budget, then gives up.
#[tokio::test(start_paused = true)]
async fn nested_supervisor_escalates_to_its_parent() {
    let leaf_starts = Arc::new(AtomicU32::new(0));
    let inner_starts = Arc::new(AtomicU32::new(0));
    let (leaf_counter, inner_counter) = (Arc::clone(&leaf_starts), Arc::clone(&inner_starts));
    let inner = ChildSpec::supervisor("inner", move || {
        inner_counter.fetch_add(1, Ordering::SeqCst);
        let leaf_counter = Arc::clone(&leaf_counter);
        Supervisor::new(SupervisorOptions {
            backoff: Backoff::NONE,
            ..options(OnGiveUp::Escalate, 1)
        })
        .child(ChildSpec::new("leaf", move |sup| {
            leaf_counter.fetch_add(1, Ordering::SeqCst);
            async move {
                let (leaf, _) =
                    Actor::spawn_linked(None, PanicAfterStart, String::new(), sup).await?;
                Ok::<_, StartError>(leaf.get_cell())
            }
        }))
    });
    let outer = Supervisor::new(SupervisorOptions {
        backoff: Backoff::NONE,
        ..options(OnGiveUp::Remain, 1)
    })
    .child(inner);
    let mut events = outer.subscribe();
    let handle = outer.spawn().await.unwrap();

    let seen = events_until(&mut events, failed).await;
    let brief = brief(&seen);
    assert_eq!(brief[0], "started:inner");
    assert!(
        brief[1].starts_with("exited:inner:failed: supervisor gave up: child `leaf`"),
        "{brief:?}"
    );
    assert_eq!(&brief[2..4], ["restarting:inner#1@0ms", "started:inner"]);
    assert!(brief[4].starts_with("exited:inner:failed:"), "{brief:?}");
    assert_eq!(brief[5], "failed:inner");
    assert_eq!(brief.len(), 6);

    let SupervisorEvent::Failed { cause } = seen.last().unwrap() else {
        unreachable!()
    };
    assert_eq!(cause.child, "inner");
    // The inner cause (leaf id and its panic text) travels up whole.
    let text = cause.to_string();
    assert!(
        text.contains("child `leaf`") && text.contains("leaf cannot run"),
        "{text}"
    );
    // 2 inner incarnations x (1 + 1) leaf starts each.
    assert_eq!(inner_starts.load(Ordering::SeqCst), 2);
    assert_eq!(leaf_starts.load(Ordering::SeqCst), 4);
    assert_eq!(handle.status().running(), 0);
    handle.stop(DEADLINE).await;
}
