//! Read-your-writes with `wait_for`, for projections fed by an event store and by a topic, and
//! exact resumption after a restart.

mod cqrs_support;

use std::time::Duration;

use aqueduct::{Broker, Message, Receipt, TopicConfig};
use aqueduct_patterns::{EventStore, ProjectionConfig, ProjectionError, ProjectionRunner};
use cqrs_support::{applied, seed, temporary_store, total, Counting, APPLIED, TOTALS};

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn wait_for_store_position() {
    let (_broker, store) = temporary_store();
    let runner =
        ProjectionRunner::from_store(&store, "ryw", Counting::default(), Default::default())
            .expect("runner");
    let last = seed(&store, 3, 2, 1);

    let reached = runner.wait_for(last, WAIT).expect("wait");
    let view = runner.read_model().view();

    assert!(reached);
    assert_eq!(total(&view), last + 1);
}

#[test]
fn wait_for_times_out_on_slow_projection() {
    let (_broker, store) = temporary_store();
    let slow = Counting {
        fail_at: None,
        delay: Duration::from_millis(200),
    };
    let config = ProjectionConfig::default().batch_size(1);
    let runner = ProjectionRunner::from_store(&store, "slow", slow, config).expect("runner");
    let last = seed(&store, 1, 3, 1);

    let early = runner
        .wait_for(last, Duration::from_millis(10))
        .expect("wait");
    let eventually = runner.wait_for(last, WAIT).expect("wait");

    assert!(!early);
    assert!(eventually);
}

#[test]
fn read_model_outlives_stopped_runner() {
    let (_broker, store) = temporary_store();
    let runner =
        ProjectionRunner::from_store(&store, "stopping", Counting::default(), Default::default())
            .expect("runner");
    let model = runner.read_model();
    runner.stop().expect("stop");
    let restarted =
        ProjectionRunner::from_store(&store, "stopping", Counting::default(), Default::default())
            .expect("restart");
    let last = seed(&store, 1, 1, 1);

    let reached = restarted.wait_for(last, WAIT).expect("wait");

    assert!(reached);
    assert_eq!(
        total(&model.view()),
        1,
        "a stopped runner's model handle still reads"
    );
}

#[test]
fn store_projection_resumes_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = {
        let broker = Broker::open(dir.path()).expect("broker");
        let store = EventStore::open(&broker, "events").expect("store");
        let last = seed(&store, 10, 5, 3);
        let runner =
            ProjectionRunner::from_store(&store, "resume", Counting::default(), Default::default())
                .expect("runner");
        assert!(runner.wait_for(last, WAIT).expect("wait"));
        runner.stop().expect("stop");
        last
    };
    let broker = Broker::open(dir.path()).expect("reopen");
    let store = EventStore::open(&broker, "events").expect("store");
    let last = seed(&store, 10, 5, 3);

    let runner =
        ProjectionRunner::from_store(&store, "resume", Counting::default(), Default::default())
            .expect("runner");
    let resumed_at = runner.checkpoint().next_offset(0);
    assert!(runner.wait_for(last, WAIT).expect("wait"));
    let view = runner.read_model().view();
    let times: Vec<u64> = applied(view.table(APPLIED).expect("table"))
        .iter()
        .map(|&(_, _, times)| times)
        .collect();

    assert!(
        resumed_at > first,
        "resumed at {resumed_at}, not from the start"
    );
    assert_eq!(times, vec![1; last as usize + 1]);
}

fn publish(broker: &Broker, from: u32, count: u32) -> Vec<Receipt> {
    let messages = (from..from + count)
        .map(|n| Message::new(n.to_be_bytes().to_vec()).key(format!("key-{}", n % 7)));
    broker.publish_batch("orders", messages).expect("publish")
}

fn wait_all(runner: &ProjectionRunner, receipts: &[Receipt]) {
    for receipt in receipts {
        assert!(
            runner.wait_for(*receipt, WAIT).expect("wait"),
            "{receipt:?}"
        );
    }
}

#[test]
fn topic_projection_reads_your_writes() {
    let broker = Broker::temporary().expect("broker");
    broker
        .create_topic("orders", TopicConfig::default().partitions(3))
        .expect("topic");
    let runner = ProjectionRunner::from_topic(
        &broker,
        "orders",
        "orders",
        Counting::default(),
        Default::default(),
    )
    .expect("runner");

    let receipts = publish(&broker, 0, 30);
    wait_all(&runner, &receipts);
    let view = runner.read_model().view();
    let key_total = view
        .table(TOTALS)
        .expect("totals")
        .get("key-3")
        .expect("read")
        .map(|bytes| cqrs_support::read_u64(Some(&bytes)));

    assert_eq!(total(&view), 30);
    assert_eq!(key_total, Some(4));
}

#[test]
fn topic_projection_resumes_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let broker = Broker::open(dir.path()).expect("broker");
        broker
            .create_topic("orders", TopicConfig::default().partitions(3))
            .expect("topic");
        let runner = ProjectionRunner::from_topic(
            &broker,
            "orders",
            "orders",
            Counting::default(),
            Default::default(),
        )
        .expect("runner");
        wait_all(&runner, &publish(&broker, 0, 60));
        runner.stop().expect("stop");
        publish(&broker, 60, 30);
    }
    let broker = Broker::open(dir.path()).expect("reopen");

    let runner = ProjectionRunner::from_topic(
        &broker,
        "orders",
        "orders",
        Counting::default(),
        Default::default(),
    )
    .expect("runner");
    let receipts = publish(&broker, 90, 30);
    wait_all(&runner, &receipts);
    let view = runner.read_model().view();
    let entries = applied(view.table(APPLIED).expect("table"));
    let twice = entries.iter().filter(|&&(_, _, times)| times != 1).count();

    assert_eq!(entries.len(), 120);
    assert_eq!(twice, 0);
    assert_eq!(total(&view), 120);
}

#[test]
fn topic_projection_on_missing_topic_fails() {
    let broker = Broker::temporary().expect("broker");

    let error = ProjectionRunner::from_topic(
        &broker,
        "nowhere",
        "p",
        Counting::default(),
        Default::default(),
    )
    .expect_err("no topic");

    assert!(matches!(error, ProjectionError::Broker(_)), "{error}");
}
