//! Status and history: what `status` reports for each kind of event, listing by state and by
//! age, idempotent starts, and status after reopening the database.

mod saga_support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aqueduct::ManualClock;
use aqueduct_patterns::{
    Action, Activity, Backoff, HistoryEvent, RetryPolicy, Saga, SagaError, SagaOrchestrator,
    SagaState, Started, Step, StepError, StepKind,
};
use saga_support::{open_broker, saga_config, START_MS};

const BACKOFF: Duration = Duration::from_secs(1);

/// `reserve` succeeds; `charge` fails once (retryable), then fails permanently.
fn saga(charges: &Arc<AtomicU32>) -> Saga {
    let charges = Arc::clone(charges);
    let charge = Action::local(move |_| {
        if charges.fetch_add(1, Ordering::SeqCst) == 0 {
            Err(StepError::retry("bank timeout"))
        } else {
            Err(StepError::fail("card declined"))
        }
    });
    Saga::new("order")
        .step(
            Step::new("reserve", Action::local(|_| Ok(b"shelf 4".to_vec())))
                .compensation(Action::local(|_| Ok(Vec::new()))),
        )
        .step(
            Step::new("charge", charge)
                .retry(RetryPolicy::new(3, Backoff::new(BACKOFF, BACKOFF)))
                .compensation(Action::local(|_| Ok(Vec::new()))),
        )
}

fn one_step_saga() -> Saga {
    Saga::new("order").step(Step::new("reserve", Action::local(|_| Ok(Vec::new()))))
}

#[test]
fn history_records_every_event() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let broker = open_broker(dir.path(), &clock);
    let charges = Arc::new(AtomicU32::new(0));
    let orchestrator =
        SagaOrchestrator::open_with(&broker, "shop", vec![saga(&charges)], saga_config(&clock))
            .unwrap();

    orchestrator.start("order", "order-1", Vec::new()).unwrap();
    orchestrator.poll().unwrap();
    let waiting = orchestrator.status("order-1").unwrap();
    assert_eq!(waiting.state, SagaState::Running);
    assert_eq!(
        waiting.activity,
        Activity::Scheduled {
            step: "charge".to_string(),
            kind: StepKind::Action,
            attempt: 2,
            due_ms: START_MS + 1000,
        }
    );
    clock.advance(BACKOFF);
    orchestrator.poll().unwrap();

    let status = orchestrator.status("order-1").unwrap();
    let lines: Vec<String> = status
        .history
        .iter()
        .map(|entry| entry.event.to_string())
        .collect();
    let reason = "step charge failed permanently: card declined";
    let expected = [
        "started saga order".to_string(),
        "action of reserve attempt 1 started".to_string(),
        "action of reserve attempt 1 succeeded".to_string(),
        "action of charge attempt 1 started".to_string(),
        "action of charge attempt 1 failed: bank timeout; retrying".to_string(),
        "action of charge attempt 2 started".to_string(),
        "action of charge attempt 2 failed: card declined".to_string(),
        format!("now compensating: {reason}"),
        "compensation of reserve attempt 1 started".to_string(),
        "compensation of reserve attempt 1 succeeded".to_string(),
        format!("now compensated: {reason}"),
    ];
    assert_eq!(lines, expected);

    let times: Vec<u64> = status.history.iter().map(|entry| entry.at_ms).collect();
    assert_eq!(times[..5], [START_MS; 5]);
    assert_eq!(times[5..], [START_MS + 1000; 6]);
    assert_eq!(status.state, SagaState::Compensated);
    assert_eq!(status.reason.as_deref(), Some(reason));
    assert_eq!(status.state_since_ms, START_MS + 1000);
    assert_eq!(status.created_ms, START_MS);
    assert_eq!(status.updated_ms, START_MS + 1000);
    assert_eq!(status.activity, Activity::Idle { step: None });
    assert_eq!(status.completed_steps, ["reserve"]);
    assert_eq!(status.compensated_steps, ["reserve"]);
    assert_eq!(status.in_state_for(START_MS + 5000), Duration::from_secs(4));
}

#[test]
fn retry_event_carries_retry_time() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let broker = open_broker(dir.path(), &clock);
    let charges = Arc::new(AtomicU32::new(0));
    let orchestrator =
        SagaOrchestrator::open_with(&broker, "shop", vec![saga(&charges)], saga_config(&clock))
            .unwrap();

    orchestrator.start("order", "order-1", Vec::new()).unwrap();
    orchestrator.poll().unwrap();

    let status = orchestrator.status("order-1").unwrap();
    let retry = status
        .history
        .iter()
        .find_map(|entry| match &entry.event {
            HistoryEvent::Failed {
                step,
                attempt,
                error,
                retry_at_ms,
                ..
            } => Some((step.clone(), *attempt, error.clone(), *retry_at_ms)),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        retry,
        (
            "charge".to_string(),
            1,
            "bank timeout".to_string(),
            Some(START_MS + 1000)
        )
    );
}

#[test]
fn list_orders_by_last_change() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let broker = open_broker(dir.path(), &clock);
    let orchestrator =
        SagaOrchestrator::open_with(&broker, "shop", vec![one_step_saga()], saga_config(&clock))
            .unwrap();

    for id in ["order-c", "order-a", "order-b"] {
        orchestrator.start("order", id, Vec::new()).unwrap();
        clock.advance(Duration::from_secs(10));
    }
    let running: Vec<String> = orchestrator
        .list(SagaState::Running, 10)
        .unwrap()
        .into_iter()
        .map(|summary| summary.id)
        .collect();
    assert_eq!(running, ["order-c", "order-a", "order-b"]);
    assert_eq!(orchestrator.list(SagaState::Running, 2).unwrap().len(), 2);
    assert!(orchestrator
        .list(SagaState::Completed, 10)
        .unwrap()
        .is_empty());

    orchestrator.poll().unwrap();
    assert!(orchestrator
        .list(SagaState::Running, 10)
        .unwrap()
        .is_empty());
    assert_eq!(
        orchestrator.list(SagaState::Completed, 10).unwrap().len(),
        3
    );
}

#[test]
fn stuck_finds_old_unfinished_sagas() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let broker = open_broker(dir.path(), &clock);
    let orchestrator =
        SagaOrchestrator::open_with(&broker, "shop", vec![one_step_saga()], saga_config(&clock))
            .unwrap();

    orchestrator
        .start("order", "order-old", Vec::new())
        .unwrap();
    clock.advance(Duration::from_secs(600));
    orchestrator
        .start("order", "order-new", Vec::new())
        .unwrap();
    clock.advance(Duration::from_secs(60));

    let stuck = orchestrator.stuck(Duration::from_secs(300), 10).unwrap();
    let ids: Vec<&str> = stuck.iter().map(|summary| summary.id.as_str()).collect();
    assert_eq!(ids, ["order-old"]);
    assert_eq!(stuck[0].updated_ms, START_MS);
    let all = orchestrator.stuck(Duration::from_secs(30), 10).unwrap();
    assert_eq!(all.len(), 2);

    // Finished sagas are not stuck.
    orchestrator.poll().unwrap();
    assert!(orchestrator.stuck(Duration::ZERO, 10).unwrap().is_empty());
}

#[test]
fn start_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let broker = open_broker(dir.path(), &clock);
    let orchestrator =
        SagaOrchestrator::open_with(&broker, "shop", vec![one_step_saga()], saga_config(&clock))
            .unwrap();

    let first = orchestrator
        .start("order", "order-1", b"a".to_vec())
        .unwrap();
    let again = orchestrator
        .start("order", "order-1", b"a".to_vec())
        .unwrap();
    let other = orchestrator
        .start("order", "order-1", b"b".to_vec())
        .unwrap_err();
    let unknown = orchestrator
        .start("refund", "order-2", Vec::new())
        .unwrap_err();
    let invalid = orchestrator
        .start("order", "order 3", Vec::new())
        .unwrap_err();

    assert_eq!(first, Started::Created);
    assert_eq!(again, Started::AlreadyStarted);
    assert!(matches!(other, SagaError::Conflict { .. }));
    assert_eq!(
        other.to_string(),
        "saga \"order-1\" already exists as saga \"order\" with another input; start it under \
         a new id"
    );
    assert!(matches!(unknown, SagaError::UnknownSaga { .. }));
    assert!(matches!(invalid, SagaError::InvalidName { .. }));
    assert_eq!(orchestrator.status("order-1").unwrap().history.len(), 1);
}

#[test]
fn unknown_saga_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let broker = open_broker(dir.path(), &clock);
    let orchestrator =
        SagaOrchestrator::open_with(&broker, "shop", vec![one_step_saga()], saga_config(&clock))
            .unwrap();

    let error = orchestrator.status("order-9").unwrap_err();
    assert!(matches!(error, SagaError::NotFound { .. }));
    assert_eq!(
        error.to_string(),
        "saga \"order-9\" not found in orchestrator \"shop\""
    );
}

#[test]
fn status_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let charges = Arc::new(AtomicU32::new(0));
    let before = {
        let broker = open_broker(dir.path(), &clock);
        let orchestrator =
            SagaOrchestrator::open_with(&broker, "shop", vec![saga(&charges)], saga_config(&clock))
                .unwrap();
        orchestrator.start("order", "order-1", Vec::new()).unwrap();
        orchestrator.poll().unwrap();
        orchestrator.status("order-1").unwrap()
    };

    let broker = open_broker(dir.path(), &clock);
    let orchestrator =
        SagaOrchestrator::open_with(&broker, "shop", vec![saga(&charges)], saga_config(&clock))
            .unwrap();
    assert_eq!(orchestrator.status("order-1").unwrap(), before);

    // The scheduled retry still runs.
    clock.advance(BACKOFF);
    orchestrator.poll().unwrap();
    assert_eq!(
        orchestrator.status("order-1").unwrap().state,
        SagaState::Compensated
    );
}

#[test]
fn changed_definition_needs_operator() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    {
        let broker = open_broker(dir.path(), &clock);
        let orchestrator = SagaOrchestrator::open_with(
            &broker,
            "shop",
            vec![one_step_saga()],
            saga_config(&clock),
        )
        .unwrap();
        orchestrator.start("order", "order-1", Vec::new()).unwrap();
    }

    let broker = open_broker(dir.path(), &clock);
    let renamed = Saga::new("order").step(Step::new("hold", Action::local(|_| Ok(Vec::new()))));
    let orchestrator =
        SagaOrchestrator::open_with(&broker, "shop", vec![renamed], saga_config(&clock)).unwrap();
    orchestrator.poll().unwrap();

    let status = orchestrator.status("order-1").unwrap();
    assert_eq!(status.state, SagaState::NeedsOperator);
    let reason = status.reason.unwrap();
    assert!(
        reason.contains("changed from steps [\"reserve\"] to [\"hold\"]"),
        "{reason}"
    );
}
