//! A projection killed mid-work keeps its read model and checkpoint in step: after a restart
//! no event is applied twice and none is skipped.
//!
//! The parent seeds events, then runs this test binary again (`std::env::current_exe()`)
//! with `--exact child_process` and `AQUEDUCT_PROJECTION_DIR` set, so that libtest runs only
//! the child test, which feeds a slow projection until the parent kills it with SIGKILL.
//! Without the variable the child test returns at once. The read model counts how often each
//! position was applied, so a write without its checkpoint (applied twice after the restart)
//! or a checkpoint without its write (never applied) is visible.

mod cqrs_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aqueduct::Broker;
use aqueduct_patterns::{EventStore, ProjectionConfig, ProjectionError, ProjectionRunner};
use cqrs_support::{applied, seed, temporary_store, total, Counting, APPLIED};

const DIR_VAR: &str = "AQUEDUCT_PROJECTION_DIR";
const PROJECTION: &str = "crash";
const APPENDS: u64 = 100;
const PER_APPEND: u64 = 40;
const KILLS: u32 = 4;

#[test]
fn child_process() {
    let Ok(dir) = std::env::var(DIR_VAR) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let broker = Broker::open(&dir).expect("child broker");
    let store = EventStore::open(&broker, "events").expect("child store");
    let projection = Counting {
        fail_at: None,
        delay: Duration::from_micros(300),
    };
    let config = ProjectionConfig::default()
        .batch_size(16)
        .flush_interval(Duration::from_millis(5));
    let _runner =
        ProjectionRunner::from_store(&store, PROJECTION, projection, config).expect("runner");
    std::fs::write(dir.join("ready"), b"ready").expect("ready file");
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn kill_mid_batch_applies_each_event_once() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path().join("db");
    let last = {
        let broker = Broker::open(&dir).expect("broker");
        let store = EventStore::open(&broker, "events").expect("store");
        seed(&store, APPENDS, PER_APPEND, 7)
    };
    let mut random = seed_from_clock();

    for round in 0..KILLS {
        let _ = std::fs::remove_file(dir.join("ready"));
        let mut child = spawn_child(&dir);
        wait_ready(&dir, &mut child, round);
        let delay = 50 + next_random(&mut random) % 250;
        std::thread::sleep(Duration::from_millis(delay));
        child.kill().expect("SIGKILL the child");
        child.wait().expect("reap the child");
    }

    let broker = Broker::open(&dir).expect("reopen broker");
    let before = applied(
        &broker
            .tree(&format!("projection.{PROJECTION}.0.{APPLIED}"))
            .expect("applied table"),
    );
    let prefix: Vec<u64> = before.iter().map(|&(_, offset, _)| offset).collect();
    eprintln!(
        "{} of {} events applied before the resume",
        before.len(),
        last + 1
    );
    assert!(!before.is_empty(), "the children made durable progress");
    assert_eq!(
        prefix,
        (0..before.len() as u64).collect::<Vec<_>>(),
        "applied is a prefix"
    );
    assert!(
        before.iter().all(|&(_, _, times)| times == 1),
        "applied once before resume"
    );

    let store = EventStore::open(&broker, "events").expect("store");
    let runner =
        ProjectionRunner::from_store(&store, PROJECTION, Counting::default(), Default::default())
            .expect("runner");
    assert!(runner
        .wait_for(last, Duration::from_secs(60))
        .expect("wait"));
    let view = runner.read_model().view();
    let after = applied(view.table(APPLIED).expect("table"));
    let offsets: Vec<u64> = after.iter().map(|&(_, offset, _)| offset).collect();
    let twice: Vec<u64> = after
        .iter()
        .filter(|&&(_, _, times)| times != 1)
        .map(|&(_, offset, _)| offset)
        .collect();

    assert_eq!(
        offsets,
        (0..=last).collect::<Vec<_>>(),
        "every event applied"
    );
    assert_eq!(twice, Vec::<u64>::new(), "events applied more than once");
    assert_eq!(total(&view), last + 1);
}

#[test]
fn failed_batch_rolls_back_model_and_checkpoint() {
    let (_broker, store) = temporary_store();
    let last = seed(&store, 3, 10, 2);
    let projection = Counting {
        fail_at: Some(12),
        delay: Duration::ZERO,
    };
    let config = ProjectionConfig::default().batch_size(8).max_attempts(1);

    let runner =
        ProjectionRunner::from_store(&store, "atomic", projection, config).expect("runner");
    let outcome = runner.wait_for(last, Duration::from_secs(10));
    let view = runner.read_model().view();
    let offsets: Vec<u64> = applied(view.table(APPLIED).expect("table"))
        .iter()
        .map(|&(_, offset, _)| offset)
        .collect();

    assert!(
        matches!(outcome, Err(ProjectionError::Stopped { .. })),
        "{outcome:?}"
    );
    assert_eq!(
        offsets,
        (0..8).collect::<Vec<_>>(),
        "only the first batch is kept"
    );
    assert_eq!(runner.checkpoint().next_offset(0), 8);
    assert_eq!(total(&view), 8);
}

#[test]
fn failing_batch_is_retried_then_reported() {
    let (_broker, store) = temporary_store();
    let last = seed(&store, 1, 4, 1);
    let projection = Counting {
        fail_at: Some(2),
        delay: Duration::ZERO,
    };
    let config = ProjectionConfig::default()
        .max_attempts(3)
        .backoff(Duration::from_millis(1), Duration::from_millis(5));

    let runner =
        ProjectionRunner::from_store(&store, "retried", projection, config).expect("runner");
    let outcome = runner.wait_for(last, Duration::from_secs(10));
    let error = runner.stop().expect_err("the runner failed");

    assert!(
        matches!(outcome, Err(ProjectionError::Stopped { .. })),
        "{outcome:?}"
    );
    assert!(error.to_string().contains("failed 3 time(s)"), "{error}");
}

fn spawn_child(dir: &Path) -> Child {
    let exe = std::env::current_exe().expect("path of the test binary");
    Command::new(exe)
        .args([
            "--exact",
            "child_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_VAR, dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the child")
}

fn wait_ready(dir: &Path, child: &mut Child, round: u32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !dir.join("ready").exists() {
        if let Some(status) = child.try_wait().expect("child status") {
            panic!("child of round {round} exited before it was ready: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "child of round {round} never got ready"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn seed_from_clock() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |elapsed| elapsed.subsec_nanos());
    let seed = u64::from(nanos) | 1;
    eprintln!("kill delays seeded with {seed}");
    seed
}

/// xorshift64: enough to vary kill delays between runs.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}
