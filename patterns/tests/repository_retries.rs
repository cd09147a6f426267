//! A command whose append loses a race runs again on freshly loaded state, or fails with a
//! typed conflict when no retries are left.
//!
//! The race is made deterministic: while the aggregate handles the command, it appends an
//! event to its own stream through a second handle, as another writer would.

use std::cell::RefCell;

use aqueduct::Broker;
use aqueduct_patterns::{
    Aggregate, DomainEvent, EventStore, ExpectedVersion, NewEvent, Repository, RepositoryError,
};
use serde::{Deserialize, Serialize};

thread_local! {
    /// The handle the aggregate uses once to append behind the repository's back, and the
    /// stream. Thread-local because the tests run in parallel and commands run on the
    /// calling thread.
    static INTERLOPER: RefCell<Option<(EventStore, String)>> = const { RefCell::new(None) };
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Counter {
    value: u64,
    seen_when_handling: Vec<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Added(u64);

impl DomainEvent for Added {
    fn event_type(&self) -> &'static str {
        "Added"
    }
}

impl Aggregate for Counter {
    const CATEGORY: &'static str = "counter";
    type Command = u64;
    type Event = Added;
    type Error = std::convert::Infallible;

    fn handle(&self, amount: u64) -> Result<Vec<Added>, Self::Error> {
        let interloper = INTERLOPER.with(|cell| cell.borrow_mut().take());
        if let Some((store, stream)) = interloper {
            let event = NewEvent::encode(&Added(100)).expect("encode");
            store
                .append(&stream, ExpectedVersion::Any, vec![event])
                .expect("append")
                .expect("Any never conflicts");
        }
        Ok(vec![Added(amount)])
    }

    fn apply(&mut self, Added(amount): &Added) {
        self.value += amount;
    }
}

fn repository(broker: &Broker, retries: u32) -> Repository<Counter> {
    let store = EventStore::open(broker, "retries").expect("store");
    Repository::new(store)
        .expect("repository")
        .retry_on_conflict(retries)
}

fn interfere_once(broker: &Broker) {
    let store = EventStore::open(broker, "retries").expect("second handle");
    INTERLOPER.with(|cell| *cell.borrow_mut() = Some((store, "counter-a".to_string())));
}

#[test]
fn lost_race_is_retried_on_fresh_state() {
    let broker = Broker::temporary().expect("broker");
    let counters = repository(&broker, 1);
    counters.execute("a", 1).expect("first command");
    interfere_once(&broker);

    let executed = counters.execute("a", 5).expect("retried command");

    assert_eq!(executed.attempts, 2);
    assert_eq!(
        executed.version, 3,
        "the first event, the interloper's and this one"
    );
    assert_eq!(executed.state.value, 106);
    assert_eq!(counters.load("a").expect("load").state.value, 106);
}

#[test]
fn lost_race_without_retries_is_conflict() {
    let broker = Broker::temporary().expect("broker");
    let counters = repository(&broker, 0);
    counters.execute("a", 1).expect("first command");
    interfere_once(&broker);

    let error = counters.execute("a", 5).expect_err("conflict");

    let RepositoryError::Conflict {
        stream,
        attempts,
        source,
    } = error
    else {
        panic!("expected a conflict, got {error}");
    };
    assert_eq!(stream, "counter-a");
    assert_eq!(attempts, 1);
    assert_eq!(source.actual, 2);
    assert_eq!(counters.load("a").expect("load").state.value, 101);
}

#[test]
fn uncontended_command_runs_once() {
    let broker = Broker::temporary().expect("broker");
    let counters = repository(&broker, 3);

    let executed = counters.execute("b", 7).expect("command");

    assert_eq!(executed.attempts, 1);
    assert_eq!(executed.position, Some(0));
}

#[test]
fn duplicate_ids_in_batch_are_rejected() {
    let broker = Broker::temporary().expect("broker");
    let counters = repository(&broker, 0);

    let error = counters
        .execute_all(vec![("a".to_string(), 1), ("a".to_string(), 2)])
        .expect_err("duplicate");

    assert!(
        matches!(error, RepositoryError::DuplicateId { .. }),
        "{error}"
    );
}
