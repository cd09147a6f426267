//! Delayed delivery: `Message::deliver_at` and `Delivery::nack_after`, with a manual clock.

use std::time::{Duration, UNIX_EPOCH};

use aqueduct::{
    Broker, BrokerConfig, ConsumerConfig, ManualClock, Message, OrderingMode, TopicConfig,
};

const START_MS: u64 = 1_000_000;

fn open(dir: &std::path::Path, clock: &std::sync::Arc<ManualClock>) -> Broker {
    Broker::open_with(dir, BrokerConfig::default().clock(clock.clone())).expect("open")
}

fn at(ms: u64) -> std::time::SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

#[test]
fn delayed_message_waits_until_due() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(START_MS);
    let broker = open(dir.path(), &clock);
    broker
        .create_topic("t", TopicConfig::default())
        .expect("create");
    broker
        .publish("t", Message::new("later").deliver_at(at(START_MS + 5_000)))
        .expect("publish");
    broker.publish("t", Message::new("now")).expect("publish");
    let mut consumer = broker.subscribe("t", "g").expect("subscribe");
    let first = consumer
        .try_recv()
        .expect("recv")
        .expect("undelayed message");
    assert_eq!(first.payload(), b"now");
    first.ack().expect("ack");
    assert!(
        consumer.try_recv().expect("recv").is_none(),
        "delayed message not due yet"
    );
    clock.advance(Duration::from_secs(5));
    let later = consumer
        .recv_timeout(Duration::from_secs(5))
        .expect("recv")
        .expect("due now");
    assert_eq!(later.payload(), b"later");
}

#[test]
fn delay_survives_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(START_MS);
    {
        let broker = open(dir.path(), &clock);
        broker
            .create_topic("t", TopicConfig::default())
            .expect("create");
        let message = Message::new("later").deliver_at(at(START_MS + 60_000));
        broker.publish("t", message).expect("publish");
    }
    let broker = open(dir.path(), &clock);
    let mut consumer = broker.subscribe("t", "g").expect("subscribe");
    assert!(
        consumer.try_recv().expect("recv").is_none(),
        "still delayed after reopen"
    );
    clock.advance(Duration::from_secs(60));
    assert!(
        consumer.try_recv().expect("recv").is_some(),
        "due after the delay"
    );
}

#[test]
fn delayed_message_holds_its_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(START_MS);
    let broker = open(dir.path(), &clock);
    broker
        .create_topic("t", TopicConfig::default())
        .expect("create");
    broker
        .publish(
            "t",
            Message::new("first")
                .key("k")
                .deliver_at(at(START_MS + 1_000)),
        )
        .expect("publish");
    broker
        .publish("t", Message::new("second").key("k"))
        .expect("publish");
    broker
        .publish("t", Message::new("other").key("j"))
        .expect("publish");
    let config = ConsumerConfig::default().ordering(OrderingMode::PerKey);
    let mut consumer = broker.subscribe_with("t", "g", config).expect("subscribe");
    let other = consumer.try_recv().expect("recv").expect("other key flows");
    assert_eq!(other.payload(), b"other");
    other.ack().expect("ack");
    assert!(
        consumer.try_recv().expect("recv").is_none(),
        "key k waits for its delayed head"
    );
    clock.advance(Duration::from_secs(1));
    let first = consumer.try_recv().expect("recv").expect("due");
    assert_eq!(first.payload(), b"first");
    first.ack().expect("ack");
    let second = consumer.try_recv().expect("recv").expect("next of key");
    assert_eq!(second.payload(), b"second");
}

#[test]
fn nack_after_redelivers_later() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(START_MS);
    let broker = open(dir.path(), &clock);
    broker
        .create_topic("t", TopicConfig::default())
        .expect("create");
    broker
        .publish("t", Message::new("retry me"))
        .expect("publish");
    let mut consumer = broker.subscribe("t", "g").expect("subscribe");
    let delivery = consumer.try_recv().expect("recv").expect("delivery");
    delivery
        .nack_after(Duration::from_secs(30))
        .expect("nack_after");
    assert!(
        consumer.try_recv().expect("recv").is_none(),
        "not before the delay"
    );
    clock.advance(Duration::from_secs(29));
    assert!(
        consumer.try_recv().expect("recv").is_none(),
        "still one second early"
    );
    clock.advance(Duration::from_secs(1));
    let again = consumer.try_recv().expect("recv").expect("redelivered");
    assert_eq!(again.attempt(), 2);
}

#[test]
fn blocked_consumer_wakes_on_clock_advance() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(START_MS);
    let broker = open(dir.path(), &clock);
    broker
        .create_topic("t", TopicConfig::default())
        .expect("create");
    broker
        .publish("t", Message::new("x").deliver_at(at(START_MS + 10_000)))
        .expect("publish");
    let mut consumer = broker.subscribe("t", "g").expect("subscribe");
    let advancer = {
        let clock = clock.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            clock.advance(Duration::from_secs(10));
        })
    };
    let started = std::time::Instant::now();
    let delivery = consumer
        .recv_timeout(Duration::from_secs(10))
        .expect("recv");
    advancer.join().expect("advancer");
    assert!(delivery.is_some(), "woken by the clock advance");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "woke promptly: {:?}",
        started.elapsed()
    );
}

#[test]
fn nack_after_delay_survives_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(START_MS);
    {
        let broker = open(dir.path(), &clock);
        broker
            .create_topic("t", TopicConfig::default())
            .expect("create");
        broker
            .publish("t", Message::new("retry me"))
            .expect("publish");
        let mut consumer = broker.subscribe("t", "g").expect("subscribe");
        let delivery = consumer.try_recv().expect("recv").expect("delivery");
        delivery
            .nack_after(Duration::from_secs(30))
            .expect("nack_after");
    }
    let broker = open(dir.path(), &clock);
    let mut consumer = broker.subscribe("t", "g").expect("subscribe");
    assert!(
        consumer.try_recv().expect("recv").is_none(),
        "the delay holds after a restart"
    );
    clock.advance(Duration::from_secs(30));
    let again = consumer
        .try_recv()
        .expect("recv")
        .expect("due after the delay");
    assert_eq!(again.attempt(), 2);
}
