//! The inbox skips redelivered messages, drops marks after its window, and records nothing
//! for a handler that aborts.

use std::time::Duration;

use aqueduct::{Broker, Delivery, ManualClock, Message, TopicConfig};
use aqueduct_patterns::{Inbox, InboxConfig, InboxError, Processed};
use sled::transaction::ConflictableTransactionError;

fn count_effect(inbox: &Inbox, delivery: &Delivery, effects: &sled::Tree) -> Processed<()> {
    let key = Inbox::message_key(delivery);
    inbox
        .process::<_, InboxError, _>(delivery, std::slice::from_ref(effects), |trees| {
            let count = trees[0].get(&key)?.map_or(0, |v| v[0]);
            trees[0].insert(key.as_bytes(), &[count + 1][..])?;
            Ok(())
        })
        .expect("process")
}

fn effect_count(effects: &sled::Tree, key: &str) -> u8 {
    effects.get(key).expect("read").map_or(0, |v| v[0])
}

#[test]
fn redelivered_message_has_no_second_effect() {
    let broker = Broker::temporary().expect("broker");
    broker
        .create_topic("payments", TopicConfig::default())
        .expect("topic");
    broker
        .publish("payments", Message::new("10").id("payment-1"))
        .expect("publish");
    let effects = broker.tree("balances").expect("tree");
    let inbox = Inbox::open(&broker, "ledger").expect("inbox");
    let mut consumer = broker.subscribe("payments", "ledger").expect("subscribe");

    let first = consumer
        .recv_timeout(Duration::from_secs(1))
        .expect("recv")
        .expect("first");
    assert_eq!(
        count_effect(&inbox, &first, &effects),
        Processed::Applied(()),
        "first run"
    );
    // The ack is lost, as in a crash between commit and ack.
    first.nack().expect("nack");

    let second = consumer
        .recv_timeout(Duration::from_secs(1))
        .expect("recv")
        .expect("second");
    assert_eq!(second.attempt(), 2, "redelivery attempt");
    assert_eq!(
        count_effect(&inbox, &second, &effects),
        Processed::Duplicate,
        "second run"
    );
    assert_eq!(effect_count(&effects, "id:payment-1"), 1, "effects applied");
    assert!(inbox.contains(&second).expect("contains"), "mark present");
    second.ack().expect("ack");
}

#[test]
fn message_without_id_keyed_by_position() {
    let broker = Broker::temporary().expect("broker");
    broker
        .create_topic("jobs", TopicConfig::default())
        .expect("topic");
    broker.publish("jobs", Message::new("a")).expect("publish");
    broker.publish("jobs", Message::new("a")).expect("publish");
    let effects = broker.tree("effects").expect("tree");
    let inbox = Inbox::open(&broker, "jobs").expect("inbox");
    let mut consumer = broker.subscribe("jobs", "workers").expect("subscribe");

    for _ in 0..2 {
        let delivery = consumer
            .recv_timeout(Duration::from_secs(1))
            .expect("recv")
            .expect("a");
        let outcome = count_effect(&inbox, &delivery, &effects);
        assert_eq!(
            outcome,
            Processed::Applied(()),
            "equal payloads at different offsets"
        );
        delivery.ack().expect("ack");
    }
    assert_eq!(
        effect_count(&effects, "at:jobs:0:0"),
        1,
        "effect of offset 0"
    );
    assert_eq!(
        effect_count(&effects, "at:jobs:0:1"),
        1,
        "effect of offset 1"
    );
}

#[test]
fn marks_expire_after_window() {
    let broker = Broker::temporary().expect("broker");
    let clock = ManualClock::new(10_000_000);
    let config = InboxConfig::default()
        .window(Duration::from_secs(60))
        .clock(clock.clone());
    let inbox = Inbox::open_with(&broker, "jobs", config).expect("inbox");
    inbox
        .process_key::<_, InboxError, _>("job-1", &[], |_| Ok(()))
        .expect("first");

    clock.advance(Duration::from_secs(30));
    assert_eq!(
        inbox.expire().expect("expire"),
        0,
        "marks removed inside the window"
    );
    let inside = inbox
        .process_key::<_, InboxError, _>("job-1", &[], |_| Ok(()))
        .expect("inside the window");
    assert!(inside.is_duplicate(), "duplicate inside the window");

    clock.advance(Duration::from_secs(31));
    assert_eq!(
        inbox.expire().expect("expire"),
        1,
        "marks removed after the window"
    );
    assert!(inbox.is_empty(), "inbox after expiry");
    let after = inbox
        .process_key::<_, InboxError, _>("job-1", &[], |_| Ok(()))
        .expect("after the window");
    assert!(!after.is_duplicate(), "processed again after the window");
}

#[test]
fn aborted_handler_leaves_no_mark() {
    let broker = Broker::temporary().expect("broker");
    let inbox = Inbox::open(&broker, "jobs").expect("inbox");

    let failed = inbox.process_key::<(), InboxError, _>("job-1", &[], |_| {
        Err(ConflictableTransactionError::Abort(
            InboxError::InvalidName {
                name: "stand-in".into(),
                reason: "handler failure",
            },
        ))
    });
    assert!(failed.is_err(), "aborted handler");
    assert_eq!(inbox.len(), 0, "marks after an abort");

    let retried = inbox
        .process_key::<_, InboxError, _>("job-1", &[], |_| Ok(7))
        .expect("retry");
    assert_eq!(retried, Processed::Applied(7), "retry after the abort");
}
