//! The relay is killed with SIGKILL again and again while it publishes and while the
//! application keeps enqueuing. Afterwards every committed event is in the topic exactly once,
//! in order per key.

mod crash_support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use aqueduct::{Broker, TopicConfig};
use aqueduct_patterns::{Outbox, OutboxError, OutboxRelay, RelayConfig};

const TEST: &str = "relay_killed_repeatedly_keeps_every_event_once";
const TOPIC: &str = "order.events";
const KEYS: u64 = 16;
const ROWS: u64 = 2_000;
const KILL_DELAYS_MS: [u64; 5] = [120, 260, 80, 320, 180];

#[test]
fn relay_killed_repeatedly_keeps_every_event_once() {
    if let Some((_, db)) = crash_support::child_role() {
        run_child(&db);
        return;
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut expected = enqueue_initial_rows(dir.path());

    for (children, delay) in KILL_DELAYS_MS.into_iter().enumerate() {
        let mut child = crash_support::spawn(TEST, "relay", dir.path());
        let ready = child.wait_for(Duration::from_secs(30), |line| line == "ready");
        assert!(ready.is_some(), "child {children} never became ready");
        std::thread::sleep(Duration::from_millis(delay));
        for line in child.kill() {
            if let Some(event) = line.strip_prefix("enqueued ") {
                expected.insert(parse_event(event));
            }
        }
    }

    let broker = Broker::open(dir.path()).expect("reopen the broker");
    let outbox = Outbox::open(&broker, "orders").expect("reopen the outbox");
    OutboxRelay::new(&outbox, &broker)
        .drain(Duration::from_secs(60))
        .expect("drain the outbox");
    let stats = outbox.stats().expect("outbox stats");
    assert_eq!(stats.pending, 0, "rows left in the outbox");

    let published = read_topic(&broker);
    let mut counts: HashMap<&(String, u64), usize> = HashMap::new();
    for event in published.values() {
        *counts.entry(event).or_default() += 1;
    }
    let duplicates: Vec<_> = counts.iter().filter(|(_, &count)| count > 1).collect();
    assert!(
        duplicates.is_empty(),
        "events published twice: {duplicates:?}"
    );

    let seen: HashSet<&(String, u64)> = counts.keys().copied().collect();
    let missing: Vec<_> = expected
        .iter()
        .filter(|event| !seen.contains(event))
        .collect();
    assert!(
        missing.is_empty(),
        "committed events missing from the topic: {missing:?}"
    );

    let out_of_order = order_violations(&published);
    assert!(
        out_of_order.is_empty(),
        "keys published out of order: {out_of_order:?}"
    );
}

/// Commits `ROWS` events over `KEYS` keys, ten per transaction, with an order row each.
fn enqueue_initial_rows(db: &Path) -> HashSet<(String, u64)> {
    let broker = Broker::open(db).expect("open the broker");
    let config = TopicConfig::default()
        .partitions(3)
        .dedup_window(Duration::from_secs(600));
    broker
        .create_topic(TOPIC, config)
        .expect("create the topic");
    let orders = broker.tree("orders").expect("orders tree");
    let outbox = Outbox::open(&broker, "orders").expect("open the outbox");

    let mut expected = HashSet::new();
    for first in (0..ROWS).step_by(10) {
        let events: Vec<(String, u64)> = (first..first + 10)
            .map(|n| (format!("customer-{}", n % KEYS), n / KEYS))
            .collect();
        outbox
            .transaction(std::slice::from_ref(&orders), |tx| {
                for event in &events {
                    let order_key = format!("{}-{}", event.0, event.1);
                    tx.tree(0).insert(order_key.as_bytes(), &b"placed"[..])?;
                    tx.enqueue::<_, OutboxError>(TOPIC, &event.0, event)?;
                }
                Ok(())
            })
            .expect("commit orders");
        expected.extend(events);
    }
    expected
}

/// Runs the child: starts the relay with small rounds and keeps enqueuing events of its own
/// key, reporting each committed one.
fn run_child(db: &Path) {
    let broker = Broker::open(db).expect("child opens the broker");
    let outbox = Outbox::open(&broker, "orders").expect("child opens the outbox");
    let relay = OutboxRelay::new(&outbox, &broker)
        .with_config(RelayConfig::default().batch_size(16))
        .start()
        .expect("start the relay");
    crash_support::report("ready");

    let key = format!("live-{}", std::process::id());
    for n in 0u64.. {
        let event = (key.clone(), n);
        outbox
            .transaction(&[], |tx| {
                tx.enqueue::<_, OutboxError>(TOPIC, &event.0, &event)
            })
            .expect("child commits an event");
        crash_support::report(&format!("enqueued {} {}", event.0, event.1));
        std::thread::sleep(Duration::from_millis(2));
    }
    drop(relay);
}

fn parse_event(text: &str) -> (String, u64) {
    let (key, n) = text.split_once(' ').expect("key and number");
    (key.to_string(), n.parse().expect("event number"))
}

/// Reads every message of the topic with a fresh group; returns them by partition and offset.
fn read_topic(broker: &Broker) -> BTreeMap<(u32, u64), (String, u64)> {
    let mut consumer = broker.subscribe(TOPIC, "checker").expect("subscribe");
    let mut published = BTreeMap::new();
    while let Some(delivery) = consumer
        .recv_timeout(Duration::from_secs(1))
        .expect("receive")
    {
        let event: (String, u64) = delivery.decode().expect("decode the event");
        published.insert((delivery.partition(), delivery.offset()), event);
        delivery.ack().expect("ack");
    }
    published
}

/// Returns the events that follow an event of their key with an equal or higher number, in
/// partition and offset order.
fn order_violations(published: &BTreeMap<(u32, u64), (String, u64)>) -> Vec<(String, u64, u64)> {
    let mut last: HashMap<&str, u64> = HashMap::new();
    let mut violations = Vec::new();
    for (key, n) in published.values() {
        if let Some(&previous) = last.get(key.as_str()) {
            if *n <= previous {
                violations.push((key.clone(), previous, *n));
            }
        }
        last.insert(key, *n);
    }
    violations
}
