//! one_for_one: only the child that went down is restarted.

mod common;

use std::time::Duration;

use common::*;
use dspex_supervision::{ExitCause, Strategy, Supervisor, SupervisorEvent, SupervisorOptions};

fn three_children(log: &Log) -> Supervisor {
    Supervisor::new(SupervisorOptions {
        strategy: Strategy::OneForOne,
        ..SupervisorOptions::default()
    })
    .child(child("c1", log))
    .child(child("c2", log))
    .child(child("c3", log))
}

#[tokio::test(start_paused = true)]
async fn crash_restarts_only_that_child_after_the_initial_backoff() {
    let log = Log::default();
    let supervisor = three_children(&log);
    let mut events = supervisor.subscribe();
    let handle = supervisor.spawn().await.unwrap();
    let initial = events_until(&mut events, |e| started(e, "c3")).await;
    assert_eq!(brief(&initial), ["started:c1", "started:c2", "started:c3"]);
    let (c1, c2, c3) = (
        cell_of(&handle, "c1"),
        cell_of(&handle, "c2"),
        cell_of(&handle, "c3"),
    );
    log.clear();

    let crashed_at = tokio::time::Instant::now();
    tell(&c2, ChildMsg::Crash("boom".into()));
    let seen = events_until(&mut events, |e| started(e, "c2")).await;
    assert_eq!(
        brief(&seen),
        [
            "exited:c2:failed: boom",
            "restarting:c2#1@100ms",
            "started:c2"
        ]
    );
    assert_eq!(crashed_at.elapsed(), Duration::from_millis(100));
    assert_eq!(log.entries(), ["start:c2"]);

    let status = handle.status();
    assert_eq!(cell_of(&handle, "c1").get_id(), c1.get_id());
    assert_eq!(cell_of(&handle, "c3").get_id(), c3.get_id());
    assert_ne!(cell_of(&handle, "c2").get_id(), c2.get_id());
    let restarts: Vec<u32> = status.children.iter().map(|c| c.restarts).collect();
    assert_eq!(restarts, [0, 1, 0]);
    assert_eq!(
        status.child("c2").unwrap().last_cause,
        Some(ExitCause::Failed("boom".into()))
    );
    assert_eq!(ping(&cell_of(&handle, "c2")).await, "c2");
    handle.stop(DEADLINE).await;
}

#[tokio::test(start_paused = true)]
async fn panic_is_reported_with_its_message_and_restarted() {
    let log = Log::default();
    let supervisor = three_children(&log);
    let mut events = supervisor.subscribe();
    let handle = supervisor.spawn().await.unwrap();
    events_until(&mut events, |e| started(e, "c3")).await;

    tell(
        &cell_of(&handle, "c1"),
        ChildMsg::Panic("kaboom at line 7".into()),
    );
    let seen = events_until(&mut events, |e| started(e, "c1")).await;
    match &seen[0] {
        SupervisorEvent::ChildExited {
            id,
            cause: ExitCause::Failed(text),
        } => {
            assert_eq!(id, "c1");
            assert!(text.contains("kaboom at line 7"), "{text}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(handle.status().running(), 3);
    handle.stop(DEADLINE).await;
}

/// Real clock: no sleeps, only events with a deadline.
#[tokio::test]
async fn crashes_of_different_children_are_independent_in_real_time() {
    let log = Log::default();
    let supervisor = three_children(&log);
    let mut events = supervisor.subscribe();
    let handle = supervisor.spawn().await.unwrap();
    events_until(&mut events, |e| started(e, "c3")).await;
    let c2 = cell_of(&handle, "c2");

    tell(&cell_of(&handle, "c1"), ChildMsg::Crash("one".into()));
    tell(&cell_of(&handle, "c3"), ChildMsg::Crash("three".into()));
    let mut restarted = Vec::new();
    while restarted.len() < 2 {
        if let SupervisorEvent::ChildStarted { id, .. } = next_event(&mut events).await {
            restarted.push(id.to_string());
        }
    }
    restarted.sort();
    assert_eq!(restarted, ["c1", "c3"]);
    assert_eq!(cell_of(&handle, "c2").get_id(), c2.get_id());
    assert!(!handle.status().state.is_failed());
    handle.stop(DEADLINE).await;
}
