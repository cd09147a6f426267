//! Crash recovery: child processes run sagas and are killed with SIGKILL at chosen points.
//! The points are a step's effect committed but not recorded, a compensation likewise, right
//! after a recorded compensation, and a reply stored but not applied. A busy run is also killed
//! at varied times. After reopening, every saga finishes and no action or compensation took
//! effect twice.
//!
//! Step closures count their effects in the tree `effects`, keyed by idempotency key, inside
//! `StepContext::run_once` (local steps) or an `Inbox` transaction (the request service).

mod saga_support;

use std::time::Duration;

use aqueduct::Broker;
use aqueduct_patterns::{
    Action, Backoff, HistoryEvent, RetryPolicy, Saga, SagaConfig, SagaOrchestrator, SagaState,
    Step, StepContext, StepError, StepKind,
};
use saga_support::{
    child_role, create_request_topics, effect_count, hang, key, record_effect, remote_saga, report,
    spawn, step_name, Service,
};
use sled::transaction::ConflictableTransactionResult;

const ORCHESTRATOR: &str = "trips";
const STEPS: usize = 3;
const CHILD_TEST: &str = "child_process";

/// Short retry delays, because children use the system clock.
fn fast_retry() -> RetryPolicy {
    RetryPolicy::new(
        5,
        Backoff::new(Duration::from_millis(5), Duration::from_millis(20)),
    )
}

/// Where a child stops and waits to be killed: in `kind` of step `step`, before or after its
/// effect committed.
#[derive(Clone, Copy)]
struct Hang {
    step: usize,
    kind: StepKind,
    after_effect: bool,
}

/// Runs the effect of one side of a step once and counts it. With `hang_here` set, the child
/// reports and blocks before the effect or, with `after` set, after it.
fn counted(ctx: &StepContext<'_>, effects: &sled::Tree, hang_here: bool, after: bool) -> Vec<u8> {
    let label = format!("{} {}", ctx.kind(), ctx.step_name());
    if hang_here && !after {
        report(&format!("before {label}"));
        hang();
    }
    let key = ctx.idempotency_key();
    let output = ctx
        .run_once(std::slice::from_ref(effects), |trees| {
            increment(&trees[0], &key)
        })
        .expect("run effect once");
    if hang_here && after {
        effects.flush().expect("flush");
        report(&format!("after {label}"));
        hang();
    }
    output
}

fn increment(
    tree: &sled::transaction::TransactionalTree,
    key: &str,
) -> ConflictableTransactionResult<Vec<u8>, StepError> {
    let count = tree.get(key)?.map_or(0, |value| {
        u64::from_be_bytes(value.as_ref().try_into().expect("an 8-byte counter"))
    });
    tree.insert(key, &(count + 1).to_be_bytes())?;
    Ok(b"done".to_vec())
}

/// Local steps s0 to s2 that count their effects; the action of `fail_at` fails permanently
/// before its effect.
fn local_saga(effects: &sled::Tree, fail_at: Option<usize>, hang_at: Option<Hang>) -> Saga {
    let mut saga = Saga::new("local");
    for index in 0..STEPS {
        let hangs = |kind| hang_at.filter(|h| h.step == index && h.kind == kind);
        let action_effects = effects.clone();
        let action_hang = hangs(StepKind::Action);
        let action = Action::local(move |ctx| {
            if Some(index) == fail_at {
                return Err(StepError::fail("no seats left"));
            }
            let after = action_hang.is_some_and(|h| h.after_effect);
            Ok(counted(ctx, &action_effects, action_hang.is_some(), after))
        });
        let undo_effects = effects.clone();
        let undo_hang = hangs(StepKind::Compensation);
        let compensation = Action::local(move |ctx| {
            let after = undo_hang.is_some_and(|h| h.after_effect);
            Ok(counted(ctx, &undo_effects, undo_hang.is_some(), after))
        });
        saga = saga.step(
            Step::new(step_name(index), action)
                .compensation(compensation)
                .retry(fast_retry())
                .compensation_retry(fast_retry()),
        );
    }
    saga
}

fn open_local(
    db: &std::path::Path,
    fail_at: Option<usize>,
    hang_at: Option<Hang>,
) -> (Broker, sled::Tree, SagaOrchestrator) {
    let broker = Broker::open(db).expect("open broker");
    let effects = broker.tree("effects").expect("open tree");
    let saga = local_saga(&effects, fail_at, hang_at);
    let orchestrator =
        SagaOrchestrator::open(&broker, ORCHESTRATOR, vec![saga]).expect("open orchestrator");
    (broker, effects, orchestrator)
}

/// Polls until saga `id` is final, for at most 10 s.
fn run_to_end(orchestrator: &SagaOrchestrator, id: &str) -> SagaState {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        orchestrator.poll().expect("poll");
        let state = orchestrator.status(id).expect("saga status").state;
        if state.is_final() || std::time::Instant::now() > deadline {
            return state;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn interrupted(orchestrator: &SagaOrchestrator, id: &str) -> Vec<(String, StepKind, u32)> {
    orchestrator
        .status(id)
        .expect("saga status")
        .history
        .into_iter()
        .filter_map(|entry| match entry.event {
            HistoryEvent::Interrupted {
                step,
                kind,
                attempt,
            } => Some((step, kind, attempt)),
            _ => None,
        })
        .collect()
}

#[test]
fn child_process() {
    let Some((role, db)) = child_role() else {
        return;
    };
    match role.as_str() {
        "local-step" => {
            let hang_at = Hang {
                step: 1,
                kind: StepKind::Action,
                after_effect: true,
            };
            let (_broker, _effects, orchestrator) = open_local(&db, None, Some(hang_at));
            orchestrator.start("local", "trip-1", Vec::new()).unwrap();
            run_to_end(&orchestrator, "trip-1");
        }
        "compensation-effect" | "after-compensation" => {
            let hang_at = if role == "compensation-effect" {
                Hang {
                    step: 1,
                    kind: StepKind::Compensation,
                    after_effect: true,
                }
            } else {
                Hang {
                    step: 0,
                    kind: StepKind::Compensation,
                    after_effect: false,
                }
            };
            let (_broker, _effects, orchestrator) = open_local(&db, Some(2), Some(hang_at));
            orchestrator.start("local", "trip-1", Vec::new()).unwrap();
            run_to_end(&orchestrator, "trip-1");
        }
        "remote-reply" => run_remote_reply_child(&db),
        busy if busy.starts_with("busy-") => {
            let round = busy["busy-".len()..].parse().unwrap();
            run_busy_child(&db, round);
        }
        other => panic!("unknown child role {other:?}"),
    }
    panic!("child role {role:?} finished without being killed");
}

#[test]
fn crash_between_step_and_record() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let mut child = spawn(CHILD_TEST, "local-step", &db);
    child.wait_for("after action s1");
    child.kill();

    let (_broker, effects, orchestrator) = open_local(&db, None, None);
    assert_eq!(run_to_end(&orchestrator, "trip-1"), SagaState::Completed);
    for step in 0..STEPS {
        let action = key(ORCHESTRATOR, "trip-1", step, StepKind::Action);
        assert_eq!(effect_count(&effects, &action), 1, "effects of {action}");
    }
    assert_eq!(
        interrupted(&orchestrator, "trip-1"),
        [("s1".to_string(), StepKind::Action, 1)]
    );
    let succeeded: Vec<(String, u32)> = orchestrator
        .status("trip-1")
        .unwrap()
        .history
        .into_iter()
        .filter_map(|entry| match entry.event {
            HistoryEvent::Succeeded { step, attempt, .. } => Some((step, attempt)),
            _ => None,
        })
        .collect();
    let expected = [("s0", 1), ("s1", 2), ("s2", 1)].map(|(s, a)| (s.to_string(), a));
    assert_eq!(succeeded, expected);
}

#[test]
fn crash_during_and_after_compensation() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");

    // The compensation of s1 committed its effect; its record did not.
    let mut child = spawn(CHILD_TEST, "compensation-effect", &db);
    child.wait_for("after compensation s1");
    child.kill();

    // The compensation of s1 is recorded; the one of s0 has not started its effect.
    let mut child = spawn(CHILD_TEST, "after-compensation", &db);
    child.wait_for("before compensation s0");
    child.kill();

    let (_broker, effects, orchestrator) = open_local(&db, Some(2), None);
    assert_eq!(run_to_end(&orchestrator, "trip-1"), SagaState::Compensated);
    let count = |step, kind| effect_count(&effects, &key(ORCHESTRATOR, "trip-1", step, kind));
    assert_eq!(count(0, StepKind::Action), 1);
    assert_eq!(count(1, StepKind::Action), 1);
    assert_eq!(count(2, StepKind::Action), 0);
    assert_eq!(count(2, StepKind::Compensation), 0);
    assert_eq!(count(1, StepKind::Compensation), 1);
    assert_eq!(count(0, StepKind::Compensation), 1);

    let status = orchestrator.status("trip-1").unwrap();
    assert_eq!(status.compensated_steps, ["s1", "s0"]);
    assert_eq!(
        interrupted(&orchestrator, "trip-1"),
        [
            ("s1".to_string(), StepKind::Compensation, 1),
            ("s0".to_string(), StepKind::Compensation, 1)
        ]
    );
}

fn open_remote(db: &std::path::Path) -> (Broker, SagaOrchestrator) {
    let broker = Broker::open(db).expect("open broker");
    create_request_topics(&broker, STEPS);
    let saga = remote_saga(STEPS, Duration::from_secs(30), fast_retry());
    let orchestrator =
        SagaOrchestrator::open(&broker, ORCHESTRATOR, vec![saga]).expect("open orchestrator");
    (broker, orchestrator)
}

/// Runs a remote saga until the service stored its reply to s0 and made everything durable,
/// then waits to be killed before the orchestrator reads the reply or the request is acked.
fn run_remote_reply_child(db: &std::path::Path) {
    let (broker, orchestrator) = open_remote(db);
    let inbox = aqueduct_patterns::Inbox::open(&broker, "service").expect("open inbox");
    let effects = broker.tree("effects").expect("open tree");
    let mut requests = broker
        .subscribe(&saga_support::request_topic(0), "service")
        .expect("subscribe");
    orchestrator
        .start("remote", "trip-1", b"trip".to_vec())
        .expect("start saga");
    orchestrator.poll().expect("poll");

    let delivery = requests
        .recv_timeout(Duration::from_secs(10))
        .expect("receive")
        .expect("a request");
    let request = aqueduct_patterns::SagaRequest::parse(&delivery).expect("a saga request");
    record_effect(&inbox, &effects, request.idempotency_key());
    request
        .reply(&broker, Ok(b"booked".to_vec()))
        .expect("reply");
    broker.flush().expect("flush");
    report("replied s0");
    hang();
}

#[test]
fn crash_between_reply_and_record() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let mut child = spawn(CHILD_TEST, "remote-reply", &db);
    child.wait_for("replied s0");
    child.kill();

    let (broker, orchestrator) = open_remote(&db);
    let mut service = Service::new(&broker, STEPS, Box::new(|_| Ok(b"booked".to_vec())));
    for _ in 0..100 {
        orchestrator.poll().unwrap();
        let served = service.serve_available();
        if served == 0 && orchestrator.status("trip-1").unwrap().state.is_final() {
            break;
        }
    }

    let status = orchestrator.status("trip-1").unwrap();
    assert_eq!(status.state, SagaState::Completed);
    let effects = broker.tree("effects").unwrap();
    for step in 0..STEPS {
        let action = key(ORCHESTRATOR, "trip-1", step, StepKind::Action);
        assert_eq!(effect_count(&effects, &action), 1, "effects of {action}");
    }
    // The request for s0 was delivered again, and the service saw it as a duplicate.
    assert_eq!(service.handled[0], "action s0 attempt 1");
    let s0_successes = status
        .history
        .iter()
        .filter(
            |entry| matches!(&entry.event, HistoryEvent::Succeeded { step, .. } if step == "s0"),
        )
        .count();
    assert_eq!(s0_successes, 1);
}

/// Sagas started by each busy child.
const BUSY_SAGAS: usize = 40;

/// How long after starting its sagas each busy child is killed. The last kill comes early, so
/// that work is left for the final run.
const KILL_DELAYS_MS: [u64; 3] = [150, 60, 20];

/// Saga `trip-R-N` of child round R fails at its last step when N is a multiple of 3.
fn busy_id(round: usize, index: usize) -> String {
    format!("trip-{round}-{index}")
}

fn busy_ids() -> impl Iterator<Item = (usize, String)> {
    (0..KILL_DELAYS_MS.len())
        .flat_map(|round| (0..BUSY_SAGAS).map(move |index| (index, busy_id(round, index))))
}

fn busy_service(broker: &Broker) -> Service {
    Service::new(
        broker,
        STEPS,
        Box::new(|request| {
            let index: usize = request
                .saga_id()
                .rsplit('-')
                .next()
                .expect("an id with an index")
                .parse()
                .expect("a number");
            let last = request.step_name() == step_name(STEPS - 1);
            if request.kind() == StepKind::Action && last && index % 3 == 0 {
                return Err(StepError::fail("hotel full"));
            }
            Ok(b"ok".to_vec())
        }),
    )
}

/// Starts the sagas of round `round` and works on them, and on those of earlier rounds, with
/// a runner and a service thread until killed.
fn run_busy_child(db: &std::path::Path, round: usize) {
    let (broker, orchestrator) = open_busy(db);
    for index in 0..BUSY_SAGAS {
        orchestrator
            .start("remote", &busy_id(round, index), b"trip".to_vec())
            .expect("start saga");
    }
    let _runner = orchestrator.spawn().expect("spawn runner");
    let service_broker = broker.clone();
    std::thread::spawn(move || {
        let mut service = busy_service(&service_broker);
        loop {
            if service.serve_available() == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
    report("started");
    hang();
}

fn open_busy(db: &std::path::Path) -> (Broker, SagaOrchestrator) {
    let broker = Broker::open(db).expect("open broker");
    create_request_topics(&broker, STEPS);
    let saga = remote_saga(STEPS, Duration::from_secs(30), fast_retry());
    let config = SagaConfig::default().idle_wait(Duration::from_millis(2));
    let orchestrator = SagaOrchestrator::open_with(&broker, ORCHESTRATOR, vec![saga], config)
        .expect("open orchestrator");
    (broker, orchestrator)
}

#[test]
fn killed_at_varied_times() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    for (round, delay) in KILL_DELAYS_MS.into_iter().enumerate() {
        let mut child = spawn(CHILD_TEST, &format!("busy-{round}"), &db);
        child.wait_for("started");
        std::thread::sleep(Duration::from_millis(delay));
        child.kill();
    }

    let (broker, orchestrator) = open_busy(&db);
    let unfinished = |orchestrator: &SagaOrchestrator| {
        busy_ids()
            .filter(|(_, id)| !orchestrator.status(id).unwrap().state.is_final())
            .count()
    };
    assert!(
        unfinished(&orchestrator) > 0,
        "the last kill came after all work was done"
    );
    let mut service = busy_service(&broker);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        orchestrator.poll().unwrap();
        let served = service.serve_available();
        let done = served == 0 && unfinished(&orchestrator) == 0;
        if done || std::time::Instant::now() > deadline {
            break;
        }
    }

    let effects = broker.tree("effects").unwrap();
    for (index, id) in busy_ids() {
        let status = orchestrator.status(&id).unwrap();
        // Timeouts are 30 s, so a timeout means a request or a reply was lost in a crash.
        let timeouts = status
            .history
            .iter()
            .filter(|entry| entry.event.to_string().contains("no reply within"))
            .count();
        assert_eq!(timeouts, 0, "{id} lost a request or a reply");
        let count = |step, kind| effect_count(&effects, &key(ORCHESTRATOR, &id, step, kind));
        if index % 3 == 0 {
            assert_eq!(status.state, SagaState::Compensated, "{id}");
            assert_eq!(status.compensated_steps, ["s1", "s0"], "{id}");
            for step in 0..STEPS - 1 {
                assert_eq!(count(step, StepKind::Action), 1, "{id} action s{step}");
                assert_eq!(count(step, StepKind::Compensation), 1, "{id} undo s{step}");
            }
            assert_eq!(count(STEPS - 1, StepKind::Action), 0, "{id} failed action");
        } else {
            assert_eq!(status.state, SagaState::Completed, "{id}");
            for step in 0..STEPS {
                assert_eq!(count(step, StepKind::Action), 1, "{id} action s{step}");
                assert_eq!(count(step, StepKind::Compensation), 0, "{id} undo s{step}");
            }
        }
    }
}
