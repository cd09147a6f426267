//! Outbox transactions: application writes and events commit together or not at all.

use std::time::Duration;

use aqueduct::{Broker, ManualClock, Message, TopicConfig};
use aqueduct_patterns::{Outbox, OutboxConfig, OutboxError, OutboxRelay};
use sled::transaction::ConflictableTransactionError;

#[test]
fn commit_writes_data_and_row() {
    let broker = Broker::temporary().expect("broker");
    let orders = broker.tree("orders").expect("tree");
    let outbox = Outbox::open(&broker, "orders").expect("outbox");

    outbox
        .transaction(std::slice::from_ref(&orders), |tx| {
            tx.tree(0).insert("order-1", "placed")?;
            tx.enqueue::<_, OutboxError>("order.created", "customer-1", &1u64)?;
            Ok(())
        })
        .expect("commit");

    assert!(orders.contains_key("order-1").expect("read"), "order row");
    assert_eq!(outbox.stats().expect("stats").pending, 1, "pending rows");
}

#[test]
fn abort_discards_data_and_rows() {
    let broker = Broker::temporary().expect("broker");
    let orders = broker.tree("orders").expect("tree");
    let outbox = Outbox::open(&broker, "orders").expect("outbox");

    let result: Result<(), OutboxError> = outbox.transaction(std::slice::from_ref(&orders), |tx| {
        tx.tree(0).insert("order-1", "placed")?;
        tx.enqueue::<_, OutboxError>("order.created", "customer-1", &1u64)?;
        Err(ConflictableTransactionError::Abort(
            OutboxError::ParkedRowNotFound {
                outbox: "orders".into(),
                seq: 0,
            },
        ))
    });

    assert!(result.is_err(), "the transaction aborted");
    assert!(orders.is_empty(), "order row after abort");
    assert_eq!(
        outbox.stats().expect("stats").pending,
        0,
        "pending rows after abort"
    );
}

#[test]
fn invalid_topic_aborts_transaction() {
    let broker = Broker::temporary().expect("broker");
    let orders = broker.tree("orders").expect("tree");
    let outbox = Outbox::open(&broker, "orders").expect("outbox");

    let result = outbox.transaction(std::slice::from_ref(&orders), |tx| {
        tx.tree(0).insert("order-1", "placed")?;
        tx.enqueue::<_, OutboxError>("order created!", "customer-1", &1u64)
    });

    assert!(
        matches!(result, Err(OutboxError::InvalidTopic { .. })),
        "{result:?}"
    );
    assert!(orders.is_empty(), "order row after a rejected event");
}

#[test]
fn reserved_header_aborts_transaction() {
    let broker = Broker::temporary().expect("broker");
    let outbox = Outbox::open(&broker, "orders").expect("outbox");

    let result = outbox.transaction(&[], |tx| {
        let message = Message::new("x").header("aqueduct.source", "app");
        tx.enqueue_message::<OutboxError>("order.created", message)
    });

    assert!(
        matches!(result, Err(OutboxError::InvalidHeader { .. })),
        "{result:?}"
    );
}

#[test]
fn invalid_outbox_name_rejected() {
    let broker = Broker::temporary().expect("broker");
    let result = Outbox::open(&broker, "orders/eu");
    assert!(
        matches!(result, Err(OutboxError::InvalidName { .. })),
        "{result:?}"
    );
}

#[test]
fn relay_publishes_with_row_ids() {
    let broker = Broker::temporary().expect("broker");
    broker
        .create_topic("order.created", TopicConfig::default())
        .expect("topic");
    let outbox = Outbox::open(&broker, "orders").expect("outbox");
    let seq = outbox
        .transaction(&[], |tx| {
            tx.enqueue::<_, OutboxError>("order.created", "customer-1", &("order-1", 250u64))
        })
        .expect("typed event");
    outbox
        .transaction(&[], |tx| {
            let message = Message::new("raw").id("order-2-created");
            tx.enqueue_message::<OutboxError>("order.created", message)
        })
        .expect("prepared message");

    let published = OutboxRelay::new(&outbox, &broker)
        .drain(Duration::from_secs(5))
        .expect("drain");
    assert_eq!(published, 2, "published rows");

    let mut consumer = broker
        .subscribe("order.created", "check")
        .expect("subscribe");
    let first = consumer
        .recv_timeout(Duration::from_secs(1))
        .expect("recv")
        .expect("first");
    let id = first.id().expect("generated id").to_string();
    assert!(id.starts_with("orders-"), "generated id {id}");
    assert!(id.ends_with(&format!("-{seq}")), "generated id {id}");
    assert_eq!(first.key(), Some(&b"customer-1"[..]), "key");
    let event: (String, u64) = first.decode().expect("decode");
    assert_eq!(event, ("order-1".to_string(), 250), "event");
    first.ack().expect("ack");

    let second = consumer
        .recv_timeout(Duration::from_secs(1))
        .expect("recv")
        .expect("second");
    assert_eq!(
        second.id(),
        Some("order-2-created"),
        "id of a prepared message"
    );
}

#[test]
fn stats_report_oldest_pending_age() {
    let broker = Broker::temporary().expect("broker");
    let clock = ManualClock::new(1_000_000);
    let config = OutboxConfig::default().clock(clock.clone());
    let outbox = Outbox::open_with(&broker, "orders", config).expect("outbox");
    outbox
        .transaction(&[], |tx| tx.enqueue::<_, OutboxError>("t", "k", &1u8))
        .expect("first");
    clock.advance(Duration::from_secs(3));
    outbox
        .transaction(&[], |tx| tx.enqueue::<_, OutboxError>("t", "k", &2u8))
        .expect("second");
    clock.advance(Duration::from_secs(2));

    let stats = outbox.stats().expect("stats");
    assert_eq!(stats.pending, 2, "pending rows");
    assert_eq!(
        stats.oldest_pending_age,
        Some(Duration::from_secs(5)),
        "oldest age"
    );
}

#[test]
fn second_relay_rejected_while_one_runs() {
    let broker = Broker::temporary().expect("broker");
    let outbox = Outbox::open(&broker, "orders").expect("outbox");
    let running = OutboxRelay::new(&outbox, &broker)
        .start()
        .expect("first relay");

    let result = OutboxRelay::new(&outbox, &broker).run_once();
    assert!(
        matches!(result, Err(OutboxError::RelayRunning { .. })),
        "{result:?}"
    );

    running.stop();
    let after_stop = OutboxRelay::new(&outbox, &broker).run_once();
    assert!(after_stop.is_ok(), "relay after stop: {after_stop:?}");
}
