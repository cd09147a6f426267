//! The relay against a target that goes down and one that rejects a row until it is fixed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aqueduct::{Broker, Message, TopicConfig};
use aqueduct_patterns::{
    Backoff, BoxError, BrokerTarget, Outbox, OutboxError, OutboxRelay, OutboxTarget, RelayConfig,
    TargetError,
};

const TOPIC: &str = "events";

/// The local broker behind a link that can go down, and that rejects payloads starting with
/// `bad` while `reject_bad` is set.
struct Link {
    broker: BrokerTarget,
    down: Arc<AtomicBool>,
    reject_bad: Arc<AtomicBool>,
}

impl OutboxTarget for Link {
    fn publish(&self, topic: &str, messages: Vec<Message>) -> Result<(), TargetError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(TargetError::unavailable(topic, "link down"));
        }
        let bad = messages.iter().any(|m| m.payload().starts_with(b"bad"));
        if bad && self.reject_bad.load(Ordering::SeqCst) {
            return Err(TargetError::rejected(topic, "payload marked bad"));
        }
        self.broker.publish(topic, messages)
    }

    fn flush(&self) -> Result<(), BoxError> {
        self.broker.flush()
    }
}

fn setup() -> (Broker, Outbox, Link, Arc<AtomicBool>, Arc<AtomicBool>) {
    let broker = Broker::temporary().expect("broker");
    broker
        .create_topic(TOPIC, TopicConfig::default().partitions(2))
        .expect("topic");
    let outbox = Outbox::open(&broker, "events").expect("outbox");
    let down = Arc::new(AtomicBool::new(false));
    let reject_bad = Arc::new(AtomicBool::new(false));
    let link = Link {
        broker: BrokerTarget::new(broker.clone()),
        down: Arc::clone(&down),
        reject_bad: Arc::clone(&reject_bad),
    };
    (broker, outbox, link, down, reject_bad)
}

fn enqueue(outbox: &Outbox, key: &str, payload: &str) -> u64 {
    outbox
        .transaction(&[], |tx| {
            let message = Message::new(payload).key(key);
            tx.enqueue_message::<OutboxError>(TOPIC, message)
        })
        .expect("enqueue")
}

/// Returns the payloads per key in offset order, read with a new group.
fn payloads_by_key(broker: &Broker, group: &str) -> BTreeMap<String, Vec<String>> {
    let mut consumer = broker.subscribe(TOPIC, group).expect("subscribe");
    let mut by_position = BTreeMap::new();
    while let Some(delivery) = consumer
        .recv_timeout(Duration::from_millis(300))
        .expect("receive")
    {
        let key = String::from_utf8_lossy(delivery.key().expect("key")).into_owned();
        let payload = String::from_utf8_lossy(delivery.payload()).into_owned();
        by_position.insert((delivery.partition(), delivery.offset()), (key, payload));
        delivery.ack().expect("ack");
    }
    let mut by_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (key, payload) in by_position.into_values() {
        by_key.entry(key).or_default().push(payload);
    }
    by_key
}

#[test]
fn outage_delays_rows_without_losing_them() {
    let (broker, outbox, link, down, _) = setup();
    down.store(true, Ordering::SeqCst);
    let backoff = Backoff::new(Duration::from_millis(5), Duration::from_millis(20));
    let relay = OutboxRelay::with_target(&outbox, link)
        .with_config(RelayConfig::default().backoff(backoff))
        .start()
        .expect("start");
    for n in 0..50 {
        enqueue(&outbox, &format!("key-{}", n % 5), &format!("event-{n}"));
    }
    std::thread::sleep(Duration::from_millis(150));

    let during = outbox.stats().expect("stats");
    assert_eq!(during.pending, 50, "pending rows during the outage");
    let age = during.oldest_pending_age.expect("an oldest row");
    assert!(
        age >= Duration::from_millis(100),
        "oldest pending age {age:?}"
    );
    assert!(relay.stats().retries > 0, "retries during the outage");
    assert_eq!(
        broker.end_offset(TOPIC, 0).expect("offset"),
        0,
        "partition 0 end"
    );
    assert_eq!(
        broker.end_offset(TOPIC, 1).expect("offset"),
        0,
        "partition 1 end"
    );

    down.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    while outbox.stats().expect("stats").pending > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        outbox.stats().expect("stats").pending,
        0,
        "pending rows after the outage"
    );
    relay.stop();

    let by_key = payloads_by_key(&broker, "check");
    for k in 0..5 {
        let expected: Vec<String> = (0..50)
            .filter(|n| n % 5 == k)
            .map(|n| format!("event-{n}"))
            .collect();
        assert_eq!(by_key[&format!("key-{k}")], expected, "events of key-{k}");
    }
}

#[test]
fn parked_row_retried_after_fix() {
    let (broker, outbox, link, _, reject_bad) = setup();
    reject_bad.store(true, Ordering::SeqCst);
    enqueue(&outbox, "a", "a0");
    let bad = enqueue(&outbox, "a", "bad-a1");
    enqueue(&outbox, "a", "a2");
    for n in 0..3 {
        enqueue(&outbox, "b", &format!("b{n}"));
    }
    let relay = OutboxRelay::with_target(&outbox, link);

    let report = relay.run_once().expect("round");
    assert_eq!(report.parked, 1, "parked rows");
    assert_eq!(report.published, 4, "published rows");
    let parked = outbox.parked().expect("parked");
    assert_eq!(parked.len(), 1, "parked list");
    assert_eq!(parked[0].seq, bad, "parked row");
    assert!(
        parked[0].error.contains("payload marked bad"),
        "error {}",
        parked[0].error
    );

    let again = relay.run_once().expect("round");
    assert_eq!(again.published, 0, "rows published behind the parked row");
    assert_eq!(again.waiting, 1, "rows waiting behind the parked row");

    reject_bad.store(false, Ordering::SeqCst);
    outbox.retry_parked(bad).expect("retry");
    relay.drain(Duration::from_secs(5)).expect("drain");

    let by_key = payloads_by_key(&broker, "check");
    assert_eq!(by_key["a"], ["a0", "bad-a1", "a2"], "key a in order");
    assert_eq!(by_key["b"], ["b0", "b1", "b2"], "key b in order");
    let missing = outbox.retry_parked(bad);
    assert!(
        matches!(missing, Err(OutboxError::ParkedRowNotFound { .. })),
        "{missing:?}"
    );
}
