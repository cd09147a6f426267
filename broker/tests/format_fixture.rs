//! Opens a database written by the current format version from a fixture committed under
//! `tests/fixtures/format-v1`, so that a format change either stays readable or fails this test.
//!
//! The fixture is made by `write_fixture`, which is ignored by default:
//! `cargo test -p aqueduct --test format_fixture -- --ignored write_fixture` rewrites it. Do that
//! only when the format version changes, and keep the old fixture for the old version's test.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aqueduct::{
    Broker, BrokerConfig, ConsumerConfig, Durability, ManualClock, Message, OrderingMode,
    Retention, TopicConfig, FORMAT_VERSION,
};

/// Clock time at which the fixture was written; the test reopens it one minute later, inside
/// the dedup window.
const WRITTEN_AT_MS: u64 = 1_780_000_000_000;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format-v1")
}

fn config(clock: &Arc<ManualClock>) -> BrokerConfig {
    BrokerConfig::default()
        .clock(clock.clone())
        .durability(Durability::Flushed)
        .block_bytes(1024)
}

#[test]
#[ignore = "rewrites the committed fixture"]
fn write_fixture() {
    let dir = fixture_dir();
    let _ = std::fs::remove_dir_all(&dir);
    let clock = ManualClock::new(WRITTEN_AT_MS);
    let broker = Broker::open_with(&dir, config(&clock)).expect("open");
    broker
        .create_topic("orders.dead", TopicConfig::default())
        .expect("dead-letter topic");
    let orders = TopicConfig::default()
        .partitions(2)
        .ack_timeout(Duration::from_secs(30))
        .max_deliveries(2)
        .dead_letter_topic("orders.dead")
        .retention(Retention::UntilAcked);
    broker.create_topic("orders", orders).expect("orders");
    for i in 0..40u32 {
        let message = Message::new(format!("order {i}"))
            .key(format!("customer-{}", i % 4))
            .id(format!("order-{i}"))
            .header("source", "fixture");
        broker.publish("orders", message).expect("publish");
    }
    let per_key = ConsumerConfig::default()
        .ordering(OrderingMode::PerKey)
        .prefetch(1);
    let mut consumer = broker
        .subscribe_with("orders", "billing", per_key)
        .expect("subscribe");
    for _ in 0..10 {
        let delivery = consumer
            .recv_timeout(Duration::from_secs(5))
            .expect("recv")
            .expect("msg");
        if delivery.payload() == b"order 3" {
            delivery.dead_letter("card declined").expect("dead letter");
        } else {
            delivery.ack().expect("ack");
        }
    }
    let in_flight = consumer
        .recv_timeout(Duration::from_secs(5))
        .expect("recv")
        .expect("msg");
    std::mem::forget(in_flight);
    drop(consumer);
    broker.flush().expect("flush");
}

/// Copies the fixture into a temporary directory, since opening a database writes to it.
fn open_copy(clock: &Arc<ManualClock>) -> (tempfile::TempDir, Broker) {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(&fixture_dir(), dir.path());
    let broker = Broker::open_with(dir.path(), config(clock)).expect("fixture opens");
    (dir, broker)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("fixture exists") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

#[test]
fn fixture_format_version() {
    assert_eq!(
        FORMAT_VERSION, 1,
        "a new format version needs a new fixture and test"
    );
}

#[test]
fn fixture_topics_and_offsets() {
    let clock = ManualClock::new(WRITTEN_AT_MS + 60_000);
    let (_dir, broker) = open_copy(&clock);
    let topics = broker.topics();
    let names: Vec<&str> = topics.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, vec!["orders", "orders.dead"]);
    let orders = broker.topic_config("orders").expect("config");
    assert_eq!(orders.partition_count(), 2);
    assert_eq!(orders.max_deliveries_limit(), Some(2));
    assert_eq!(orders.retention_policy(), Retention::UntilAcked);
    let total: u64 = (0..2)
        .map(|p| broker.end_offset("orders", p).expect("end"))
        .sum();
    assert_eq!(total, 40);
    assert_eq!(broker.end_offset("orders.dead", 0).expect("end"), 1);
}

#[test]
fn fixture_dead_letter_metadata() {
    let clock = ManualClock::new(WRITTEN_AT_MS + 60_000);
    let (_dir, broker) = open_copy(&clock);
    let letters = broker.peek("orders.dead", 0, 0, 10).expect("peek");
    assert_eq!(letters.len(), 1);
    let info = letters[0].dead_letter.clone().expect("dead-letter info");
    assert_eq!(info.source_topic, "orders");
    assert_eq!(info.group, "billing");
    assert_eq!(info.last_error, "card declined");
    assert_eq!(letters[0].payload, b"order 3");
    assert_eq!(letters[0].id.as_deref(), Some("order-3"));
    assert_eq!(
        letters[0].headers,
        vec![("source".to_string(), b"fixture".to_vec())]
    );
}

#[test]
fn fixture_group_resumes() {
    let clock = ManualClock::new(WRITTEN_AT_MS + 60_000);
    let (_dir, broker) = open_copy(&clock);
    let stats = broker.stats().expect("stats");
    let billing = stats
        .topic("orders")
        .expect("topic")
        .group("billing")
        .expect("group")
        .clone();
    assert_eq!(billing.ordering, Some(OrderingMode::PerKey));
    assert_eq!(billing.lag, 30, "ten of forty settled");

    let per_key = ConsumerConfig::default().ordering(OrderingMode::PerKey);
    let mut consumer = broker
        .subscribe_with("orders", "billing", per_key)
        .expect("subscribe");
    let mut seen = 0;
    let mut redelivered = 0;
    while let Some(delivery) = consumer
        .recv_timeout(Duration::from_millis(300))
        .expect("recv")
    {
        if delivery.attempt() > 1 {
            redelivered += 1;
        }
        seen += 1;
        delivery.ack().expect("ack");
    }
    assert_eq!(seen, 30, "every unsettled message is delivered");
    assert_eq!(
        redelivered, 1,
        "the delivery in flight at shutdown comes back as attempt 2"
    );
}

#[test]
fn fixture_dedup_entries() {
    let clock = ManualClock::new(WRITTEN_AT_MS + 60_000);
    let (_dir, broker) = open_copy(&clock);
    let before: u64 = (0..2)
        .map(|p| broker.end_offset("orders", p).expect("end"))
        .sum();
    broker
        .publish("orders", Message::new("again").id("order-5"))
        .expect("publish");
    let after: u64 = (0..2)
        .map(|p| broker.end_offset("orders", p).expect("end"))
        .sum();
    assert_eq!(
        after, before,
        "an id stored in the fixture is still deduplicated"
    );
}
