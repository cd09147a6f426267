//! A row the broker rejects (too large) parks its key while other keys flow, the parked key
//! survives a SIGKILL of the relay, and after the operator discards the row the key's later
//! rows follow in order.

mod crash_support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use aqueduct::{Broker, BrokerConfig, TopicConfig};
use aqueduct_patterns::{Outbox, OutboxError, OutboxRelay, RelayConfig};

const TEST: &str = "rejected_row_holds_its_key_across_a_crash";
const TOPIC: &str = "account.events";
const ROWS_PER_KEY: u64 = 10;
const REJECTED: (&str, u64) = ("account-a", 3);

#[test]
fn rejected_row_holds_its_key_across_a_crash() {
    if let Some((_, db)) = crash_support::child_role() {
        run_child(&db);
        return;
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    enqueue_rows(dir.path());

    let mut child = crash_support::spawn(TEST, "relay", dir.path());
    let settled = child.wait_for(Duration::from_secs(30), |line| line == "pending=6 parked=1");
    assert!(
        settled.is_some(),
        "relay never reached 6 pending rows and 1 parked row"
    );
    child.kill();

    let broker = open_broker(dir.path());
    let outbox = Outbox::open(&broker, "accounts").expect("reopen the outbox");
    let parked = outbox.parked().expect("list parked rows");
    assert_eq!(parked.len(), 1, "parked rows after the crash");
    let row = &parked[0];
    assert_eq!(
        row.key.as_deref(),
        Some(REJECTED.0.as_bytes()),
        "parked row's key"
    );
    assert_eq!(
        row.decode::<(String, u64, Vec<u8>)>().expect("decode").1,
        REJECTED.1
    );
    assert!(
        row.error.contains("exceeds the limit"),
        "parked error: {}",
        row.error
    );

    // Rows whose removal the crash lost are published again here and deduplicated by the
    // broker; the rows behind the parked row must stay.
    let relay = OutboxRelay::new(&outbox, &broker);
    relay.drain(Duration::from_secs(5)).expect("drain");
    assert_eq!(
        outbox.stats().expect("stats").pending,
        6,
        "rows waiting behind the parked row"
    );

    let before = events_by_key(&broker, "before-discard");
    assert_eq!(
        before["account-a"],
        vec![0, 1, 2],
        "key a before the discard"
    );
    assert_eq!(
        before["account-b"],
        (0..ROWS_PER_KEY).collect::<Vec<_>>(),
        "key b"
    );
    assert_eq!(
        before["account-c"],
        (0..ROWS_PER_KEY).collect::<Vec<_>>(),
        "key c"
    );

    let discarded = outbox
        .discard_parked(row.seq)
        .expect("discard the parked row");
    assert_eq!(discarded.seq, row.seq, "discarded row");
    let published = relay
        .drain(Duration::from_secs(5))
        .expect("drain after discard");
    assert_eq!(published, 6, "rows published after the discard");

    let after = events_by_key(&broker, "after-discard");
    let expected_a: Vec<u64> = (0..ROWS_PER_KEY).filter(|n| *n != REJECTED.1).collect();
    assert_eq!(after["account-a"], expected_a, "key a after the discard");
    assert_eq!(
        outbox.stats().expect("stats").pending,
        0,
        "pending rows at the end"
    );
    assert_eq!(
        outbox.parked().expect("parked").len(),
        0,
        "parked rows at the end"
    );
}

/// Opens a broker whose message limit (1 KiB) the rejected row exceeds.
fn open_broker(db: &Path) -> Broker {
    let config = BrokerConfig::default().max_message_bytes(1024);
    Broker::open_with(db, config).expect("open the broker")
}

fn enqueue_rows(db: &Path) {
    let broker = open_broker(db);
    broker
        .create_topic(TOPIC, TopicConfig::default().partitions(2))
        .expect("create the topic");
    let outbox = Outbox::open(&broker, "accounts").expect("open the outbox");
    for n in 0..ROWS_PER_KEY {
        for key in ["account-a", "account-b", "account-c"] {
            let padding = if (key, n) == REJECTED { 4096 } else { 8 };
            let event = (key.to_string(), n, vec![0u8; padding]);
            outbox
                .transaction(&[], |tx| tx.enqueue::<_, OutboxError>(TOPIC, key, &event))
                .expect("enqueue");
        }
    }
}

/// Runs the child: the relay in small rounds, reporting the outbox's counts as they change.
fn run_child(db: &Path) {
    let broker = open_broker(db);
    let outbox = Outbox::open(&broker, "accounts").expect("child opens the outbox");
    let _relay = OutboxRelay::new(&outbox, &broker)
        .with_config(RelayConfig::default().batch_size(4))
        .start()
        .expect("start the relay");
    let mut last = String::new();
    loop {
        let stats = outbox.stats().expect("stats");
        let line = format!("pending={} parked={}", stats.pending, stats.parked);
        if line != last {
            crash_support::report(&line);
            last = line;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads the topic with a new group and returns the event numbers per key in offset order.
fn events_by_key(broker: &Broker, group: &str) -> BTreeMap<String, Vec<u64>> {
    let mut consumer = broker.subscribe(TOPIC, group).expect("subscribe");
    let mut by_position = BTreeMap::new();
    while let Some(delivery) = consumer
        .recv_timeout(Duration::from_millis(500))
        .expect("receive")
    {
        let (key, n, _): (String, u64, Vec<u8>) = delivery.decode().expect("decode");
        by_position.insert((delivery.partition(), delivery.offset()), (key, n));
        delivery.ack().expect("ack");
    }
    let mut by_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (key, n) in by_position.into_values() {
        by_key.entry(key).or_default().push(n);
    }
    by_key
}
