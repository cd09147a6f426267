//! Compensation order: a failure at every step compensates exactly the completed steps, in
//! reverse order, for local steps and for steps served through request topics.

mod saga_support;

use std::time::Duration;

use aqueduct::ManualClock;
use aqueduct_patterns::{
    Action, RetryPolicy, Saga, SagaOrchestrator, SagaState, Step, StepError, StepKind,
};
use saga_support::{
    create_request_topics, local_saga, open_broker, poll_until_settled, remote_saga, saga_config,
    step_name, Log, Service, START_MS,
};

const STEPS: usize = 4;

#[test]
fn local_failure_at_every_step() {
    for fail_at in 0..STEPS {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(START_MS);
        let broker = open_broker(dir.path(), &clock);
        let log = Log::default();
        let saga = local_saga(STEPS, Some(fail_at), &log);
        let orchestrator =
            SagaOrchestrator::open_with(&broker, "orders", vec![saga], saga_config(&clock))
                .unwrap();

        orchestrator.start("local", "order-1", Vec::new()).unwrap();
        let state = poll_until_settled(&orchestrator, "order-1", 10);

        let mut expected: Vec<String> = (0..=fail_at).map(|i| format!("do s{i}")).collect();
        expected.extend((0..fail_at).rev().map(|i| format!("undo s{i}")));
        assert_eq!(state, SagaState::Compensated, "failure at s{fail_at}");
        assert_eq!(log.entries(), expected, "failure at s{fail_at}");

        let status = orchestrator.status("order-1").unwrap();
        let compensated: Vec<String> = (0..fail_at).rev().map(step_name).collect();
        assert_eq!(
            status.compensated_steps, compensated,
            "failure at s{fail_at}"
        );
        let completed: Vec<String> = (0..fail_at).map(step_name).collect();
        assert_eq!(status.completed_steps, completed, "failure at s{fail_at}");
        let reason = status.reason.unwrap();
        assert!(
            reason.contains(&format!("s{fail_at} is out of stock")),
            "reason {reason:?} names the failure of s{fail_at}"
        );
    }
}

#[test]
fn local_success_compensates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let broker = open_broker(dir.path(), &clock);
    let log = Log::default();
    let saga = local_saga(STEPS, None, &log);
    let orchestrator =
        SagaOrchestrator::open_with(&broker, "orders", vec![saga], saga_config(&clock)).unwrap();

    orchestrator.start("local", "order-1", Vec::new()).unwrap();
    let state = poll_until_settled(&orchestrator, "order-1", 10);

    assert_eq!(state, SagaState::Completed);
    assert_eq!(log.entries(), ["do s0", "do s1", "do s2", "do s3"]);
    assert!(orchestrator
        .status("order-1")
        .unwrap()
        .compensated_steps
        .is_empty());
}

#[test]
fn steps_without_compensation_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let broker = open_broker(dir.path(), &clock);
    let log = Log::default();
    let undo_log = log.clone();
    let saga = Saga::new("partial")
        .step(
            Step::new("reserve", Action::local(|_| Ok(Vec::new()))).compensation(Action::local(
                move |_| {
                    undo_log.push("undo reserve");
                    Ok(Vec::new())
                },
            )),
        )
        .step(Step::new("lookup", Action::local(|_| Ok(Vec::new()))))
        .step(Step::new(
            "charge",
            Action::local(|_| Err(StepError::fail("card declined"))),
        ));
    let orchestrator =
        SagaOrchestrator::open_with(&broker, "orders", vec![saga], saga_config(&clock)).unwrap();

    orchestrator
        .start("partial", "order-1", Vec::new())
        .unwrap();
    let state = poll_until_settled(&orchestrator, "order-1", 10);

    assert_eq!(state, SagaState::Compensated);
    assert_eq!(log.entries(), ["undo reserve"]);
    let status = orchestrator.status("order-1").unwrap();
    assert_eq!(status.compensated_steps, ["reserve"]);
    let skipped = status
        .history
        .iter()
        .filter(|entry| entry.event.to_string() == "lookup has no compensation; skipped")
        .count();
    assert_eq!(skipped, 1);
}

#[test]
fn remote_failure_at_every_step() {
    for fail_at in 0..STEPS {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(START_MS);
        let broker = open_broker(dir.path(), &clock);
        create_request_topics(&broker, STEPS);
        let saga = remote_saga(STEPS, Duration::from_secs(30), RetryPolicy::once());
        let orchestrator =
            SagaOrchestrator::open_with(&broker, "orders", vec![saga], saga_config(&clock))
                .unwrap();
        let failing = step_name(fail_at);
        let mut service = Service::new(
            &broker,
            STEPS,
            Box::new(move |request| {
                if request.kind() == StepKind::Action && request.step_name() == failing {
                    return Err(StepError::fail("no capacity"));
                }
                Ok(format!("{} ok", request.step_name()).into_bytes())
            }),
        );

        orchestrator
            .start("remote", "order-1", b"order".to_vec())
            .unwrap();
        for _ in 0..50 {
            orchestrator.poll().unwrap();
            if service.serve_available() == 0
                && orchestrator.status("order-1").unwrap().state.is_final()
            {
                break;
            }
        }

        let mut expected: Vec<String> = (0..=fail_at)
            .map(|i| format!("action s{i} attempt 1"))
            .collect();
        expected.extend(
            (0..fail_at)
                .rev()
                .map(|i| format!("compensation s{i} attempt 1")),
        );
        let status = orchestrator.status("order-1").unwrap();
        assert_eq!(
            status.state,
            SagaState::Compensated,
            "failure at s{fail_at}"
        );
        assert_eq!(service.handled, expected, "failure at s{fail_at}");
        let compensated: Vec<String> = (0..fail_at).rev().map(step_name).collect();
        assert_eq!(
            status.compensated_steps, compensated,
            "failure at s{fail_at}"
        );
    }
}

#[test]
fn remote_success_completes() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let broker = open_broker(dir.path(), &clock);
    create_request_topics(&broker, STEPS);
    let saga = remote_saga(STEPS, Duration::from_secs(30), RetryPolicy::once());
    let orchestrator =
        SagaOrchestrator::open_with(&broker, "orders", vec![saga], saga_config(&clock)).unwrap();
    let mut service = Service::new(&broker, STEPS, Box::new(|_| Ok(b"ok".to_vec())));

    orchestrator
        .start("remote", "order-1", b"order".to_vec())
        .unwrap();
    for _ in 0..50 {
        orchestrator.poll().unwrap();
        if service.serve_available() == 0
            && orchestrator.status("order-1").unwrap().state.is_final()
        {
            break;
        }
    }

    let status = orchestrator.status("order-1").unwrap();
    assert_eq!(status.state, SagaState::Completed);
    assert_eq!(status.completed_steps, ["s0", "s1", "s2", "s3"]);
    assert_eq!(service.handled.len(), STEPS);
}
