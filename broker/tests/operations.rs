//! Operator calls: statistics, peeking and purging.

use std::time::Duration;

use aqueduct::{Broker, BrokerConfig, ManualClock, Message, TopicConfig};

#[test]
fn stats_report_watermarks_and_lag() {
    let clock = ManualClock::new(1_000_000);
    let broker =
        Broker::temporary_with(BrokerConfig::default().clock(clock.clone())).expect("broker");
    broker
        .create_topic("t", TopicConfig::default().partitions(2))
        .expect("create");
    for i in 0..10u8 {
        broker
            .publish("t", Message::new(vec![i]).key(vec![i % 2]))
            .expect("publish");
    }
    let mut consumer = broker.subscribe("t", "g").expect("subscribe");
    let held = consumer
        .recv_timeout(Duration::from_secs(5))
        .expect("recv")
        .expect("msg");
    clock.advance(Duration::from_secs(7));
    let stats = broker.stats().expect("stats");
    let topic = stats.topic("t").expect("topic");
    let high: u64 = topic.partitions.iter().map(|p| p.high_watermark).sum();
    assert_eq!(high, 10);
    assert!(topic.partitions.iter().all(|p| p.low_watermark == 0));
    let group = topic.group("g").expect("group");
    assert!(group.active);
    assert_eq!(group.lag, 10);
    assert!(group.in_flight >= 1, "the held delivery is in flight");
    assert_eq!(group.oldest_unacked_age_ms, Some(7_000));
    held.ack().expect("ack");
}

#[test]
fn stats_include_groups_without_consumers() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let broker = Broker::open(dir.path()).expect("open");
        broker
            .create_topic("t", TopicConfig::default())
            .expect("create");
        broker
            .publish_batch("t", (0..5).map(|i: u8| Message::new(vec![i])))
            .expect("publish");
        let mut consumer = broker.subscribe("t", "g").expect("subscribe");
        for _ in 0..2 {
            consumer
                .recv_timeout(Duration::from_secs(5))
                .expect("recv")
                .expect("msg")
                .ack()
                .expect("ack");
        }
    }
    let broker = Broker::open(dir.path()).expect("reopen");
    let stats = broker.stats().expect("stats");
    let group = stats
        .topic("t")
        .expect("topic")
        .group("g")
        .expect("stored group")
        .clone();
    assert!(!group.active);
    assert_eq!(group.partitions[0].committed, 2);
    assert_eq!(group.lag, 3);
}

#[test]
fn peek_reads_without_consuming() {
    let broker = Broker::temporary().expect("broker");
    broker
        .create_topic("t", TopicConfig::default())
        .expect("create");
    for i in 0..5u8 {
        broker
            .publish(
                "t",
                Message::new(vec![i]).id(format!("m{i}")).header("h", "v"),
            )
            .expect("publish");
    }
    let peeked = broker.peek("t", 0, 1, 3).expect("peek");
    let offsets: Vec<u64> = peeked.iter().map(|m| m.offset).collect();
    assert_eq!(offsets, vec![1, 2, 3]);
    assert_eq!(peeked[0].payload, vec![1]);
    assert_eq!(peeked[0].id.as_deref(), Some("m1"));
    assert_eq!(peeked[0].headers, vec![("h".to_string(), b"v".to_vec())]);
    let mut consumer = broker.subscribe("t", "g").expect("subscribe");
    let first = consumer
        .recv_timeout(Duration::from_secs(5))
        .expect("recv")
        .expect("msg");
    assert_eq!(first.offset(), 0, "peeking did not consume");
    assert!(broker
        .peek("t", 0, 5, 10)
        .expect("peek past end")
        .is_empty());
    assert!(
        broker.peek("t", 1, 0, 10).is_err(),
        "partition out of range"
    );
}

#[test]
fn purge_removes_everything_and_keeps_offsets() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let broker = Broker::open(dir.path()).expect("open");
        broker
            .create_topic("t", TopicConfig::default())
            .expect("create");
        drop(broker.subscribe("t", "g").expect("register group"));
        broker
            .publish_batch("t", (0..50).map(|i: u8| Message::new(vec![i])))
            .expect("publish");
        assert_eq!(broker.purge_topic("t").expect("purge"), 50);
        let stats = broker.stats().expect("stats");
        let topic = stats.topic("t").expect("topic");
        assert_eq!(topic.partitions[0].low_watermark, 50);
        assert_eq!(topic.backlog_messages, 0);
        assert_eq!(topic.group("g").expect("group").unconsumed_removals, 50);
        assert!(broker.peek("t", 0, 0, 10).expect("peek").is_empty());
    }
    let broker = Broker::open(dir.path()).expect("reopen");
    let receipt = broker.publish("t", Message::new("after")).expect("publish");
    assert_eq!(
        receipt.offset, 50,
        "offsets continue after a purge and a restart"
    );
    let mut consumer = broker.subscribe("t", "g").expect("subscribe");
    let next = consumer
        .recv_timeout(Duration::from_secs(5))
        .expect("recv")
        .expect("msg");
    assert_eq!(next.payload(), b"after");
}

#[test]
fn delete_group_frees_backlog() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limit = aqueduct::BacklogLimit {
        max_messages: Some(5),
        max_bytes: None,
        when_full: aqueduct::WhenFull::Reject,
    };
    let payloads = |range: std::ops::Range<u8>| range.map(|i| aqueduct::Message::new(vec![i]));
    {
        let broker = aqueduct::Broker::open(dir.path()).expect("open");
        let config = aqueduct::TopicConfig::default().backlog_limit(limit);
        broker.create_topic("t", config).expect("create");
        let mut fast = broker.subscribe("t", "fast").expect("subscribe");
        let slow = broker.subscribe("t", "slow").expect("subscribe");
        broker.publish_batch("t", payloads(0..5)).expect("publish");
        for _ in 0..5 {
            fast.recv_timeout(std::time::Duration::from_secs(5))
                .expect("recv")
                .expect("delivery")
                .ack()
                .expect("ack");
        }
        let full = broker.publish("t", aqueduct::Message::new(vec![5]));
        assert!(full.is_err(), "the slow group should hold the backlog full");

        let in_use = broker
            .delete_group("t", "slow")
            .expect_err("slow has a consumer");
        assert!(
            matches!(in_use, aqueduct::Error::GroupInUse { consumers: 1, .. }),
            "{in_use}"
        );
        drop(slow);
        assert!(broker.delete_group("t", "slow").expect("delete"));
        assert!(!broker.delete_group("t", "slow").expect("second delete"));
        broker
            .publish("t", aqueduct::Message::new(vec![5]))
            .expect("room after the delete");
        let stats = broker.stats().expect("stats");
        let names: Vec<&str> = stats.topics[0]
            .groups
            .iter()
            .map(|g| g.name.as_str())
            .collect();
        assert_eq!(names, vec!["fast"]);
    }
    let broker = aqueduct::Broker::open(dir.path()).expect("reopen");
    let stats = broker.stats().expect("stats");
    let names: Vec<&str> = stats.topics[0]
        .groups
        .iter()
        .map(|g| g.name.as_str())
        .collect();
    assert_eq!(
        names,
        vec!["fast"],
        "the deleted group came back after reopen"
    );
    // The name is free again: a new group starts at the oldest retained message.
    let mut again = broker.subscribe("t", "slow").expect("subscribe");
    let first = again
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("recv")
        .expect("delivery");
    assert_eq!(first.payload(), &[0]);
}

#[test]
fn delete_group_fails_held_deliveries() {
    let broker = aqueduct::Broker::temporary().expect("broker");
    broker
        .create_topic("t", aqueduct::TopicConfig::default())
        .expect("create");
    broker
        .publish("t", aqueduct::Message::new("m"))
        .expect("publish");
    let mut consumer = broker.subscribe("t", "g").expect("subscribe");
    let delivery = consumer
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("recv")
        .expect("delivery");
    drop(consumer);
    assert!(broker.delete_group("t", "g").expect("delete"));
    let error = delivery.ack().expect_err("the group is gone");
    assert!(
        matches!(error, aqueduct::Error::GroupDeleted { .. }),
        "{error}"
    );
}
