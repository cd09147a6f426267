//! Publish, receive, ack and redelivery through the public API on real databases.

use std::time::Duration;

use aqueduct::{
    Broker, BrokerConfig, ConsumerConfig, Delivery, ManualClock, Message, OrderingMode,
    StartPosition, TopicConfig,
};

const WAIT: Duration = Duration::from_secs(5);

fn manual_broker(dir: &std::path::Path) -> (Broker, std::sync::Arc<ManualClock>) {
    let clock = ManualClock::new(1_000_000);
    let config = BrokerConfig::default().clock(clock.clone());
    (Broker::open_with(dir, config).expect("open"), clock)
}

#[test]
fn acked_messages_stay_acked_after_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let broker = Broker::open(dir.path()).expect("open");
        broker
            .create_topic("t", TopicConfig::default().partitions(3))
            .expect("create");
        for i in 0..1000u32 {
            broker
                .publish(
                    "t",
                    Message::new(i.to_be_bytes().to_vec()).key(vec![(i % 7) as u8]),
                )
                .expect("publish");
        }
        let mut consumer = broker.subscribe("t", "g").expect("subscribe");
        for _ in 0..600 {
            consumer
                .recv_timeout(WAIT)
                .expect("recv")
                .expect("delivery")
                .ack()
                .expect("ack");
        }
    }
    let broker = Broker::open(dir.path()).expect("reopen");
    let ends: u64 = (0..3)
        .map(|p| broker.end_offset("t", p).expect("end"))
        .sum();
    assert_eq!(ends, 1000);
    let mut consumer = broker.subscribe("t", "g").expect("subscribe");
    let mut rest = 0;
    while let Some(delivery) = consumer
        .recv_timeout(Duration::from_millis(200))
        .expect("recv")
    {
        delivery.ack().expect("ack");
        rest += 1;
    }
    assert_eq!(rest, 400);
}

#[test]
fn ack_timeout_redelivers_and_rejects_stale_ack() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (broker, clock) = manual_broker(dir.path());
    broker
        .create_topic(
            "t",
            TopicConfig::default().ack_timeout(Duration::from_secs(10)),
        )
        .expect("create");
    broker.publish("t", Message::new("x")).expect("publish");
    let mut first = broker
        .subscribe_with("t", "g", ConsumerConfig::default().prefetch(1))
        .expect("subscribe");
    let mut second = broker
        .subscribe_with("t", "g", ConsumerConfig::default().prefetch(1))
        .expect("subscribe");
    let stale = first.recv_timeout(WAIT).expect("recv").expect("delivery");
    assert_eq!(stale.attempt(), 1);
    assert!(second.try_recv().expect("try").is_none());
    clock.advance(Duration::from_secs(11));
    let fresh = second
        .recv_timeout(WAIT)
        .expect("recv")
        .expect("redelivery");
    assert_eq!(fresh.attempt(), 2);
    assert!(matches!(
        stale.ack(),
        Err(aqueduct::Error::LeaseExpired { .. })
    ));
    fresh.ack().expect("ack");
}

#[test]
fn dead_letter_after_max_deliveries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (broker, _clock) = manual_broker(dir.path());
    broker
        .create_topic("dlq", TopicConfig::default())
        .expect("create dlq");
    broker
        .create_topic(
            "t",
            TopicConfig::default()
                .max_deliveries(3)
                .dead_letter_topic("dlq"),
        )
        .expect("create");
    broker
        .publish("t", Message::new("poison").key("k").id("m-1"))
        .expect("publish");
    let mut consumer = broker.subscribe("t", "g").expect("subscribe");
    for attempt in 1..=3 {
        let delivery = consumer
            .recv_timeout(WAIT)
            .expect("recv")
            .expect("delivery");
        assert_eq!(delivery.attempt(), attempt);
        delivery.nack().expect("nack");
    }
    assert!(consumer
        .recv_timeout(Duration::from_millis(100))
        .expect("recv")
        .is_none());
    let mut dead = broker.subscribe("dlq", "ops").expect("subscribe dlq");
    let letter = dead.recv_timeout(WAIT).expect("recv").expect("dead letter");
    let info = letter.dead_letter_info().expect("info").clone();
    assert_eq!(info.source_topic, "t");
    assert_eq!(info.attempts, 3);
    assert_eq!(letter.id(), Some("m-1"));
    assert_eq!(letter.key(), Some(&b"k"[..]));
    letter.ack().expect("ack");
    drop(dead);
    assert_eq!(
        broker
            .replay_dead_letters("dlq", "replay", 10)
            .expect("replay"),
        1
    );
    let again = consumer
        .recv_timeout(WAIT)
        .expect("recv")
        .expect("replayed");
    assert_eq!(again.payload(), b"poison");
    assert_eq!(again.attempt(), 1);
}

#[test]
fn per_key_order_survives_nack() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (broker, _clock) = manual_broker(dir.path());
    broker
        .create_topic("t", TopicConfig::default())
        .expect("create");
    for i in 0..4u8 {
        broker
            .publish("t", Message::new(vec![i]).key("same"))
            .expect("publish");
    }
    broker
        .publish("t", Message::new(vec![9]).key("other"))
        .expect("publish");
    let config = ConsumerConfig::default().ordering(OrderingMode::PerKey);
    let mut consumer = broker.subscribe_with("t", "g", config).expect("subscribe");
    let first = consumer.recv_timeout(WAIT).expect("recv").expect("first");
    assert_eq!(first.payload(), &[0]);
    let other = consumer
        .recv_timeout(WAIT)
        .expect("recv")
        .expect("other key");
    assert_eq!(other.payload(), &[9]);
    assert!(consumer.try_recv().expect("try").is_none());
    first.nack().expect("nack");
    let mut seen = Vec::new();
    while let Some(delivery) = consumer
        .recv_timeout(Duration::from_millis(100))
        .expect("recv")
    {
        seen.push(delivery.payload()[0]);
        delivery.ack().expect("ack");
    }
    assert_eq!(seen, vec![0, 1, 2, 3]);
    other.ack().expect("ack");
}

#[test]
fn recovered_deliveries_arrive_one_by_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let broker = Broker::open(dir.path()).expect("open");
        broker
            .create_topic("t", TopicConfig::default())
            .expect("create");
        broker
            .publish_batch("t", (0..5u8).map(|i| Message::new(vec![i])))
            .expect("publish");
        let mut consumer = broker.subscribe("t", "g").expect("subscribe");
        let held: Vec<_> = (0..5)
            .map(|_| {
                consumer
                    .recv_timeout(WAIT)
                    .expect("recv")
                    .expect("delivery")
            })
            .collect();
        // Dropped deliveries go back unsettled with one attempt each, so after the restart
        // they are recovered like deliveries that were in flight at a crash.
        drop(held);
    }
    let broker = Broker::open(dir.path()).expect("reopen");
    let mut consumer = broker.subscribe("t", "g").expect("subscribe");
    let mut offsets = Vec::new();
    while let Some(delivery) = consumer.try_recv().expect("try_recv") {
        assert_eq!(delivery.attempt(), 2, "offset {}", delivery.offset());
        offsets.push(delivery.offset());
        delivery.ack().expect("ack");
    }
    assert_eq!(
        offsets,
        vec![0, 1, 2, 3, 4],
        "try_recv returns every recovered delivery"
    );
}

#[test]
fn ack_all_shares_flush_round() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flushed = || BrokerConfig::default().durability(aqueduct::Durability::Flushed);
    {
        let broker = Broker::open_with(dir.path(), flushed()).expect("open");
        broker
            .create_topic("t", TopicConfig::default().partitions(2))
            .expect("create");
        let messages = (0..200u32).map(|i| Message::new(i.to_be_bytes().to_vec()));
        broker.publish_batch("t", messages).expect("publish");
        let mut consumer = broker.subscribe("t", "g").expect("subscribe");
        let mut batch = Vec::new();
        while batch.len() < 150 {
            let more = consumer
                .recv_batch(150 - batch.len(), WAIT)
                .expect("recv batch");
            assert!(!more.is_empty(), "the backlog ran dry");
            batch.extend(more);
        }
        let before = broker.fsync_count();
        Delivery::ack_all(batch).expect("ack all");
        let rounds = broker.fsync_count() - before;
        assert!(
            (1..=3).contains(&rounds),
            "150 acks took {rounds} fsyncs; one flush round should cover them"
        );
    }
    let broker = Broker::open_with(dir.path(), flushed()).expect("reopen");
    let mut consumer = broker.subscribe("t", "g").expect("subscribe");
    let mut rest = 0;
    while let Some(delivery) = consumer
        .recv_timeout(Duration::from_millis(200))
        .expect("recv")
    {
        delivery.ack().expect("ack");
        rest += 1;
    }
    assert_eq!(rest, 50, "the 150 acknowledged messages came back");
}

#[test]
fn ack_all_reports_expired_lease() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (broker, clock) = manual_broker(dir.path());
    let config = TopicConfig::default().ack_timeout(Duration::from_secs(30));
    broker.create_topic("t", config).expect("create");
    broker
        .publish_batch("t", (0..3u8).map(|i| Message::new(vec![i])))
        .expect("publish");
    let mut first = broker
        .subscribe_with("t", "g", ConsumerConfig::default().prefetch(1))
        .expect("subscribe");
    let stale = first.recv_timeout(WAIT).expect("recv").expect("delivery");
    clock.advance(Duration::from_secs(31));
    let mut second = broker
        .subscribe_with("t", "g", ConsumerConfig::default().prefetch(1))
        .expect("subscribe");
    let mut fresh = Vec::new();
    for _ in 0..3 {
        fresh.push(second.recv_timeout(WAIT).expect("recv").expect("delivery"));
    }
    assert!(fresh.iter().any(|d| d.offset() == stale.offset()));

    let error = Delivery::ack_all(std::iter::once(stale).chain(fresh))
        .expect_err("the expired lease is reported");
    assert!(
        matches!(error, aqueduct::Error::LeaseExpired { .. }),
        "unexpected error: {error}"
    );
    assert!(
        second
            .recv_timeout(Duration::from_millis(100))
            .expect("recv")
            .is_none(),
        "a delivery acked by ack_all came back"
    );
}

#[test]
fn latest_start_skips_old_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let payloads = |range: std::ops::Range<u8>| range.map(|i| Message::new(vec![i]));
    let drain = |consumer: &mut aqueduct::Consumer| {
        let mut seen = Vec::new();
        while let Some(delivery) = consumer
            .recv_timeout(Duration::from_millis(200))
            .expect("recv")
        {
            seen.push(delivery.payload()[0]);
            delivery.ack().expect("ack");
        }
        seen.sort_unstable();
        seen
    };

    {
        let broker = Broker::open(dir.path()).expect("open");
        broker
            .create_topic("t", TopicConfig::default().partitions(3))
            .expect("create");
        broker.publish_batch("t", payloads(0..6)).expect("publish");

        let latest = ConsumerConfig::default().start_position(StartPosition::Latest);
        let mut consumer = broker
            .subscribe_with("t", "new", latest.clone())
            .expect("subscribe");
        broker.publish_batch("t", payloads(6..9)).expect("publish");
        assert_eq!(drain(&mut consumer), vec![6, 7, 8]);

        // Created and never read from: only its starting cursors are stored.
        drop(
            broker
                .subscribe_with("t", "idle", latest)
                .expect("subscribe"),
        );
    }

    let broker = Broker::open(dir.path()).expect("reopen");
    broker.publish_batch("t", payloads(9..10)).expect("publish");

    // The group exists now, so the default start position does not move it back.
    let mut consumer = broker.subscribe("t", "new").expect("subscribe");
    assert_eq!(drain(&mut consumer), vec![9]);
    let mut idle = broker.subscribe("t", "idle").expect("subscribe");
    assert_eq!(drain(&mut idle), vec![9]);
    let mut everything = broker.subscribe("t", "all").expect("subscribe");
    assert_eq!(drain(&mut everything), (0..10).collect::<Vec<u8>>());
}
