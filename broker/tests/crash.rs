//! Crash safety: child processes are killed with SIGKILL mid-work, and the parent checks the
//! durability and delivery guarantees after reopening the database.
//!
//! # How a child runs
//!
//! The parent runs this test binary again (`/proc/self/exe` on Linux, else
//! `std::env::current_exe()`) with `--exact child_process`, so libtest runs only the
//! `child_process` test, and sets `AQUEDUCT_CRASH_ROLE` to the work the child does. Without that
//! variable `child_process` returns at once and passes, so normal runs are not affected. This
//! needs no extra binary target, and parent and child always run the same build.
//!
//! The child appends one line per observed event to an event file: `ready` once the broker is
//! open, `published` after `publish` returned a receipt, `delivered` when a delivery was handed
//! out, `acked` after `ack` returned `Ok`. Each line is written with one `write` call and then
//! fsynced, so the parent learns everything the child saw before it died. A torn last line is
//! ignored. Times in the file are milliseconds since the Unix epoch, from the same system clock
//! that the parent reads when it sends SIGKILL.
//!
//! # What is checked after each kill
//!
//! - Every message whose publish returned in `Durability::Flushed` mode is stored at its
//!   receipt's partition and offset with the same payload. In `Buffered` mode the same holds for
//!   publishes older than the loss window.
//! - Offsets are dense from 0, partition end offsets never go backwards, and an offset that
//!   held a durable message is never assigned again.
//! - A message acked in `Flushed` mode is never delivered again. In `Buffered` mode a message is
//!   delivered again only if its ack was less than the loss window old at the kill.
//! - The attempt count of a message rises with every delivery, also across crashes.
//! - After the last kill the group delivers what it has left, and every message has then been
//!   delivered and acked, so the group skipped none.
//! - A poison message, whose every delivery is followed by a kill, reaches the dead-letter topic
//!   after `max_deliveries` restarts, with that many attempts in its `DeadLetterInfo`.
//!
//! The loss window of `Buffered` mode is `max_delay` plus [`LOSS_WINDOW_SLACK`], an allowance
//! for the flush round that is running when the data arrives and for fsync latency on a loaded
//! machine.
//!
//! # Longer runs
//!
//! `AQUEDUCT_CRASH_ROUNDS` sets the number of kills per test (default 6), for example
//! `AQUEDUCT_CRASH_ROUNDS=200 cargo test -p aqueduct --test crash` for a soak run.
//! `AQUEDUCT_CRASH_SEED` reuses the kill delays of the seed that a failing run printed. How far
//! a child gets within a delay still varies from run to run.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aqueduct::{Broker, BrokerConfig, ConsumerConfig, Durability, Message, TopicConfig};
use proptest::prelude::RngExt;
use proptest::test_runner::{RngAlgorithm, TestRng};

const ROLE_VAR: &str = "AQUEDUCT_CRASH_ROLE";
const DIR_VAR: &str = "AQUEDUCT_CRASH_DIR";
const EVENTS_VAR: &str = "AQUEDUCT_CRASH_EVENTS";
const ROUND_VAR: &str = "AQUEDUCT_CRASH_ROUND";
const ROUNDS_VAR: &str = "AQUEDUCT_CRASH_ROUNDS";
const SEED_VAR: &str = "AQUEDUCT_CRASH_SEED";

const DEFAULT_ROUNDS: u32 = 6;

/// A child that is not killed exits by itself after this long, so that a parent that failed
/// leaves no process behind for long.
const CHILD_LIFETIME: Duration = Duration::from_secs(30);

/// How long the parent waits for a child to open the database.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

const TOPIC: &str = "events";
const PARTITIONS: u32 = 3;
const GROUP: &str = "workers";

const BUFFERED_MAX_DELAY: Duration = Duration::from_millis(20);

/// Time added to `max_delay` before an unflushed publish or ack counts as lost. A round that
/// is already running when the data arrives does not cover it, so the data waits for that
/// round, then `max_delay`, then the next round with its fsync.
const LOSS_WINDOW_SLACK: Duration = Duration::from_millis(500);

const POISON_TOPIC: &str = "jobs";
const DEAD_LETTER_TOPIC: &str = "jobs.dead";
const MAX_DELIVERIES: u32 = 3;
const POISON_OFFSET: u64 = 5;
const POISON: &[u8] = b"poison";
const JOBS: u64 = 12;

#[test]
fn child_process() {
    let Ok(role) = std::env::var(ROLE_VAR) else {
        return;
    };
    let dir = PathBuf::from(required_var(DIR_VAR));
    let events = Arc::new(EventFile::create(Path::new(&required_var(EVENTS_VAR))));
    let round: u32 = required_var(ROUND_VAR).parse().expect("round number");
    match role.as_str() {
        "flushed" => run_workload(&dir, Durability::Flushed, round, &events),
        "buffered" => run_workload(&dir, buffered(), round, &events),
        "poison" => run_poison_consumer(&dir, &events),
        other => panic!("unknown child role {other:?}"),
    }
}

#[test]
fn flushed_mode_survives_kill() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let mut rng = seeded_rng("flushed_mode_survives_kill");
    let db = scratch.path().join("db");
    create_topic(&db);

    let mut ledger = Ledger::new(None);
    for round in 0..rounds() {
        let mut child = ChildRun::spawn("flushed", &db, round, scratch.path());
        // Every third kill does not wait for the child to open the store, so that some kills
        // land while the child opens and recovers it.
        if round % 3 == 2 {
            thread::sleep(Duration::from_millis(rng.random_range(0..150)));
        } else {
            child.wait_ready();
            thread::sleep(Duration::from_millis(rng.random_range(0..500)));
        }
        let killed_at_ms = child.kill();
        ledger.check_events(round, &child.events(), killed_at_ms);
        ledger.check_store(&db, round);
    }
    ledger.drain_and_check_coverage(&db);
}

#[test]
fn buffered_mode_loses_only_window() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let mut rng = seeded_rng("buffered_mode_loses_only_window");
    let db = scratch.path().join("db");
    create_topic(&db);

    let window = BUFFERED_MAX_DELAY + LOSS_WINDOW_SLACK;
    let mut ledger = Ledger::new(Some(millis(window)));
    for round in 0..rounds() {
        let mut child = ChildRun::spawn("buffered", &db, round, scratch.path());
        child.wait_ready();
        thread::sleep(Duration::from_millis(rng.random_range(600..1600)));
        let killed_at_ms = child.kill();
        ledger.check_events(round, &child.events(), killed_at_ms);
        ledger.check_store(&db, round);
    }
    ledger.drain_and_check_coverage(&db);
}

#[test]
fn poison_message_reaches_dead_letter_topic() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let db = scratch.path().join("db");
    publish_jobs(&db);

    let mut poison_attempts = Vec::new();
    let mut acked = Vec::new();
    let mut finished = None;
    for run in 0..MAX_DELIVERIES + 3 {
        let mut child = ChildRun::spawn("poison", &db, run, scratch.path());
        let poison_attempt = child.wait_for_poison();
        if let Some(attempt) = poison_attempt {
            poison_attempts.push(attempt);
            child.kill();
        }
        acked.extend(child.events().iter().filter_map(|event| match event {
            Event::Acked { offset, .. } => Some(*offset),
            _ => None,
        }));
        if poison_attempt.is_none() {
            finished = Some(run);
            break;
        }
    }
    let expected: Vec<u32> = (1..=MAX_DELIVERIES).collect();
    assert_eq!(
        poison_attempts, expected,
        "the poison message must be handed out once per run with attempts 1 to max_deliveries"
    );
    assert_eq!(
        finished,
        Some(MAX_DELIVERIES),
        "the run after max_deliveries crashes must finish without receiving the poison message"
    );

    let broker = Broker::open(&db).expect("reopen");
    let mut dead = broker
        .subscribe(DEAD_LETTER_TOPIC, "audit")
        .expect("subscribe");
    let delivery = dead
        .recv_timeout(Duration::from_secs(5))
        .expect("recv dead letter")
        .expect("the poison message must be in the dead-letter topic");
    assert_eq!(delivery.payload(), POISON, "dead letter payload");
    let info = delivery.dead_letter_info().expect("dead-letter info");
    assert_eq!(
        info.attempts, MAX_DELIVERIES,
        "dead-letter info must count every delivery that crashed the process"
    );
    assert_eq!(info.source_topic, POISON_TOPIC, "dead-letter source topic");
    assert_eq!(
        info.source_offset, POISON_OFFSET,
        "dead-letter source offset"
    );
    assert_eq!(info.group, GROUP, "dead-letter group");
    delivery.ack().expect("ack dead letter");
    let extra = dead.recv_timeout(Duration::from_millis(300)).expect("recv");
    assert!(
        extra.is_none(),
        "only the poison message may be dead-lettered, found {extra:?}"
    );

    acked.sort_unstable();
    let healthy: Vec<u64> = (0..JOBS)
        .filter(|&offset| offset != POISON_OFFSET)
        .collect();
    assert_eq!(
        acked, healthy,
        "every other job must be acked exactly once across the crashes"
    );
}

/// Opens the broker in the child, creates the topic and runs two publishers and one consumer
/// until the parent kills the process.
fn run_workload(dir: &Path, durability: Durability, round: u32, events: &Arc<EventFile>) {
    let config = BrokerConfig::default().durability(durability);
    let broker = Broker::open_with(dir, config).expect("child open");
    broker
        .create_topic(TOPIC, topic_config())
        .expect("child create topic");
    let consumer = broker.subscribe(TOPIC, GROUP).expect("child subscribe");
    events.record("ready");

    // In Buffered mode publish returns at once, so the publishers pause to keep the volume
    // that the parent audits small. The consumer idles between batches, so that its acks wait
    // for the flusher's timer instead of riding along with the flush round of its next fetch.
    let (publish_pause, max_idle) = match durability {
        Durability::Flushed => (Duration::ZERO, Duration::ZERO),
        Durability::Buffered { .. } => (Duration::from_millis(2), Duration::from_millis(1000)),
    };
    let deadline = Instant::now() + CHILD_LIFETIME;
    let consumer_rng = round_rng(round);
    let threads = [
        spawn_publisher(&broker, events, round, 0, publish_pause, deadline),
        spawn_publisher(&broker, events, round, 1, publish_pause, deadline),
        spawn_consumer(consumer, events, consumer_rng, max_idle, deadline),
    ];
    for thread in threads {
        thread.join().expect("child thread");
    }
}

/// Publishes keyed single messages (`writer` 0) or keyless batches of three (`writer` 1).
fn spawn_publisher(
    broker: &Broker,
    events: &Arc<EventFile>,
    round: u32,
    writer: u32,
    pause: Duration,
    deadline: Instant,
) -> thread::JoinHandle<()> {
    let broker = broker.clone();
    let events = Arc::clone(events);
    thread::spawn(move || {
        let mut sequence = 0u64;
        while Instant::now() < deadline {
            let batch: Vec<Message> = (0..1 + writer * 2)
                .map(|_| {
                    sequence += 1;
                    let payload = format!("r{round}-w{writer}-s{sequence}");
                    match writer {
                        0 => Message::new(payload).key(format!("k{}", sequence % 13)),
                        _ => Message::new(payload),
                    }
                })
                .collect();
            let payloads: Vec<String> = batch
                .iter()
                .map(|m| String::from_utf8_lossy(m.payload()).into_owned())
                .collect();
            let at_ms = now_ms();
            let receipts = broker.publish_batch(TOPIC, batch).expect("child publish");
            for (receipt, payload) in receipts.iter().zip(payloads) {
                events.record(&format!(
                    "published {} {} {at_ms} {payload}",
                    receipt.partition, receipt.offset
                ));
            }
            thread::sleep(pause);
        }
    })
}

/// Receives batches of up to 32 deliveries and acks each, except one in five, which it nacks
/// so that redeliveries with higher attempt counts happen within a round too. After each
/// batch it idles for a random time below `max_idle`.
fn spawn_consumer(
    mut consumer: aqueduct::Consumer,
    events: &Arc<EventFile>,
    mut rng: TestRng,
    max_idle: Duration,
    deadline: Instant,
) -> thread::JoinHandle<()> {
    let events = Arc::clone(events);
    thread::spawn(move || {
        while Instant::now() < deadline {
            let batch = consumer
                .recv_batch(32, Duration::from_millis(50))
                .expect("child recv");
            for delivery in batch {
                let (partition, offset, attempt) =
                    (delivery.partition(), delivery.offset(), delivery.attempt());
                let at_ms = now_ms();
                events.record(&format!("delivered {partition} {offset} {attempt} {at_ms}"));
                if is_nacked(offset, attempt) {
                    delivery.nack().expect("child nack");
                    continue;
                }
                let at_ms = now_ms();
                delivery.ack().expect("child ack");
                events.record(&format!("acked {partition} {offset} {attempt} {at_ms}"));
            }
            if !max_idle.is_zero() {
                thread::sleep(Duration::from_millis(rng.random_range(0..millis(max_idle))));
            }
        }
    })
}

/// Acks jobs until the poison message arrives, then waits to be killed. Returns when no job
/// arrives for a second.
fn run_poison_consumer(dir: &Path, events: &EventFile) {
    let config = BrokerConfig::default().durability(Durability::Flushed);
    let broker = Broker::open_with(dir, config).expect("child open");
    // The default prefetch buffers jobs behind the poison message. They gain one attempt from
    // the first crash; after it the group delivers each recovered delivery alone, so later
    // crashes count only against the poison message and the jobs are not dead-lettered.
    let consumer_config = ConsumerConfig::default();
    let mut consumer = broker
        .subscribe_with(POISON_TOPIC, GROUP, consumer_config)
        .expect("child subscribe");
    events.record("ready");
    while let Some(delivery) = consumer
        .recv_timeout(Duration::from_secs(1))
        .expect("child recv")
    {
        let (offset, attempt) = (delivery.offset(), delivery.attempt());
        events.record(&format!("delivered 0 {offset} {attempt} {}", now_ms()));
        if delivery.payload() == POISON {
            thread::sleep(CHILD_LIFETIME);
            panic!("the parent did not kill the child after the poison message");
        }
        let at_ms = now_ms();
        delivery.ack().expect("child ack");
        events.record(&format!("acked 0 {offset} {attempt} {at_ms}"));
    }
}

/// Returns whether the workload's consumer nacks this delivery instead of acking it.
fn is_nacked(offset: u64, attempt: u32) -> bool {
    (offset + u64::from(attempt)) % 5 == 0
}

fn topic_config() -> TopicConfig {
    TopicConfig::default().partitions(PARTITIONS)
}

fn buffered() -> Durability {
    Durability::Buffered {
        max_delay: BUFFERED_MAX_DELAY,
    }
}

fn create_topic(db: &Path) {
    let broker = Broker::open(db).expect("open");
    broker
        .create_topic(TOPIC, topic_config())
        .expect("create topic");
}

fn publish_jobs(db: &Path) {
    let config = BrokerConfig::default().durability(Durability::Flushed);
    let broker = Broker::open_with(db, config).expect("open");
    broker
        .create_topic(DEAD_LETTER_TOPIC, TopicConfig::default())
        .expect("create dead-letter topic");
    let jobs_config = TopicConfig::default()
        .max_deliveries(MAX_DELIVERIES)
        .dead_letter_topic(DEAD_LETTER_TOPIC);
    broker
        .create_topic(POISON_TOPIC, jobs_config)
        .expect("create topic");
    for offset in 0..JOBS {
        let payload = match offset {
            POISON_OFFSET => POISON.to_vec(),
            _ => format!("job {offset}").into_bytes(),
        };
        broker
            .publish(POISON_TOPIC, Message::new(payload))
            .expect("publish job");
    }
}

/// The child's side of the event file: one fsynced line per event.
struct EventFile {
    file: Mutex<File>,
}

impl EventFile {
    fn create(path: &Path) -> Self {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("create event file");
        EventFile {
            file: Mutex::new(file),
        }
    }

    fn record(&self, line: &str) {
        let mut file = self.file.lock().expect("event file lock");
        file.write_all(format!("{line}\n").as_bytes())
            .expect("write event");
        file.sync_data().expect("fsync event file");
    }
}

/// An event the child recorded, as the parent reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Event {
    Ready,
    Published {
        partition: u32,
        offset: u64,
        at_ms: u64,
        payload: String,
    },
    Delivered {
        partition: u32,
        offset: u64,
        attempt: u32,
    },
    Acked {
        partition: u32,
        offset: u64,
        at_ms: u64,
    },
}

fn parse_events(text: &str) -> Vec<Event> {
    // A line without its newline was torn by the kill.
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    complete.lines().map(parse_event).collect()
}

fn parse_event(line: &str) -> Event {
    let fields: Vec<&str> = line.split(' ').collect();
    let number = |index: usize| -> u64 {
        fields
            .get(index)
            .and_then(|field| field.parse().ok())
            .unwrap_or_else(|| panic!("field {index} of event line {line:?} is not a number"))
    };
    match fields[0] {
        "ready" => Event::Ready,
        "published" => Event::Published {
            partition: number(1) as u32,
            offset: number(2),
            at_ms: number(3),
            payload: fields[4].to_string(),
        },
        "delivered" => Event::Delivered {
            partition: number(1) as u32,
            offset: number(2),
            attempt: number(3) as u32,
        },
        "acked" => Event::Acked {
            partition: number(1) as u32,
            offset: number(2),
            at_ms: number(4),
        },
        other => panic!("unknown event {other:?} in line {line:?}"),
    }
}

/// A running child process, killed when dropped so that a failing parent leaves none behind.
struct ChildRun {
    child: Child,
    events_path: PathBuf,
    stderr_path: PathBuf,
    status: Option<ExitStatus>,
}

impl ChildRun {
    fn spawn(role: &str, db: &Path, round: u32, scratch: &Path) -> Self {
        let events_path = scratch.join(format!("{role}-{round}.events"));
        let stderr_path = scratch.join(format!("{role}-{round}.stderr"));
        let stderr = File::create(&stderr_path).expect("create child stderr file");
        let exe = test_binary();
        let child = Command::new(exe)
            .args([
                "--exact",
                "child_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ROLE_VAR, role)
            .env(DIR_VAR, db)
            .env(EVENTS_VAR, &events_path)
            .env(ROUND_VAR, round.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn child process");
        ChildRun {
            child,
            events_path,
            stderr_path,
            status: None,
        }
    }

    fn events(&self) -> Vec<Event> {
        match std::fs::read_to_string(&self.events_path) {
            Ok(text) => parse_events(&text),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(error) => panic!("read {}: {error}", self.events_path.display()),
        }
    }

    /// Waits until the child has recorded `ready`.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        while !self.events().contains(&Event::Ready) {
            self.fail_if_exited("before it was ready");
            assert!(
                Instant::now() < deadline,
                "child did not open the database within {READY_TIMEOUT:?}"
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until the child either receives the poison message, returning its attempt, or
    /// exits successfully, returning `None`.
    fn wait_for_poison(&mut self) -> Option<u32> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let poison = self.events().iter().find_map(|event| match event {
                Event::Delivered {
                    offset: POISON_OFFSET,
                    attempt,
                    ..
                } => Some(*attempt),
                _ => None,
            });
            if poison.is_some() {
                return poison;
            }
            if let Some(status) = self.child.try_wait().expect("poll child") {
                self.status = Some(status);
                assert!(
                    status.success(),
                    "poison consumer failed with {status}; its stderr:\n{}",
                    self.stderr()
                );
                return None;
            }
            assert!(
                Instant::now() < deadline,
                "poison consumer neither received the poison message nor finished within \
                 {READY_TIMEOUT:?}"
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends SIGKILL and returns the wall-clock time just before it, in milliseconds.
    fn kill(&mut self) -> u64 {
        self.fail_if_exited("before it was killed");
        let killed_at_ms = now_ms();
        self.child.kill().expect("send SIGKILL to child");
        let status = self.child.wait().expect("wait for killed child");
        self.status = Some(status);
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "child must die from SIGKILL, got {status}; its stderr:\n{}",
            self.stderr()
        );
        killed_at_ms
    }

    fn fail_if_exited(&mut self, when: &str) {
        if let Some(status) = self.child.try_wait().expect("poll child") {
            self.status = Some(status);
            panic!(
                "child exited {when} with {status}; its stderr:\n{}",
                self.stderr()
            );
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for ChildRun {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// An ack the parent saw in a child's event file.
#[derive(Clone, Copy, Debug)]
struct AckRecord {
    round: u32,
    at_ms: u64,
    killed_at_ms: u64,
}

/// The parent's record of all rounds so far, and the checks against it.
struct Ledger {
    /// `None` in Flushed mode; the loss window in milliseconds in Buffered mode.
    loss_window_ms: Option<u64>,
    /// Messages known to be stored: published in Flushed mode, or seen by an audit.
    durable: BTreeMap<(u32, u64), String>,
    /// Publishes of the last round, checked against the store once it is reopened.
    pending: Vec<(u32, u64, u64, String)>,
    killed_at_ms: u64,
    end_offsets: Vec<u64>,
    /// Acks recorded since the message's last delivery.
    acked: HashMap<(u32, u64), AckRecord>,
    /// Round and attempt of the latest delivery of each message.
    last_delivery: HashMap<(u32, u64), (u32, u32)>,
    ever_acked: HashSet<(u32, u64)>,
}

impl Ledger {
    fn new(loss_window_ms: Option<u64>) -> Self {
        Ledger {
            loss_window_ms,
            durable: BTreeMap::new(),
            pending: Vec::new(),
            killed_at_ms: 0,
            end_offsets: vec![0; PARTITIONS as usize],
            acked: HashMap::new(),
            last_delivery: HashMap::new(),
            ever_acked: HashSet::new(),
        }
    }

    /// Checks the events of one child, in the order the child recorded them.
    fn check_events(&mut self, round: u32, events: &[Event], killed_at_ms: u64) {
        self.killed_at_ms = killed_at_ms;
        for event in events {
            match event {
                Event::Ready => {}
                Event::Published {
                    partition,
                    offset,
                    at_ms,
                    payload,
                } => {
                    let known = self.durable.get(&(*partition, *offset));
                    assert!(
                        known.is_none(),
                        "round {round}: publish of {payload} got partition {partition} offset \
                         {offset}, which already holds the durable message {known:?}"
                    );
                    self.pending
                        .push((*partition, *offset, *at_ms, payload.clone()));
                }
                Event::Delivered {
                    partition,
                    offset,
                    attempt,
                } => self.check_delivery(round, *partition, *offset, *attempt),
                Event::Acked {
                    partition,
                    offset,
                    at_ms,
                } => {
                    let record = AckRecord {
                        round,
                        at_ms: *at_ms,
                        killed_at_ms,
                    };
                    self.acked.insert((*partition, *offset), record);
                    self.ever_acked.insert((*partition, *offset));
                }
            }
        }
    }

    fn check_delivery(&mut self, round: u32, partition: u32, offset: u64, attempt: u32) {
        let key = (partition, offset);
        let previous = self
            .last_delivery
            .get(&key)
            .map_or(0, |(_, attempt)| *attempt);
        assert!(
            attempt > previous,
            "round {round}: partition {partition} offset {offset} was delivered with attempt \
             {attempt} after attempt {previous}; attempt counts must rise across crashes"
        );
        self.last_delivery.insert(key, (round, attempt));

        let Some(ack) = self.acked.remove(&key) else {
            return;
        };
        assert!(
            ack.round != round,
            "round {round}: partition {partition} offset {offset} was delivered again after \
             it was acked in the same process"
        );
        let age_ms = ack.killed_at_ms.saturating_sub(ack.at_ms);
        match self.loss_window_ms {
            None => panic!(
                "round {round}: partition {partition} offset {offset} was acked in Flushed mode \
                 in round {} ({age_ms} ms before the kill) and delivered again",
                ack.round
            ),
            Some(window_ms) => assert!(
                age_ms <= window_ms,
                "round {round}: partition {partition} offset {offset} was acked in Buffered mode \
                 {age_ms} ms before the kill in round {}, outside the {window_ms} ms loss window, \
                 and delivered again",
                ack.round
            ),
        }
    }

    /// Reopens the store after a kill and checks offsets and stored payloads.
    fn check_store(&mut self, db: &Path, round: u32) {
        let broker = Broker::open(db).expect("reopen after kill");
        let stored = audit(&broker, &format!("audit-{round}"));
        for partition in 0..PARTITIONS {
            let end = broker.end_offset(TOPIC, partition).expect("end offset");
            let previous = self.end_offsets[partition as usize];
            assert!(
                end >= previous,
                "round {round}: end offset of partition {partition} went back from {previous} \
                 to {end}"
            );
            self.end_offsets[partition as usize] = end;
            let offsets: Vec<u64> = stored
                .range((partition, 0)..(partition + 1, 0))
                .map(|((_, offset), _)| *offset)
                .collect();
            let dense: Vec<u64> = (0..end).collect();
            assert!(
                offsets == dense,
                "round {round}: partition {partition} must hold offsets 0 to {end} without a \
                 gap; a fresh group read {} messages, first missing offset {:?}",
                offsets.len(),
                dense.iter().find(|offset| !offsets.contains(offset))
            );
        }
        self.check_pending(round, &stored);
        for (key, payload) in &self.durable {
            assert_eq!(
                stored.get(key),
                Some(payload),
                "round {round}: durable message at partition {} offset {} changed or vanished",
                key.0,
                key.1
            );
        }
    }

    /// Moves the last round's publishes that are stored into `durable`, and fails for those
    /// that had to survive but did not.
    fn check_pending(&mut self, round: u32, stored: &BTreeMap<(u32, u64), String>) {
        for (partition, offset, at_ms, payload) in std::mem::take(&mut self.pending) {
            let key = (partition, offset);
            if stored.get(&key) == Some(&payload) {
                self.durable.insert(key, payload);
                continue;
            }
            let age_ms = self.killed_at_ms.saturating_sub(at_ms);
            match self.loss_window_ms {
                None => panic!(
                    "round {round}: publish of {payload} returned partition {partition} offset \
                     {offset} in Flushed mode, but the store holds {:?} there",
                    stored.get(&key)
                ),
                Some(window_ms) => assert!(
                    age_ms <= window_ms,
                    "round {round}: publish of {payload} to partition {partition} offset \
                     {offset} returned {age_ms} ms before the kill, outside the {window_ms} ms \
                     loss window, but the store holds {:?} there",
                    stored.get(&key)
                ),
            }
        }
    }

    /// Receives what the group has left after the last kill, then checks that every message
    /// was delivered and settled, so the group skipped none.
    ///
    /// A message may lack an `acked` line without being delivered again only if the kill came
    /// after its ack was stored but before the child recorded it. The child has one consumer
    /// thread, so that can happen to at most one message per round.
    fn drain_and_check_coverage(&mut self, db: &Path) {
        let broker = Broker::open(db).expect("reopen for drain");
        let mut consumer = broker.subscribe(TOPIC, GROUP).expect("subscribe");
        let drain_round = u32::MAX;
        while let Some(delivery) = consumer.recv_timeout(Duration::from_secs(1)).expect("recv") {
            let (partition, offset) = (delivery.partition(), delivery.offset());
            self.check_delivery(drain_round, partition, offset, delivery.attempt());
            delivery.ack().expect("ack");
            self.ever_acked.insert((partition, offset));
        }

        let mut unrecorded_acks: BTreeMap<u32, Vec<(u32, u64)>> = BTreeMap::new();
        for partition in 0..PARTITIONS {
            for offset in 0..self.end_offsets[partition as usize] {
                let key = (partition, offset);
                if self.ever_acked.contains(&key) {
                    continue;
                }
                let last = self.last_delivery.get(&key);
                let Some(&(round, attempt)) = last else {
                    panic!(
                        "partition {partition} offset {offset} was never delivered to the group"
                    );
                };
                assert!(
                    !is_nacked(offset, attempt),
                    "partition {partition} offset {offset} was nacked on attempt {attempt} in \
                     round {round} and never delivered again"
                );
                unrecorded_acks.entry(round).or_default().push(key);
            }
        }
        for (round, messages) in unrecorded_acks {
            assert!(
                messages.len() <= 1,
                "round {round}: messages {messages:?} were delivered, never acked in the event \
                 file and never delivered again; only the delivery being acked at the kill may \
                 end like that"
            );
        }
    }
}

/// Reads every message of the topic through a new group.
fn audit(broker: &Broker, group: &str) -> BTreeMap<(u32, u64), String> {
    let total: u64 = (0..PARTITIONS)
        .map(|partition| broker.end_offset(TOPIC, partition).expect("end offset"))
        .sum();
    let mut consumer = broker.subscribe(TOPIC, group).expect("subscribe audit");
    let mut stored = BTreeMap::new();
    while (stored.len() as u64) < total {
        let received = consumer
            .recv_timeout(Duration::from_secs(2))
            .expect("audit recv");
        let Some(delivery) = received else {
            break;
        };
        let payload = String::from_utf8_lossy(delivery.payload()).into_owned();
        stored.insert((delivery.partition(), delivery.offset()), payload);
        delivery.ack().expect("audit ack");
    }
    stored
}

fn rounds() -> u32 {
    match std::env::var(ROUNDS_VAR) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{ROUNDS_VAR}={value:?} is not a number of rounds")),
        Err(_) => DEFAULT_ROUNDS,
    }
}

/// Returns the RNG for a child's idle times, seeded by its round, so that every run idles
/// alike.
fn round_rng(round: u32) -> TestRng {
    let mut bytes = [0u8; 32];
    bytes[..4].copy_from_slice(&round.to_le_bytes());
    TestRng::from_seed(RngAlgorithm::ChaCha, &bytes)
}

/// Returns an RNG for kill timings, printing its seed so that a failure can be replayed.
fn seeded_rng(test: &str) -> TestRng {
    let seed: u64 = match std::env::var(SEED_VAR) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{SEED_VAR}={value:?} is not a number")),
        Err(_) => now_ms() ^ u64::from(std::process::id()),
    };
    eprintln!("{test}: {SEED_VAR}={seed}");
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    TestRng::from_seed(RngAlgorithm::ChaCha, &bytes)
}

fn required_var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("child process needs {name}"))
}

fn now_ms() -> u64 {
    millis(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("system clock after 1970"),
    )
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).expect("duration in milliseconds fits u64")
}

/// Returns the path that runs this test binary again. On Linux that is `/proc/self/exe`,
/// which still runs this build after cargo replaced the file on disk with a newer one.
fn test_binary() -> PathBuf {
    let proc_exe = Path::new("/proc/self/exe");
    if proc_exe.exists() {
        return proc_exe.to_path_buf();
    }
    std::env::current_exe().expect("path of the test binary")
}
