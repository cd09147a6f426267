//! Bad names, sizes and settings give typed errors that name the value; nothing panics.

use std::time::Duration;

use aqueduct::{
    Broker, BrokerConfig, ConsumerConfig, Durability, Error, Message, OrderingMode, TopicConfig,
    MAX_MESSAGE_BYTES_LIMIT,
};

fn broker() -> Broker {
    Broker::temporary().expect("temporary broker")
}

#[test]
fn topic_names_rejected() {
    let broker = broker();
    let long = "a".repeat(250);
    for name in [
        "",
        "has space",
        "slash/name",
        "ümlaut",
        ".",
        "..",
        long.as_str(),
        "tab\t",
    ] {
        let error = broker
            .create_topic(name, TopicConfig::default())
            .expect_err(name);
        match error {
            Error::InvalidName {
                kind,
                name: rejected,
                ..
            } => {
                assert_eq!(kind, "topic", "kind for {name:?}");
                assert_eq!(rejected, name, "error names the rejected value");
            }
            other => panic!("expected InvalidName for {name:?}, got {other:?}"),
        }
    }
}

#[test]
fn topic_names_accepted() {
    let broker = broker();
    let longest = "z".repeat(249);
    for name in ["a", "orders.v2", "A-b_c.9", longest.as_str()] {
        broker
            .create_topic(name, TopicConfig::default())
            .expect(name);
    }
}

#[test]
fn group_names_rejected() {
    let broker = broker();
    broker
        .create_topic("t", TopicConfig::default())
        .expect("create");
    let error = broker
        .subscribe("t", "bad group")
        .expect_err("space in group name");
    assert!(
        matches!(error, Error::InvalidName { kind: "group", .. }),
        "got {error:?}"
    );
}

#[test]
fn topic_settings_out_of_range() {
    let broker = broker();
    broker
        .create_topic("dlq", TopicConfig::default())
        .expect("create dlq");
    let cases = [
        (
            "TopicConfig::partitions",
            TopicConfig::default().partitions(0),
        ),
        (
            "TopicConfig::partitions",
            TopicConfig::default().partitions(1025),
        ),
        (
            "TopicConfig::ack_timeout (ms)",
            TopicConfig::default().ack_timeout(Duration::ZERO),
        ),
        (
            "TopicConfig::max_deliveries",
            TopicConfig::default()
                .max_deliveries(0)
                .dead_letter_topic("dlq"),
        ),
        (
            "TopicConfig::max_deliveries",
            TopicConfig::default().max_deliveries(3),
        ),
        (
            "TopicConfig::dead_letter_topic",
            TopicConfig::default().dead_letter_topic("t"),
        ),
    ];
    for (expected_setting, config) in cases {
        match broker.create_topic("t", config) {
            Err(Error::InvalidConfig { setting, .. }) => assert_eq!(setting, expected_setting),
            other => panic!("expected InvalidConfig for {expected_setting}, got {other:?}"),
        }
    }
}

#[test]
fn dead_letter_topic_must_exist() {
    let broker = broker();
    let config = TopicConfig::default().dead_letter_topic("missing");
    let error = broker
        .create_topic("t", config)
        .expect_err("missing dead-letter topic");
    match error {
        Error::DeadLetterTopicNotFound {
            topic,
            dead_letter_topic,
        } => {
            assert_eq!(topic, "t");
            assert_eq!(dead_letter_topic, "missing");
        }
        other => panic!("expected DeadLetterTopicNotFound, got {other:?}"),
    }
}

#[test]
fn create_topic_idempotent_and_mismatch() {
    let broker = broker();
    broker
        .create_topic("t", TopicConfig::default().partitions(2))
        .expect("create");
    broker
        .create_topic("t", TopicConfig::default().partitions(2))
        .expect("same config again");
    let error = broker
        .create_topic("t", TopicConfig::default().partitions(3))
        .expect_err("differs");
    match error {
        Error::TopicConfigMismatch {
            existing,
            requested,
            ..
        } => {
            assert!(existing.contains("partitions=2"), "existing: {existing}");
            assert!(requested.contains("partitions=3"), "requested: {requested}");
        }
        other => panic!("expected TopicConfigMismatch, got {other:?}"),
    }
}

#[test]
fn broker_settings_out_of_range() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            "BrokerConfig::max_message_bytes",
            BrokerConfig::default().max_message_bytes(0),
        ),
        (
            "BrokerConfig::max_message_bytes",
            BrokerConfig::default().max_message_bytes(MAX_MESSAGE_BYTES_LIMIT + 1),
        ),
        (
            "BrokerConfig::block_bytes",
            BrokerConfig::default().block_bytes(10),
        ),
        (
            "BrokerConfig::cache_bytes",
            BrokerConfig::default().cache_bytes(0),
        ),
        (
            "BrokerConfig::durability max_delay",
            BrokerConfig::default().durability(Durability::Buffered {
                max_delay: Duration::ZERO,
            }),
        ),
    ];
    for (expected_setting, config) in cases {
        match Broker::open_with(dir.path(), config) {
            Err(Error::InvalidConfig { setting, .. }) => assert_eq!(setting, expected_setting),
            other => panic!("expected InvalidConfig for {expected_setting}, got {other:?}"),
        }
    }
}

#[test]
fn consumer_settings_out_of_range() {
    let broker = broker();
    broker
        .create_topic("t", TopicConfig::default())
        .expect("create");
    for config in [
        ConsumerConfig::default().prefetch(0),
        ConsumerConfig::default().max_unacked(0),
    ] {
        let error = broker
            .subscribe_with("t", "g", config)
            .expect_err("invalid consumer config");
        assert!(
            matches!(error, Error::InvalidConfig { .. }),
            "got {error:?}"
        );
    }
}

#[test]
fn message_too_large() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::open_with(dir.path(), BrokerConfig::default().max_message_bytes(1000))
        .expect("open");
    broker
        .create_topic("t", TopicConfig::default())
        .expect("create");
    broker
        .publish("t", Message::new(vec![0u8; 1000]))
        .expect("at the limit");
    let error = broker
        .publish("t", Message::new(vec![0u8; 1001]))
        .expect_err("over the limit");
    match error {
        Error::MessageTooLarge { topic, size, limit } => {
            assert_eq!(topic, "t");
            assert_eq!(size, 1001);
            assert_eq!(limit, 1000);
        }
        other => panic!("expected MessageTooLarge, got {other:?}"),
    }
    assert_eq!(
        broker.end_offset("t", 0).expect("end"),
        1,
        "rejected message was not stored"
    );
}

#[test]
fn batch_with_bad_message_stores_nothing() {
    let broker = broker();
    broker
        .create_topic("t", TopicConfig::default())
        .expect("create");
    let batch = vec![
        Message::new("ok"),
        Message::new("bad").header("aqueduct.internal", "x"),
    ];
    let error = broker
        .publish_batch("t", batch)
        .expect_err("reserved header");
    assert!(
        matches!(error, Error::InvalidHeader { .. }),
        "got {error:?}"
    );
    assert_eq!(broker.end_offset("t", 0).expect("end"), 0);
}

#[test]
fn empty_header_name_rejected() {
    let broker = broker();
    broker
        .create_topic("t", TopicConfig::default())
        .expect("create");
    let error = broker
        .publish("t", Message::new("x").header("", "v"))
        .expect_err("empty name");
    assert!(
        matches!(error, Error::InvalidHeader { .. }),
        "got {error:?}"
    );
}

#[test]
fn unknown_topic_errors() {
    let broker = broker();
    let publish = broker
        .publish("nope", Message::new("x"))
        .expect_err("publish");
    assert!(matches!(publish, Error::TopicNotFound { ref topic } if topic == "nope"));
    let subscribe = broker.subscribe("nope", "g").expect_err("subscribe");
    assert!(
        matches!(subscribe, Error::TopicNotFound { .. }),
        "got {subscribe:?}"
    );
    let end = broker.end_offset("nope", 0).expect_err("end offset");
    assert!(matches!(end, Error::TopicNotFound { .. }), "got {end:?}");
}

#[test]
fn partition_out_of_range() {
    let broker = broker();
    broker
        .create_topic("t", TopicConfig::default().partitions(2))
        .expect("create");
    let error = broker.end_offset("t", 2).expect_err("partition 2 of 2");
    assert!(
        matches!(
            error,
            Error::InvalidConfig {
                setting: "partition",
                ..
            }
        ),
        "got {error:?}"
    );
}

#[test]
fn reserved_tree_name_rejected() {
    let broker = broker();
    let error = broker.tree("__aqueduct.log").expect_err("reserved");
    assert!(
        matches!(error, Error::ReservedTreeName { .. }),
        "got {error:?}"
    );
    broker.tree("orders").expect("application tree");
}

#[test]
fn group_ordering_mismatch() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let broker = Broker::open(dir.path()).expect("open");
        broker
            .create_topic("t", TopicConfig::default())
            .expect("create");
        let config = ConsumerConfig::default().ordering(OrderingMode::PerKey);
        let _consumer = broker.subscribe_with("t", "g", config).expect("subscribe");
        let error = broker
            .subscribe("t", "g")
            .expect_err("unordered on a per-key group");
        assert!(
            matches!(error, Error::GroupConfigMismatch { .. }),
            "got {error:?}"
        );
    }
    let broker = Broker::open(dir.path()).expect("reopen");
    let error = broker
        .subscribe("t", "g")
        .expect_err("mode is stored with the group");
    assert!(
        matches!(error, Error::GroupConfigMismatch { .. }),
        "got {error:?}"
    );
}

#[test]
fn undecodable_payload_is_typed_error() {
    let broker = broker();
    broker
        .create_topic("t", TopicConfig::default())
        .expect("create");
    broker
        .publish("t", Message::new(vec![0xff, 0xff, 0xff]))
        .expect("publish");
    let mut consumer = broker.subscribe("t", "g").expect("subscribe");
    let delivery = consumer
        .recv_timeout(Duration::from_secs(5))
        .expect("recv")
        .expect("delivery");
    let error = delivery
        .decode::<String>()
        .expect_err("not a postcard string");
    match error {
        Error::Decode {
            topic,
            offset,
            type_name,
            ..
        } => {
            assert_eq!(topic, "t");
            assert_eq!(offset, 0);
            assert!(type_name.contains("String"), "type name: {type_name}");
        }
        other => panic!("expected Decode, got {other:?}"),
    }
    delivery.ack().expect("ack");
}

#[test]
fn typed_payload_round_trip() {
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Order {
        id: u64,
        item: String,
    }
    let broker = broker();
    broker
        .create_topic("t", TopicConfig::default())
        .expect("create");
    let order = Order {
        id: 7,
        item: "lamp".into(),
    };
    broker
        .publish("t", Message::encode(&order).expect("encode"))
        .expect("publish");
    let mut consumer = broker.subscribe("t", "g").expect("subscribe");
    let delivery = consumer
        .recv_timeout(Duration::from_secs(5))
        .expect("recv")
        .expect("delivery");
    assert_eq!(delivery.decode::<Order>().expect("decode"), order);
    delivery.ack().expect("ack");
}

#[test]
fn dead_letter_without_topic_is_error() {
    let broker = broker();
    broker
        .create_topic("t", TopicConfig::default())
        .expect("create");
    broker.publish("t", Message::new("x")).expect("publish");
    let mut consumer = broker.subscribe("t", "g").expect("subscribe");
    let delivery = consumer
        .recv_timeout(Duration::from_secs(5))
        .expect("recv")
        .expect("delivery");
    let error = delivery
        .dead_letter("broken")
        .expect_err("no dead-letter topic");
    assert!(
        matches!(error, Error::NoDeadLetterTopic { .. }),
        "got {error:?}"
    );
}

#[test]
fn decode_rejects_trailing_bytes() {
    let broker = broker();
    broker
        .create_topic("t", TopicConfig::default())
        .expect("create");
    let mut payload = postcard::to_stdvec(&7u64).expect("encode");
    payload.extend_from_slice(&[0, 0, 0]);
    broker.publish("t", Message::new(payload)).expect("publish");
    let mut consumer = broker.subscribe("t", "g").expect("subscribe");
    let delivery = consumer
        .recv_timeout(Duration::from_secs(5))
        .expect("recv")
        .expect("delivery");
    let error = delivery.decode::<u64>().expect_err("three bytes left over");
    assert!(matches!(error, Error::Decode { .. }), "got {error:?}");
    delivery.ack().expect("ack");
}

#[test]
fn open_rejects_empty_path() {
    // sled would create `conf` and `db` in the working directory before failing.
    let stray = ["conf", "db", "aqueduct.generation"];
    let existed: Vec<bool> = stray
        .iter()
        .map(|f| std::path::Path::new(f).exists())
        .collect();
    let error = Broker::open("").expect_err("an empty path is rejected");
    assert!(
        matches!(
            error,
            Error::InvalidConfig {
                setting: "database path",
                ..
            }
        ),
        "unexpected error: {error}"
    );
    for (file, existed) in stray.iter().zip(existed) {
        assert!(
            existed || !std::path::Path::new(file).exists(),
            "{file} was created in the working directory"
        );
    }
}

#[test]
fn dead_letter_cuts_long_reason() {
    let broker = broker();
    broker
        .create_topic("dlq", TopicConfig::default())
        .expect("dead-letter topic");
    let config = TopicConfig::default().dead_letter_topic("dlq");
    broker.create_topic("work", config).expect("topic");
    broker
        .publish("work", Message::new("job"))
        .expect("publish");

    let mut consumer = broker.subscribe("work", "g").expect("subscribe");
    let delivery = consumer
        .recv_timeout(Duration::from_secs(5))
        .expect("recv")
        .expect("delivery");
    delivery
        .dead_letter("é".repeat(1_000_000))
        .expect("dead letter");

    let mut dead = broker.subscribe("dlq", "g").expect("subscribe");
    let copy = dead
        .recv_timeout(Duration::from_secs(5))
        .expect("recv")
        .expect("dead letter");
    let reason = &copy.dead_letter_info().expect("metadata").last_error;
    assert!(
        reason.len() <= aqueduct::MAX_REASON_BYTES + 40,
        "{} bytes",
        reason.len()
    );
    assert!(
        reason.ends_with("[cut from 2000000 bytes]"),
        "{}",
        &reason[reason.len() - 40..]
    );
}

#[test]
fn config_mismatch_shows_retention() {
    let broker = broker();
    broker
        .create_topic("t", TopicConfig::default())
        .expect("create");
    let other = TopicConfig::default().retention(aqueduct::Retention::UntilAcked);
    let error = broker.create_topic("t", other).expect_err("mismatch");
    let Error::TopicConfigMismatch {
        existing,
        requested,
        ..
    } = &error
    else {
        panic!("unexpected error: {error}");
    };
    assert_ne!(existing, requested, "{error}");
    assert!(requested.contains("UntilAcked"), "{error}");
}

#[test]
fn replay_rejects_ordinary_topic() {
    let broker = broker();
    broker
        .create_topic("orders", TopicConfig::default())
        .expect("create");
    broker
        .publish("orders", Message::new("order 1"))
        .expect("publish");
    let error = broker
        .replay_dead_letters("orders", "replay", 10)
        .expect_err("orders is not a dead-letter topic");
    assert!(matches!(error, Error::InvalidConfig { .. }), "{error}");
    let mut consumer = broker.subscribe("orders", "replay").expect("subscribe");
    let delivery = consumer.recv_timeout(Duration::from_secs(5)).expect("recv");
    assert!(
        delivery.is_some(),
        "the refused replay consumed the message"
    );
}

#[test]
fn open_rejects_file_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, b"keep me").expect("write");
    let error = Broker::open(&file).expect_err("a file is no database directory");
    assert!(
        matches!(error, Error::Io { .. }),
        "unexpected error: {error}"
    );
    assert!(error.to_string().contains("not-a-directory"), "{error}");
    assert!(error.to_string().contains("not a directory"), "{error}");
    assert_eq!(std::fs::read(&file).expect("read"), b"keep me");
}
