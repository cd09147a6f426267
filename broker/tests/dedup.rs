//! Deduplication by message id within a topic's dedup window, across restarts.

use std::time::Duration;

use aqueduct::{Broker, BrokerConfig, ManualClock, Message, TopicConfig};

fn open(dir: &std::path::Path, clock: &std::sync::Arc<ManualClock>) -> Broker {
    Broker::open_with(dir, BrokerConfig::default().clock(clock.clone())).expect("open")
}

fn topic_config() -> TopicConfig {
    TopicConfig::default()
        .partitions(3)
        .dedup_window(Duration::from_secs(60))
}

#[test]
fn repeated_id_returns_original_receipt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(1_000_000);
    let broker = open(dir.path(), &clock);
    broker.create_topic("t", topic_config()).expect("create");
    let first = broker
        .publish("t", Message::new("a").id("m-1"))
        .expect("publish");
    let again = broker
        .publish("t", Message::new("different payload").id("m-1"))
        .expect("again");
    assert_eq!(again, first, "the repeat gets the original receipt");
    let total: u64 = (0..3)
        .map(|p| broker.end_offset("t", p).expect("end"))
        .sum();
    assert_eq!(total, 1, "the repeat was not stored");
}

#[test]
fn repeated_id_within_batch() {
    let broker = Broker::temporary().expect("broker");
    broker.create_topic("t", topic_config()).expect("create");
    let batch = vec![
        Message::new("a").id("x"),
        Message::new("b").id("y"),
        Message::new("a again").id("x"),
        Message::new("no id"),
    ];
    let receipts = broker.publish_batch("t", batch).expect("publish");
    assert_eq!(receipts.len(), 4);
    assert_eq!(
        receipts[2], receipts[0],
        "in-batch repeat gets the first receipt"
    );
    assert_ne!(receipts[1], receipts[0]);
    let total: u64 = (0..3)
        .map(|p| broker.end_offset("t", p).expect("end"))
        .sum();
    assert_eq!(total, 3);
}

#[test]
fn dedup_survives_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(1_000_000);
    let original = {
        let broker = open(dir.path(), &clock);
        broker.create_topic("t", topic_config()).expect("create");
        broker
            .publish("t", Message::new("a").id("order-7"))
            .expect("publish")
    };
    clock.advance(Duration::from_secs(30));
    let broker = open(dir.path(), &clock);
    let again = broker
        .publish("t", Message::new("a").id("order-7"))
        .expect("publish again");
    assert_eq!(again, original, "the id is remembered across a restart");
    let total: u64 = (0..3)
        .map(|p| broker.end_offset("t", p).expect("end"))
        .sum();
    assert_eq!(total, 1);
}

#[test]
fn id_stored_again_after_window() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(1_000_000);
    let broker = open(dir.path(), &clock);
    broker.create_topic("t", topic_config()).expect("create");
    let first = broker
        .publish("t", Message::new("a").id("m").key("k"))
        .expect("publish");
    clock.advance(Duration::from_secs(61));
    let second = broker
        .publish("t", Message::new("a").id("m").key("k"))
        .expect("publish");
    assert_eq!(
        second.partition, first.partition,
        "same key, same partition"
    );
    assert_eq!(
        second.offset,
        first.offset + 1,
        "stored as a new message after the window"
    );
}

#[test]
fn expired_ids_forgotten_after_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(1_000_000);
    {
        let broker = open(dir.path(), &clock);
        broker.create_topic("t", topic_config()).expect("create");
        broker
            .publish("t", Message::new("a").id("m").key("k"))
            .expect("publish");
    }
    clock.advance(Duration::from_secs(120));
    let broker = open(dir.path(), &clock);
    let again = broker
        .publish("t", Message::new("a").id("m").key("k"))
        .expect("publish");
    assert_eq!(again.offset, 1, "expired id is stored again");
}

#[test]
fn zero_window_disables_dedup() {
    let broker = Broker::temporary().expect("broker");
    let config = TopicConfig::default().dedup_window(Duration::ZERO);
    broker.create_topic("t", config).expect("create");
    let first = broker
        .publish("t", Message::new("a").id("m"))
        .expect("publish");
    let second = broker
        .publish("t", Message::new("a").id("m"))
        .expect("publish");
    assert_eq!(first.offset, 0);
    assert_eq!(second.offset, 1, "without a window every publish is stored");
}

#[test]
fn concurrent_publishers_same_id_store_once() {
    let broker = Broker::temporary().expect("broker");
    broker.create_topic("t", topic_config()).expect("create");
    let receipts: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let broker = broker.clone();
                scope.spawn(move || {
                    (0..100)
                        .map(|i| broker.publish("t", Message::new("x").id(format!("id-{i}"))))
                        .collect::<Result<Vec<_>, _>>()
                        .expect("publish")
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("thread"))
            .collect()
    });
    for thread_receipts in &receipts[1..] {
        assert_eq!(
            thread_receipts, &receipts[0],
            "every thread got the same receipts"
        );
    }
    let total: u64 = (0..3)
        .map(|p| broker.end_offset("t", p).expect("end"))
        .sum();
    assert_eq!(total, 100, "each id stored once");
}
