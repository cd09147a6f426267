//! Poison keys: in per-key groups a dead letter parks its key until an operator releases it.

use std::time::Duration;

use aqueduct::{Broker, ConsumerConfig, Message, OrderingMode, TopicConfig};

const WAIT: Duration = Duration::from_millis(300);

fn setup(dir: &std::path::Path) -> Broker {
    let broker = Broker::open(dir).expect("open");
    broker
        .create_topic("dead", TopicConfig::default())
        .expect("dead-letter topic");
    let config = TopicConfig::default().dead_letter_topic("dead");
    broker.create_topic("t", config).expect("create");
    broker
}

fn per_key() -> ConsumerConfig {
    ConsumerConfig::default().ordering(OrderingMode::PerKey)
}

#[test]
fn dead_letter_parks_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = setup(dir.path());
    broker
        .publish("t", Message::new("bad").key("k"))
        .expect("publish");
    broker
        .publish("t", Message::new("after bad").key("k"))
        .expect("publish");
    broker
        .publish("t", Message::new("other").key("j"))
        .expect("publish");
    let mut consumer = broker
        .subscribe_with("t", "g", per_key())
        .expect("subscribe");
    let mut payloads = Vec::new();
    while let Some(delivery) = consumer.recv_timeout(WAIT).expect("recv") {
        payloads.push(delivery.payload().to_vec());
        if delivery.payload() == b"bad" {
            delivery.dead_letter("cannot parse").expect("dead letter");
        } else {
            delivery.ack().expect("ack");
        }
    }
    assert_eq!(
        payloads,
        vec![b"bad".to_vec(), b"other".to_vec()],
        "key k stops after the dead letter"
    );
    let parked = broker.parked_keys("t", "g").expect("parked keys");
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].key, b"k");
    assert_eq!(parked[0].reason, "cannot parse");
}

#[test]
fn parked_key_survives_restart_and_release() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let broker = setup(dir.path());
        broker
            .publish("t", Message::new("bad").key("k"))
            .expect("publish");
        broker
            .publish("t", Message::new("after bad").key("k"))
            .expect("publish");
        let mut consumer = broker
            .subscribe_with("t", "g", per_key())
            .expect("subscribe");
        let delivery = consumer.recv_timeout(WAIT).expect("recv").expect("first");
        delivery.dead_letter("cannot parse").expect("dead letter");
    }
    let broker = Broker::open(dir.path()).expect("reopen");
    let mut consumer = broker
        .subscribe_with("t", "g", per_key())
        .expect("subscribe");
    assert!(
        consumer.recv_timeout(WAIT).expect("recv").is_none(),
        "still parked after restart"
    );
    assert!(
        broker.release_key("t", "g", b"k").expect("release"),
        "key was parked"
    );
    let next = consumer
        .recv_timeout(Duration::from_secs(5))
        .expect("recv")
        .expect("released");
    assert_eq!(next.payload(), b"after bad");
    assert!(
        !broker.release_key("t", "g", b"k").expect("release again"),
        "no longer parked"
    );
}

#[test]
fn unordered_group_does_not_park() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = setup(dir.path());
    broker
        .publish("t", Message::new("bad").key("k"))
        .expect("publish");
    broker
        .publish("t", Message::new("after bad").key("k"))
        .expect("publish");
    let mut consumer = broker.subscribe("t", "g").expect("subscribe");
    let first = consumer.recv_timeout(WAIT).expect("recv").expect("first");
    first.dead_letter("cannot parse").expect("dead letter");
    let second = consumer.recv_timeout(WAIT).expect("recv");
    assert!(second.is_some(), "unordered groups keep delivering the key");
    assert!(broker.parked_keys("t", "g").expect("parked").is_empty());
}
