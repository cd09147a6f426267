//! Retries with exponential backoff, dead letters after max deliveries and for permanent
//! errors, and panics treated as retryable failures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aqueduct::{Broker, Message, TopicConfig};
use aqueduct_patterns::{Backoff, HandlerError, WorkerConfig, WorkerPool};
use parking_lot::Mutex;

fn broker_with_topic(max_deliveries: u32) -> Broker {
    let broker = Broker::temporary().expect("broker");
    broker
        .create_topic("jobs.dead", TopicConfig::default())
        .expect("dead-letter topic");
    let config = TopicConfig::default()
        .max_deliveries(max_deliveries)
        .dead_letter_topic("jobs.dead");
    broker.create_topic("jobs", config).expect("topic");
    broker
}

fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn retry_config() -> WorkerConfig {
    WorkerConfig::default().workers(2).retry(Backoff::new(
        Duration::from_millis(60),
        Duration::from_secs(1),
    ))
}

#[test]
fn failing_handler_retried_with_backoff() {
    let broker = broker_with_topic(10);
    broker
        .publish("jobs", Message::new("flaky"))
        .expect("publish");
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&attempts);
    let pool = WorkerPool::start(&broker, "jobs", "workers", retry_config(), move |d, _| {
        seen.lock().push(Instant::now());
        if d.attempt() < 3 {
            return Err(HandlerError::retry("downstream busy"));
        }
        Ok(())
    })
    .expect("start");

    wait_until("the ack", || pool.stats().acked == 1);
    let times = attempts.lock().clone();
    assert_eq!(times.len(), 3, "attempts");
    let first_gap = times[1] - times[0];
    let second_gap = times[2] - times[1];
    // The broker's clock counts whole milliseconds, so a delay can end up to 1 ms early
    // measured with `Instant`.
    let tick = Duration::from_millis(1);
    assert!(
        first_gap + tick >= Duration::from_millis(60),
        "first backoff {first_gap:?}"
    );
    assert!(
        second_gap + tick >= Duration::from_millis(120),
        "second backoff {second_gap:?}"
    );
    assert_eq!(pool.stats().retried, 2, "retries counted");
    pool.shutdown(Duration::from_secs(5));
}

#[test]
fn poison_message_dead_lettered_after_max_deliveries() {
    let broker = broker_with_topic(3);
    broker
        .publish("jobs", Message::new("poison").id("job-poison"))
        .expect("publish");
    for n in 0..5 {
        broker
            .publish("jobs", Message::new(format!("job {n}")))
            .expect("publish");
    }
    let config = retry_config().retry(Backoff::new(
        Duration::from_millis(1),
        Duration::from_millis(5),
    ));
    let pool = WorkerPool::start(&broker, "jobs", "workers", config, |d, _| {
        if d.payload() == b"poison" {
            return Err(HandlerError::retry("cannot parse"));
        }
        Ok(())
    })
    .expect("start");

    wait_until("the dead letter", || pool.stats().dead_lettered == 1);
    wait_until("the other jobs", || pool.stats().acked == 5);
    pool.shutdown(Duration::from_secs(5));

    let mut dead = broker
        .subscribe("jobs.dead", "operators")
        .expect("subscribe");
    let letter = dead
        .recv_timeout(Duration::from_secs(2))
        .expect("recv")
        .expect("dead letter");
    let info = letter.dead_letter_info().expect("dead-letter info").clone();
    assert_eq!(letter.id(), Some("job-poison"), "dead letter id");
    assert_eq!(info.attempts, 3, "attempts before dead-lettering");
    assert_eq!(
        info.last_error, "cannot parse (delivery 3 of at most 3)",
        "dead-letter reason"
    );
}

#[test]
fn permanent_error_dead_letters_at_once() {
    let broker = broker_with_topic(10);
    broker
        .publish("jobs", Message::new("corrupt image"))
        .expect("publish");
    let pool = WorkerPool::start(&broker, "jobs", "workers", retry_config(), |_, _| {
        Err(HandlerError::permanent("image header is corrupt"))
    })
    .expect("start");

    wait_until("the dead letter", || pool.stats().dead_lettered == 1);
    pool.shutdown(Duration::from_secs(5));

    let mut dead = broker
        .subscribe("jobs.dead", "operators")
        .expect("subscribe");
    let letter = dead
        .recv_timeout(Duration::from_secs(2))
        .expect("recv")
        .expect("dead letter");
    let info = letter.dead_letter_info().expect("dead-letter info");
    assert_eq!(info.attempts, 1, "attempts before dead-lettering");
    assert_eq!(
        info.last_error, "image header is corrupt",
        "dead-letter reason"
    );
}

#[test]
fn panicking_handler_retried() {
    let broker = broker_with_topic(10);
    broker
        .publish("jobs", Message::new("job"))
        .expect("publish");
    let config = retry_config().retry(Backoff::new(
        Duration::from_millis(1),
        Duration::from_millis(5),
    ));
    let pool = WorkerPool::start(&broker, "jobs", "workers", config, |d, _| {
        assert!(d.attempt() > 1, "first attempt panics on purpose");
        Ok(())
    })
    .expect("start");

    wait_until("the ack", || pool.stats().acked == 1);
    let stats = pool.stats();
    assert_eq!(stats.panics, 1, "panics");
    assert_eq!(stats.retried, 1, "retries");
    pool.shutdown(Duration::from_secs(5));
}
