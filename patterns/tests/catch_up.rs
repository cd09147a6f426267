//! Catch-up subscriptions: reading stored events and then live appends, while writers keep
//! appending, yields every position once, in order.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use aqueduct::Broker;
use aqueduct_patterns::{EventStore, ExpectedVersion, NewEvent, RecordedEvent};
use sled::transaction::ConflictableTransactionError;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const SEEDED: u64 = 600;
const WRITERS: u64 = 2;
const APPENDS_PER_WRITER: u64 = 150;
const EVENTS_PER_APPEND: u64 = 2;

fn events(count: u64) -> Vec<NewEvent> {
    (0..count)
        .map(|n| NewEvent::new("Counted", 1, n.to_be_bytes().to_vec()))
        .collect()
}

fn store() -> (Broker, EventStore) {
    let broker = Broker::temporary().expect("broker");
    let store = EventStore::open(&broker, "catch-up").expect("store");
    (broker, store)
}

#[test]
fn handover_to_live_has_no_gaps_or_duplicates() {
    let (_broker, store) = store();
    for index in 0..SEEDED / 20 {
        let stream = format!("seed-{}", index % 5);
        store
            .append(&stream, ExpectedVersion::Any, events(20))
            .expect("append")
            .expect("ok");
    }
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let store = store.clone();
            thread::spawn(move || {
                for index in 0..APPENDS_PER_WRITER {
                    let stream = format!("live{writer}-{}", index % 3);
                    store
                        .append(&stream, ExpectedVersion::Any, events(EVENTS_PER_APPEND))
                        .expect("append")
                        .expect("ok");
                }
            })
        })
        .collect();

    let total = SEEDED + WRITERS * APPENDS_PER_WRITER * EVENTS_PER_APPEND;
    let mut subscription = store.subscribe(0);
    let mut received: Vec<RecordedEvent> = Vec::new();
    while (received.len() as u64) < total {
        let event = subscription
            .recv_timeout(Duration::from_secs(10))
            .expect("receive")
            .unwrap_or_else(|| panic!("stalled after {} events", received.len()));
        received.push(event);
    }
    for writer in writers {
        writer.join().expect("writer thread");
    }

    let positions: Vec<u64> = received.iter().map(|e| e.position).collect();
    assert_eq!(positions, (0..total).collect::<Vec<_>>());
    assert_eq!(
        subscription.try_next().expect("read"),
        None,
        "no event after the last"
    );
    assert!(subscription.is_live());
    let mut next_version = std::collections::HashMap::new();
    for event in &received {
        let expected = next_version.entry(event.stream.clone()).or_insert(1);
        assert_eq!(
            event.version, *expected,
            "version order in {}",
            event.stream
        );
        *expected += 1;
    }
}

#[test]
fn subscription_starts_at_given_position() {
    let (_broker, store) = store();
    store
        .append("a-1", ExpectedVersion::Any, events(10))
        .expect("append")
        .expect("ok");

    let mut subscription = store.subscribe(7);
    let first = subscription.try_next().expect("read").expect("an event");

    assert_eq!(first.position, 7);
    assert_eq!(subscription.next_position(), 8);
}

#[test]
fn live_subscription_wakes_on_append() {
    let (_broker, store) = store();
    let mut subscription = store.subscribe(0);
    assert_eq!(subscription.try_next().expect("read"), None);
    let writer = {
        let store = store.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(100));
            store
                .append("a-1", ExpectedVersion::Any, events(1))
                .expect("append")
                .expect("ok");
        })
    };

    let started = Instant::now();
    let event = subscription
        .recv_timeout(Duration::from_secs(10))
        .expect("receive");
    writer.join().expect("writer thread");

    assert_eq!(event.map(|e| e.position), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn append_in_shared_transaction_reaches_subscription() {
    let (broker, store) = store();
    let orders = broker.tree("orders").expect("application tree");
    let mut subscription = store.subscribe(0);
    let store = Arc::new(store);

    let outcome =
        sled::Transactional::transaction(&(store.tree(), &orders), |(events_tx, orders_tx)| {
            orders_tx.insert("order-1", "placed")?;
            let new = events(1);
            match store.append_in::<BoxError>(
                events_tx,
                "order-1",
                ExpectedVersion::NoStream,
                &new,
            )? {
                Ok(appended) => Ok(appended),
                Err(conflict) => Err(ConflictableTransactionError::Abort(conflict.into())),
            }
        })
        .expect("transaction");
    store.committed().expect("committed");
    let event = subscription
        .recv_timeout(Duration::from_secs(5))
        .expect("receive");

    assert_eq!(outcome.version, 1);
    assert_eq!(event.map(|e| e.stream), Some("order-1".to_string()));
    assert_eq!(
        orders.get("order-1").expect("read").as_deref(),
        Some(&b"placed"[..])
    );
}
