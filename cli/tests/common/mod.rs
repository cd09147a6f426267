//! Shared set-up for the command-line tests: a database prepared with the broker API, and a
//! runner for the built `aqueduct` binary.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use aqueduct::{
    Broker, BrokerConfig, ConsumerConfig, ManualClock, Message, OrderingMode, Retention,
    TopicConfig,
};
use tempfile::TempDir;

/// Publish time of every prepared message: 2024-12-04T08:13:20Z.
pub const PUBLISHED_MS: u64 = 1_733_300_000_000;

/// Messages published to `orders`.
pub const ORDERS: u64 = 6;

/// A JSON payload longer than any terminal column.
pub const LONG_JSON: &str = concat!(
    r#"{"order":99,"customer":"c-9","note":"a note much longer than the payload column "#,
    r#"of an eighty-character terminal, so the table must cut it"}"#,
);

/// Reason given when the prepared dead letters were dead-lettered.
pub const DEAD_LETTER_REASON: &str = "invalid amount: expected a positive number";

/// The outcome of one run of the binary.
pub struct Run {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Parses stdout as one JSON document.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|error| panic!("stdout is not JSON ({error}): {}", self.stdout))
    }

    /// Returns stdout's lines.
    pub fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }
}

/// Runs `aqueduct --db DIR ARGS...` and collects its output.
pub fn aqueduct(db: &Path, args: &[&str]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_aqueduct"));
    command.arg("--db").arg(db).args(args);
    run(command)
}

/// Runs `aqueduct ARGS...` without `--db`.
pub fn aqueduct_without_db(args: &[&str]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_aqueduct"));
    command.args(args);
    run(command)
}

fn run(mut command: Command) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = command
        .env_remove("RUST_LOG")
        .env_remove("AQUEDUCT_DB")
        .output()
        .expect("run the aqueduct binary");
    Run {
        status: status.code(),
        stdout: String::from_utf8(stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(stderr).expect("stderr is UTF-8"),
    }
}

/// Opens the broker in `dir` with the clock fixed at [`PUBLISHED_MS`].
pub fn open(dir: &Path) -> Broker {
    let config = BrokerConfig::default().clock(ManualClock::new(PUBLISHED_MS));
    Broker::open_with(dir, config).expect("open broker")
}

/// Prepares a database with these topics, and closes it:
///
/// - `orders.dlq`: the dead-letter topic of `orders`, one partition.
/// - `orders`: two partitions, [`ORDERS`] JSON messages with keys, ids and a header. Group
///   `billing` (unordered) dead-letters the first `dead_letters` deliveries and acks the rest;
///   group `shipping` (per key) has subscribed and consumed nothing.
/// - `audit`: one partition, age retention, and payloads that are not plain text: invalid
///   UTF-8, two lines, and [`LONG_JSON`].
pub fn prepare(dead_letters: usize) -> TempDir {
    let dir = tempfile::tempdir().expect("temporary directory");
    let broker = open(dir.path());
    create_topics(&broker);
    publish(&broker);
    consume_billing(&broker, dead_letters);
    let per_key = ConsumerConfig::default().ordering(OrderingMode::PerKey);
    let shipping = broker.subscribe_with("orders", "shipping", per_key);
    drop(shipping.expect("subscribe shipping"));
    broker.flush().expect("flush");
    dir
}

fn create_topics(broker: &Broker) {
    broker
        .create_topic("orders.dlq", TopicConfig::default())
        .expect("create orders.dlq");
    let orders = TopicConfig::default()
        .partitions(2)
        .max_deliveries(3)
        .dead_letter_topic("orders.dlq")
        .ack_timeout(Duration::from_secs(10));
    broker
        .create_topic("orders", orders)
        .expect("create orders");
    let audit =
        TopicConfig::default().retention(Retention::max_age(Duration::from_secs(7 * 86_400)));
    broker.create_topic("audit", audit).expect("create audit");
}

fn publish(broker: &Broker) {
    for i in 0..ORDERS {
        let payload = format!(r#"{{"order":{i},"amount":{}}}"#, i * 10);
        let message = Message::new(payload)
            .key(format!("c-{}", i % 3))
            .id(format!("order-{i}"))
            .header("content-type", "application/json");
        broker
            .publish("orders", message)
            .expect("publish to orders");
    }
    let audit = [
        b"ok\xff\xfe tail".to_vec(),
        b"line one\nline two".to_vec(),
        LONG_JSON.as_bytes().to_vec(),
    ];
    for payload in audit {
        broker
            .publish("audit", Message::new(payload))
            .expect("publish to audit");
    }
}

fn consume_billing(broker: &Broker, dead_letters: usize) {
    let mut billing = broker
        .subscribe("orders", "billing")
        .expect("subscribe billing");
    let mut left_to_dead_letter = dead_letters;
    for _ in 0..ORDERS {
        let delivery = billing
            .recv_timeout(Duration::from_secs(5))
            .expect("receive")
            .expect("a delivery within 5 s");
        if left_to_dead_letter > 0 {
            delivery
                .dead_letter(DEAD_LETTER_REASON)
                .expect("dead-letter");
            left_to_dead_letter -= 1;
        } else {
            delivery.ack().expect("ack");
        }
    }
}

/// Returns the number of retained messages of `topic`, read with a fresh broker.
pub fn retained(dir: &Path, topic: &str) -> usize {
    let broker = open(dir);
    let partitions = broker.topic_config(topic).expect("topic").partition_count();
    (0..partitions)
        .map(|partition| broker.peek(topic, partition, 0, 1000).expect("peek").len())
        .sum()
}

/// Returns the sum of the end offsets of `topic`'s partitions, read with a fresh broker.
pub fn published(dir: &Path, topic: &str) -> u64 {
    let broker = open(dir);
    let partitions = broker.topic_config(topic).expect("topic").partition_count();
    (0..partitions)
        .map(|partition| broker.end_offset(topic, partition).expect("end offset"))
        .sum()
}

/// Asserts that no line of `run`'s stdout is wider than `width` characters.
pub fn assert_fits(run: &Run, width: usize) {
    for line in run.lines() {
        assert!(
            line.chars().count() <= width,
            "line of {} characters: {line:?}",
            line.chars().count()
        );
    }
}
