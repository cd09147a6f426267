//! Snapshots: when they are taken, that loading from one applies no event twice and keeps the
//! right version, and that unusable snapshots fall back to a full replay.

use std::convert::Infallible;

use aqueduct::Broker;
use aqueduct_patterns::{
    Aggregate, AsOf, DomainEvent, EventStore, ExpectedVersion, NewEvent, Repository, Snapshot,
};
use serde::{Deserialize, Serialize};

/// Records the sequence number of every applied event, so a double apply is visible.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Tally {
    seen: Vec<u64>,
    total: u64,
}

#[derive(Debug, Serialize, Deserialize)]
enum TallyEvent {
    Added { seq: u64, amount: u64 },
}

impl DomainEvent for TallyEvent {
    fn event_type(&self) -> &'static str {
        "Added"
    }
}

/// Adds `count` events of amount 1.
#[derive(Clone, Copy, Debug)]
struct Add(u64);

impl Aggregate for Tally {
    const CATEGORY: &'static str = "tally";
    type Command = Add;
    type Event = TallyEvent;
    type Error = Infallible;

    fn handle(&self, Add(count): Add) -> Result<Vec<TallyEvent>, Infallible> {
        let next = self.seen.len() as u64 + 1;
        Ok((0..count)
            .map(|index| TallyEvent::Added {
                seq: next + index,
                amount: 1,
            })
            .collect())
    }

    fn apply(&mut self, event: &TallyEvent) {
        let TallyEvent::Added { seq, amount } = event;
        self.seen.push(*seq);
        self.total += amount;
    }
}

fn repository(every: u64) -> (Broker, Repository<Tally>) {
    let broker = Broker::temporary().expect("broker");
    let store = EventStore::open(&broker, "snapshots").expect("store");
    let repository = Repository::<Tally>::new(store)
        .expect("repository")
        .snapshot_every(every);
    (broker, repository)
}

fn run(repository: &Repository<Tally>, commands: &[u64]) {
    for &count in commands {
        repository.execute("a", Add(count)).expect("execute");
    }
}

fn one_to(n: u64) -> Vec<u64> {
    (1..=n).collect()
}

#[test]
fn no_snapshot_before_interval() {
    let (_broker, repository) = repository(5);
    run(&repository, &[1, 1, 1, 1]);

    let snapshot = repository.store().load_snapshot("tally-a").expect("load");

    assert_eq!(snapshot, None);
}

#[test]
fn snapshot_at_exact_multiple() {
    let (_broker, repository) = repository(5);
    run(&repository, &[1, 1, 1, 1, 1]);

    let snapshot = repository
        .store()
        .load_snapshot("tally-a")
        .expect("load")
        .expect("a snapshot");
    let fifth = repository
        .store()
        .read_stream("tally-a", 5, 1)
        .expect("read");

    assert_eq!(snapshot.version, 5);
    assert_eq!(snapshot.position, fifth[0].position);
    assert_eq!(snapshot.schema_version, Tally::SNAPSHOT_VERSION);
}

#[test]
fn batch_crossing_interval_snapshots_after_batch() {
    let (_broker, repository) = repository(5);
    run(&repository, &[1, 1, 1, 1, 3]);

    let snapshot = repository
        .store()
        .load_snapshot("tally-a")
        .expect("load")
        .expect("a snapshot");
    let state: Tally = postcard::from_bytes(&snapshot.state).expect("state decodes");

    assert_eq!(snapshot.version, 7);
    assert_eq!(state.seen, one_to(7));
}

#[test]
fn load_after_snapshot_applies_each_event_once() {
    let (_broker, repository) = repository(5);
    run(&repository, &[1, 1, 1, 1, 1, 1, 1]);

    let loaded = repository.load("a").expect("load");
    let last = repository
        .store()
        .read_stream_backward("tally-a", u64::MAX, 1)
        .expect("read");

    assert_eq!(loaded.state.seen, one_to(7));
    assert_eq!(loaded.version, 7);
    assert_eq!(loaded.position, Some(last[0].position));
}

#[test]
fn load_starts_from_snapshot() {
    let (_broker, repository) = repository(5);
    run(&repository, &[1, 1, 1, 1, 1, 1, 1]);
    let stored = repository
        .store()
        .load_snapshot("tally-a")
        .expect("load")
        .expect("a snapshot");
    let mut marked: Tally = postcard::from_bytes(&stored.state).expect("decode");
    marked.total += 1000;
    let marked = Snapshot {
        state: postcard::to_stdvec(&marked).expect("encode"),
        ..stored
    };
    repository
        .store()
        .save_snapshot("tally-a", &marked)
        .expect("save");

    let loaded = repository.load("a").expect("load");

    assert_eq!(
        loaded.state.total, 1007,
        "the marked snapshot was the starting state"
    );
    assert_eq!(loaded.state.seen, one_to(7));
}

#[test]
fn snapshot_of_other_schema_version_is_ignored() {
    let (_broker, repository) = repository(0);
    run(&repository, &[3]);
    let foreign = Snapshot {
        version: 3,
        position: 2,
        schema_version: Tally::SNAPSHOT_VERSION + 1,
        state: vec![0xff; 4],
    };
    repository
        .store()
        .save_snapshot("tally-a", &foreign)
        .expect("save");

    let loaded = repository.load("a").expect("load");

    assert_eq!(loaded.state.seen, one_to(3));
    assert_eq!(loaded.version, 3);
}

#[test]
fn undecodable_snapshot_is_ignored() {
    let (_broker, repository) = repository(0);
    run(&repository, &[3]);
    let broken = Snapshot {
        version: 3,
        position: 2,
        schema_version: Tally::SNAPSHOT_VERSION,
        state: vec![0xff; 3],
    };
    repository
        .store()
        .save_snapshot("tally-a", &broken)
        .expect("save");

    let loaded = repository.load("a").expect("load");

    assert_eq!(loaded.state.seen, one_to(3));
}

#[test]
fn snapshot_newer_than_stream_is_ignored() {
    let (_broker, repository) = repository(0);
    run(&repository, &[3]);
    let ahead = Snapshot {
        version: 50,
        position: 2,
        schema_version: Tally::SNAPSHOT_VERSION,
        state: postcard::to_stdvec(&Tally {
            seen: one_to(50),
            total: 50,
        })
        .expect("encode"),
    };
    repository
        .store()
        .save_snapshot("tally-a", &ahead)
        .expect("save");

    let loaded = repository.load("a").expect("load");

    assert_eq!(loaded.version, 3);
    assert_eq!(loaded.state.seen, one_to(3));
}

#[test]
fn commands_after_snapshot_append_at_right_version() {
    let (_broker, repository) = repository(2);

    for expected in 1..=6 {
        let executed = repository.execute("a", Add(1)).expect("execute");
        assert_eq!(
            executed.version, expected,
            "version after command {expected}"
        );
    }
    let versions: Vec<u64> = repository
        .store()
        .read_stream("tally-a", 1, 100)
        .expect("read")
        .iter()
        .map(|e| e.version)
        .collect();
    assert_eq!(versions, one_to(6));
}

#[test]
fn stale_load_conflicts_after_snapshot() {
    let (_broker, repository) = repository(2);
    run(&repository, &[1, 1]);
    let loaded = repository.load("a").expect("load");
    run(&repository, &[1]);

    let event = NewEvent::encode(&TallyEvent::Added { seq: 99, amount: 1 }).expect("encode");
    let outcome = repository
        .store()
        .append(
            "tally-a",
            ExpectedVersion::Exact(loaded.version),
            vec![event],
        )
        .expect("append");

    assert_eq!(loaded.version, 2);
    assert_eq!(outcome.map_err(|c| c.actual), Err(3));
}

#[test]
fn past_state_before_snapshot_replays_from_start() {
    let (_broker, repository) = repository(5);
    run(&repository, &[1, 1, 1, 1, 1, 1, 1, 1, 1, 1]);
    let third = repository
        .store()
        .read_stream("tally-a", 3, 1)
        .expect("read")[0]
        .position;

    let past = repository
        .load_at("a", AsOf::Position(third))
        .expect("load");

    assert_eq!(past.state.seen, one_to(3));
    assert_eq!(past.version, 3);
}

#[test]
fn past_state_after_snapshot_uses_it() {
    let (_broker, repository) = repository(5);
    run(&repository, &[1, 1, 1, 1, 1, 1, 1, 1]);
    let seventh = repository
        .store()
        .read_stream("tally-a", 7, 1)
        .expect("read")[0]
        .position;

    let past = repository
        .load_at("a", AsOf::Position(seventh))
        .expect("load");

    assert_eq!(past.state.seen, one_to(7));
    assert_eq!(past.version, 7);
}
