//! Throughput of the patterns crate, with its baselines measured in the same run.
//!
//! - `event_store_append`: appends of one 100-byte event with the stream's expected version,
//!   round robin over 100 streams, with `Durability::Buffered` (a flush per iteration) and
//!   `Durability::Flushed` (an fsync per append). Baselines: a raw-sled transaction that checks
//!   the stream's version key and inserts the event and the new version, and a crossbeam
//!   channel send of each event.
//! - `outbox_relay`: rows enqueued through `Outbox` before the timer starts, then `OutboxRelay`
//!   moves them to the broker topic (timed). Baselines: raw-sled rows moved to a second tree in
//!   rounds of 256 with a flush and fsync per round, and a move from one channel to another.
//! - `saga`: sagas of two local steps started and polled to completion. Baselines: raw-sled
//!   transactions with the writes of a saga's five state transitions, each followed by sled's
//!   flush, and five channel round trips per saga.
//!
//! Run with `cargo bench -p aqueduct-benches --bench patterns`.
//!
//! sled runs every transaction under a process-wide lock, and once any transaction has run,
//! every sled operation in the process takes that lock for reading. All benchmarks here use
//! transactions, so they all run in that mode.

// `criterion_group!` generates a public function without documentation.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use aqueduct::{Durability, Message};
use aqueduct_benches::{
    configure_matrix, filled_channel, matrix_criterion, message_keys, payload, time_channel_sends,
    BrokerFixture, RawSled, TOPIC,
};
use aqueduct_patterns::{
    Action, EventStore, EventStoreConfig, ExpectedVersion, NewEvent, Outbox, OutboxError,
    OutboxRelay, Saga, SagaOrchestrator, SagaState, Step,
};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use sled::transaction::{abort, TransactionError, Transactional};

/// Measurement time of each benchmark.
const MEASUREMENT: Duration = Duration::from_secs(2);

/// Streams that `event_store_append` appends to, round robin.
const STREAMS: usize = 100;

/// Appends per iteration with `Durability::Buffered`, followed by one flush.
const BUFFERED_APPENDS: u64 = 1_000;

/// Appends per iteration with `Durability::Flushed`, each waiting for its own fsync.
const FLUSHED_APPENDS: u64 = 20;

/// Outbox rows the relay moves per iteration. Not a multiple of the relay's default batch of
/// 256, so the last round is partial and ends the drain without an empty round.
const OUTBOX_ROWS: u64 = 2_000;

/// Rows per transaction while the outbox is filled.
const ROWS_PER_TRANSACTION: u64 = 100;

/// Rows per relay round: `RelayConfig`'s default batch size.
const RELAY_BATCH: usize = 256;

/// Sagas started and run to completion per iteration.
const SAGAS: u64 = 50;

/// Writes (inserts and removes) of each sled transaction that the orchestrator commits for a
/// saga of two local steps: start, first attempt started, first attempt succeeded, second
/// attempt started, second attempt succeeded and saga completed.
const SAGA_TRANSITION_WRITES: [usize; 5] = [4, 5, 6, 5, 10];

/// Bytes of the saga record that the raw-sled baseline writes in each transition. The
/// orchestrator's record of this benchmark's saga, with its 100-byte input, takes 192 bytes.
const SAGA_RECORD_BYTES: usize = 200;

/// Bytes of each history entry that the raw-sled baseline writes: the orchestrator's entries
/// for this saga take 14 to 30 bytes.
const SAGA_HISTORY_BYTES: usize = 20;

fn event_store_append(c: &mut Criterion) {
    let mut group = c.benchmark_group("event_store_append");
    configure_matrix(&mut group, MEASUREMENT);
    let payload = payload();
    let streams = (0..STREAMS)
        .map(|i| format!("stream-{i}"))
        .collect::<Vec<_>>();

    for (mode, durability, appends) in [
        ("buffered", Durability::default(), BUFFERED_APPENDS),
        ("flushed", Durability::Flushed, FLUSHED_APPENDS),
    ] {
        group.throughput(Throughput::Elements(appends));

        let fixture = BrokerFixture::open(Durability::default());
        let config = EventStoreConfig::default().durability(durability);
        let store = EventStore::open_with(&fixture.broker, "bench", config).expect("open store");
        let mut versions = vec![0u64; STREAMS];
        let mut next = 0;
        group.bench_function(BenchmarkId::new("aqueduct", mode), |b| {
            b.iter(|| {
                for _ in 0..appends {
                    let stream = next % STREAMS;
                    next += 1;
                    let event = NewEvent::new("Recorded", 1, payload.clone());
                    let expected = ExpectedVersion::Exact(versions[stream]);
                    let appended = store
                        .append(&streams[stream], expected, vec![event])
                        .expect("append")
                        .expect("the expected version");
                    versions[stream] = appended.version;
                }
                if let Durability::Buffered { .. } = durability {
                    store.flush().expect("flush the event store");
                }
            });
        });
        drop(store);
        drop(fixture);

        let sled = RawSled::open();
        let mut versions = vec![0u64; STREAMS];
        let mut position = 0;
        group.bench_function(BenchmarkId::new("raw_sled", mode), |b| {
            b.iter(|| {
                for _ in 0..appends {
                    let stream = (position % STREAMS as u64) as usize;
                    append_raw(
                        &sled.tree,
                        &streams[stream],
                        versions[stream],
                        position,
                        &payload,
                    );
                    versions[stream] += 1;
                    position += 1;
                    if let Durability::Flushed = durability {
                        sled.flush();
                    }
                }
                if let Durability::Buffered { .. } = durability {
                    sled.flush();
                }
            });
        });
        drop(sled);
    }

    group.throughput(Throughput::Elements(BUFFERED_APPENDS));
    group.bench_function("crossbeam_channel", |b| {
        b.iter_custom(|iterations| {
            time_channel_sends(iterations, BUFFERED_APPENDS, |i| {
                (i as usize % STREAMS, payload.clone())
            })
        });
    });
    group.finish();
}

/// Appends `event` at global `position` to `stream` in one sled transaction, if the stream's
/// version key still contains `expected`.
///
/// # Panics
///
/// When the version does not match or sled fails.
fn append_raw(tree: &sled::Tree, stream: &str, expected: u64, position: u64, event: &[u8]) {
    let mut version_key = b"v".to_vec();
    version_key.extend_from_slice(stream.as_bytes());
    let mut event_key = b"e".to_vec();
    event_key.extend_from_slice(&position.to_be_bytes());
    let result: Result<(), TransactionError<u64>> = tree.transaction(|tx| {
        let current = match tx.get(&version_key)? {
            Some(bytes) => decode_u64(&bytes),
            None => 0,
        };
        if current != expected {
            return abort(current);
        }
        tx.insert(event_key.as_slice(), event)?;
        tx.insert(version_key.as_slice(), &(expected + 1).to_be_bytes())?;
        Ok(())
    });
    result.expect("raw-sled append at the expected version");
}

fn decode_u64(bytes: &[u8]) -> u64 {
    let array: [u8; 8] = bytes.try_into().expect("an 8-byte counter");
    u64::from_be_bytes(array)
}

fn outbox_relay(c: &mut Criterion) {
    let mut group = c.benchmark_group("outbox_relay");
    configure_matrix(&mut group, MEASUREMENT);
    group.throughput(Throughput::Elements(OUTBOX_ROWS));
    let payload = payload();
    let keys = message_keys(64);

    let fixture = BrokerFixture::open(Durability::default());
    let outbox = Outbox::open(&fixture.broker, "bench").expect("open the outbox");
    let relay = OutboxRelay::new(&outbox, &fixture.broker);
    group.bench_function("aqueduct", |b| {
        b.iter_batched(
            || {
                for first in (0..OUTBOX_ROWS).step_by(ROWS_PER_TRANSACTION as usize) {
                    outbox
                        .transaction(&[], |tx| {
                            for row in first..first + ROWS_PER_TRANSACTION {
                                let key = keys[row as usize % keys.len()].clone();
                                let message = Message::new(payload.clone()).key(key);
                                tx.enqueue_message::<OutboxError>(TOPIC, message)?;
                            }
                            Ok(())
                        })
                        .expect("enqueue outbox rows");
                }
            },
            |()| {
                let published = relay.drain(Duration::from_secs(60)).expect("relay");
                assert_eq!(published, OUTBOX_ROWS, "rows relayed in one drain");
            },
            BatchSize::PerIteration,
        );
    });
    drop(relay);
    drop(outbox);
    drop(fixture);

    let sled = RawSled::open();
    let rows = sled.open_tree("rows");
    let meta = sled.open_tree("meta");
    group.bench_function("raw_sled", |b| {
        b.iter_batched(
            || {
                for _ in (0..OUTBOX_ROWS).step_by(ROWS_PER_TRANSACTION as usize) {
                    enqueue_raw(&rows, &meta, ROWS_PER_TRANSACTION, &payload);
                }
            },
            |()| relay_raw(&sled, &rows),
            BatchSize::PerIteration,
        );
    });
    drop(sled);

    group.bench_function("crossbeam_channel", |b| {
        b.iter_batched(
            || filled_channel(OUTBOX_ROWS, &payload),
            |rows| {
                let (sender, receiver) = crossbeam_channel::unbounded();
                for row in rows.try_iter() {
                    sender.send(row).expect("send");
                }
                assert_eq!(receiver.len() as u64, OUTBOX_ROWS, "rows moved");
                (rows, receiver)
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

/// Inserts `count` rows into `rows` in one transaction, numbered by the counter in `meta`, as
/// `Outbox::transaction` does.
fn enqueue_raw(rows: &sled::Tree, meta: &sled::Tree, count: u64, row: &[u8]) {
    let result: Result<(), TransactionError<()>> = (rows, meta).transaction(|(rows, meta)| {
        for _ in 0..count {
            let seq = match meta.get(b"next")? {
                Some(bytes) => decode_u64(&bytes),
                None => 0,
            };
            rows.insert(&seq.to_be_bytes(), row)?;
            meta.insert(b"next", &(seq + 1).to_be_bytes())?;
        }
        Ok(())
    });
    result.expect("raw-sled enqueue");
}

/// Moves every row to the message tree in rounds of [`RELAY_BATCH`], as the relay's rounds
/// do: read the rows, write them, flush and fsync, then remove them in one batch. sled's flush
/// after the last round makes the removals durable.
fn relay_raw(sled: &RawSled, rows: &sled::Tree) {
    let mut moved = 0;
    loop {
        let round = rows
            .iter()
            .take(RELAY_BATCH)
            .collect::<Result<Vec<_>, _>>()
            .expect("read outbox rows");
        if round.is_empty() {
            break;
        }
        let mut removals = sled::Batch::default();
        for (key, value) in &round {
            sled.tree.insert(key, value).expect("sled insert");
            removals.remove(key);
        }
        sled.flush();
        rows.apply_batch(removals).expect("remove outbox rows");
        moved += round.len() as u64;
    }
    sled.flush_without_fsync();
    assert_eq!(moved, OUTBOX_ROWS, "rows moved");
}

fn saga(c: &mut Criterion) {
    let mut group = c.benchmark_group("saga");
    configure_matrix(&mut group, MEASUREMENT);
    group.throughput(Throughput::Elements(SAGAS));
    let payload = payload();

    let fixture = BrokerFixture::open(Durability::default());
    let definition = Saga::new("order")
        .step(
            Step::new("reserve", Action::local(|_| Ok(b"reserved".to_vec())))
                .compensation(Action::local(|_| Ok(Vec::new()))),
        )
        .step(Step::new("confirm", Action::local(|_| Ok(Vec::new()))));
    let orchestrator = SagaOrchestrator::open(&fixture.broker, "bench", vec![definition])
        .expect("open the orchestrator");
    let mut started = 0;
    group.bench_function("aqueduct", |b| {
        b.iter(|| {
            for _ in 0..SAGAS {
                let id = format!("saga-{started}");
                started += 1;
                orchestrator
                    .start("order", &id, payload.clone())
                    .expect("start a saga");
            }
            let mut attempts = 0;
            while attempts < 2 * SAGAS as usize {
                attempts += orchestrator.poll().expect("poll").attempts;
            }
        });
    });
    if started > 0 {
        let last = format!("saga-{}", started - 1);
        let status = orchestrator.status(&last).expect("saga status");
        assert_eq!(status.state, SagaState::Completed, "state of the last saga");
    }
    drop(orchestrator);
    drop(fixture);

    let sled = RawSled::open();
    let record = vec![7u8; SAGA_RECORD_BYTES];
    let history = vec![3u8; SAGA_HISTORY_BYTES];
    let mut saga_id = 0u64;
    group.bench_function("raw_sled", |b| {
        b.iter(|| {
            for _ in 0..SAGAS {
                for (transition, writes) in SAGA_TRANSITION_WRITES.into_iter().enumerate() {
                    let keys = SagaKeys::new(saga_id, transition as u8);
                    transition_raw(&sled.tree, &keys, writes, &record, &history);
                    sled.flush_without_fsync();
                }
                saga_id += 1;
            }
        });
    });
    drop(sled);

    group.bench_function("crossbeam_channel", |b| {
        let (sender, receiver) = crossbeam_channel::unbounded();
        b.iter(|| {
            for saga in 0..SAGAS {
                for transition in 0..SAGA_TRANSITION_WRITES.len() {
                    sender.send((saga, transition)).expect("send");
                    black_box(receiver.recv().expect("receive"));
                }
            }
        });
    });
    group.finish();
}

/// Keys of one state transition of one saga in the raw-sled baseline.
struct SagaKeys {
    record: Vec<u8>,
    history: Vec<u8>,
    index_prefix: Vec<u8>,
}

impl SagaKeys {
    fn new(saga: u64, transition: u8) -> Self {
        let key = |kind: u8| {
            let mut key = vec![kind];
            key.extend_from_slice(&saga.to_be_bytes());
            key
        };
        let mut history = key(b'h');
        history.push(transition);
        let mut index_prefix = key(b'x');
        index_prefix.push(transition);
        SagaKeys {
            record: key(b'r'),
            history,
            index_prefix,
        }
    }
}

/// Commits one state transition in one transaction: reads the saga's record, then writes
/// `writes` keys: the record, a history entry and empty index keys for the rest.
fn transition_raw(
    tree: &sled::Tree,
    keys: &SagaKeys,
    writes: usize,
    record: &[u8],
    history: &[u8],
) {
    let result: Result<(), TransactionError<()>> = tree.transaction(|tx| {
        black_box(tx.get(&keys.record)?);
        tx.insert(keys.record.as_slice(), record)?;
        tx.insert(keys.history.as_slice(), history)?;
        for index in 0..writes.saturating_sub(2) {
            let mut key = keys.index_prefix.clone();
            key.push(index as u8);
            tx.insert(key, &[][..])?;
        }
        Ok(())
    });
    result.expect("raw-sled saga transition");
}

criterion_group! {
    name = benches;
    config = matrix_criterion();
    targets = event_store_append, outbox_relay, saga
}
criterion_main!(benches);
