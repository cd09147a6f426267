//! Operators: a compensation that keeps failing is retried under its policy and then waits for
//! an operator, who can resume it or abort the saga. Running sagas can be aborted or
//! compensated on request.

mod saga_support;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aqueduct::{ManualClock, TopicConfig};
use aqueduct_patterns::{
    Action, Activity, Backoff, HistoryEvent, RetryPolicy, Saga, SagaError, SagaOrchestrator,
    SagaRequest, SagaState, Step, StepError, StepKind,
};
use saga_support::{open_broker, poll_until_settled, saga_config, Log, START_MS};

const BACKOFF: Duration = Duration::from_secs(2);
const ATTEMPTS: u32 = 3;

/// `refund` compensates with a closure that fails while `broken` is set; `ship` always fails.
fn refund_saga(broken: &Arc<AtomicBool>, calls: &Arc<AtomicU32>, permanent: bool) -> Saga {
    let broken = Arc::clone(broken);
    let calls = Arc::clone(calls);
    let refund = Action::local(move |_| {
        calls.fetch_add(1, Ordering::SeqCst);
        if !broken.load(Ordering::SeqCst) {
            return Ok(Vec::new());
        }
        if permanent {
            return Err(StepError::fail("card account closed"));
        }
        Err(StepError::retry("payment provider unavailable"))
    });
    Saga::new("order")
        .step(
            Step::new("charge", Action::local(|_| Ok(b"charge 1".to_vec())))
                .compensation(refund)
                .compensation_retry(RetryPolicy::new(ATTEMPTS, Backoff::new(BACKOFF, BACKOFF))),
        )
        .step(Step::new(
            "ship",
            Action::local(|_| Err(StepError::fail("address unknown"))),
        ))
}

fn compensation_failures(history: &[aqueduct_patterns::HistoryEntry]) -> Vec<Option<u64>> {
    history
        .iter()
        .filter_map(|entry| match &entry.event {
            HistoryEvent::Failed {
                kind: StepKind::Compensation,
                retry_at_ms,
                ..
            } => Some(*retry_at_ms),
            _ => None,
        })
        .collect()
}

#[test]
fn failing_compensation_needs_operator() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let broker = open_broker(dir.path(), &clock);
    let broken = Arc::new(AtomicBool::new(true));
    let calls = Arc::new(AtomicU32::new(0));
    let saga = refund_saga(&broken, &calls, false);
    let orchestrator =
        SagaOrchestrator::open_with(&broker, "shop", vec![saga], saga_config(&clock)).unwrap();

    orchestrator.start("order", "order-1", Vec::new()).unwrap();
    orchestrator.poll().unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Each retry waits for its backoff.
    orchestrator.poll().unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    for _ in 1..ATTEMPTS {
        clock.advance(BACKOFF);
        orchestrator.poll().unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), ATTEMPTS);

    let status = orchestrator.status("order-1").unwrap();
    assert_eq!(status.state, SagaState::NeedsOperator);
    assert_eq!(
        status.state_since_ms,
        START_MS + 2 * BACKOFF.as_millis() as u64
    );
    let reason = status.reason.clone().unwrap();
    assert!(
        reason.contains("compensation of step charge failed after 3 attempts"),
        "{reason}"
    );
    assert!(reason.contains("payment provider unavailable"), "{reason}");
    assert_eq!(
        status.activity,
        Activity::Idle {
            step: Some("charge".to_string())
        }
    );
    let failures = compensation_failures(&status.history);
    assert_eq!(failures.len(), ATTEMPTS as usize);
    assert!(failures[..2].iter().all(Option::is_some));
    assert_eq!(failures[2], None);
    assert_eq!(
        orchestrator
            .list(SagaState::NeedsOperator, 10)
            .unwrap()
            .len(),
        1
    );

    // Nothing more runs on its own, however long it waits.
    clock.advance(Duration::from_secs(24 * 3600));
    orchestrator.poll().unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), ATTEMPTS);

    // The operator fixes the cause and resumes the compensation.
    broken.store(false, Ordering::SeqCst);
    orchestrator
        .compensate("order-1", "provider is back")
        .unwrap();
    orchestrator.poll().unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), ATTEMPTS + 1);
    let status = orchestrator.status("order-1").unwrap();
    assert_eq!(status.state, SagaState::Compensated);
    assert_eq!(status.compensated_steps, ["charge"]);
}

#[test]
fn resumed_compensation_gets_fresh_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let broker = open_broker(dir.path(), &clock);
    let broken = Arc::new(AtomicBool::new(true));
    let calls = Arc::new(AtomicU32::new(0));
    let saga = refund_saga(&broken, &calls, false);
    let orchestrator =
        SagaOrchestrator::open_with(&broker, "shop", vec![saga], saga_config(&clock)).unwrap();

    orchestrator.start("order", "order-1", Vec::new()).unwrap();
    for _ in 0..ATTEMPTS {
        orchestrator.poll().unwrap();
        clock.advance(BACKOFF);
    }
    orchestrator.compensate("order-1", "try again").unwrap();
    for _ in 0..ATTEMPTS {
        orchestrator.poll().unwrap();
        clock.advance(BACKOFF);
    }

    let status = orchestrator.status("order-1").unwrap();
    assert_eq!(status.state, SagaState::NeedsOperator);
    assert_eq!(calls.load(Ordering::SeqCst), 2 * ATTEMPTS);
    let attempts: Vec<u32> = status
        .history
        .iter()
        .filter_map(|entry| match entry.event {
            HistoryEvent::AttemptStarted {
                kind: StepKind::Compensation,
                attempt,
                ..
            } => Some(attempt),
            _ => None,
        })
        .collect();
    assert_eq!(attempts, [1, 2, 3, 4, 5, 6]);
}

#[test]
fn permanent_compensation_failure_needs_operator() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let broker = open_broker(dir.path(), &clock);
    let broken = Arc::new(AtomicBool::new(true));
    let calls = Arc::new(AtomicU32::new(0));
    let saga = refund_saga(&broken, &calls, true);
    let orchestrator =
        SagaOrchestrator::open_with(&broker, "shop", vec![saga], saga_config(&clock)).unwrap();

    orchestrator.start("order", "order-1", Vec::new()).unwrap();
    orchestrator.poll().unwrap();

    let status = orchestrator.status("order-1").unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(status.state, SagaState::NeedsOperator);
    let reason = status.reason.unwrap();
    assert!(
        reason.contains("failed permanently: card account closed"),
        "{reason}"
    );
}

#[test]
fn operator_aborts_waiting_saga() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let broker = open_broker(dir.path(), &clock);
    let broken = Arc::new(AtomicBool::new(true));
    let calls = Arc::new(AtomicU32::new(0));
    let saga = refund_saga(&broken, &calls, true);
    let orchestrator =
        SagaOrchestrator::open_with(&broker, "shop", vec![saga], saga_config(&clock)).unwrap();

    orchestrator.start("order", "order-1", Vec::new()).unwrap();
    orchestrator.poll().unwrap();
    orchestrator.abort("order-1", "refunded by hand").unwrap();

    let status = orchestrator.status("order-1").unwrap();
    assert_eq!(status.state, SagaState::Aborted);
    assert_eq!(
        status.reason.as_deref(),
        Some("aborted by an operator: refunded by hand")
    );
    assert!(orchestrator
        .list(SagaState::NeedsOperator, 10)
        .unwrap()
        .is_empty());
}

#[test]
fn abort_stops_running_saga() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let broker = open_broker(dir.path(), &clock);
    broker
        .create_topic("payments", TopicConfig::default())
        .unwrap();
    let log = Log::default();
    let undo = log.clone();
    let saga = Saga::new("order")
        .step(
            Step::new("reserve", Action::local(|_| Ok(Vec::new()))).compensation(Action::local(
                move |_| {
                    undo.push("undo reserve");
                    Ok(Vec::new())
                },
            )),
        )
        .step(Step::new(
            "charge",
            Action::request("payments", |_| Ok(b"charge".to_vec())),
        ));
    let orchestrator =
        SagaOrchestrator::open_with(&broker, "shop", vec![saga], saga_config(&clock)).unwrap();
    let mut payments = broker.subscribe("payments", "payment-service").unwrap();

    orchestrator.start("order", "order-1", Vec::new()).unwrap();
    orchestrator.poll().unwrap();
    orchestrator.abort("order-1", "fraud suspected").unwrap();

    // The service replies after the abort, and the reply has no effect.
    let delivery = payments.try_recv().unwrap().unwrap();
    let request = SagaRequest::parse(&delivery).unwrap();
    request.reply(&broker, Ok(b"charged".to_vec())).unwrap();
    delivery.ack().unwrap();
    clock.advance(Duration::from_secs(3600));
    orchestrator.poll().unwrap();

    let status = orchestrator.status("order-1").unwrap();
    assert_eq!(status.state, SagaState::Aborted);
    assert_eq!(status.completed_steps, ["reserve"]);
    assert!(log.entries().is_empty());
    assert!(payments.try_recv().unwrap().is_none());
}

#[test]
fn finished_saga_rejects_operator_actions() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let broker = open_broker(dir.path(), &clock);
    let saga = Saga::new("order").step(Step::new("reserve", Action::local(|_| Ok(Vec::new()))));
    let orchestrator =
        SagaOrchestrator::open_with(&broker, "shop", vec![saga], saga_config(&clock)).unwrap();
    orchestrator.start("order", "order-1", Vec::new()).unwrap();
    assert_eq!(
        poll_until_settled(&orchestrator, "order-1", 5),
        SagaState::Completed
    );

    let abort = orchestrator.abort("order-1", "too late").unwrap_err();
    assert!(matches!(
        abort,
        SagaError::InvalidTransition {
            state: SagaState::Completed,
            ..
        }
    ));
    assert_eq!(
        abort.to_string(),
        "cannot abort saga \"order-1\": it is completed; it has finished"
    );
    let compensate = orchestrator.compensate("order-1", "too late").unwrap_err();
    assert!(matches!(compensate, SagaError::InvalidTransition { .. }));
    let missing = orchestrator.abort("order-2", "unknown").unwrap_err();
    assert!(matches!(missing, SagaError::NotFound { .. }));
}

#[test]
fn forced_compensation_includes_step_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let broker = open_broker(dir.path(), &clock);
    broker
        .create_topic("payments", TopicConfig::default())
        .unwrap();
    let log = Log::default();
    let undo = log.clone();
    let saga = Saga::new("order")
        .step(
            Step::new("reserve", Action::local(|_| Ok(Vec::new()))).compensation(Action::local(
                move |_| {
                    undo.push("undo reserve");
                    Ok(Vec::new())
                },
            )),
        )
        .step(
            Step::new(
                "charge",
                Action::request("payments", |_| Ok(b"charge".to_vec())),
            )
            .compensation(Action::request("payments", |_| Ok(b"refund".to_vec()))),
        );
    let orchestrator =
        SagaOrchestrator::open_with(&broker, "shop", vec![saga], saga_config(&clock)).unwrap();
    let mut payments = broker.subscribe("payments", "payment-service").unwrap();

    orchestrator.start("order", "order-1", Vec::new()).unwrap();
    orchestrator.poll().unwrap();
    orchestrator
        .compensate("order-1", "customer cancelled")
        .unwrap();
    orchestrator.poll().unwrap();

    // The charge was requested and may have happened, so it is refunded.
    let mut kinds = Vec::new();
    while let Some(delivery) = payments.try_recv().unwrap() {
        let request = SagaRequest::parse(&delivery).unwrap();
        kinds.push(request.kind());
        if request.kind() == StepKind::Compensation {
            request.reply(&broker, Ok(Vec::new())).unwrap();
        }
        delivery.ack().unwrap();
    }
    assert_eq!(kinds, [StepKind::Action, StepKind::Compensation]);
    orchestrator.poll().unwrap();

    let status = orchestrator.status("order-1").unwrap();
    assert_eq!(status.state, SagaState::Compensated);
    assert_eq!(status.compensated_steps, ["charge", "reserve"]);
    assert_eq!(log.entries(), ["undo reserve"]);
    assert_eq!(
        status.reason.as_deref(),
        Some("compensation requested by an operator: customer cancelled")
    );
}
