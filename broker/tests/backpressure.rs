//! Backlog limits: publishers are rejected or blocked while the slowest group lags too far.

use std::time::{Duration, Instant};

use aqueduct::{BacklogLimit, Broker, Error, Message, TopicConfig, WhenFull};

fn limited(max_messages: u64, when_full: WhenFull) -> TopicConfig {
    TopicConfig::default().backlog_limit(BacklogLimit {
        max_messages: Some(max_messages),
        max_bytes: None,
        when_full,
    })
}

#[test]
fn reject_when_full() {
    let broker = Broker::temporary().expect("broker");
    broker
        .create_topic("t", limited(10, WhenFull::Reject))
        .expect("create");
    drop(broker.subscribe("t", "g").expect("register group"));
    for _ in 0..10 {
        broker.publish("t", Message::new("x")).expect("room left");
    }
    let error = broker
        .publish("t", Message::new("x"))
        .expect_err("backlog full");
    match error {
        Error::BacklogFull {
            topic, messages, ..
        } => {
            assert_eq!(topic, "t");
            assert_eq!(messages, 10);
        }
        other => panic!("expected BacklogFull, got {other:?}"),
    }
    assert_eq!(
        broker.end_offset("t", 0).expect("end"),
        10,
        "the rejected message was not stored"
    );
}

#[test]
fn ack_makes_room() {
    let broker = Broker::temporary().expect("broker");
    broker
        .create_topic("t", limited(5, WhenFull::Reject))
        .expect("create");
    let mut consumer = broker.subscribe("t", "g").expect("subscribe");
    for _ in 0..5 {
        broker.publish("t", Message::new("x")).expect("publish");
    }
    assert!(broker.publish("t", Message::new("x")).is_err(), "full");
    let delivery = consumer
        .recv_timeout(Duration::from_secs(5))
        .expect("recv")
        .expect("msg");
    delivery.ack().expect("ack");
    broker
        .publish("t", Message::new("x"))
        .expect("room after ack");
}

#[test]
fn block_times_out() {
    let broker = Broker::temporary().expect("broker");
    let config = limited(
        3,
        WhenFull::Block {
            timeout: Duration::from_millis(200),
        },
    );
    broker.create_topic("t", config).expect("create");
    drop(broker.subscribe("t", "g").expect("register group"));
    for _ in 0..3 {
        broker.publish("t", Message::new("x")).expect("publish");
    }
    let started = Instant::now();
    let error = broker
        .publish("t", Message::new("x"))
        .expect_err("still full");
    assert!(matches!(error, Error::BacklogFull { .. }), "got {error:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "waited {:?}",
        started.elapsed()
    );
}

#[test]
fn blocked_publisher_resumes_on_ack() {
    let broker = Broker::temporary().expect("broker");
    let config = limited(
        3,
        WhenFull::Block {
            timeout: Duration::from_secs(10),
        },
    );
    broker.create_topic("t", config).expect("create");
    let mut consumer = broker.subscribe("t", "g").expect("subscribe");
    for _ in 0..3 {
        broker.publish("t", Message::new("x")).expect("publish");
    }
    let publisher = {
        let broker = broker.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            broker
                .publish("t", Message::new("fourth"))
                .map(|_| started.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    let delivery = consumer
        .recv_timeout(Duration::from_secs(5))
        .expect("recv")
        .expect("msg");
    delivery.ack().expect("ack");
    let waited = publisher
        .join()
        .expect("publisher thread")
        .expect("publish after room");
    assert!(
        waited < Duration::from_secs(5),
        "resumed promptly after the ack: {waited:?}"
    );
}

#[test]
fn fast_producer_slow_group_bounded() {
    let broker = Broker::temporary().expect("broker");
    let config = limited(
        200,
        WhenFull::Block {
            timeout: Duration::from_secs(30),
        },
    );
    broker.create_topic("t", config).expect("create");
    let mut fast = broker.subscribe("t", "fast").expect("fast");
    let mut slow = broker.subscribe("t", "slow").expect("slow");
    let producer = {
        let broker = broker.clone();
        std::thread::spawn(move || {
            for i in 0..1_000u32 {
                broker
                    .publish("t", Message::new(i.to_be_bytes().to_vec()))
                    .expect("publish");
            }
        })
    };
    let fast_thread = std::thread::spawn(move || {
        for _ in 0..1_000 {
            let delivery = fast
                .recv_timeout(Duration::from_secs(30))
                .expect("recv")
                .expect("msg");
            delivery.ack().expect("ack");
        }
    });
    let mut max_backlog = 0;
    for _ in 0..1_000 {
        let delivery = slow
            .recv_timeout(Duration::from_secs(30))
            .expect("recv")
            .expect("msg");
        let stats = broker.stats().expect("stats");
        max_backlog = max_backlog.max(stats.topic("t").expect("topic").backlog_messages);
        std::thread::sleep(Duration::from_micros(200));
        delivery.ack().expect("ack");
    }
    producer.join().expect("producer");
    fast_thread.join().expect("fast consumer");
    assert!(
        max_backlog <= 200,
        "backlog stayed within the limit: {max_backlog}"
    );
    assert_eq!(
        broker.end_offset("t", 0).expect("end"),
        1_000,
        "every message was published"
    );
}

#[test]
fn oversized_batch_fails_without_waiting() {
    let broker = Broker::temporary().expect("broker");
    let config = limited(
        3,
        WhenFull::Block {
            timeout: Duration::from_secs(30),
        },
    );
    broker.create_topic("t", config).expect("create");
    let started = Instant::now();
    let batch = (0..4u8).map(|i| Message::new(vec![i]));
    let error = broker
        .publish_batch("t", batch)
        .expect_err("four messages never fit in three");
    assert!(matches!(error, Error::BacklogFull { .. }), "got {error:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "failed at once: {:?}",
        started.elapsed()
    );
}
