//! A worker pool whose handler writes through an inbox is killed with SIGKILL again and again.
//! Afterwards every job's effect has been applied exactly once.

mod crash_support;

use std::path::Path;
use std::time::{Duration, Instant};

use aqueduct::{Broker, Message, TopicConfig};
use aqueduct_patterns::{HandlerError, Inbox, InboxError, Processed, WorkerConfig, WorkerPool};
use sled::transaction::ConflictableTransactionError;

const TEST: &str = "workers_killed_repeatedly_apply_each_job_once";
const TOPIC: &str = "jobs";
const JOBS: u64 = 1_200;
const TOTAL_KEY: &[u8] = b"total";
const KILL_DELAYS_MS: [u64; 4] = [150, 300, 200, 250];

#[test]
fn workers_killed_repeatedly_apply_each_job_once() {
    if let Some((_, db)) = crash_support::child_role() {
        run_child(&db);
        return;
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    publish_jobs(dir.path());

    let mut duplicates_skipped = 0;
    for (child, delay) in KILL_DELAYS_MS.into_iter().enumerate() {
        let mut process = crash_support::spawn(TEST, "workers", dir.path());
        let ready = process.wait_for(Duration::from_secs(30), |line| line == "ready");
        assert!(ready.is_some(), "child {child} never became ready");
        std::thread::sleep(Duration::from_millis(delay));
        let lines = process.kill();
        duplicates_skipped += lines.iter().filter(|l| l.starts_with("duplicate")).count();
    }

    let broker = Broker::open(dir.path()).expect("reopen the broker");
    let effects = broker.tree("effects").expect("effects tree");
    let pool = start_pool(&broker, &effects);
    let deadline = Instant::now() + Duration::from_secs(60);
    while read_count(&effects, TOTAL_KEY) < JOBS && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let report = pool.shutdown(Duration::from_secs(10));
    assert_eq!(report.still_running, 0, "workers left running");
    eprintln!("redeliveries skipped by the inbox in the children: {duplicates_skipped}");

    let applied_twice: Vec<u64> = (0..JOBS)
        .filter(|job| read_count(&effects, job_key(*job).as_bytes()) > 1)
        .collect();
    assert!(
        applied_twice.is_empty(),
        "jobs applied more than once: {applied_twice:?}"
    );
    let never_applied: Vec<u64> = (0..JOBS)
        .filter(|job| read_count(&effects, job_key(*job).as_bytes()) == 0)
        .collect();
    assert!(
        never_applied.is_empty(),
        "jobs never applied: {never_applied:?}"
    );
    assert_eq!(read_count(&effects, TOTAL_KEY), JOBS, "total effect count");
}

fn publish_jobs(db: &Path) {
    let broker = Broker::open(db).expect("open the broker");
    broker
        .create_topic("jobs.dead", TopicConfig::default())
        .expect("create the dead-letter topic");
    let config = TopicConfig::default()
        .partitions(4)
        .ack_timeout(Duration::from_secs(5))
        .max_deliveries(100)
        .dead_letter_topic("jobs.dead");
    broker
        .create_topic(TOPIC, config)
        .expect("create the topic");
    let messages = (0..JOBS).map(|job| Message::new(job.to_be_bytes().to_vec()).id(job_key(job)));
    broker.publish_batch(TOPIC, messages).expect("publish jobs");
    broker.flush().expect("flush");
}

fn run_child(db: &Path) {
    let broker = Broker::open(db).expect("child opens the broker");
    let effects = broker.tree("effects").expect("effects tree");
    let _pool = start_pool(&broker, &effects);
    crash_support::report("ready");
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Starts four workers whose handler counts each job and the total in the effects tree,
/// through the inbox.
fn start_pool(broker: &Broker, effects: &sled::Tree) -> WorkerPool {
    let inbox = Inbox::open(broker, "job-effects").expect("open the inbox");
    let effects = effects.clone();
    let config = WorkerConfig::default().workers(4);
    WorkerPool::start(broker, TOPIC, "appliers", config, move |delivery, _| {
        std::thread::sleep(Duration::from_millis(2));
        let job = delivery.id().unwrap_or_default().to_string();
        let outcome = inbox.process::<_, InboxError, _>(
            delivery,
            std::slice::from_ref(&effects),
            |trees| {
                increment(&trees[0], job.as_bytes())?;
                increment(&trees[0], TOTAL_KEY)?;
                Ok(())
            },
        )?;
        if outcome == Processed::Duplicate {
            crash_support::report(&format!("duplicate {job}"));
        }
        Ok::<(), HandlerError>(())
    })
    .expect("start the pool")
}

fn increment(
    tree: &sled::transaction::TransactionalTree,
    key: &[u8],
) -> Result<(), ConflictableTransactionError<InboxError>> {
    let count = tree.get(key)?.map_or(0, |bytes| decode_count(&bytes));
    tree.insert(key, &(count + 1).to_be_bytes()[..])?;
    Ok(())
}

fn read_count(tree: &sled::Tree, key: &[u8]) -> u64 {
    tree.get(key)
        .expect("read a count")
        .map_or(0, |bytes| decode_count(&bytes))
}

fn decode_count(bytes: &[u8]) -> u64 {
    u64::from_be_bytes(bytes.try_into().expect("8-byte count"))
}

fn job_key(job: u64) -> String {
    format!("job-{job}")
}
