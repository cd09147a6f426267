//! Graceful shutdown: in-flight messages finish, are handed back, or are reported.

use std::time::{Duration, Instant};

use aqueduct::{Broker, Message, TopicConfig};
use aqueduct_patterns::{Backoff, HandlerError, WorkerConfig, WorkerPool};

fn broker_with_job() -> Broker {
    let broker = Broker::temporary().expect("broker");
    broker
        .create_topic("jobs", TopicConfig::default())
        .expect("topic");
    broker
        .publish("jobs", Message::new("job"))
        .expect("publish");
    broker
}

fn wait_in_flight(pool: &WorkerPool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool.stats().in_flight == 0 {
        assert!(Instant::now() < deadline, "no message reached a handler");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn shutdown_waits_for_in_flight_handler() {
    let broker = broker_with_job();
    let config = WorkerConfig::default().workers(3);
    let pool = WorkerPool::start(&broker, "jobs", "workers", config, |_, _| {
        std::thread::sleep(Duration::from_millis(300));
        Ok(())
    })
    .expect("start");
    wait_in_flight(&pool);

    let stats = {
        let report = pool.shutdown(Duration::from_secs(5));
        assert_eq!(report.stopped, 3, "workers stopped");
        assert_eq!(report.still_running, 0, "workers left running");
        broker.group_positions("jobs", "workers")
    };
    let positions = stats.expect("group positions");
    assert_eq!(positions[0], (1, 0), "committed offset and in-flight count");
}

#[test]
fn stopping_handler_hands_message_back_at_once() {
    let broker = broker_with_job();
    // A minute of backoff: the message comes back at once only because the worker stops.
    let config = WorkerConfig::default().workers(1).retry(Backoff::new(
        Duration::from_secs(60),
        Duration::from_secs(60),
    ));
    let pool = WorkerPool::start(&broker, "jobs", "workers", config, |_, context| {
        while !context.stop_requested() {
            std::thread::sleep(Duration::from_millis(5));
        }
        Err(HandlerError::retry("stopping"))
    })
    .expect("start");
    wait_in_flight(&pool);
    let report = pool.shutdown(Duration::from_secs(5));
    assert_eq!(report.stopped, 1, "workers stopped");

    let mut consumer = broker.subscribe("jobs", "workers").expect("subscribe");
    let again = consumer
        .recv_timeout(Duration::from_secs(2))
        .expect("receive")
        .expect("the handed-back message");
    assert_eq!(again.attempt(), 2, "attempt of the handed-back message");
}

#[test]
fn handler_past_deadline_reported() {
    let broker = broker_with_job();
    let config = WorkerConfig::default().workers(1);
    let pool = WorkerPool::start(&broker, "jobs", "workers", config, |_, _| {
        std::thread::sleep(Duration::from_millis(800));
        Ok(())
    })
    .expect("start");
    wait_in_flight(&pool);

    let started = Instant::now();
    let report = pool.shutdown(Duration::from_millis(100));
    assert!(
        started.elapsed() < Duration::from_millis(600),
        "shutdown kept its deadline"
    );
    assert_eq!(report.still_running, 1, "workers left running");
    assert_eq!(report.stopped, 0, "workers stopped");
}
