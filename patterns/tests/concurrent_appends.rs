//! Optimistic concurrency under real contention: threads append to one stream with the same
//! expected version, and exactly one of them wins each round.

use std::sync::{Arc, Barrier};
use std::thread;

use aqueduct::Broker;
use aqueduct_patterns::{Appended, EventStore, ExpectedVersion, NewEvent, WrongExpectedVersion};

const WRITERS: usize = 6;
const ROUNDS: u64 = 10;

fn event(writer: usize, index: u64) -> NewEvent {
    NewEvent::new("Written", 1, format!("{writer}/{index}").into_bytes())
}

/// Starts `WRITERS` threads that append two events to `stream` with `expected` at the same
/// moment, and returns each writer's outcome.
fn race(
    store: &EventStore,
    stream: &str,
    expected: ExpectedVersion,
) -> Vec<Result<Appended, WrongExpectedVersion>> {
    let barrier = Arc::new(Barrier::new(WRITERS));
    let handles: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let store = store.clone();
            let stream = stream.to_string();
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                barrier.wait();
                let events = vec![event(writer, 0), event(writer, 1)];
                store.append(&stream, expected, events).expect("append")
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|handle| handle.join().expect("writer thread"))
        .collect()
}

#[test]
fn exact_version_race_has_one_winner() {
    let broker = Broker::temporary().expect("broker");
    let store = EventStore::open(&broker, "race").expect("store");
    let stream = "account-1";
    let seed: Vec<NewEvent> = (0..3).map(|index| event(99, index)).collect();
    store
        .append(stream, ExpectedVersion::NoStream, seed)
        .expect("append")
        .expect("first append");

    for round in 0..ROUNDS {
        let before = 3 + round * 2;
        let outcomes = race(&store, stream, ExpectedVersion::Exact(before));
        let winners: Vec<&Appended> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
        let losers: Vec<&WrongExpectedVersion> =
            outcomes.iter().filter_map(|o| o.as_ref().err()).collect();

        assert_eq!(winners.len(), 1, "round {round}: winners");
        assert_eq!(
            winners[0].version,
            before + 2,
            "round {round}: winner's version"
        );
        assert_eq!(losers.len(), WRITERS - 1, "round {round}: losers");
        for loser in losers {
            assert_eq!(
                loser.actual,
                before + 2,
                "round {round}: version a loser saw"
            );
            assert_eq!(
                loser.expected,
                ExpectedVersion::Exact(before),
                "round {round}"
            );
        }
    }
    let final_version = 3 + ROUNDS * 2;
    assert_eq!(
        store.stream_version(stream).expect("version"),
        final_version
    );
}

#[test]
fn no_stream_race_has_one_winner() {
    let broker = Broker::temporary().expect("broker");
    let store = EventStore::open(&broker, "race").expect("store");

    for round in 0..ROUNDS {
        let stream = format!("order-{round}");
        let outcomes = race(&store, &stream, ExpectedVersion::NoStream);
        let winners = outcomes.iter().filter(|o| o.is_ok()).count();

        assert_eq!(winners, 1, "round {round}: winners");
        assert_eq!(
            store.stream_version(&stream).expect("version"),
            2,
            "round {round}"
        );
    }
}

#[test]
fn losing_writer_leaves_no_events() {
    let broker = Broker::temporary().expect("broker");
    let store = EventStore::open(&broker, "race").expect("store");

    let outcomes = race(&store, "cart-1", ExpectedVersion::NoStream);
    let winner = outcomes
        .iter()
        .find_map(|o| o.as_ref().ok())
        .expect("one winner");
    let events = store.read_stream("cart-1", 1, 100).expect("read");
    let writers: Vec<String> = events
        .iter()
        .map(|e| {
            String::from_utf8_lossy(&e.payload)
                .split('/')
                .next()
                .unwrap_or("")
                .to_string()
        })
        .collect();

    assert_eq!(events.len(), 2);
    assert_eq!(writers[0], writers[1], "both events come from the winner");
    assert_eq!(
        store.next_position().expect("position"),
        winner.position + 1
    );
}

#[test]
fn any_version_appends_keep_positions_dense() {
    let broker = Broker::temporary().expect("broker");
    let store = EventStore::open(&broker, "dense").expect("store");
    let appends_per_writer = 40;

    let handles: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let store = store.clone();
            thread::spawn(move || {
                for index in 0..appends_per_writer {
                    let stream = format!("item-{}", index % 3);
                    let events = vec![event(writer, index)];
                    store
                        .append(&stream, ExpectedVersion::Any, events)
                        .expect("append")
                        .expect("Any never conflicts");
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().expect("writer thread");
    }

    let total = WRITERS as u64 * appends_per_writer;
    let all = store.read_all(0, usize::MAX).expect("read all");
    let positions: Vec<u64> = all.iter().map(|e| e.position).collect();
    assert_eq!(positions, (0..total).collect::<Vec<_>>());
    for stream in ["item-0", "item-1", "item-2"] {
        let versions: Vec<u64> = store
            .read_stream(stream, 1, usize::MAX)
            .expect("read stream")
            .iter()
            .map(|e| e.version)
            .collect();
        let expected: Vec<u64> = (1..=versions.len() as u64).collect();
        assert_eq!(versions, expected, "versions of {stream}");
    }
}
