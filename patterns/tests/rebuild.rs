//! Rebuilding a projection into a fresh generation while events keep arriving and queries keep
//! running ends with the same read model as a projection built from scratch.

mod cqrs_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use aqueduct::{Broker, TopicConfig};
use aqueduct_patterns::ProjectionRunner;
use cqrs_support::{applied, dump, seed, temporary_store, total, Counting, APPLIED};

const WAIT: Duration = Duration::from_secs(30);

/// What a query thread saw while the rebuild ran.
#[derive(Debug, Default)]
struct Queries {
    answered: u64,
    failed: u64,
    went_backwards: u64,
}

#[test]
fn rebuild_under_writes_matches_fresh_build() {
    let (_broker, store) = temporary_store();
    let seeded = seed(&store, 50, 10, 5);
    let live =
        ProjectionRunner::from_store(&store, "live", Counting::default(), Default::default())
            .expect("live runner");
    assert!(live.wait_for(seeded, WAIT).expect("wait"));

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let store = store.clone();
        thread::spawn(move || seed(&store, 60, 5, 3))
    };
    let reader = {
        let model = live.read_model();
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let mut queries = Queries::default();
            let mut last = 0;
            while !stop.load(Ordering::SeqCst) {
                let view = model.view();
                match view.table(cqrs_support::TOTALS).map(|t| t.get(b"count")) {
                    Ok(Ok(value)) => {
                        let count = cqrs_support::read_u64(value.as_deref());
                        queries.answered += 1;
                        queries.went_backwards += u64::from(count < last);
                        last = count;
                    }
                    _ => queries.failed += 1,
                }
            }
            queries
        })
    };

    let report = live.rebuild().expect("rebuild");
    let last = writer.join().expect("writer thread");
    assert!(live.wait_for(last, WAIT).expect("wait"));
    stop.store(true, Ordering::SeqCst);
    let queries = reader.join().expect("reader thread");
    let fresh =
        ProjectionRunner::from_store(&store, "fresh", Counting::default(), Default::default())
            .expect("fresh runner");
    assert!(fresh.wait_for(last, WAIT).expect("wait"));
    let live_view = live.read_model().view();

    assert_eq!(report.generation, 1);
    assert_eq!(live_view.generation(), 1);
    assert!(
        report.events > seeded,
        "the rebuild replayed the seeded events"
    );
    assert_eq!(total(&live_view), last + 1);
    assert!(
        dump(&live_view) == dump(&fresh.read_model().view()),
        "rebuilt equals fresh"
    );
    assert!(queries.answered > 0, "{queries:?}");
    assert_eq!(queries.failed, 0, "{queries:?}");
    assert_eq!(queries.went_backwards, 0, "{queries:?}");
}

#[test]
fn view_taken_before_swap_keeps_old_generation() {
    let (_broker, store) = temporary_store();
    let last = seed(&store, 5, 4, 2);
    let runner =
        ProjectionRunner::from_store(&store, "views", Counting::default(), Default::default())
            .expect("runner");
    assert!(runner.wait_for(last, WAIT).expect("wait"));
    let old_view = runner.read_model().view();

    runner.rebuild().expect("rebuild");
    let new_view = runner.read_model().view();

    assert_eq!(old_view.generation(), 0);
    assert_eq!(total(&old_view), last + 1, "the old view still answers");
    assert_eq!(new_view.generation(), 1);
    assert_eq!(total(&new_view), last + 1);
}

#[test]
fn retired_generation_is_emptied_after_last_view() {
    let (broker, store) = temporary_store();
    let last = seed(&store, 5, 4, 2);
    let runner =
        ProjectionRunner::from_store(&store, "retire", Counting::default(), Default::default())
            .expect("runner");
    assert!(runner.wait_for(last, WAIT).expect("wait"));
    let old_view = runner.read_model().view();
    let old_table = broker
        .tree("projection.retire.0.applied")
        .expect("old table");

    runner.rebuild().expect("rebuild");
    let kept_while_viewed = old_table.len();
    drop(old_view);

    assert_eq!(kept_while_viewed as u64, last + 1);
    assert_eq!(old_table.len(), 0);
}

#[test]
fn rebuilt_generation_survives_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first_last = {
        let broker = Broker::open(dir.path()).expect("broker");
        let store = aqueduct_patterns::EventStore::open(&broker, "events").expect("store");
        let last = seed(&store, 5, 4, 2);
        let runner = ProjectionRunner::from_store(
            &store,
            "restart",
            Counting::default(),
            Default::default(),
        )
        .expect("runner");
        assert!(runner.wait_for(last, WAIT).expect("wait"));
        runner.rebuild().expect("rebuild");
        runner.stop().expect("stop");
        last
    };
    let broker = Broker::open(dir.path()).expect("reopen broker");
    let store = aqueduct_patterns::EventStore::open(&broker, "events").expect("store");
    let last = seed(&store, 2, 3, 1);

    let runner =
        ProjectionRunner::from_store(&store, "restart", Counting::default(), Default::default())
            .expect("runner");
    assert!(runner.wait_for(last, WAIT).expect("wait"));
    let view = runner.read_model().view();
    let times: Vec<u64> = applied(view.table(APPLIED).expect("table"))
        .iter()
        .map(|&(_, _, times)| times)
        .collect();

    assert!(last > first_last);
    assert_eq!(view.generation(), 1);
    assert_eq!(times, vec![1; last as usize + 1]);
}

#[test]
fn topic_projection_rebuilds_from_retained() {
    let broker = Broker::temporary().expect("broker");
    broker
        .create_topic("clicks", TopicConfig::default().partitions(3))
        .expect("topic");
    let runner = ProjectionRunner::from_topic(
        &broker,
        "clicks",
        "clicks",
        Counting::default(),
        Default::default(),
    )
    .expect("runner");
    let mut last = None;
    for i in 0..300u32 {
        let message = aqueduct::Message::new(i.to_be_bytes().to_vec()).key(vec![(i % 7) as u8]);
        last = Some(broker.publish("clicks", message).expect("publish"));
    }
    let last = last.expect("published");
    assert!(
        runner.wait_for(last, WAIT).expect("wait"),
        "live runner caught up"
    );

    let report = runner.rebuild().expect("rebuild");
    assert_eq!(report.generation, 1);
    assert_eq!(report.events, 300, "every retained message replayed");

    let after = broker
        .publish("clicks", aqueduct::Message::new("late"))
        .expect("publish");
    assert!(
        runner.wait_for(after, WAIT).expect("wait"),
        "live runner continues after swap"
    );
    let view = runner.read_model().view();
    assert_eq!(view.generation(), 1);
    let times: Vec<u64> = applied(view.table(APPLIED).expect("table"))
        .iter()
        .map(|&(_, _, times)| times)
        .collect();
    assert_eq!(
        times.len(),
        301,
        "each message applied to the new generation"
    );
    assert!(
        times.iter().all(|&times| times == 1),
        "no message applied twice: {times:?}"
    );
}
