//! Status snapshot, event stream, child look-up and dynamic children.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use dspex_supervision::{
    OnGiveUp, RestartIntensity, Supervisor, SupervisorError, SupervisorEvent, SupervisorOptions,
    SupervisorState,
};
use ractor::ActorId;

/// Real clock: subscribing before spawn misses nothing.
#[tokio::test]
async fn subscribing_before_spawn_sees_every_start() {
    let log = Log::default();
    let supervisor = Supervisor::new(SupervisorOptions::default())
        .child(child("c1", &log))
        .child(child("c2", &log))
        .child(child("c3", &log));
    let mut events = supervisor.subscribe();
    let handle = supervisor.spawn().await.unwrap();
    // spawn returns after the first start attempt of every child.
    let status = handle.status();
    assert_eq!(status.state, SupervisorState::Running);
    assert_eq!(status.running(), 3);

    let seen = events_until(&mut events, |e| started(e, "c3")).await;
    assert_eq!(brief(&seen), ["started:c1", "started:c2", "started:c3"]);
    for event in &seen {
        let SupervisorEvent::ChildStarted { id, cell } = event else {
            unreachable!()
        };
        assert_eq!(cell_of(&handle, id.as_str()).get_id(), cell.get_id());
        assert_eq!(ping(cell).await, id.as_str());
    }
    handle.stop(DEADLINE).await;
}

/// A model built only from events equals the status at every quiet point.
#[tokio::test(start_paused = true)]
async fn status_and_events_agree() {
    let log = Log::default();
    let supervisor = Supervisor::new(SupervisorOptions::default())
        .child(child("a", &log))
        .child(child("b", &log))
        .child(child("c", &log));
    let mut events = supervisor.subscribe();
    let handle = supervisor.spawn().await.unwrap();

    #[derive(Default, Debug, PartialEq)]
    struct Model {
        cell: Option<ActorId>,
        starts: u32,
        last_cause: Option<String>,
    }
    let mut model: HashMap<String, Model> = HashMap::new();
    let apply = |model: &mut HashMap<String, Model>, event: &SupervisorEvent| match event {
        SupervisorEvent::ChildStarted { id, cell } => {
            let m = model.entry(id.to_string()).or_default();
            assert!(m.cell.is_none(), "started twice without exit");
            m.cell = Some(cell.get_id());
            m.starts += 1;
        }
        SupervisorEvent::ChildExited { id, cause } => {
            let m = model.entry(id.to_string()).or_default();
            assert!(m.cell.take().is_some(), "exit without start");
            m.last_cause = Some(cause.to_string());
        }
        _ => {}
    };
    let check = |model: &HashMap<String, Model>| {
        let status = handle.status();
        assert_eq!(status.children.len(), model.len());
        for c in &status.children {
            let m = &model[c.id.as_str()];
            assert_eq!(c.cell.as_ref().map(|c| c.get_id()), m.cell, "{}", c.id);
            assert_eq!(c.restarts + 1, m.starts, "{}", c.id);
            assert_eq!(c.last_cause.as_ref().map(|c| c.to_string()), m.last_cause);
            assert!(!c.restart_pending);
        }
    };

    for e in events_until(&mut events, |e| started(e, "c")).await {
        apply(&mut model, &e);
    }
    check(&model);
    for (n, victim) in ["b", "a", "c", "b", "b", "a"].into_iter().enumerate() {
        tell(
            &cell_of(&handle, victim),
            ChildMsg::Crash(format!("crash {n}")),
        );
        for e in events_until(&mut events, |e| started(e, victim)).await {
            apply(&mut model, &e);
        }
        check(&model);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    handle.stop(DEADLINE).await;
    for e in events_until(&mut events, |e| matches!(e, SupervisorEvent::Stopped)).await {
        apply(&mut model, &e);
    }
    assert!(model.values().all(|m| m.cell.is_none()));
}

#[tokio::test(start_paused = true)]
async fn child_look_up_follows_restarts() {
    let log = Log::default();
    let supervisor = Supervisor::new(SupervisorOptions::default()).child(child("w", &log));
    let mut events = supervisor.subscribe();
    let handle = supervisor.spawn().await.unwrap();
    events_until(&mut events, |e| started(e, "w")).await;
    let first = cell_of(&handle, "w");
    assert_eq!(ping(&first).await, "w");
    assert!(handle.child("nope").is_none());

    tell(&first, ChildMsg::Crash("boom".into()));
    events_until(&mut events, |e| {
        matches!(e, SupervisorEvent::ChildRestarting { .. })
    })
    .await;
    assert!(handle.child("w").is_none(), "down while backing off");
    let status = handle
        .wait_for(|s| s.child("w").is_some_and(|c| c.cell.is_some()))
        .await
        .unwrap();
    let second = status.child("w").unwrap().cell.clone().unwrap();
    assert_ne!(second.get_id(), first.get_id());
    assert_eq!(ping(&second).await, "w");
    handle.stop(DEADLINE).await;
}

#[tokio::test(start_paused = true)]
async fn dynamic_children_are_started_supervised_and_terminated() {
    let log = Log::default();
    let supervisor = Supervisor::new(SupervisorOptions {
        intensity: RestartIntensity {
            max_restarts: 1,
            within: Duration::from_secs(5),
        },
        on_give_up: OnGiveUp::Remain,
        ..SupervisorOptions::default()
    })
    .child(child("base", &log));
    let mut events = supervisor.subscribe();
    let handle = supervisor.spawn().await.unwrap();
    events_until(&mut events, |e| started(e, "base")).await;

    let extra = handle.start_child(child("extra", &log)).await.unwrap();
    assert_eq!(ping(&extra).await, "extra");
    let ids: Vec<String> = handle
        .status()
        .children
        .iter()
        .map(|c| c.id.to_string())
        .collect();
    assert_eq!(ids, ["base", "extra"]);
    assert_eq!(brief(&[next_event(&mut events).await]), ["started:extra"]);

    let duplicate = handle.start_child(child("extra", &log)).await;
    assert!(matches!(duplicate, Err(SupervisorError::DuplicateChild(id)) if id == "extra"));

    // A failed dynamic start is returned, not added, and not counted.
    let (broken, _) = never_starts("broken", &log, "bad config");
    match handle.start_child(broken).await {
        Err(SupervisorError::StartFailed { id, error }) => {
            assert_eq!(id, "broken");
            assert!(error.message().contains("bad config"));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        brief(&[next_event(&mut events).await]),
        ["startfailed:broken"]
    );
    assert!(handle.status().child("broken").is_none());

    // The dynamic child is supervised like the others.
    tell(&extra, ChildMsg::Crash("boom".into()));
    events_until(&mut events, |e| started(e, "extra")).await;
    assert_eq!(handle.status().state, SupervisorState::Running);

    handle.terminate_child("extra").await.unwrap();
    let seen = events_until(&mut events, |e| {
        matches!(e, SupervisorEvent::ChildExited { .. })
    })
    .await;
    assert_eq!(brief(&seen), ["exited:extra:shutdown"]);
    assert!(handle.status().child("extra").is_none());
    let unknown = handle.terminate_child("extra").await;
    assert!(matches!(unknown, Err(SupervisorError::UnknownChild(_))));
    handle.stop(DEADLINE).await;
}

#[tokio::test(start_paused = true)]
async fn status_is_answered_while_the_supervisor_waits_on_a_grace() {
    let log = Log::default();
    let supervisor = Supervisor::new(SupervisorOptions::default())
        .child(child("c1", &log))
        .child(child("stuck", &log).shutdown(Duration::from_secs(3)));
    let mut events = supervisor.subscribe();
    let handle = supervisor.spawn().await.unwrap();
    events_until(&mut events, |e| started(e, "stuck")).await;
    tell(&cell_of(&handle, "stuck"), ChildMsg::Hang);

    let stopper = {
        let handle = handle.clone();
        tokio::spawn(async move { handle.stop(DEADLINE).await })
    };
    let during = tokio::time::timeout(
        Duration::from_millis(10),
        handle.wait_for(|s| s.state == SupervisorState::Stopping),
    )
    .await
    .expect("status answered during the grace")
    .unwrap();
    assert_eq!(during.running(), 2);
    stopper.await.unwrap();
    assert_eq!(handle.status().state, SupervisorState::Stopped);
    // Once terminated, waiting for something that never comes fails cleanly.
    let never = handle
        .wait_for(|s| s.state == SupervisorState::Running)
        .await;
    assert!(matches!(never, Err(SupervisorError::NotRunning)));
}

#[tokio::test]
async fn duplicate_ids_are_rejected_before_anything_starts() {
    let log = Log::default();
    let result = Supervisor::new(SupervisorOptions::default())
        .child(child("same", &log))
        .child(child("same", &log))
        .spawn()
        .await;
    assert!(matches!(result, Err(SupervisorError::DuplicateChild(id)) if id == "same"));
    assert!(log.entries().is_empty());
}

#[tokio::test]
async fn two_trees_in_one_process_do_not_clash() {
    let log = Log::default();
    let named = |prefix: &str| {
        Supervisor::new(SupervisorOptions {
            name: Some(format!("{prefix}/supervisor")),
            ..SupervisorOptions::default()
        })
        .child(child("w", &log))
    };
    let a = named("tree-a").spawn().await.unwrap();
    let b = named("tree-b").spawn().await.unwrap();
    // Unnamed trees never clash.
    let c = Supervisor::new(SupervisorOptions::default())
        .child(child("w", &log))
        .spawn()
        .await
        .unwrap();
    let d = Supervisor::new(SupervisorOptions::default())
        .child(child("w", &log))
        .spawn()
        .await
        .unwrap();
    // Same child ids in different trees are different actors.
    let ids: Vec<ActorId> = [&a, &b, &c, &d]
        .iter()
        .map(|h| cell_of(h, "w").get_id())
        .collect();
    for (i, x) in ids.iter().enumerate() {
        assert!(!ids[i + 1..].contains(x));
    }
    // Reusing a caller's prefix is the caller's error, reported, not a panic.
    let clash = named("tree-a").spawn().await;
    assert!(matches!(clash, Err(SupervisorError::Spawn(_))), "{clash:?}");
    for h in [a, b, c, d] {
        h.stop(DEADLINE).await;
    }
}
