//! Timeouts on the manual clock: a request without a reply is retried after its backoff, and
//! after its last attempt the saga compensates the completed steps and the timed-out one,
//! whose effect is unknown. Replies that come too late are ignored.

mod saga_support;

use std::time::Duration;

use aqueduct::{Broker, Consumer, ManualClock, TopicConfig};
use aqueduct_patterns::{
    Action, Activity, Backoff, HistoryEvent, RetryPolicy, Saga, SagaOrchestrator, SagaRequest,
    SagaState, Step, StepKind,
};
use saga_support::{open_broker, saga_config, Log, START_MS};

const TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF: Duration = Duration::from_secs(1);

/// Step `reserve` is local; step `ship` is a request to topic `shipping` with two attempts.
fn saga(log: &Log) -> Saga {
    let undo_reserve = log.clone();
    let retry = RetryPolicy::new(2, Backoff::new(BACKOFF, BACKOFF));
    Saga::new("order")
        .step(
            Step::new("reserve", Action::local(|_| Ok(b"reservation 7".to_vec()))).compensation(
                Action::local(move |_| {
                    undo_reserve.push("undo reserve");
                    Ok(Vec::new())
                }),
            ),
        )
        .step(
            Step::new(
                "ship",
                Action::request("shipping", |_| Ok(b"ship".to_vec())),
            )
            .compensation(Action::request("shipping", |_| Ok(b"cancel".to_vec())))
            .timeout(TIMEOUT)
            .retry(retry)
            .compensation_retry(retry),
        )
}

struct Fixture {
    _dir: tempfile::TempDir,
    clock: std::sync::Arc<ManualClock>,
    broker: Broker,
    orchestrator: SagaOrchestrator,
    shipping: Consumer,
    log: Log,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("temporary directory");
    let clock = ManualClock::new(START_MS);
    let broker = open_broker(dir.path(), &clock);
    broker
        .create_topic(
            "shipping",
            TopicConfig::default().ack_timeout(Duration::from_secs(3600)),
        )
        .expect("create topic");
    let log = Log::default();
    let orchestrator =
        SagaOrchestrator::open_with(&broker, "shop", vec![saga(&log)], saga_config(&clock))
            .expect("open orchestrator");
    let shipping = broker
        .subscribe("shipping", "shipping-service")
        .expect("subscribe");
    Fixture {
        _dir: dir,
        clock,
        broker,
        orchestrator,
        shipping,
        log,
    }
}

/// Receives every request available now, acked, in order.
fn requests(consumer: &mut Consumer) -> Vec<SagaRequest> {
    let mut received = Vec::new();
    while let Some(delivery) = consumer.try_recv().expect("receive") {
        received.push(SagaRequest::parse(&delivery).expect("a saga request"));
        delivery.ack().expect("ack");
    }
    received
}

fn failures(orchestrator: &SagaOrchestrator, id: &str) -> Vec<(u32, Option<u64>)> {
    orchestrator
        .status(id)
        .expect("saga status")
        .history
        .into_iter()
        .filter_map(|entry| match entry.event {
            HistoryEvent::Failed {
                attempt,
                retry_at_ms,
                ..
            } => Some((attempt, retry_at_ms)),
            _ => None,
        })
        .collect()
}

#[test]
fn request_times_out_then_retries() {
    let mut f = fixture();
    f.orchestrator
        .start("order", "order-1", Vec::new())
        .unwrap();
    f.orchestrator.poll().unwrap();
    let first = requests(&mut f.shipping);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].attempt(), 1);

    // Just before the deadline nothing happens.
    f.clock.advance(TIMEOUT - Duration::from_millis(1));
    let report = f.orchestrator.poll().unwrap();
    assert_eq!(report.timeouts, 0);
    let status = f.orchestrator.status("order-1").unwrap();
    assert!(matches!(
        status.activity,
        Activity::InFlight { attempt: 1, .. }
    ));

    // At the deadline the attempt times out and a retry is scheduled after the backoff.
    f.clock.advance(Duration::from_millis(1));
    let report = f.orchestrator.poll().unwrap();
    assert_eq!(report.timeouts, 1);
    let retry_at = START_MS + TIMEOUT.as_millis() as u64 + BACKOFF.as_millis() as u64;
    assert_eq!(failures(&f.orchestrator, "order-1"), [(1, Some(retry_at))]);
    assert!(requests(&mut f.shipping).is_empty());

    // The retry goes out when the backoff has passed, with the same idempotency key.
    f.clock.advance(BACKOFF);
    f.orchestrator.poll().unwrap();
    let second = requests(&mut f.shipping);
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].attempt(), 2);
    assert_eq!(second[0].idempotency_key(), first[0].idempotency_key());
    assert_ne!(second[0].request_id(), first[0].request_id());
}

#[test]
fn last_timeout_compensates_uncertain_step() {
    let mut f = fixture();
    f.orchestrator
        .start("order", "order-1", Vec::new())
        .unwrap();
    f.orchestrator.poll().unwrap();
    f.clock.advance(TIMEOUT);
    f.orchestrator.poll().unwrap();
    f.clock.advance(BACKOFF);
    f.orchestrator.poll().unwrap();
    f.clock.advance(TIMEOUT);
    f.orchestrator.poll().unwrap();

    // The timed-out step may have shipped, so its compensation is requested first.
    let received = requests(&mut f.shipping);
    let kinds: Vec<(StepKind, u32)> = received.iter().map(|r| (r.kind(), r.attempt())).collect();
    assert_eq!(
        kinds,
        [
            (StepKind::Action, 1),
            (StepKind::Action, 2),
            (StepKind::Compensation, 1)
        ]
    );
    let status = f.orchestrator.status("order-1").unwrap();
    assert_eq!(status.state, SagaState::Compensating);
    let reason = status.reason.unwrap();
    assert!(
        reason.contains("step ship failed after 2 attempts"),
        "{reason}"
    );
    assert!(reason.contains("no reply within 5000 ms"), "{reason}");

    // The compensation's reply lets the saga compensate the local step too.
    received[2].reply(&f.broker, Ok(Vec::new())).unwrap();
    f.orchestrator.poll().unwrap();
    let status = f.orchestrator.status("order-1").unwrap();
    assert_eq!(status.state, SagaState::Compensated);
    assert_eq!(status.compensated_steps, ["ship", "reserve"]);
    assert_eq!(f.log.entries(), ["undo reserve"]);
}

#[test]
fn late_reply_is_ignored() {
    let mut f = fixture();
    f.orchestrator
        .start("order", "order-1", Vec::new())
        .unwrap();
    f.orchestrator.poll().unwrap();
    let first = requests(&mut f.shipping).remove(0);
    f.clock.advance(TIMEOUT);
    f.orchestrator.poll().unwrap();
    f.clock.advance(BACKOFF);
    f.orchestrator.poll().unwrap();
    let second = requests(&mut f.shipping).remove(0);

    // The reply to the timed-out first attempt changes nothing.
    first.reply(&f.broker, Ok(b"late".to_vec())).unwrap();
    f.orchestrator.poll().unwrap();
    let status = f.orchestrator.status("order-1").unwrap();
    assert_eq!(status.state, SagaState::Running);
    assert!(matches!(
        status.activity,
        Activity::InFlight { attempt: 2, .. }
    ));
    let ignored = status
        .history
        .iter()
        .filter(|entry| {
            matches!(
                entry.event,
                HistoryEvent::LateResultIgnored { attempt: 1, .. }
            )
        })
        .count();
    assert_eq!(ignored, 1);

    // The reply to the current attempt completes the saga.
    second
        .reply(&f.broker, Ok(b"tracking 55".to_vec()))
        .unwrap();
    f.orchestrator.poll().unwrap();
    let status = f.orchestrator.status("order-1").unwrap();
    assert_eq!(status.state, SagaState::Completed);
    assert!(f.log.entries().is_empty());
}

#[test]
fn duplicate_reply_is_stored_once() {
    let mut f = fixture();
    f.orchestrator
        .start("order", "order-1", Vec::new())
        .unwrap();
    f.orchestrator.poll().unwrap();
    let request = requests(&mut f.shipping).remove(0);

    let first = request
        .reply(&f.broker, Ok(b"tracking 55".to_vec()))
        .unwrap();
    let second = request
        .reply(&f.broker, Ok(b"tracking 55".to_vec()))
        .unwrap();
    assert_eq!(first, second);

    let report = f.orchestrator.poll().unwrap();
    assert_eq!(report.replies, 1);
    assert_eq!(
        f.orchestrator.status("order-1").unwrap().state,
        SagaState::Completed
    );
}

#[test]
fn timeouts_need_no_sleep() {
    let mut f = fixture();
    let started = std::time::Instant::now();
    f.orchestrator
        .start("order", "order-1", Vec::new())
        .unwrap();
    f.orchestrator.poll().unwrap();
    // A day of virtual time passes in a few polls.
    for _ in 0..4 {
        f.clock.advance(Duration::from_secs(6 * 3600));
        f.orchestrator.poll().unwrap();
    }
    let status = f.orchestrator.status("order-1").unwrap();
    assert_eq!(status.state, SagaState::Compensating);
    assert_eq!(requests(&mut f.shipping).len(), 3);
    assert!(started.elapsed() < Duration::from_secs(10));
}
