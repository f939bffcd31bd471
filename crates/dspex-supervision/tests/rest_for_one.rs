//! rest_for_one: the child that went down and every child started after it
//! are restarted; earlier children are untouched.

mod common;

use common::*;
use dspex_supervision::{Strategy, Supervisor, SupervisorOptions};

fn four_children(log: &Log) -> Supervisor {
    Supervisor::new(SupervisorOptions {
        strategy: Strategy::RestForOne,
        ..SupervisorOptions::default()
    })
    .child(child("c1", log))
    .child(child("c2", log))
    .child(child("c3", log))
    .child(child("c4", log))
}

#[tokio::test(start_paused = true)]
async fn crash_restarts_the_child_and_those_started_after_it() {
    let log = Log::default();
    let supervisor = four_children(&log);
    let mut events = supervisor.subscribe();
    let handle = supervisor.spawn().await.unwrap();
    events_until(&mut events, |e| started(e, "c4")).await;
    let c1 = cell_of(&handle, "c1").get_id();
    let c3 = cell_of(&handle, "c3").get_id();
    log.clear();

    tell(&cell_of(&handle, "c2"), ChildMsg::Crash("boom".into()));
    let seen = events_until(&mut events, |e| started(e, "c4")).await;
    assert_eq!(
        brief(&seen),
        [
            "exited:c2:failed: boom",
            "exited:c4:shutdown",
            "exited:c3:shutdown",
            "restarting:c2#1@100ms",
            "restarting:c3#1@100ms",
            "restarting:c4#1@100ms",
            "started:c2",
            "started:c3",
            "started:c4",
        ]
    );
    assert_eq!(
        log.entries(),
        ["stop:c4", "stop:c3", "start:c2", "start:c3", "start:c4"]
    );
    assert_eq!(cell_of(&handle, "c1").get_id(), c1);
    assert_ne!(cell_of(&handle, "c3").get_id(), c3);
    let restarts: Vec<u32> = handle
        .status()
        .children
        .iter()
        .map(|c| c.restarts)
        .collect();
    assert_eq!(restarts, [0, 1, 1, 1]);
    handle.stop(DEADLINE).await;
}

#[tokio::test(start_paused = true)]
async fn crash_of_the_last_child_restarts_only_it() {
    let log = Log::default();
    let supervisor = four_children(&log);
    let mut events = supervisor.subscribe();
    let handle = supervisor.spawn().await.unwrap();
    events_until(&mut events, |e| started(e, "c4")).await;
    log.clear();

    tell(&cell_of(&handle, "c4"), ChildMsg::Crash("boom".into()));
    let seen = events_until(&mut events, |e| started(e, "c4")).await;
    assert_eq!(
        brief(&seen),
        [
            "exited:c4:failed: boom",
            "restarting:c4#1@100ms",
            "started:c4"
        ]
    );
    assert_eq!(log.entries(), ["start:c4"]);
    handle.stop(DEADLINE).await;
}

#[tokio::test(start_paused = true)]
async fn start_failure_inside_the_restart_set_reschedules_the_rest() {
    let log = Log::default();
    // c3 fails on its second start only.
    let (c3, _) = scripted("c3", &log, |attempt| Behaviour {
        fail_start: (attempt == 2).then(|| "c3 cannot start now".to_owned()),
        ..Behaviour::default()
    });
    let supervisor = Supervisor::new(SupervisorOptions {
        strategy: Strategy::RestForOne,
        ..SupervisorOptions::default()
    })
    .child(child("c1", &log))
    .child(child("c2", &log))
    .child(c3)
    .child(child("c4", &log));
    let mut events = supervisor.subscribe();
    let handle = supervisor.spawn().await.unwrap();
    events_until(&mut events, |e| started(e, "c4")).await;
    log.clear();

    tell(&cell_of(&handle, "c2"), ChildMsg::Crash("boom".into()));
    let seen = events_until(&mut events, |e| started(e, "c4")).await;
    assert_eq!(
        brief(&seen),
        [
            "exited:c2:failed: boom",
            "exited:c4:shutdown",
            "exited:c3:shutdown",
            "restarting:c2#1@100ms",
            "restarting:c3#1@100ms",
            "restarting:c4#1@100ms",
            "started:c2",
            "startfailed:c3",
            // c3's own backoff starts at the initial delay; c4 follows it.
            "restarting:c3#2@100ms",
            "restarting:c4#1@100ms",
            "started:c3",
            "started:c4",
        ]
    );
    let restarts: Vec<u32> = handle
        .status()
        .children
        .iter()
        .map(|c| c.restarts)
        .collect();
    assert_eq!(restarts, [0, 1, 2, 1]);
    handle.stop(DEADLINE).await;
}
