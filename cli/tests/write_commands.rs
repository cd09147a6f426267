//! `replay` and `purge` on a prepared database.

mod common;

use common::{aqueduct, prepare, published, retained, ORDERS};

#[test]
fn replay_publishes_to_source() {
    let db = prepare(2);
    let run = aqueduct(
        db.path(),
        &["replay", "orders.dlq", "--group", "replayer", "--json"],
    );
    assert_eq!(run.status, Some(0), "stderr: {}", run.stderr);
    let json = run.json();
    assert_eq!(json["replayed"], 2);
    assert_eq!(json["remaining"], 0);
    assert_eq!(published(db.path(), "orders"), ORDERS + 2);
}

#[test]
fn replay_respects_max() {
    let db = prepare(2);
    let args = [
        "replay",
        "orders.dlq",
        "-g",
        "replayer",
        "--max",
        "1",
        "--json",
    ];
    let json = aqueduct(db.path(), &args).json();
    assert_eq!(json["replayed"], 1);
    assert_eq!(json["remaining"], 1);
    assert_eq!(published(db.path(), "orders"), ORDERS + 1);
}

#[test]
fn replay_again_continues() {
    let db = prepare(2);
    let args = [
        "replay",
        "orders.dlq",
        "-g",
        "replayer",
        "--max",
        "1",
        "--json",
    ];
    aqueduct(db.path(), &args);
    let second = aqueduct(
        db.path(),
        &["replay", "orders.dlq", "-g", "replayer", "--json"],
    )
    .json();
    assert_eq!(second["replayed"], 1);
    let third = aqueduct(
        db.path(),
        &["replay", "orders.dlq", "-g", "replayer", "--json"],
    )
    .json();
    assert_eq!(third["replayed"], 0);
    assert_eq!(published(db.path(), "orders"), ORDERS + 2);
}

#[test]
fn replay_text_reports_counts() {
    let db = prepare(1);
    let run = aqueduct(db.path(), &["replay", "orders.dlq", "--group", "replayer"]);
    assert!(
        run.stdout
            .contains("replayed 1 dead letter from orders.dlq"),
        "{}",
        run.stdout
    );
}

#[test]
fn replay_requires_group() {
    let db = prepare(1);
    let run = aqueduct(db.path(), &["replay", "orders.dlq"]);
    assert_eq!(run.status, Some(2));
    assert!(run.stderr.contains("--group"), "{}", run.stderr);
}

#[test]
fn replay_rejects_plain_topic() {
    let db = prepare(1);
    let run = aqueduct(db.path(), &["replay", "orders", "--group", "replayer"]);
    assert_eq!(run.status, Some(1));
    assert_eq!(published(db.path(), "orders"), ORDERS);
}

#[test]
fn purge_without_yes_is_rejected() {
    let db = prepare(1);
    let run = aqueduct(db.path(), &["purge", "orders"]);
    assert_eq!(run.status, Some(1));
    assert!(run.stderr.contains("--yes"), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!("all {ORDERS} retained")),
        "{}",
        run.stderr
    );
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert_eq!(retained(db.path(), "orders"), ORDERS as usize);
}

#[test]
fn purge_with_yes_removes_messages() {
    let db = prepare(1);
    let run = aqueduct(db.path(), &["purge", "orders", "--yes", "--json"]);
    assert_eq!(run.status, Some(0), "stderr: {}", run.stderr);
    assert_eq!(run.json()["removed"], ORDERS);
    assert_eq!(retained(db.path(), "orders"), 0);
    assert_eq!(published(db.path(), "orders"), ORDERS, "offsets continue");
}

#[test]
fn purge_leaves_other_topics() {
    let db = prepare(1);
    aqueduct(db.path(), &["purge", "orders", "--yes"]);
    assert_eq!(retained(db.path(), "audit"), 3);
}

#[test]
fn purge_unknown_topic_fails() {
    let db = prepare(1);
    let run = aqueduct(db.path(), &["purge", "invoices", "--yes"]);
    assert_eq!(run.status, Some(1));
    assert!(
        run.stderr.contains("\"invoices\" not found"),
        "{}",
        run.stderr
    );
}

#[test]
fn delete_group_needs_yes() {
    let db = prepare(1);
    let run = aqueduct(db.path(), &["delete-group", "orders", "shipping"]);
    assert_eq!(run.status, Some(1));
    assert!(run.stderr.contains("--yes"), "{}", run.stderr);

    let run = aqueduct(
        db.path(),
        &["delete-group", "orders", "shipping", "--yes", "--json"],
    );
    assert_eq!(run.status, Some(0), "stderr: {}", run.stderr);
    assert_eq!(run.json()["group"], "shipping");

    let groups = aqueduct(db.path(), &["groups", "orders", "--json"]);
    assert!(!groups.stdout.contains("\"shipping\""), "{}", groups.stdout);
    assert!(groups.stdout.contains("\"billing\""), "{}", groups.stdout);
    assert_eq!(
        retained(db.path(), "orders"),
        ORDERS as usize,
        "messages stay"
    );

    let run = aqueduct(db.path(), &["delete-group", "orders", "shipping", "--yes"]);
    assert_eq!(run.status, Some(1));
    assert!(run.stderr.contains("not found"), "{}", run.stderr);
}
