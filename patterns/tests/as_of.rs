//! State as of a past global position or time, with a clock the test moves.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use aqueduct::{Broker, ManualClock};
use aqueduct_patterns::{
    Aggregate, AsOf, DomainEvent, EventStore, EventStoreConfig, ExpectedVersion, NewEvent,
    Repository,
};
use serde::{Deserialize, Serialize};

const START_MS: u64 = 1_700_000_000_000;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Balance {
    amount: i64,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Changed(i64);

impl DomainEvent for Changed {
    fn event_type(&self) -> &'static str {
        "Changed"
    }
}

impl Aggregate for Balance {
    const CATEGORY: &'static str = "balance";
    type Command = i64;
    type Event = Changed;
    type Error = Infallible;

    fn handle(&self, delta: i64) -> Result<Vec<Changed>, Infallible> {
        Ok(vec![Changed(delta)])
    }

    fn apply(&mut self, Changed(delta): &Changed) {
        self.amount += delta;
    }
}

/// Opens a repository whose events are stamped by a manual clock starting at `START_MS`.
fn repository() -> (Broker, Arc<ManualClock>, Repository<Balance>) {
    let clock = ManualClock::new(START_MS);
    let broker = Broker::temporary().expect("broker");
    let config = EventStoreConfig::default().clock(clock.clone());
    let store = EventStore::open_with(&broker, "audit", config).expect("store");
    let repository = Repository::new(store)
        .expect("repository")
        .snapshot_every(2);
    (broker, clock, repository)
}

/// Applies +10 at START, +20 at START+1s, -5 at START+2s, +100 at START+3s to account `a`,
/// with an unrelated account changing in between.
fn history(clock: &ManualClock, repository: &Repository<Balance>) -> Vec<u64> {
    let mut positions = Vec::new();
    for delta in [10, 20, -5, 100] {
        let executed = repository.execute("a", delta).expect("execute");
        repository.execute("b", 1).expect("execute");
        positions.push(executed.position.expect("a position"));
        clock.advance(Duration::from_secs(1));
    }
    positions
}

#[test]
fn state_at_position() {
    let (_broker, clock, repository) = repository();
    let positions = history(&clock, &repository);

    let second = repository
        .load_at("a", AsOf::Position(positions[1]))
        .expect("load");
    let between = repository
        .load_at("a", AsOf::Position(positions[1] + 1))
        .expect("load");

    assert_eq!(second.state.amount, 30);
    assert_eq!(second.version, 2);
    assert_eq!(
        between.state.amount, 30,
        "the other account's event changes nothing"
    );
}

#[test]
fn state_at_time() {
    let (_broker, clock, repository) = repository();
    history(&clock, &repository);

    let at_start = repository.load_at("a", AsOf::Time(START_MS)).expect("load");
    let mid_second = repository
        .load_at("a", AsOf::Time(START_MS + 2_500))
        .expect("load");
    let now = repository.load_at("a", AsOf::Time(u64::MAX)).expect("load");

    assert_eq!(at_start.state.amount, 10);
    assert_eq!(mid_second.state.amount, 25);
    assert_eq!(now.state.amount, 125);
}

#[test]
fn time_before_first_event_is_empty_state() {
    let (_broker, clock, repository) = repository();
    history(&clock, &repository);

    let before = repository
        .load_at("a", AsOf::Time(START_MS - 1))
        .expect("load");

    assert_eq!(before.version, 0);
    assert_eq!(before.state.amount, 0);
    assert_eq!(before.position, None);
}

#[test]
fn history_lists_events_up_to_time() {
    let (_broker, clock, repository) = repository();
    history(&clock, &repository);

    let events = repository
        .history("a", AsOf::Time(START_MS + 1_000))
        .expect("history");
    let deltas: Vec<&Changed> = events.iter().map(|(_, event)| event).collect();
    let stamps: Vec<u64> = events
        .iter()
        .map(|(recorded, _)| recorded.timestamp_ms)
        .collect();

    assert_eq!(deltas, [&Changed(10), &Changed(20)]);
    assert_eq!(stamps, [START_MS, START_MS + 1_000]);
}

#[test]
fn timestamps_never_go_back() {
    let clock = ManualClock::new(START_MS);
    let broker = Broker::temporary().expect("broker");
    let config = EventStoreConfig::default().clock(clock.clone());
    let late = EventStore::open_with(&broker, "clocks", config).expect("store");
    late.append(
        "x-1",
        ExpectedVersion::Any,
        vec![NewEvent::new("T", 1, vec![])],
    )
    .expect("append")
    .expect("ok");
    let early_clock = ManualClock::new(START_MS - 60_000);
    let config = EventStoreConfig::default().clock(early_clock);
    let early = EventStore::open_with(&broker, "clocks", config).expect("same store");

    early
        .append(
            "x-1",
            ExpectedVersion::Any,
            vec![NewEvent::new("T", 1, vec![])],
        )
        .expect("append")
        .expect("ok");
    let stamps: Vec<u64> = early
        .read_all(0, 10)
        .expect("read")
        .iter()
        .map(|e| e.timestamp_ms)
        .collect();

    assert_eq!(stamps, [START_MS, START_MS]);
}

#[test]
fn position_at_finds_time_boundary() {
    let (_broker, clock, repository) = repository();
    history(&clock, &repository);
    let store = repository.store();

    assert_eq!(store.position_at(START_MS - 1).expect("search"), None);
    assert_eq!(store.position_at(START_MS).expect("search"), Some(1));
    assert_eq!(
        store.position_at(START_MS + 1_999).expect("search"),
        Some(3)
    );
    assert_eq!(
        store.position_at(START_MS + 3_000).expect("search"),
        Some(7)
    );
}
