//! Restart intensity (OTP counting) and backoff, end to end.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use dspex_supervision::{
    Backoff, ExitCause, OnGiveUp, RestartIntensity, Supervisor, SupervisorEvent, SupervisorOptions,
    SupervisorState,
};
use tokio::time::Instant;

const MS: Duration = Duration::from_millis(1);

fn remain() -> SupervisorOptions {
    SupervisorOptions {
        on_give_up: OnGiveUp::Remain,
        ..SupervisorOptions::default()
    }
}

fn delays(events: &[SupervisorEvent]) -> Vec<u128> {
    events
        .iter()
        .filter_map(|e| match e {
            SupervisorEvent::ChildRestarting { delay, .. } => Some(delay.as_millis()),
            _ => None,
        })
        .collect()
}

/// Scenario 16/31 shape: a worker that can never start.
#[tokio::test(start_paused = true)]
async fn child_that_never_starts_gets_one_plus_three_attempts_then_failed() {
    let log = Log::default();
    let stderr = "Traceback (most recent call last):\n  File \"worker.py\", line 1\nModuleNotFoundError: No module named 'dspy'\n(exit status: 1)";
    let (spec, attempts) = never_starts("w", &log, stderr);
    let supervisor = Supervisor::new(remain()).child(spec);
    let mut events = supervisor.subscribe();
    let t0 = Instant::now();
    let handle = supervisor.spawn().await.unwrap();

    let seen = events_until(&mut events, failed).await;
    assert_eq!(
        brief(&seen),
        [
            "startfailed:w",
            "restarting:w#1@100ms",
            "startfailed:w",
            "restarting:w#2@200ms",
            "startfailed:w",
            "restarting:w#3@400ms",
            "startfailed:w",
            "failed:w",
        ]
    );
    assert_eq!(t0.elapsed(), 700 * MS);
    assert_eq!(attempts.load(Ordering::SeqCst), 4);
    let SupervisorEvent::Failed { cause } = seen.last().unwrap() else {
        unreachable!()
    };
    assert_eq!(cause.child, "w");
    // The last failure text is kept whole.
    assert_eq!(
        cause.exit,
        ExitCause::StartFailed(format!("startup failed: {stderr}"))
    );
    assert!(
        cause
            .to_string()
            .contains("ModuleNotFoundError: No module named 'dspy'")
    );

    let status = handle.status();
    assert_eq!(status.state, SupervisorState::Failed(cause.clone()));
    assert_eq!(status.child("w").unwrap().restarts, 3);

    // No respawn ever after Failed.
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(attempts.load(Ordering::SeqCst), 4);
    assert!(events.try_recv().is_err());
    handle.stop(DEADLINE).await;
}

/// Scenario 19 shape: crashes faster than the budget allows.
#[tokio::test(start_paused = true)]
async fn fourth_crash_inside_the_window_gives_up_with_the_last_cause() {
    let log = Log::default();
    let (spec, attempts) = scripted("w", &log, |_| Behaviour::default());
    let supervisor = Supervisor::new(remain()).child(spec);
    let mut events = supervisor.subscribe();
    let handle = supervisor.spawn().await.unwrap();
    events_until(&mut events, |e| started(e, "w")).await;

    for n in 1..=3 {
        tell(&cell_of(&handle, "w"), ChildMsg::Crash(format!("boom {n}")));
        events_until(&mut events, |e| started(e, "w")).await;
    }
    tell(&cell_of(&handle, "w"), ChildMsg::Crash("boom 4".into()));
    let seen = events_until(&mut events, failed).await;
    assert_eq!(brief(&seen), ["exited:w:failed: boom 4", "failed:w"]);
    let SupervisorEvent::Failed { cause } = &seen[1] else {
        unreachable!()
    };
    assert_eq!(cause.exit, ExitCause::Failed("boom 4".into()));
    assert_eq!(
        (cause.max_restarts, cause.within),
        (3, Duration::from_secs(5))
    );
    assert_eq!(attempts.load(Ordering::SeqCst), 4);

    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(attempts.load(Ordering::SeqCst), 4);
    handle.stop(DEADLINE).await;
    let rest = events_until(&mut events, |e| matches!(e, SupervisorEvent::Stopped)).await;
    assert_eq!(
        brief(&rest),
        ["stopped"],
        "exactly one Failed, nothing restarted"
    );
}

/// Scenario 18 shape: a crash every 2.5 s stays within 3 restarts per 5 s.
#[tokio::test(start_paused = true)]
async fn crashes_spread_within_the_budget_never_fail() {
    let log = Log::default();
    let supervisor = Supervisor::new(remain()).child(child("w", &log));
    let mut events = supervisor.subscribe();
    let handle = supervisor.spawn().await.unwrap();
    events_until(&mut events, |e| started(e, "w")).await;

    for n in 0..12 {
        tell(
            &cell_of(&handle, "w"),
            ChildMsg::Crash(format!("crash {n}")),
        );
        events_until(&mut events, |e| started(e, "w")).await;
        tokio::time::sleep(Duration::from_millis(2_500)).await;
    }
    let status = handle.status();
    assert_eq!(status.state, SupervisorState::Running);
    assert_eq!(status.child("w").unwrap().restarts, 12);
    handle.stop(DEADLINE).await;
}

#[tokio::test(start_paused = true)]
async fn backoff_delays_grow_and_cap_and_are_really_waited() {
    let log = Log::default();
    let (spec, attempts) = never_starts("w", &log, "nope");
    let supervisor = Supervisor::new(SupervisorOptions {
        intensity: RestartIntensity {
            max_restarts: 6,
            within: Duration::from_secs(60),
        },
        backoff: Backoff {
            initial: 100 * MS,
            factor: 2,
            max: 300 * MS,
        },
        on_give_up: OnGiveUp::Remain,
        ..SupervisorOptions::default()
    })
    .child(spec);
    let mut events = supervisor.subscribe();
    let handle = supervisor.spawn().await.unwrap();

    let mut seen = Vec::new();
    let mut gaps = Vec::new();
    let mut last_failure = Instant::now();
    loop {
        let event = next_event(&mut events).await;
        if let SupervisorEvent::StartFailed { .. } = event {
            gaps.push(last_failure.elapsed().as_millis());
            last_failure = Instant::now();
        }
        let done = failed(&event);
        seen.push(event);
        if done {
            break;
        }
    }
    assert_eq!(delays(&seen), [100, 200, 300, 300, 300, 300]);
    // Time between consecutive start attempts is exactly the announced delay.
    assert_eq!(gaps, [0, 100, 200, 300, 300, 300, 300]);
    assert_eq!(attempts.load(Ordering::SeqCst), 7);
    handle.stop(DEADLINE).await;
}

/// With `immediate_first_restart` (OTP's behaviour, which the worker pool
/// uses), the first restart inside a window waits nothing and the repeats
/// of the crash loop wait the backoff.
#[tokio::test(start_paused = true)]
async fn an_immediate_first_restart_leaves_the_backoff_to_repeats() {
    let log = Log::default();
    let (spec, attempts) = never_starts("w", &log, "nope");
    let supervisor = Supervisor::new(SupervisorOptions {
        intensity: RestartIntensity {
            max_restarts: 4,
            within: Duration::from_secs(60),
        },
        backoff: Backoff {
            initial: 100 * MS,
            factor: 2,
            max: 300 * MS,
        },
        immediate_first_restart: true,
        on_give_up: OnGiveUp::Remain,
        ..SupervisorOptions::default()
    })
    .child(spec);
    let mut events = supervisor.subscribe();
    let handle = supervisor.spawn().await.unwrap();
    let mut seen = Vec::new();
    loop {
        let event = next_event(&mut events).await;
        let done = failed(&event);
        seen.push(event);
        if done {
            break;
        }
    }
    assert_eq!(delays(&seen), [0, 100, 200, 300]);
    assert_eq!(attempts.load(Ordering::SeqCst), 5);
    handle.stop(DEADLINE).await;
}

#[tokio::test(start_paused = true)]
async fn backoff_returns_to_the_initial_delay_after_a_quiet_window() {
    let log = Log::default();
    let supervisor = Supervisor::new(remain()).child(child("w", &log));
    let mut events = supervisor.subscribe();
    let handle = supervisor.spawn().await.unwrap();
    events_until(&mut events, |e| started(e, "w")).await;

    let mut crash = async |text: &str| {
        tell(&cell_of(&handle, "w"), ChildMsg::Crash(text.into()));
        delays(&events_until(&mut events, |e| started(e, "w")).await)
    };
    assert_eq!(crash("a").await, [100]);
    assert_eq!(crash("b").await, [200]);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(crash("c").await, [100]);
    assert_eq!(crash("d").await, [200]);
    assert!(!handle.status().state.is_failed());
    handle.stop(DEADLINE).await;
}

/// Scenario 17 shape: 2 of the first 3 spawns fail, then OK.
#[tokio::test(start_paused = true)]
async fn flaky_start_recovers_within_budget_using_backoff() {
    let log = Log::default();
    let (spec, attempts) = scripted("w", &log, |attempt| Behaviour {
        fail_start: (attempt <= 2).then(|| format!("flaky {attempt}")),
        ..Behaviour::default()
    });
    let supervisor = Supervisor::new(SupervisorOptions::default()).child(spec);
    let mut events = supervisor.subscribe();
    let t0 = Instant::now();
    let handle = supervisor.spawn().await.unwrap();
    let seen = events_until(&mut events, |e| started(e, "w")).await;
    assert_eq!(delays(&seen), [100, 200]);
    assert_eq!(t0.elapsed(), 300 * MS);
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    let status = handle.status();
    assert_eq!(status.state, SupervisorState::Running);
    assert_eq!(status.child("w").unwrap().restarts, 2);
    handle.stop(DEADLINE).await;
}

#[tokio::test(start_paused = true)]
async fn start_failures_and_crashes_share_one_budget() {
    let log = Log::default();
    // Starts fine twice (then crashes), then can no longer start.
    let (spec, attempts) = scripted("w", &log, |attempt| Behaviour {
        fail_start: (attempt >= 3).then(|| "broken environment".to_owned()),
        ..Behaviour::default()
    });
    let supervisor = Supervisor::new(remain()).child(spec);
    let mut events = supervisor.subscribe();
    let handle = supervisor.spawn().await.unwrap();
    events_until(&mut events, |e| started(e, "w")).await;
    tell(&cell_of(&handle, "w"), ChildMsg::Crash("crash 1".into()));
    events_until(&mut events, |e| started(e, "w")).await;
    tell(&cell_of(&handle, "w"), ChildMsg::Crash("crash 2".into()));

    let seen = events_until(&mut events, failed).await;
    assert_eq!(
        brief(&seen),
        [
            "exited:w:failed: crash 2",
            "restarting:w#2@200ms",
            "startfailed:w",
            "restarting:w#3@400ms",
            "startfailed:w",
            "failed:w",
        ]
    );
    assert_eq!(attempts.load(Ordering::SeqCst), 4);
    handle.stop(DEADLINE).await;
}

/// Scenario 16 with a pool: the budget is the supervisor's, not each child's.
#[tokio::test(start_paused = true)]
async fn budget_is_shared_by_all_children() {
    let log = Log::default();
    let mut supervisor = Supervisor::new(remain());
    let mut counters = Vec::new();
    for i in 0..4 {
        let (spec, attempts) = never_starts(&format!("w{i}"), &log, "import failed");
        supervisor = supervisor.child(spec);
        counters.push(attempts);
    }
    let mut events = supervisor.subscribe();
    let t0 = Instant::now();
    let handle = supervisor.spawn().await.unwrap();
    let seen = events_until(&mut events, failed).await;
    let total: u32 = counters.iter().map(|c| c.load(Ordering::SeqCst)).sum();
    assert!(total <= 4 + 3, "total spawns {total}");
    assert!(t0.elapsed() <= Duration::from_secs(2));
    assert_eq!(seen.iter().filter(|e| failed(e)).count(), 1);
    tokio::time::sleep(Duration::from_secs(60)).await;
    let after: u32 = counters.iter().map(|c| c.load(Ordering::SeqCst)).sum();
    assert_eq!(after, total, "no spawn after Failed");
    handle.stop(DEADLINE).await;
}

/// A factory that spawns its actor and then fails (e.g. the handshake times
/// out) must not leave that actor running: it is killed, and the failure counts.
#[tokio::test(start_paused = true)]
async fn actor_left_by_a_failed_start_is_killed() {
    use std::sync::Mutex;

    use dspex_supervision::{ChildSpec, StartError};
    use ractor::{Actor, ActorCell, ActorStatus};

    let log = Log::default();
    let spawned: std::sync::Arc<Mutex<Vec<ActorCell>>> = Default::default();
    let keep = std::sync::Arc::clone(&spawned);
    let spec = ChildSpec::new("w", move |sup| {
        let (log, keep) = (log.clone(), std::sync::Arc::clone(&keep));
        async move {
            let args = ChildArgs {
                name: "w".into(),
                log,
                behaviour: Behaviour::default(),
            };
            let (actor, _) = Actor::spawn_linked(None, TestChild, args, sup).await?;
            keep.lock().unwrap().push(actor.get_cell());
            Err::<ActorCell, _>(StartError::new("handshake timed out"))
        }
    });
    let supervisor = Supervisor::new(remain()).child(spec);
    let mut events = supervisor.subscribe();
    let handle = supervisor.spawn().await.unwrap();
    let seen = events_until(&mut events, failed).await;
    assert_eq!(
        seen.iter()
            .filter(|e| matches!(e, SupervisorEvent::StartFailed { .. }))
            .count(),
        4
    );
    let spawned = spawned.lock().unwrap().clone();
    assert_eq!(spawned.len(), 4);
    assert!(
        spawned
            .iter()
            .all(|c| c.get_status() == ActorStatus::Stopped)
    );
    assert!(handle.cell().get_children().is_empty());
    handle.stop(DEADLINE).await;
}

/// A child that asks to be replaced (its owner killed it on purpose: a hung
/// worker, a recycled one) is started again at once, and no number of
/// replacements exhausts the budget; crashes still do.
#[tokio::test(start_paused = true)]
async fn replacements_are_immediate_and_outside_the_budget() {
    let log = Log::default();
    let supervisor = Supervisor::new(remain()).child(child("w", &log));
    let mut events = supervisor.subscribe();
    let handle = supervisor.spawn().await.unwrap();
    events_until(&mut events, |e| started(e, "w")).await;

    let began = Instant::now();
    for n in 0..20 {
        let reason = dspex_supervision::replace_reason(&format!("hung {n}"));
        tell(&cell_of(&handle, "w"), ChildMsg::Stop(Some(reason)));
        let seen = events_until(&mut events, |e| started(e, "w")).await;
        assert!(
            seen.iter().any(|e| matches!(e,
                SupervisorEvent::ChildExited { cause: ExitCause::Replaced(why), .. } if *why == format!("hung {n}"))),
            "{:?}",
            brief(&seen)
        );
        assert_eq!(delays(&seen), [0], "a replacement does not back off");
    }
    assert_eq!(began.elapsed(), Duration::ZERO, "no backoff was waited");
    let status = handle.status();
    assert_eq!(status.state, SupervisorState::Running);
    let w = status.child("w").unwrap();
    assert_eq!((w.restarts, w.replacements), (0, 20));

    // The budget is intact: three crashes are allowed, the fourth is not.
    for n in 1..=3 {
        tell(&cell_of(&handle, "w"), ChildMsg::Crash(format!("boom {n}")));
        events_until(&mut events, |e| started(e, "w")).await;
    }
    tell(&cell_of(&handle, "w"), ChildMsg::Crash("boom 4".into()));
    events_until(&mut events, failed).await;
    handle.stop(DEADLINE).await;
}
