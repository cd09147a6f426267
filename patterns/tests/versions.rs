//! Expected versions, stream reads in both directions, input checks and versions across a
//! restart.

use aqueduct::Broker;
use aqueduct_patterns::{EventStore, EventStoreError, ExpectedVersion, NewEvent};

fn events(count: u8) -> Vec<NewEvent> {
    (0..count)
        .map(|index| NewEvent::new("Ticked", 1, vec![index]))
        .collect()
}

fn temporary_store() -> (Broker, EventStore) {
    let broker = Broker::temporary().expect("broker");
    let store = EventStore::open(&broker, "versions").expect("store");
    (broker, store)
}

#[test]
fn no_stream_conflicts_on_existing_stream() {
    let (_broker, store) = temporary_store();
    store
        .append("s-1", ExpectedVersion::Any, events(2))
        .expect("append")
        .expect("ok");

    let conflict = store
        .append("s-1", ExpectedVersion::NoStream, events(1))
        .expect("append")
        .expect_err("conflict");

    assert_eq!(conflict.actual, 2);
    assert_eq!(conflict.stream, "s-1");
}

#[test]
fn exact_zero_means_no_stream() {
    let (_broker, store) = temporary_store();

    let first = store
        .append("s-1", ExpectedVersion::Exact(0), events(1))
        .expect("append");
    let second = store
        .append("s-1", ExpectedVersion::Exact(0), events(1))
        .expect("append");

    assert_eq!(first.map(|a| a.version), Ok(1));
    assert_eq!(second.map_err(|c| c.actual), Err(1));
}

#[test]
fn exact_version_must_match() {
    let (_broker, store) = temporary_store();
    store
        .append("s-1", ExpectedVersion::Any, events(3))
        .expect("append")
        .expect("ok");

    let behind = store
        .append("s-1", ExpectedVersion::Exact(2), events(1))
        .expect("append");
    let ahead = store
        .append("s-1", ExpectedVersion::Exact(4), events(1))
        .expect("append");
    let exact = store
        .append("s-1", ExpectedVersion::Exact(3), events(1))
        .expect("append");

    assert_eq!(behind.map_err(|c| c.actual), Err(3));
    assert_eq!(ahead.map_err(|c| c.actual), Err(3));
    assert_eq!(exact.map(|a| a.version), Ok(4));
}

#[test]
fn conflict_message_names_stream_and_versions() {
    let (_broker, store) = temporary_store();
    store
        .append("s-1", ExpectedVersion::Any, events(1))
        .expect("append")
        .expect("ok");

    let conflict = store
        .append("s-1", ExpectedVersion::Exact(5), events(1))
        .expect("append")
        .expect_err("conflict");
    let message = conflict.to_string();

    assert!(message.contains("\"s-1\""), "{message}");
    assert!(message.contains("version 1"), "{message}");
    assert!(message.contains("expected version 5"), "{message}");
}

#[test]
fn appended_reports_positions_and_version() {
    let (_broker, store) = temporary_store();
    store
        .append("a-1", ExpectedVersion::Any, events(2))
        .expect("append")
        .expect("ok");

    let appended = store
        .append("b-1", ExpectedVersion::Any, events(3))
        .expect("append")
        .expect("ok");

    assert_eq!(appended.version, 3);
    assert_eq!(appended.first_position, 2);
    assert_eq!(appended.position, 4);
}

#[test]
fn stream_reads_forward_and_backward() {
    let (_broker, store) = temporary_store();
    store
        .append("s-1", ExpectedVersion::Any, events(5))
        .expect("append")
        .expect("ok");
    store
        .append("s-10", ExpectedVersion::Any, events(2))
        .expect("append")
        .expect("ok");
    let versions = |events: Vec<aqueduct_patterns::RecordedEvent>| -> Vec<u64> {
        events.iter().map(|e| e.version).collect()
    };

    let forward = versions(store.read_stream("s-1", 2, 2).expect("read"));
    let to_end = versions(store.read_stream("s-1", 4, 100).expect("read"));
    let past_end = versions(store.read_stream("s-1", 6, 100).expect("read"));
    let backward = versions(
        store
            .read_stream_backward("s-1", u64::MAX, 3)
            .expect("read"),
    );
    let backward_from = versions(store.read_stream_backward("s-1", 2, 100).expect("read"));
    let other = versions(store.read_stream("s-10", 1, 100).expect("read"));

    assert_eq!(forward, [2, 3]);
    assert_eq!(to_end, [4, 5]);
    assert!(past_end.is_empty());
    assert_eq!(backward, [5, 4, 3]);
    assert_eq!(backward_from, [2, 1]);
    assert_eq!(
        other,
        [1, 2],
        "a stream whose name extends another stays separate"
    );
}

#[test]
fn missing_stream_is_version_zero() {
    let (_broker, store) = temporary_store();

    assert_eq!(store.stream_version("nobody-1").expect("version"), 0);
    assert!(store
        .read_stream("nobody-1", 1, 10)
        .expect("read")
        .is_empty());
}

#[test]
fn empty_append_is_rejected() {
    let (_broker, store) = temporary_store();

    let error = store
        .append("s-1", ExpectedVersion::Any, Vec::new())
        .expect_err("rejected");

    assert!(
        matches!(error, EventStoreError::EmptyAppend { .. }),
        "{error}"
    );
}

#[test]
fn invalid_names_are_rejected() {
    let (broker, store) = temporary_store();
    let long = "x".repeat(256);

    let empty = store
        .append("", ExpectedVersion::Any, events(1))
        .expect_err("empty");
    let too_long = store
        .append(&long, ExpectedVersion::Any, events(1))
        .expect_err("long");
    let nul = store
        .append("a\0b", ExpectedVersion::Any, events(1))
        .expect_err("nul");
    let untyped = store
        .append(
            "s-1",
            ExpectedVersion::Any,
            vec![NewEvent::new("", 1, Vec::new())],
        )
        .expect_err("empty type");
    let store_name = EventStore::open(&broker, "bad name").expect_err("store name");

    assert!(
        matches!(empty, EventStoreError::InvalidStream { .. }),
        "{empty}"
    );
    assert!(
        matches!(too_long, EventStoreError::InvalidStream { .. }),
        "{too_long}"
    );
    assert!(
        matches!(nul, EventStoreError::InvalidStream { .. }),
        "{nul}"
    );
    assert!(
        matches!(untyped, EventStoreError::InvalidEventType { .. }),
        "{untyped}"
    );
    assert!(
        matches!(store_name, EventStoreError::InvalidName { .. }),
        "{store_name}"
    );
}

#[test]
fn versions_and_positions_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let broker = Broker::open(dir.path()).expect("broker");
        let store = EventStore::open(&broker, "durable").expect("store");
        store
            .append("s-1", ExpectedVersion::Any, events(3))
            .expect("append")
            .expect("ok");
    }
    let broker = Broker::open(dir.path()).expect("reopen broker");
    let store = EventStore::open(&broker, "durable").expect("reopen store");

    let stale = store
        .append("s-1", ExpectedVersion::Exact(2), events(1))
        .expect("append");
    let next = store
        .append("s-1", ExpectedVersion::Exact(3), events(1))
        .expect("append")
        .expect("ok");

    assert_eq!(stale.map_err(|c| c.actual), Err(3));
    assert_eq!(next.version, 4);
    assert_eq!(next.position, 3);
}

#[test]
fn append_streams_is_all_or_nothing() {
    let (_broker, store) = temporary_store();
    store
        .append("b-1", ExpectedVersion::Any, events(1))
        .expect("append")
        .expect("ok");

    let outcome = store
        .append_streams(vec![
            aqueduct_patterns::StreamAppend::new("a-1", ExpectedVersion::NoStream, events(1)),
            aqueduct_patterns::StreamAppend::new("b-1", ExpectedVersion::NoStream, events(1)),
        ])
        .expect("append");

    assert_eq!(outcome.map_err(|c| c.stream), Err("b-1".to_string()));
    assert_eq!(store.stream_version("a-1").expect("version"), 0);
    assert_eq!(store.next_position().expect("position"), 1);
}
