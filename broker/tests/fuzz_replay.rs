//! Runs the logic of each fuzz target in `fuzz/` over its committed seed corpus and over random
//! inputs from a fixed seed, so that a plain `cargo test` exercises the targets on stable Rust.
//!
//! The `decode_record` and `validate_config` targets call `aqueduct::fuzzing`, which the
//! crate's own tests build through the `fuzzing` feature that `Cargo.toml` turns on for them.
//! The `delivery_semantics` target includes `delivery_model` and `delivery_case` from this
//! directory, as this file does.
//!
//! The seed corpora under `fuzz/corpus/<target>/` are written by `write_seed_corpus`, which is
//! ignored by default: `cargo test -p aqueduct --test fuzz_replay -- --ignored
//! write_seed_corpus`. Rewrite them when a record format, `ConfigCase` or the delivery case
//! encoding changes. Each seed's name states what it reaches, and the replay checks that. Files
//! named by libFuzzer (40 hex digits of the input's SHA-1), which `cargo fuzz run` adds when it
//! is given a seed directory as its first corpus, are replayed without that check.

// The replay uses only some of the model's items.
#[allow(dead_code)]
mod delivery_model;

mod delivery_case;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aqueduct::fuzzing::{self, RECORD_KINDS};
use aqueduct::{
    BacklogLimit, Broker, BrokerConfig, ConsumerConfig, Durability, Error, ManualClock, Message,
    OrderingMode, Retention, TopicConfig, WhenFull,
};
use delivery_model::{GroupSetup, Op, Setup};

/// Seed of every random input sequence in this file.
const SEED: u64 = 0x5eed_a9de_d0c7;

/// Time after which a random replay stops early, so that the whole file stays within about
/// 30 seconds on a slow machine. Each replay runs its inputs in a fixed order, so a stop only
/// shortens the sequence.
const TIME_BUDGET: Duration = Duration::from_secs(8);

const RANDOM_RECORDS: usize = 10_000;
const RANDOM_CONFIGS: usize = 2_000;
const RANDOM_DELIVERY_CASES: usize = 300;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

/// Returns whether libFuzzer named the file: 40 hex digits of its SHA-1.
fn is_generated(name: &str) -> bool {
    name.len() == 40 && name.bytes().all(|byte| byte.is_ascii_hexdigit())
}

/// Returns the seeds of a target by file name.
fn seeds(target: &str) -> BTreeMap<String, Vec<u8>> {
    let dir = corpus_dir(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("reading {} failed: {error}", dir.display()));
    let mut seeds = BTreeMap::new();
    for entry in entries {
        let path = entry.expect("corpus directory entry").path();
        let name = path.file_name().expect("file name").to_string_lossy();
        if name.starts_with('.') {
            continue;
        }
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|error| panic!("reading {} failed: {error}", path.display()));
        seeds.insert(name.into_owned(), bytes);
    }
    assert!(!seeds.is_empty(), "{} holds no seeds", dir.display());
    seeds
}

/// Runs `check` on inputs from `next` until `count` ran or the time budget is spent, and
/// returns how many ran.
fn replay(count: usize, mut next: impl FnMut() -> Vec<u8>, mut check: impl FnMut(&[u8])) -> usize {
    let started = Instant::now();
    for done in 0..count {
        if started.elapsed() > TIME_BUDGET {
            return done;
        }
        check(&next());
    }
    count
}

fn random_bytes(rng: &mut fastrand::Rng, max_len: usize) -> Vec<u8> {
    let len = rng.usize(0..=max_len);
    std::iter::repeat_with(|| rng.u8(..)).take(len).collect()
}

/// Changes a few bytes of `seed`, cuts it short or extends it, as a fuzzer's mutations do.
fn mutate(rng: &mut fastrand::Rng, seed: &[u8]) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    match rng.u8(0..3) {
        0 if !bytes.is_empty() => {
            for _ in 0..rng.usize(1..=4) {
                let position = rng.usize(..bytes.len());
                bytes[position] = rng.u8(..);
            }
        }
        1 => bytes.truncate(rng.usize(0..=bytes.len())),
        _ => bytes.extend(random_bytes(rng, 16)),
    }
    bytes
}

#[test]
fn decode_record_seeds() {
    for (name, bytes) in seeds("decode_record") {
        let decoded = fuzzing::decode_record(&bytes);
        if is_generated(&name) {
            continue;
        }
        let expected = RECORD_KINDS
            .iter()
            .copied()
            .find(|kind| name.starts_with(&format!("{kind}-")));
        assert!(
            expected.is_some() || name.starts_with("invalid-"),
            "seed {name} is named neither after a record kind nor invalid-"
        );
        assert_eq!(decoded, expected, "seed {name} decodes as its kind");
    }
}

#[test]
fn decode_record_random() {
    let seeds: Vec<Vec<u8>> = seeds("decode_record").into_values().collect();
    let mut rng = fastrand::Rng::with_seed(SEED);
    let next = || match rng.u8(0..3) {
        0 => random_bytes(&mut rng, 64),
        // A valid header makes the decoder reach the record body.
        1 => {
            let mut bytes = vec![aqueduct::FORMAT_VERSION, rng.u8(1..=10)];
            bytes.extend(random_bytes(&mut rng, 64));
            bytes
        }
        _ => {
            let seed = &seeds[rng.usize(..seeds.len())];
            mutate(&mut rng, seed)
        }
    };
    let ran = replay(RANDOM_RECORDS, next, |bytes| {
        fuzzing::decode_record(bytes);
    });
    assert!(ran > 0, "no random record ran");
}

#[test]
fn validate_config_seeds() {
    for (name, bytes) in seeds("validate_config") {
        let steps = fuzzing::validate_config(&bytes);
        if is_generated(&name) {
            continue;
        }
        assert_eq!(
            steps_name(&steps),
            name,
            "seed {name} takes the steps it is named after"
        );
    }
}

#[test]
fn validate_config_random() {
    let seeds: Vec<Vec<u8>> = seeds("validate_config").into_values().collect();
    let mut rng = fastrand::Rng::with_seed(SEED);
    let next = || {
        if rng.bool() {
            random_bytes(&mut rng, 160)
        } else {
            let seed = &seeds[rng.usize(..seeds.len())];
            mutate(&mut rng, seed)
        }
    };
    let ran = replay(RANDOM_CONFIGS, next, |bytes| {
        fuzzing::validate_config(bytes);
    });
    assert!(ran > 0, "no random configuration ran");
}

#[test]
fn delivery_semantics_seeds() {
    for bytes in seeds("delivery_semantics").values() {
        delivery_case::run(bytes);
    }
}

#[test]
fn delivery_seeds_match_cases() {
    let committed = seeds("delivery_semantics");
    for (name, setup, ops) in delivery_seed_cases() {
        let bytes = delivery_case::encode(&setup, &ops);
        assert_eq!(
            committed.get(name),
            Some(&bytes),
            "committed seed {name} matches its case; rewrite the corpus"
        );
        let (decoded_setup, decoded_ops) = delivery_case::decode(&bytes);
        assert_eq!(
            format!("{decoded_setup:?} {decoded_ops:?}"),
            format!("{setup:?} {ops:?}"),
            "seed {name} decodes to its case"
        );
    }
}

#[test]
fn delivery_semantics_random() {
    let seeds: Vec<Vec<u8>> = seeds("delivery_semantics").into_values().collect();
    let mut rng = fastrand::Rng::with_seed(SEED);
    let next = || {
        if rng.bool() {
            random_bytes(&mut rng, 120)
        } else {
            let seed = &seeds[rng.usize(..seeds.len())];
            mutate(&mut rng, seed)
        }
    };
    let ran = replay(RANDOM_DELIVERY_CASES, next, delivery_case::run);
    assert!(ran > 0, "no random delivery case ran");
}

#[test]
fn retention_interval_outside_bounds_is_rejected() {
    // `BrokerConfig::retention_interval` documents bounds of 10 ms to 1 hour.
    for interval in [
        Duration::ZERO,
        Duration::from_millis(9),
        Duration::from_secs(3601),
    ] {
        let config = BrokerConfig::default().retention_interval(interval);
        let outcome = Broker::temporary_with(config);
        assert!(
            matches!(outcome, Err(Error::InvalidConfig { .. })),
            "retention interval {interval:?} must be rejected, got {outcome:?}"
        );
    }
}

#[test]
fn dedup_window_over_seven_days_is_rejected() {
    // `TopicConfig::dedup_window` documents a bound of 7 days.
    let broker = Broker::temporary().expect("temporary broker");
    let window = Duration::from_secs(7 * 24 * 3600) + Duration::from_millis(1);
    let config = TopicConfig::default().dedup_window(window);
    let outcome = broker.create_topic("orders", config);
    assert!(
        matches!(outcome, Err(Error::InvalidConfig { .. })),
        "dedup window {window:?} must be rejected, got {outcome:?}"
    );
}

fn one_group(ordering: OrderingMode, prefetch: usize) -> Setup {
    Setup {
        partitions: 1,
        groups: vec![GroupSetup { ordering, prefetch }],
        max_deliveries: None,
        max_unacked: 1_000,
        flushed: false,
    }
}

fn publish(keys: Vec<Option<usize>>) -> Op {
    Op::Publish { keys, ids: true }
}

/// The delivery seeds: short cases that each reach one rule of the model.
fn delivery_seed_cases() -> Vec<(&'static str, Setup, Vec<Op>)> {
    let unordered = one_group(OrderingMode::Unordered, 1);
    let mut per_key_limit = one_group(OrderingMode::PerKey, 1);
    per_key_limit.max_deliveries = Some(2);
    let two_groups = Setup {
        partitions: 2,
        groups: vec![
            GroupSetup {
                ordering: OrderingMode::Unordered,
                prefetch: 3,
            },
            GroupSetup {
                ordering: OrderingMode::PerKey,
                prefetch: 1,
            },
        ],
        max_deliveries: Some(3),
        max_unacked: 2,
        flushed: true,
    };
    vec![
        (
            "publish-receive-ack",
            unordered.clone(),
            vec![
                publish(vec![None, None]),
                Op::Receive(0),
                Op::Ack(0),
                Op::Receive(0),
                Op::Ack(0),
            ],
        ),
        (
            "ack-timeout-redelivers",
            unordered.clone(),
            vec![
                publish(vec![None]),
                Op::Receive(0),
                Op::Advance(1_000),
                Op::Receive(0),
                Op::Ack(1),
                Op::Ack(0),
            ],
        ),
        (
            "nack-after-delays",
            unordered.clone(),
            vec![
                publish(vec![Some(0)]),
                Op::Receive(0),
                Op::NackAfter(0, 1_500),
                Op::Receive(0),
                Op::Advance(1_000),
                Op::Receive(0),
                Op::Advance(1_000),
                Op::Receive(0),
                Op::Ack(0),
            ],
        ),
        (
            "extend-and-drop",
            unordered.clone(),
            vec![
                publish(vec![None, None]),
                Op::Receive(0),
                Op::Advance(600),
                Op::Extend(0),
                Op::Advance(600),
                Op::Ack(0),
                Op::Receive(1),
                Op::DropDelivery(0),
                Op::Receive(2),
                Op::DropConsumer(2),
                Op::Receive(2),
            ],
        ),
        (
            "reopen-acks-late",
            unordered,
            vec![
                publish(vec![None]),
                Op::Receive(0),
                Op::Reopen { settle_late: true },
                Op::Receive(0),
            ],
        ),
        (
            "per-key-limit-parks-key",
            per_key_limit,
            vec![
                publish(vec![Some(0), Some(0), Some(1)]),
                Op::Receive(0),
                Op::Nack(0),
                Op::Receive(0),
                Op::Nack(0),
                Op::Receive(0),
                Op::Ack(0),
                Op::Receive(0),
                Op::ReleaseKey(0, 0),
                Op::Receive(0),
                Op::DeadLetter(0),
            ],
        ),
        (
            "two-groups-flushed-reopen",
            two_groups,
            vec![
                publish(vec![Some(0), Some(1), Some(2), None]),
                Op::Receive(0),
                Op::Receive(1),
                Op::Receive(2),
                Op::Receive(3),
                Op::Ack(0),
                Op::Nack(1),
                Op::Reopen { settle_late: false },
                Op::Receive(1),
                Op::Advance(2_500),
                Op::Receive(0),
            ],
        ),
    ]
}

/// Clock time of the broker run that writes the record seeds.
const SEED_TIME_MS: u64 = 1_780_000_000_000;

/// Trees whose values are records, in `docs/FORMAT.md`.
const TREES: [&str; 4] = [
    "__aqueduct.meta",
    "__aqueduct.log",
    "__aqueduct.index",
    "__aqueduct.groups",
];

#[test]
#[ignore = "rewrites the committed seed corpora under fuzz/corpus"]
fn write_seed_corpus() {
    write_record_seeds();
    write_config_seeds();
    write_delivery_seeds();
}

fn rewrite_dir(target: &str) -> PathBuf {
    let dir = corpus_dir(target);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create corpus directory");
    dir
}

/// Writes the two smallest stored records of every kind from a broker run that uses every
/// kind, and a few invalid records.
fn write_record_seeds() {
    let db = tempfile::tempdir().expect("temporary directory");
    run_record_broker(db.path());
    let mut by_kind: BTreeMap<u8, Vec<Vec<u8>>> = BTreeMap::new();
    let raw = sled::open(db.path()).expect("raw sled open");
    for tree in TREES {
        for item in raw.open_tree(tree).expect("raw sled tree").iter() {
            let (_, value) = item.expect("raw sled read");
            by_kind.entry(value[1]).or_default().push(value.to_vec());
        }
    }
    drop(raw);
    let generation_file = std::fs::read(db.path().join("aqueduct.generation"));
    let generation_file = generation_file.expect("read the generation file");
    by_kind.entry(9).or_default().push(generation_file);

    let dir = rewrite_dir("decode_record");
    for (index, kind) in RECORD_KINDS.iter().enumerate() {
        let records = by_kind.get_mut(&(index as u8 + 1));
        let records = records.unwrap_or_else(|| panic!("the broker run wrote no {kind} record"));
        records.sort_by_key(Vec::len);
        records.dedup();
        for (number, record) in records.iter().take(2).enumerate() {
            std::fs::write(dir.join(format!("{kind}-{number}")), record).expect("write seed");
        }
    }
    let block = &by_kind[&3][0];
    let invalid: [(&str, Vec<u8>); 4] = [
        ("invalid-empty", Vec::new()),
        ("invalid-version-2", [&[2u8][..], &block[1..]].concat()),
        ("invalid-kind-11", [&[1u8, 11][..], &block[2..]].concat()),
        ("invalid-truncated-block", block[..block.len() / 2].to_vec()),
    ];
    for (name, bytes) in invalid {
        std::fs::write(dir.join(name), bytes).expect("write seed");
    }
}

/// Runs a broker that writes every record kind: topics with limits, keyed, delayed and
/// deduplicated messages, a group with an ack, a delayed nack and a dead letter that parks a
/// key.
fn run_record_broker(path: &Path) {
    let clock = ManualClock::new(SEED_TIME_MS);
    let config = BrokerConfig::default()
        .clock(clock.clone())
        .durability(Durability::Flushed);
    let broker = Broker::open_with(path, config).expect("open");
    broker
        .create_topic("orders.dead", TopicConfig::default())
        .expect("create dead-letter topic");
    let orders = TopicConfig::default()
        .partitions(2)
        .max_deliveries(3)
        .dead_letter_topic("orders.dead")
        .retention(Retention::max_age(Duration::from_secs(7 * 24 * 3600)))
        .backlog_limit(BacklogLimit {
            max_messages: Some(10_000),
            max_bytes: None,
            when_full: WhenFull::Block {
                timeout: Duration::from_secs(1),
            },
        });
    broker.create_topic("orders", orders).expect("create topic");
    let later = SystemTime::UNIX_EPOCH + Duration::from_millis(SEED_TIME_MS + 60_000);
    let messages = [
        Message::new("order 1").key("c-1").id("order-1"),
        Message::new("order 2").key("c-2").header("source", "web"),
        Message::new("order 3").deliver_at(later),
    ];
    for message in messages {
        broker.publish("orders", message).expect("publish");
    }
    settle_for_records(&broker, &clock);
    drop(broker);
}

/// Dead-letters one message, nacks one with a delay that outlasts the run and acks the delayed
/// message once it is due, in a per-key group.
fn settle_for_records(broker: &Broker, clock: &Arc<ManualClock>) {
    let config = ConsumerConfig::default()
        .ordering(OrderingMode::PerKey)
        .prefetch(1);
    let mut consumer = broker
        .subscribe_with("orders", "billing", config)
        .expect("subscribe");
    let mut next = || consumer.try_recv().expect("try_recv").expect("a delivery");
    let first = next();
    let second = next();
    first.dead_letter("card declined").expect("dead letter");
    second
        .nack_after(Duration::from_secs(300))
        .expect("nack_after");
    clock.advance(Duration::from_secs(90));
    next().ack().expect("ack");
    broker.flush().expect("flush");
}

/// Names a configuration seed after the steps it takes, for example
/// `broker-opened.topic-created.subscribed.published`.
fn steps_name(steps: &[&str]) -> String {
    let steps: Vec<String> = steps.iter().map(|step| step.replace(' ', "-")).collect();
    steps.join(".")
}

/// Writes, for every sequence of steps that random configuration cases take, the shortest
/// input that takes it, named after the steps.
fn write_config_seeds() {
    let mut shortest: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut rng = fastrand::Rng::with_seed(SEED);
    for _ in 0..20_000 {
        let bytes = random_bytes(&mut rng, 160);
        let name = steps_name(&fuzzing::validate_config(&bytes));
        let known = shortest.get(&name).map_or(usize::MAX, Vec::len);
        if bytes.len() < known {
            shortest.insert(name, bytes);
        }
    }
    let dir = rewrite_dir("validate_config");
    for (name, bytes) in shortest {
        std::fs::write(dir.join(name), bytes).expect("write seed");
    }
}

fn write_delivery_seeds() {
    let dir = rewrite_dir("delivery_semantics");
    for (name, setup, ops) in delivery_seed_cases() {
        let bytes = delivery_case::encode(&setup, &ops);
        std::fs::write(dir.join(name), bytes).expect("write seed");
    }
}
