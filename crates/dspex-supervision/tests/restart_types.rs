//! Permanent, transient and temporary children (OTP restart types).

mod common;

use common::*;
use dspex_supervision::{
    ChildSpec, ExitCause, Restart, Supervisor, SupervisorEvent, SupervisorOptions,
};

async fn single(
    spec: ChildSpec,
) -> (
    dspex_supervision::SupervisorHandle,
    tokio::sync::broadcast::Receiver<SupervisorEvent>,
) {
    let supervisor = Supervisor::new(SupervisorOptions::default()).child(spec);
    let mut events = supervisor.subscribe();
    let handle = supervisor.spawn().await.unwrap();
    assert!(matches!(
        next_event(&mut events).await,
        SupervisorEvent::ChildStarted { .. }
    ));
    (handle, events)
}

/// The next event that is not a `ChildExited` (which we already know comes first).
async fn after_exit(
    events: &mut tokio::sync::broadcast::Receiver<SupervisorEvent>,
) -> (ExitCause, Option<SupervisorEvent>) {
    let SupervisorEvent::ChildExited { cause, .. } = next_event(events).await else {
        panic!("expected ChildExited");
    };
    // A restart would be announced at once; a minute of (paused) silence
    // means none is coming.
    match tokio::time::timeout(std::time::Duration::from_secs(60), events.recv()).await {
        Ok(Ok(event)) => (cause, Some(event)),
        _ => (cause, None),
    }
}

#[tokio::test(start_paused = true)]
async fn permanent_child_is_restarted_even_after_a_normal_stop() {
    let log = Log::default();
    let (handle, mut events) = single(child("p", &log)).await;
    tell(&cell_of(&handle, "p"), ChildMsg::Stop(None));
    let seen = events_until(&mut events, |e| started(e, "p")).await;
    assert_eq!(
        brief(&seen),
        ["exited:p:normal", "restarting:p#1@100ms", "started:p"]
    );
    handle.stop(DEADLINE).await;
}

#[tokio::test(start_paused = true)]
async fn transient_child_is_not_restarted_after_normal_or_shutdown_stops() {
    for reason in [None, Some("normal"), Some("shutdown")] {
        let log = Log::default();
        let (handle, mut events) = single(child("t", &log).restart(Restart::Transient)).await;
        tell(
            &cell_of(&handle, "t"),
            ChildMsg::Stop(reason.map(str::to_owned)),
        );
        let (cause, next) = after_exit(&mut events).await;
        assert!(!cause.is_abnormal(), "{reason:?} -> {cause}");
        assert!(next.is_none(), "{reason:?}: unexpected {next:?}");
        let status = handle.status();
        let t = status.child("t").unwrap();
        assert!(t.cell.is_none() && !t.restart_pending && t.restarts == 0);
        handle.stop(DEADLINE).await;
    }
}

#[tokio::test(start_paused = true)]
async fn transient_child_is_restarted_after_a_crash_a_panic_or_an_abnormal_stop() {
    let log = Log::default();
    let (handle, mut events) = single(child("t", &log).restart(Restart::Transient)).await;
    let abnormal = [
        ChildMsg::Crash("boom".into()),
        ChildMsg::Panic("oops".into()),
        ChildMsg::Stop(Some("lost connection".into())),
    ];
    for (n, message) in abnormal.into_iter().enumerate() {
        tell(&cell_of(&handle, "t"), message);
        let seen = events_until(&mut events, |e| started(e, "t")).await;
        let SupervisorEvent::ChildExited { cause, .. } = &seen[0] else {
            panic!("{seen:?}");
        };
        assert!(cause.is_abnormal(), "{cause}");
        assert_eq!(handle.status().child("t").unwrap().restarts, n as u32 + 1);
        // Stay under the intensity budget: let the window slide.
        tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    }
    // A kill by someone else is abnormal too.
    cell_of(&handle, "t").kill();
    let seen = events_until(&mut events, |e| started(e, "t")).await;
    assert_eq!(brief(&seen)[0], "exited:t:killed");
    handle.stop(DEADLINE).await;
}

#[tokio::test(start_paused = true)]
async fn temporary_child_is_never_restarted_and_is_forgotten() {
    let log = Log::default();
    let supervisor = Supervisor::new(SupervisorOptions::default())
        .child(child("keep", &log))
        .child(child("tmp", &log).restart(Restart::Temporary));
    let mut events = supervisor.subscribe();
    let handle = supervisor.spawn().await.unwrap();
    events_until(&mut events, |e| started(e, "tmp")).await;

    tell(&cell_of(&handle, "tmp"), ChildMsg::Crash("boom".into()));
    let (cause, next) = after_exit(&mut events).await;
    assert_eq!(cause, ExitCause::Failed("boom".into()));
    assert!(next.is_none(), "unexpected {next:?}");
    let status = handle.status();
    assert!(status.child("tmp").is_none());
    assert_eq!(status.children.len(), 1);
    assert_eq!(
        log.entries().iter().filter(|e| *e == "start:tmp").count(),
        1
    );
    handle.stop(DEADLINE).await;
}

#[tokio::test(start_paused = true)]
async fn temporary_child_that_cannot_start_is_not_retried() {
    let log = Log::default();
    let (spec, attempts) = never_starts("tmp", &log, "no");
    let supervisor = Supervisor::new(SupervisorOptions::default())
        .child(spec.restart(Restart::Temporary))
        .child(child("keep", &log));
    let mut events = supervisor.subscribe();
    let handle = supervisor.spawn().await.unwrap();
    let seen = events_until(&mut events, |e| started(e, "keep")).await;
    assert_eq!(brief(&seen), ["startfailed:tmp", "started:keep"]);
    tokio::time::sleep(std::time::Duration::from_secs(60)).await;
    assert_eq!(attempts.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(handle.status().child("tmp").is_none());
    assert!(!handle.status().state.is_failed());
    handle.stop(DEADLINE).await;
}
