//! Ordered shutdown: reverse start order, per-child grace, then kill.

mod common;

use std::time::Duration;

use common::*;
use dspex_supervision::{
    StopOutcome, Supervisor, SupervisorEvent, SupervisorOptions, SupervisorState,
};
use ractor::ActorStatus;
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn stop_stops_children_in_reverse_start_order() {
    let log = Log::default();
    let supervisor = Supervisor::new(SupervisorOptions::default())
        .child(child("c1", &log))
        .child(child("c2", &log))
        .child(child("c3", &log));
    let mut events = supervisor.subscribe();
    let handle = supervisor.spawn().await.unwrap();
    events_until(&mut events, |e| started(e, "c3")).await;
    let cells: Vec<_> = ["c1", "c2", "c3"].map(|id| cell_of(&handle, id)).into();
    log.clear();

    assert_eq!(handle.stop(DEADLINE).await, StopOutcome::Ordered);
    assert_eq!(log.entries(), ["stop:c3", "stop:c2", "stop:c1"]);
    let seen = events_until(&mut events, |e| matches!(e, SupervisorEvent::Stopped)).await;
    assert_eq!(
        brief(&seen),
        [
            "exited:c3:shutdown",
            "exited:c2:shutdown",
            "exited:c1:shutdown",
            "stopped"
        ]
    );
    assert!(cells.iter().all(|c| c.get_status() == ActorStatus::Stopped));
    assert_eq!(handle.status().state, SupervisorState::Stopped);
    assert_eq!(handle.cell().get_status(), ActorStatus::Stopped);
}

#[tokio::test(start_paused = true)]
async fn child_ignoring_stop_is_killed_after_its_grace() {
    let log = Log::default();
    let supervisor = Supervisor::new(SupervisorOptions::default())
        .child(child("c1", &log))
        .child(child("stuck", &log).shutdown(Duration::from_secs(2)))
        .child(child("c3", &log));
    let mut events = supervisor.subscribe();
    let handle = supervisor.spawn().await.unwrap();
    events_until(&mut events, |e| started(e, "c3")).await;
    let stuck = cell_of(&handle, "stuck");
    tell(&stuck, ChildMsg::Hang);
    log.clear();

    let t0 = Instant::now();
    assert_eq!(handle.stop(DEADLINE).await, StopOutcome::Ordered);
    assert_eq!(t0.elapsed(), Duration::from_secs(2));
    // A killed child runs no post_stop.
    assert_eq!(log.entries(), ["stop:c3", "stop:c1"]);
    let seen = events_until(&mut events, |e| matches!(e, SupervisorEvent::Stopped)).await;
    assert_eq!(
        brief(&seen),
        [
            "exited:c3:shutdown",
            "exited:stuck:killed",
            "exited:c1:shutdown",
            "stopped"
        ]
    );
    assert_eq!(stuck.get_status(), ActorStatus::Stopped);
}

#[tokio::test(start_paused = true)]
async fn zero_grace_kills_at_once() {
    let log = Log::default();
    let supervisor = Supervisor::new(SupervisorOptions::default())
        .child(child("brutal", &log).shutdown(Duration::ZERO));
    let mut events = supervisor.subscribe();
    let handle = supervisor.spawn().await.unwrap();
    events_until(&mut events, |e| started(e, "brutal")).await;
    let t0 = Instant::now();
    handle.stop(DEADLINE).await;
    assert_eq!(t0.elapsed(), Duration::ZERO);
    let seen = events_until(&mut events, |e| matches!(e, SupervisorEvent::Stopped)).await;
    assert_eq!(brief(&seen), ["exited:brutal:killed", "stopped"]);
}

#[tokio::test(start_paused = true)]
async fn stop_timeout_kills_the_whole_tree() {
    let log = Log::default();
    let supervisor = Supervisor::new(SupervisorOptions::default())
        .child(child("c1", &log))
        .child(child("stuck", &log).shutdown(Duration::from_secs(30)));
    let mut events = supervisor.subscribe();
    let handle = supervisor.spawn().await.unwrap();
    events_until(&mut events, |e| started(e, "stuck")).await;
    let cells = [cell_of(&handle, "c1"), cell_of(&handle, "stuck")];
    tell(&cells[1], ChildMsg::Hang);

    let t0 = Instant::now();
    assert_eq!(
        handle.stop(Duration::from_secs(1)).await,
        StopOutcome::Killed
    );
    assert_eq!(t0.elapsed(), Duration::from_secs(1));
    assert!(cells.iter().all(|c| c.get_status() == ActorStatus::Stopped));
    assert_eq!(handle.cell().get_status(), ActorStatus::Stopped);
}

#[tokio::test(start_paused = true)]
async fn stopping_during_a_backoff_cancels_the_restart() {
    let log = Log::default();
    let (spec, attempts) = scripted("w", &log, |_| Behaviour::default());
    let supervisor = Supervisor::new(SupervisorOptions::default()).child(spec);
    let mut events = supervisor.subscribe();
    let handle = supervisor.spawn().await.unwrap();
    events_until(&mut events, |e| started(e, "w")).await;

    tell(&cell_of(&handle, "w"), ChildMsg::Crash("boom".into()));
    events_until(&mut events, |e| {
        matches!(e, SupervisorEvent::ChildRestarting { .. })
    })
    .await;
    // The supervisor is backing off, yet answers immediately.
    assert!(handle.status().child("w").unwrap().restart_pending);
    assert_eq!(handle.stop(DEADLINE).await, StopOutcome::Ordered);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(attempts.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(brief(&[next_event(&mut events).await]), ["stopped"]);
}

/// Real clock: a parent that owns a supervisor stops it through ractor and
/// the ordered shutdown still happens (post_stop), observed through events.
#[tokio::test]
async fn ractor_stop_of_the_supervisor_is_ordered_in_real_time() {
    let log = Log::default();
    let supervisor = Supervisor::new(SupervisorOptions::default())
        .child(child("c1", &log))
        .child(child("c2", &log));
    let mut events = supervisor.subscribe();
    let handle = supervisor.spawn().await.unwrap();
    events_until(&mut events, |e| started(e, "c2")).await;
    handle.cell().stop(None);
    let seen = events_until(&mut events, |e| matches!(e, SupervisorEvent::Stopped)).await;
    assert_eq!(
        brief(&seen),
        ["exited:c2:shutdown", "exited:c1:shutdown", "stopped"]
    );
    tokio::time::timeout(DEADLINE, handle.wait_stopped())
        .await
        .unwrap();
}
