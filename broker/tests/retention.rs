//! Retention: until acknowledged, by age, by size, forever; whole blocks, never the newest.

use std::time::Duration;

use aqueduct::{Broker, BrokerConfig, ManualClock, Message, Retention, TopicConfig};

const START_MS: u64 = 1_000_000;

/// Opens a broker whose blocks hold about ten 100-byte messages.
fn open(dir: &std::path::Path, clock: &std::sync::Arc<ManualClock>) -> Broker {
    let config = BrokerConfig::default()
        .clock(clock.clone())
        .block_bytes(1024);
    Broker::open_with(dir, config).expect("open")
}

fn publish(broker: &Broker, topic: &str, count: usize) {
    for _ in 0..count {
        broker
            .publish(topic, Message::new(vec![7u8; 100]))
            .expect("publish");
    }
    broker.flush().expect("flush");
}

fn low(broker: &Broker, topic: &str) -> u64 {
    let stats = broker.stats().expect("stats");
    stats.topic(topic).expect("topic").partitions[0].low_watermark
}

fn drain(broker: &Broker, topic: &str, group: &str, count: usize) {
    let mut consumer = broker.subscribe(topic, group).expect("subscribe");
    for _ in 0..count {
        let delivery = consumer
            .recv_timeout(Duration::from_secs(5))
            .expect("recv")
            .expect("msg");
        delivery.ack().expect("ack");
    }
    broker.flush().expect("flush");
}

#[test]
fn forever_keeps_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(START_MS);
    let broker = open(dir.path(), &clock);
    broker
        .create_topic("t", TopicConfig::default())
        .expect("create");
    publish(&broker, "t", 100);
    drain(&broker, "t", "g", 100);
    clock.advance(Duration::from_secs(86_400));
    broker.enforce_retention().expect("retention");
    assert_eq!(low(&broker, "t"), 0);
}

#[test]
fn until_acked_waits_for_every_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(START_MS);
    let broker = open(dir.path(), &clock);
    broker
        .create_topic("t", TopicConfig::default().retention(Retention::UntilAcked))
        .expect("create");
    drop(broker.subscribe("t", "slow").expect("register slow group"));
    publish(&broker, "t", 100);
    drain(&broker, "t", "fast", 100);
    broker.enforce_retention().expect("retention");
    assert_eq!(
        low(&broker, "t"),
        0,
        "the slow group still needs everything"
    );

    drain(&broker, "t", "slow", 60);
    broker.enforce_retention().expect("retention");
    let after = low(&broker, "t");
    assert!(after > 0, "blocks acknowledged by both groups are removed");
    assert!(
        after <= 60,
        "nothing the slow group still needs is removed: low {after}"
    );
    let stats = broker.stats().expect("stats");
    let slow = stats
        .topic("t")
        .expect("topic")
        .group("slow")
        .expect("group")
        .clone();
    assert_eq!(slow.unconsumed_removals, 0);
    assert_eq!(slow.lag, 40);
}

#[test]
fn until_acked_keeps_newest_block() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(START_MS);
    let broker = open(dir.path(), &clock);
    broker
        .create_topic("t", TopicConfig::default().retention(Retention::UntilAcked))
        .expect("create");
    publish(&broker, "t", 100);
    drain(&broker, "t", "g", 100);
    broker.enforce_retention().expect("retention");
    let stats = broker.stats().expect("stats");
    let partition = stats.topic("t").expect("topic").partitions[0];
    assert!(partition.low_watermark > 0, "acknowledged blocks removed");
    assert!(partition.low_watermark < 100, "newest block kept");
    assert_eq!(partition.high_watermark, 100);
}

#[test]
fn offsets_continue_after_retention_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(START_MS);
    {
        let broker = open(dir.path(), &clock);
        let config = TopicConfig::default().retention(Retention::UntilAcked);
        broker.create_topic("t", config).expect("create");
        publish(&broker, "t", 100);
        drain(&broker, "t", "g", 100);
        broker.enforce_retention().expect("retention");
    }
    let broker = open(dir.path(), &clock);
    let receipt = broker.publish("t", Message::new("next")).expect("publish");
    assert_eq!(receipt.offset, 100, "offsets are never reused");
    assert!(low(&broker, "t") > 0, "removed blocks stay removed");
}

#[test]
fn max_age_counts_unconsumed_removals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(START_MS);
    let broker = open(dir.path(), &clock);
    let config = TopicConfig::default().retention(Retention::max_age(Duration::from_secs(60)));
    broker.create_topic("t", config).expect("create");
    drop(broker.subscribe("t", "idle").expect("register idle group"));
    publish(&broker, "t", 100);
    clock.advance(Duration::from_secs(30));
    publish(&broker, "t", 20);
    clock.advance(Duration::from_secs(31));
    broker.enforce_retention().expect("retention");
    let low_after = low(&broker, "t");
    assert!(low_after >= 90, "old blocks removed: low {low_after}");
    assert!(low_after <= 100, "young messages kept: low {low_after}");
    let stats = broker.stats().expect("stats");
    let idle = stats
        .topic("t")
        .expect("topic")
        .group("idle")
        .expect("group")
        .clone();
    assert_eq!(
        idle.unconsumed_removals, low_after,
        "every removed message was unconsumed"
    );

    let mut consumer = broker.subscribe("t", "idle").expect("subscribe");
    let first = consumer
        .recv_timeout(Duration::from_secs(5))
        .expect("recv")
        .expect("msg");
    assert_eq!(
        first.offset(),
        low_after,
        "the group resumes at the low watermark"
    );
}

#[test]
fn max_bytes_bounds_partition_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(START_MS);
    let broker = open(dir.path(), &clock);
    let config = TopicConfig::default().retention(Retention::max_bytes(5_000));
    broker.create_topic("t", config).expect("create");
    publish(&broker, "t", 500);
    broker.enforce_retention().expect("retention");
    let stats = broker.stats().expect("stats");
    let partition = stats.topic("t").expect("topic").partitions[0];
    assert!(
        partition.stored_bytes <= 5_000,
        "stored {} bytes",
        partition.stored_bytes
    );
    assert!(partition.low_watermark > 0);
    assert_eq!(partition.high_watermark, 500);
}

#[test]
fn live_group_skips_removed_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(START_MS);
    let broker = open(dir.path(), &clock);
    let config = TopicConfig::default().retention(Retention::max_age(Duration::from_secs(10)));
    broker.create_topic("t", config).expect("create");
    let mut consumer = broker.subscribe("t", "g").expect("subscribe");
    publish(&broker, "t", 50);
    let held = consumer
        .recv_timeout(Duration::from_secs(5))
        .expect("recv")
        .expect("msg");
    assert_eq!(held.offset(), 0);
    clock.advance(Duration::from_secs(11));
    publish(&broker, "t", 5);
    broker.enforce_retention().expect("retention");
    let low_after = low(&broker, "t");
    assert!(low_after >= 50, "the old blocks are gone: low {low_after}");
    assert!(
        held.ack().is_err(),
        "a delivery of a removed message cannot be acked"
    );
    let next = consumer
        .recv_timeout(Duration::from_secs(5))
        .expect("recv")
        .expect("msg");
    assert!(
        next.offset() >= low_after,
        "next delivery {} is retained",
        next.offset()
    );
    let stats = broker.stats().expect("stats");
    let group = stats
        .topic("t")
        .expect("topic")
        .group("g")
        .expect("group")
        .clone();
    assert_eq!(group.unconsumed_removals, low_after);
}
