//! `topics`, `groups`, `peek` and `dead-letters` on a prepared database.

mod common;

use std::time::Duration;

use aqueduct::{ConsumerConfig, OrderingMode};
use common::{aqueduct, assert_fits, prepare, DEAD_LETTER_REASON, LONG_JSON, ORDERS};
use serde_json::Value;

/// Terminal width the tool uses when stdout is not a terminal.
const WIDTH: usize = 80;

fn find<'a>(items: &'a Value, field: &str, name: &str) -> &'a Value {
    items
        .as_array()
        .expect("an array")
        .iter()
        .find(|item| item[field] == name)
        .unwrap_or_else(|| panic!("no item with {field} = {name:?} in {items}"))
}

#[test]
fn topics_lists_every_topic() {
    let db = prepare(1);
    let run = aqueduct(db.path(), &["topics"]);
    assert_eq!(run.status, Some(0), "stderr: {}", run.stderr);
    for topic in ["audit", "orders", "orders.dlq"] {
        assert!(
            run.lines().iter().any(|line| line.starts_with(topic)),
            "no line for {topic}: {}",
            run.stdout
        );
    }
}

#[test]
fn topics_text_fits_terminal() {
    let db = prepare(1);
    let run = aqueduct(db.path(), &["topics"]);
    assert_fits(&run, WIDTH);
}

#[test]
fn topics_text_shows_config() {
    let db = prepare(1);
    let run = aqueduct(db.path(), &["topics"]);
    let orders = run
        .lines()
        .into_iter()
        .filter(|line| line.starts_with("orders "))
        .collect::<Vec<_>>();
    assert_eq!(
        orders.len(),
        2,
        "a size row and a config row: {}",
        run.stdout
    );
    assert!(orders[0].contains("orders.dlq"), "size row: {}", orders[0]);
    assert!(
        orders[1].contains("10s"),
        "ack timeout in config row: {}",
        orders[1]
    );
}

#[test]
fn topics_json_has_config_and_counts() {
    let db = prepare(1);
    let json = aqueduct(db.path(), &["--json", "topics"]).json();
    let orders = find(&json["topics"], "name", "orders");
    assert_eq!(orders["config"]["partitions"], 2);
    assert_eq!(orders["config"]["dead_letter_topic"], "orders.dlq");
    assert_eq!(orders["config"]["max_deliveries"], 3);
    assert_eq!(orders["retained_messages"], ORDERS);
    let audit = find(&json["topics"], "name", "audit");
    assert_eq!(audit["retained_messages"], 3);
}

#[test]
fn json_flag_after_subcommand() {
    let db = prepare(1);
    let run = aqueduct(db.path(), &["topics", "--json"]);
    assert!(run.json()["topics"].is_array());
}

#[test]
fn groups_json_reports_lag() {
    let db = prepare(1);
    let json = aqueduct(db.path(), &["groups", "--json"]).json();
    let billing = find(&json["groups"], "name", "billing");
    assert_eq!(billing["topic"], "orders");
    assert_eq!(billing["ordering"], "Unordered");
    assert_eq!(billing["lag"], 0);
    assert_eq!(billing["oldest_unacked_age_ms"], Value::Null);
    let shipping = find(&json["groups"], "name", "shipping");
    assert_eq!(shipping["ordering"], "PerKey");
    assert_eq!(shipping["lag"], ORDERS);
    assert_eq!(shipping["in_flight"], 0);
    assert!(shipping["oldest_unacked_age_ms"].as_u64().is_some());
}

#[test]
fn groups_json_reports_lag_per_partition() {
    let db = prepare(1);
    let published = common::open(db.path());
    let ends: Vec<u64> = (0..2)
        .map(|partition| {
            published
                .end_offset("orders", partition)
                .expect("end offset")
        })
        .collect();
    drop(published);

    let json = aqueduct(db.path(), &["groups", "orders", "--json"]).json();
    let shipping = find(&json["groups"], "name", "shipping");
    let partitions = shipping["partitions"].as_array().expect("partitions");
    assert_eq!(partitions.len(), 2);
    for (partition, end) in partitions.iter().zip(&ends) {
        assert_eq!(partition["committed"], 0);
        assert_eq!(partition["lag"], *end);
    }
}

#[test]
fn groups_json_has_counters() {
    let db = prepare(1);
    let json = aqueduct(db.path(), &["groups", "--json"]).json();
    let billing = find(&json["groups"], "name", "billing");
    let counters = [
        "redeliveries",
        "dead_letters",
        "unconsumed_removals",
        "parked_keys",
    ];
    for counter in counters {
        assert!(billing[counter].is_u64(), "{counter} missing: {billing}");
    }
}

#[test]
fn groups_json_counts_parked_keys() {
    let db = prepare(0);
    let broker = common::open(db.path());
    let per_key = ConsumerConfig::default().ordering(OrderingMode::PerKey);
    let mut auditor = broker
        .subscribe_with("orders", "auditor", per_key)
        .expect("subscribe auditor");
    let delivery = auditor
        .recv_timeout(Duration::from_secs(5))
        .expect("receive")
        .expect("a delivery within 5 s");
    delivery.dead_letter("rejected").expect("dead-letter");
    drop(auditor);
    drop(broker);

    let json = aqueduct(db.path(), &["groups", "orders", "--json"]).json();
    let auditor = find(&json["groups"], "name", "auditor");
    assert_eq!(auditor["parked_keys"], 1);
}

#[test]
fn groups_filter_by_topic() {
    let db = prepare(1);
    let json = aqueduct(db.path(), &["groups", "orders.dlq", "--json"]).json();
    assert_eq!(json["groups"].as_array().map(Vec::len), Some(0));
}

#[test]
fn groups_text_shows_partitions() {
    let db = prepare(1);
    let run = aqueduct(db.path(), &["groups"]);
    assert_eq!(run.status, Some(0), "stderr: {}", run.stderr);
    assert!(run.stdout.contains("orders / shipping"), "{}", run.stdout);
    assert!(run.stdout.contains("HIGH WATERMARK"), "{}", run.stdout);
    assert_fits(&run, WIDTH);
}

#[test]
fn groups_unknown_topic_fails() {
    let db = prepare(1);
    let run = aqueduct(db.path(), &["groups", "invoices"]);
    assert_eq!(run.status, Some(1));
    assert!(
        run.stderr.contains("\"invoices\" not found"),
        "{}",
        run.stderr
    );
}

#[test]
fn peek_shows_all_partitions() {
    let db = prepare(1);
    let json = aqueduct(db.path(), &["peek", "orders", "--json"]).json();
    let messages = json["messages"].as_array().expect("messages");
    assert_eq!(messages.len() as u64, ORDERS);
    assert_eq!(json["next_offsets"].as_array().map(Vec::len), Some(2));
}

#[test]
fn peek_json_keeps_metadata() {
    let db = prepare(1);
    let json = aqueduct(db.path(), &["peek", "orders", "--json"]).json();
    let first = find(&json["messages"], "id", "order-0");
    assert_eq!(first["key"], "c-0");
    assert_eq!(first["headers"][0]["name"], "content-type");
    assert_eq!(first["headers"][0]["value"], "application/json");
    assert_eq!(first["published"], "2024-12-04T08:13:20.000Z");
    assert_eq!(first["payload"], r#"{"order":0,"amount":0}"#);
}

#[test]
fn peek_json_format_parses_payload() {
    let db = prepare(1);
    let json = aqueduct(db.path(), &["peek", "orders", "--format", "json", "--json"]).json();
    let first = find(&json["messages"], "id", "order-1");
    assert_eq!(first["payload_format"], "json");
    assert_eq!(first["payload"]["amount"], 10);
}

#[test]
fn peek_json_format_falls_back_to_text() {
    let db = prepare(1);
    let json = aqueduct(db.path(), &["peek", "audit", "-f", "json", "--json"]).json();
    assert_eq!(json["messages"][1]["payload_format"], "text");
    assert_eq!(json["messages"][1]["payload"], "line one\nline two");
}

#[test]
fn peek_escapes_invalid_utf8() {
    let db = prepare(1);
    let run = aqueduct(db.path(), &["peek", "audit"]);
    assert!(run.stdout.contains(r"ok\xff\xfe tail"), "{}", run.stdout);
}

#[test]
fn peek_keeps_rows_on_one_line() {
    let db = prepare(1);
    let run = aqueduct(db.path(), &["peek", "audit"]);
    assert!(run.stdout.contains(r"line one\nline two"), "{}", run.stdout);
}

#[test]
fn peek_hex_format() {
    let db = prepare(1);
    let json = aqueduct(
        db.path(),
        &["peek", "audit", "-f", "hex", "-n", "1", "--json"],
    )
    .json();
    assert_eq!(json["messages"][0]["payload"], "6f6bfffe207461696c");
}

#[test]
fn peek_hex_full_dumps_bytes() {
    let db = prepare(1);
    let run = aqueduct(
        db.path(),
        &["peek", "audit", "-f", "hex", "-n", "1", "--full"],
    );
    assert!(
        run.stdout.contains("00000000  6f 6b ff fe"),
        "{}",
        run.stdout
    );
}

#[test]
fn peek_cuts_long_payload() {
    let db = prepare(1);
    let run = aqueduct(db.path(), &["peek", "audit"]);
    assert!(!run.stdout.contains(LONG_JSON), "{}", run.stdout);
    assert!(run.stdout.contains('…'), "{}", run.stdout);
    assert!(run.stdout.contains("--full"), "{}", run.stdout);
    assert_fits(&run, WIDTH);
}

#[test]
fn peek_full_shows_whole_payload() {
    let db = prepare(1);
    let run = aqueduct(db.path(), &["peek", "audit", "--full"]);
    assert!(run.stdout.contains(LONG_JSON), "{}", run.stdout);
}

#[test]
fn peek_window_selects_messages() {
    let db = prepare(1);
    let args = ["peek", "orders", "-p", "1", "-o", "1", "-n", "1", "--json"];
    let json = aqueduct(db.path(), &args).json();
    let messages = json["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["partition"], 1);
    assert_eq!(messages[0]["offset"], 1);
    assert_eq!(json["next_offsets"][0]["offset"], 2);
}

#[test]
fn peek_merge_shows_partition_prefixes() {
    let db = prepare(1);
    let json = aqueduct(db.path(), &["peek", "orders", "-n", "3", "--json"]).json();
    let messages = json["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 3);
    for next in json["next_offsets"].as_array().expect("next offsets") {
        let partition = &next["partition"];
        let offsets: Vec<u64> = messages
            .iter()
            .filter(|message| &message["partition"] == partition)
            .filter_map(|message| message["offset"].as_u64())
            .collect();
        let prefix: Vec<u64> = (0..offsets.len() as u64).collect();
        assert_eq!(offsets, prefix, "partition {partition}");
        assert_eq!(next["offset"], offsets.len(), "partition {partition}");
    }
}

#[test]
fn peek_says_how_to_continue() {
    let db = prepare(1);
    let run = aqueduct(db.path(), &["peek", "audit", "-n", "1"]);
    assert!(run.stdout.contains("--offset 1"), "{}", run.stdout);
}

#[test]
fn peek_past_end_is_empty() {
    let db = prepare(1);
    let run = aqueduct(db.path(), &["peek", "audit", "-o", "50"]);
    assert_eq!(run.status, Some(0), "stderr: {}", run.stderr);
    assert!(run.stdout.starts_with("no messages"), "{}", run.stdout);
}

#[test]
fn peek_unknown_topic_fails() {
    let db = prepare(1);
    let run = aqueduct(db.path(), &["peek", "invoices"]);
    assert_eq!(run.status, Some(1));
    assert!(
        run.stderr.contains("\"invoices\" not found"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.is_empty(), "{}", run.stdout);
}

#[test]
fn peek_unknown_partition_fails() {
    let db = prepare(1);
    let run = aqueduct(db.path(), &["peek", "orders", "--partition", "2"]);
    assert_eq!(run.status, Some(1));
    assert!(run.stderr.contains("partition 2"), "{}", run.stderr);
    assert!(run.stderr.contains("from 0 to 1"), "{}", run.stderr);
}

#[test]
fn peek_zero_count_is_usage_error() {
    let db = prepare(1);
    let run = aqueduct(db.path(), &["peek", "orders", "--count", "0"]);
    assert_eq!(run.status, Some(2));
}

#[test]
fn dead_letters_json_has_origin() {
    let db = prepare(1);
    let json = aqueduct(db.path(), &["dead-letters", "orders.dlq", "--json"]).json();
    let messages = json["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 1);
    let info = &messages[0]["dead_letter"];
    assert_eq!(info["source_topic"], "orders");
    assert_eq!(info["group"], "billing");
    assert_eq!(info["attempts"], 1);
    assert_eq!(info["last_error"], DEAD_LETTER_REASON);
    assert!(info["source_offset"].is_u64(), "{info}");
    assert!(info["dead_lettered_at"].is_string(), "{info}");
}

#[test]
fn dead_letters_text_shows_source() {
    let db = prepare(1);
    let json = aqueduct(db.path(), &["dead-letters", "orders.dlq", "--json"]).json();
    let info = &json["messages"][0]["dead_letter"];
    let source = format!(
        "orders/{}@{}",
        info["source_partition"], info["source_offset"]
    );

    let run = aqueduct(db.path(), &["dead-letters", "orders.dlq"]);
    assert!(run.stdout.contains(&source), "no {source}: {}", run.stdout);
    assert!(run.stdout.contains("billing"), "{}", run.stdout);
    assert_fits(&run, WIDTH);
}

#[test]
fn dead_letters_full_shows_error() {
    let db = prepare(1);
    let run = aqueduct(db.path(), &["dead-letters", "orders.dlq", "--full"]);
    let expected = format!("last error: {DEAD_LETTER_REASON}");
    assert!(run.stdout.contains(&expected), "{}", run.stdout);
}

#[test]
fn dead_letters_rejects_plain_topic() {
    let db = prepare(1);
    let run = aqueduct(db.path(), &["dead-letters", "orders"]);
    assert_eq!(run.status, Some(1));
    assert!(
        run.stderr.contains("not the dead-letter topic"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("orders.dlq"), "{}", run.stderr);
}

#[test]
fn peek_full_escapes_controls() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let broker = common::open(dir.path());
        let dead = aqueduct::TopicConfig::default();
        broker.create_topic("tricks-dlq", dead).expect("topic");
        let config = aqueduct::TopicConfig::default().dead_letter_topic("tricks-dlq");
        broker.create_topic("tricks", config).expect("topic");
        let message = aqueduct::Message::new("body")
            .id("id\u{1b}[2J")
            .header("name\u{202e}x", "value");
        broker.publish("tricks", message).expect("publish");
        let mut consumer = broker.subscribe("tricks", "g").expect("subscribe");
        let delivery = consumer
            .recv_timeout(Duration::from_secs(5))
            .expect("recv")
            .expect("delivery");
        delivery
            .dead_letter("failed\u{1b}]0;title\u{7}")
            .expect("dead letter");
    }
    for topic in ["tricks", "tricks-dlq"] {
        let run = aqueduct(dir.path(), &["peek", topic, "--full"]);
        assert!(
            !run.stdout.contains('\u{1b}'),
            "raw escape in {topic}: {:?}",
            run.stdout
        );
        assert!(
            !run.stdout.contains('\u{202e}'),
            "raw override in {topic}: {:?}",
            run.stdout
        );
        assert!(run.stdout.contains("\\u{1b}"), "{}", run.stdout);
    }
}
