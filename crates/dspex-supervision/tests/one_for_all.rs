//! one_for_all: when one child goes down, all are stopped (reverse start
//! order) and all are started again (start order).

mod common;

use common::*;
use dspex_supervision::{Restart, Strategy, Supervisor, SupervisorEvent, SupervisorOptions};

fn options() -> SupervisorOptions {
    SupervisorOptions {
        strategy: Strategy::OneForAll,
        ..SupervisorOptions::default()
    }
}

#[tokio::test(start_paused = true)]
async fn crash_stops_siblings_in_reverse_and_restarts_all_in_order() {
    let log = Log::default();
    let supervisor = Supervisor::new(options())
        .child(child("c1", &log))
        .child(child("c2", &log))
        .child(child("c3", &log));
    let mut events = supervisor.subscribe();
    let handle = supervisor.spawn().await.unwrap();
    events_until(&mut events, |e| started(e, "c3")).await;
    let before: Vec<_> = ["c1", "c2", "c3"]
        .map(|id| cell_of(&handle, id).get_id())
        .into();
    log.clear();

    tell(&cell_of(&handle, "c2"), ChildMsg::Crash("boom".into()));
    let seen = events_until(&mut events, |e| started(e, "c3")).await;
    assert_eq!(
        brief(&seen),
        [
            "exited:c2:failed: boom",
            "exited:c3:shutdown",
            "exited:c1:shutdown",
            "restarting:c1#1@100ms",
            "restarting:c2#1@100ms",
            "restarting:c3#1@100ms",
            "started:c1",
            "started:c2",
            "started:c3",
        ]
    );
    // c2 failed (no post_stop); the others were stopped, newest first.
    assert_eq!(
        log.entries(),
        ["stop:c3", "stop:c1", "start:c1", "start:c2", "start:c3"]
    );
    let after: Vec<_> = ["c1", "c2", "c3"]
        .map(|id| cell_of(&handle, id).get_id())
        .into();
    for (old, new) in before.iter().zip(&after) {
        assert_ne!(old, new);
    }
    let restarts: Vec<u32> = handle
        .status()
        .children
        .iter()
        .map(|c| c.restarts)
        .collect();
    assert_eq!(restarts, [1, 1, 1]);
    handle.stop(DEADLINE).await;
}

#[tokio::test(start_paused = true)]
async fn temporary_sibling_is_stopped_and_not_restarted() {
    let log = Log::default();
    let supervisor = Supervisor::new(options())
        .child(child("c1", &log))
        .child(child("tmp", &log).restart(Restart::Temporary))
        .child(child("c3", &log));
    let mut events = supervisor.subscribe();
    let handle = supervisor.spawn().await.unwrap();
    events_until(&mut events, |e| started(e, "c3")).await;
    log.clear();

    tell(&cell_of(&handle, "c1"), ChildMsg::Crash("boom".into()));
    let seen = events_until(&mut events, |e| started(e, "c3")).await;
    assert_eq!(
        brief(&seen),
        [
            "exited:c1:failed: boom",
            "exited:c3:shutdown",
            "exited:tmp:shutdown",
            "restarting:c1#1@100ms",
            "restarting:c3#1@100ms",
            "started:c1",
            "started:c3",
        ]
    );
    assert_eq!(
        log.entries(),
        ["stop:c3", "stop:tmp", "start:c1", "start:c3"]
    );
    let ids: Vec<String> = handle
        .status()
        .children
        .iter()
        .map(|c| c.id.to_string())
        .collect();
    assert_eq!(ids, ["c1", "c3"]);
    handle.stop(DEADLINE).await;
}

#[tokio::test(start_paused = true)]
async fn transient_normal_exit_leaves_siblings_alone() {
    let log = Log::default();
    let supervisor = Supervisor::new(options())
        .child(child("c1", &log))
        .child(child("job", &log).restart(Restart::Transient))
        .child(child("c3", &log));
    let mut events = supervisor.subscribe();
    let handle = supervisor.spawn().await.unwrap();
    events_until(&mut events, |e| started(e, "c3")).await;
    let c1 = cell_of(&handle, "c1").get_id();

    tell(&cell_of(&handle, "job"), ChildMsg::Stop(None));
    let seen = events_until(&mut events, |e| {
        matches!(e, SupervisorEvent::ChildExited { .. })
    })
    .await;
    assert_eq!(brief(&seen), ["exited:job:normal"]);
    assert_eq!(cell_of(&handle, "c1").get_id(), c1);
    assert!(handle.child("job").is_none());
    // Nothing else happens: the next events are the shutdown we ask for.
    handle.stop(DEADLINE).await;
    let rest = events_until(&mut events, |e| matches!(e, SupervisorEvent::Stopped)).await;
    assert_eq!(
        brief(&rest),
        ["exited:c3:shutdown", "exited:c1:shutdown", "stopped"]
    );
}

/// Real clock, multi-threaded runtime: repeated group restarts keep their
/// order (stop newest first, start in order) under cross-thread scheduling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_restarts_keep_their_order_on_a_multi_thread_runtime() {
    let log = Log::default();
    let supervisor = Supervisor::new(SupervisorOptions {
        backoff: dspex_supervision::Backoff::NONE,
        intensity: dspex_supervision::RestartIntensity {
            max_restarts: 100,
            within: std::time::Duration::from_secs(60),
        },
        ..options()
    })
    .child(child("c1", &log))
    .child(child("c2", &log))
    .child(child("c3", &log));
    let mut events = supervisor.subscribe();
    let handle = supervisor.spawn().await.unwrap();
    events_until(&mut events, |e| started(e, "c3")).await;

    for round in 0..25 {
        log.clear();
        let victim = ["c1", "c2", "c3"][round % 3];
        tell(
            &cell_of(&handle, victim),
            ChildMsg::Crash(format!("round {round}")),
        );
        events_until(&mut events, |e| started(e, "c3")).await;
        let mut expected: Vec<String> = ["c3", "c2", "c1"]
            .iter()
            .filter(|id| **id != victim)
            .map(|id| format!("stop:{id}"))
            .collect();
        expected.extend(["start:c1", "start:c2", "start:c3"].map(String::from));
        assert_eq!(log.entries(), expected, "round {round}");
    }
    assert_eq!(handle.status().running(), 3);
    handle.stop(DEADLINE).await;
}
